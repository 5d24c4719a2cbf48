"""The published M2AD-Synergy results (paper Tables 2 and 3), as leaderboard rows.

The numbers live in ``paper_synergy.csv`` next to this module, in percent exactly as printed
(transcribed from ``hustCYQ/M2AD`` ``Imgs/T1.png`` and ``Imgs/T2.png``), including the printed
averages (``category == "printed_average"``) so that a test can check the transcription: the
mean of the ten category rows must match the printed average within rounding (±0.1 points).

Setting: single-class.  The official code behind the tables trains one model per class
(``run_dataset.py`` loops over the classes and sets ``train_data.cls_names = test_data.cls_names
= cls``; reference m2ad.md section 11.1), so every paper row carries ``setting="single-class"``.

Column mapping (the paper's names -> ours): O-AUROC -> ``object_auroc``; I-AUROC ->
``view_auroc`` (almost certainly the illumination-fused view score; the paper's naming leaves
this uncertain); AUPRO -> ``view_aupro``.  Values are stored as fractions (printed / 100).
"""

from __future__ import annotations

import csv
from datetime import datetime, timezone
from importlib import resources
from typing import Any

from leaderboard.store import Store, to_table

PAPER_FILE = "paper_synergy.csv"
PAPER_PROTOCOL = "synergy"
PAPER_DATASET = "m2ad"
PAPER_METRICS = {"object_auroc": "O-AUROC", "view_auroc": "I-AUROC (view)", "view_aupro": "AUPRO"}
PAPER_CITATION = "https://arxiv.org/abs/2505.10996"
PAPER_DATE = datetime(2025, 5, 19, tzinfo=timezone.utc)  # arXiv posting date
PRINTED_AVERAGE = "printed_average"
PAPER_SETTING = "single-class"
"""One model per class in the official code (m2ad.md section 11.1)."""
PAPER_PROTOCOL_VERSION = "1"

BACKBONES = {
    "CDO": "mshrnet32",
    "RD++": "wide_resnet50_2",
    "MSFlow": "wide_resnet50_2",
    "Dinomaly": "dinov2reg_vit_base_14",
    "INP-Former": "dinov2reg_vit_base_14",
}
COMMON_NOTE = (
    "Paper table (arXiv 2505.10996), official evaluator (ADEval, nstrips=50; bilinear-eroded GT masks). "
    "Single-class: the official code trains one model per class (run_dataset.py). "
    "I-AUROC is read as the illumination-fused view AUROC (naming uncertain)."
)
METHOD_NOTES = {
    "INP-Former": (
        "The homepage prints this method's 256 mean as 71.0/70.5/85.3, a typo for 81.0 (the rows average 80.98). "
        "The maintainers say these numbers may underestimate INP-Former (hustCYQ/M2AD issue #1)."
    ),
}
RDPP_COPIED_CATEGORIES = ("Holder", "Motor", "Teapot", "Tube")
RDPP_NOTE = "Identical at 256 and 512 in the paper: probably a copy error (uncertain)."


def read_table() -> list[dict[str, str]]:
    """The rows of the packaged CSV, as printed (percent strings), printed averages included."""
    text = resources.files("leaderboard").joinpath(PAPER_FILE).read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


def _note(method: str, category: str) -> str:
    notes = [COMMON_NOTE]
    if method in METHOD_NOTES:
        notes.append(METHOD_NOTES[method])
    if method == "RD++" and category in RDPP_COPIED_CATEGORIES:
        notes.append(RDPP_NOTE)
    return " ".join(notes)


def entry_id(method: str, resolution: str) -> str:
    """The stable id of one paper entry, so that re-seeding replaces rather than duplicates."""
    return f"paper/{PAPER_PROTOCOL}/{PAPER_DATASET}-{resolution}/{method}"


def paper_rows() -> list[dict[str, Any]]:
    """Leaderboard rows (store schema) for every per-category paper value; values are fractions."""
    rows = []
    for record in read_table():
        if record["category"] == PRINTED_AVERAGE:
            continue
        method, resolution, input_size = record["method"], record["resolution"], record["input_size"]
        for metric in PAPER_METRICS:
            rows.append(
                {
                    "entry_id": entry_id(method, resolution),
                    "source": "paper",
                    "method": method,
                    "variant": f"input {input_size} px" if input_size != resolution else None,
                    "backbone": BACKBONES[method],
                    "protocol": PAPER_PROTOCOL,
                    "mode": "official",
                    "mask_rule": "official",
                    "protocol_version": PAPER_PROTOCOL_VERSION,
                    "setting": PAPER_SETTING,
                    "dataset": PAPER_DATASET,
                    "resolution": resolution,
                    "category": record["category"],
                    "metric": metric,
                    "value": float(record[metric]) / 100.0,
                    "date": PAPER_DATE,
                    "submitter": "M2AD authors",
                    "citation": PAPER_CITATION,
                    "note": _note(method, record["category"]),
                }
            )
    return rows


def printed_averages() -> dict[tuple[str, str], dict[str, float]]:
    """``{(method, resolution): {metric: printed average in percent}}`` as the paper prints them."""
    return {
        (record["method"], record["resolution"]): {metric: float(record[metric]) for metric in PAPER_METRICS}
        for record in read_table()
        if record["category"] == PRINTED_AVERAGE
    }


def seed(store: Store) -> int:
    """Put the paper rows into ``store``, replacing earlier paper rows (idempotent); returns
    the number of rows written."""
    table = to_table(paper_rows())
    store.put_entries(table)
    return table.num_rows


def seed_if_new(store: Store) -> bool:
    """Give a store that was never written the paper rows, so that a new leaderboard shows the
    published tables at once (the CLI calls this before reading, and after a first submission);
    True if it did.  A store that exists is left as it is: removed paper entries stay removed."""
    if store.exists():
        return False
    seed(store)
    return True

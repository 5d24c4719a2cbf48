"""``m2ad submit``: evaluate a predictions file under a protocol and add the result to the store.

The result of ``protocols.evaluate.evaluate`` becomes one row per (category, metric), plus the
M2AD breakdown rows (per view, per illumination, per view x illumination; AUROC) with ``view``
and/or ``illumination`` set.  A submission's entry id is derived from its predictions hash,
protocol and evaluation mode, so resubmitting the same file is recognised: refused, or with
``replace`` swapped in atomically.

Every row records the setting the predictions were made in (``setting``, ``shots``,
``train_dataset``): given by the submitter, or read from the predictions file's header, which
``m2ad run`` writes; a submitter's value that contradicts the header is refused.  The
``protocol_version`` is the one the evaluation result records (the protocol spec's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import protocols
from leaderboard.store import Store, to_table
from m2ad.files import sha256_file
from m2ad.predictions import read as read_predictions
from m2ad.schema import DatasetInfo
from m2ad.settings import SETTINGS
from protocols.evaluate import evaluate



@dataclass(frozen=True)
class Submission:
    """What ``submit`` added: the entry id, its rows, and the entries it replaced."""

    entry_id: str
    rows: list[dict[str, Any]]
    replaced: list[str]
    result: dict[str, Any]




def submission_entry_id(predictions_sha256: str, protocol: str, mode: str) -> str:
    """The id of a submission: the same file, protocol and mode always give the same id."""
    return f"submission/{protocol}/{mode}/{predictions_sha256[:16]}"


def _number(value: Any) -> float | None:
    """A metric value as a float, with NaN and None both stored as null."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _breakdown_rows(protocol: str, category: str, breakdown: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Rows for one category's breakdown, under the AUROC of the protocol's breakdown level
    (``ProtocolSpec.breakdown_metric``); accepts ``view_illumination`` nested
    (``{view: {light: v}}``) or flat (``{"000/01": v}``)."""
    if not breakdown:
        return []
    metric = protocols.get(protocol).breakdown_metric
    rows = []
    for view, value in (breakdown.get("view") or {}).items():
        rows.append({"category": category, "view": str(view), "metric": metric, "value": _number(value)})
    for light, value in (breakdown.get("illumination") or {}).items():
        rows.append({"category": category, "illumination": str(light), "metric": metric, "value": _number(value)})
    for key, value in (breakdown.get("view_illumination") or {}).items():
        cells = value.items() if isinstance(value, dict) else [(None, value)]
        for light, cell in cells:
            view, light = (str(key), str(light)) if light is not None else str(key).split("/", 1)
            rows.append({"category": category, "view": view, "illumination": light, "metric": metric, "value": _number(cell)})
    return rows


def result_rows(result: dict[str, Any], provenance: dict[str, Any]) -> list[dict[str, Any]]:
    """Store rows from an ``evaluate`` result: per (category, metric) and the breakdowns, each
    completed with the ``provenance`` columns (entry id, method, resolution, ...)."""
    protocol = result["protocol"]
    rows: list[dict[str, Any]] = []
    for category, metrics in sorted(result.get("categories", {}).items()):
        for metric, value in metrics.items():
            rows.append({"category": category, "metric": metric, "value": _number(value)})
        rows.extend(_breakdown_rows(protocol, category, (result.get("breakdown") or {}).get(category)))
    if not rows:
        raise ValueError("the evaluation returned no per-category metrics: nothing to put on the leaderboard")
    common = {
        "protocol": protocol,
        "mode": result.get("mode"),
        "mask_rule": result.get("mask_rule"),
        "predictions_sha256": result.get("predictions_sha256"),
        **provenance,
    }
    return [{**common, **row} for row in rows]


def submit(
    predictions: str | Path,
    *,
    protocol: str,
    data: str | Path,
    method: str,
    store: Store,
    variant: str | None = None,
    backbone: str | None = None,
    submitter: str | None = None,
    citation: str | None = None,
    note: str | None = None,
    hardware: str | None = None,
    mode: str = "exact",
    mask_rule: str | None = None,
    setting: str | None = None,
    shots: int | None = None,
    train_dataset: str | None = None,
    replace: bool = False,
    progress: bool = True,
) -> Submission:
    """Validate and evaluate ``predictions`` against the sharded dataset ``data`` under
    ``protocol`` and add the rows to ``store``.  ``mask_rule=None``: ``official`` in the compat
    modes, else ``exact`` (``protocols.fusion.default_mask_rule``).

    Raises ``m2ad.predictions.PredictionsError`` for a malformed file, ``ValueError`` for bad
    arguments, and ``leaderboard.store.DuplicateEntryError`` for a file already on the board
    (same hash, protocol and mode) unless ``replace``.  The provenance the predictions file
    declares (``code_version``/``m2ad_version``, ``config_hash``, ``hardware``) is recorded.
    """
    if not method.strip():
        raise ValueError("--method must not be empty")
    predictions = Path(predictions)
    declared = read_predictions(predictions).info().metadata
    setting_columns = _setting(declared, setting=setting, shots=shots, train_dataset=train_dataset)
    info = DatasetInfo.read(data)
    sha256 = sha256_file(predictions)
    if not replace:
        store.check_new(sha256, protocol, mode)  # refuse before spending time on evaluation
    result = evaluate(protocol, data, predictions, mode=mode, mask_rule=mask_rule, progress=progress)
    result = {**result, "predictions_sha256": sha256}
    entry_id = submission_entry_id(sha256, protocol, result.get("mode") or mode)
    provenance = {
        "entry_id": entry_id,
        "source": "submission",
        "method": method.strip(),
        "variant": variant,
        "backbone": backbone,
        "dataset": result.get("dataset") or info.dataset,
        "resolution": str(info.resolution),
        "protocol_version": result.get("protocol_version") or protocols.get(protocol).version,
        **setting_columns,
        "config_hash": _text(declared.get("config_hash")),
        "code_version": _text(declared.get("code_version") or declared.get("m2ad_version") or result.get("m2ad_version")),
        "hardware": hardware or _text(declared.get("hardware")),
        "date": datetime.now(timezone.utc),
        "submitter": submitter,
        "citation": citation,
        "note": _with_reimplementation(note, declared.get("reimplemented_from")),
    }
    rows = result_rows(result, provenance)
    replaced = store.add_entry(to_table(rows), replace=replace)
    return Submission(entry_id=entry_id, rows=rows, replaced=replaced, result=result)


def _setting(declared: dict[str, Any], **given: Any) -> dict[str, Any]:
    """The setting columns of a submission: each value given by the submitter, else the one the
    predictions header declares; a given value that contradicts the header is an error."""
    columns = {}
    for name, value in given.items():
        found = declared.get(name)
        if value is not None and found is not None and value != found:
            raise ValueError(f"--{name.replace('_', '-')} {value} contradicts the predictions file, which declares {name} {found}")
        columns[name] = value if value is not None else found
    if columns["setting"] is not None and columns["setting"] not in SETTINGS:
        raise ValueError(f"--setting must be one of {', '.join(SETTINGS)}, not {columns['setting']!r}")
    return columns


def _with_reimplementation(note: str | None, source: Any) -> str | None:
    """The entry's note, prefixed with "re-implementation from <paper>" when the predictions
    header declares that the method was re-implemented from a paper (``MethodCard.reimplemented_from``)."""
    if not source:
        return note
    marker = f"re-implementation from {source}, no official code"
    return marker if not note else f"{marker}; {note}"


def _text(value: Any) -> str | None:
    """Free provenance from a predictions header as text (None stays None)."""
    return None if value is None else str(value)

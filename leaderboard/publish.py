"""Publish the leaderboard to a Hugging Face dataset repository.

The uploaded folder (which ``--dry-run`` writes for inspection, through the same function)::

    README.md                 dataset card: YAML ``configs`` for the Hub's viewer, the tables, citation
    data/summary.parquet      one row per entry (mean over categories, ranks): config ``summary``
    data/leaderboard.parquet  every store row: config ``rows``
    site/                     the rendered static site (index.html, leaderboard.md, figures/)

The token comes from the standard Hugging Face mechanisms (``HF_TOKEN``, ``hf auth login``)
and is never printed; the endpoint honours ``HF_ENDPOINT``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from leaderboard.aggregate import summarize, to_markdown
from leaderboard.render import render_site
from leaderboard.store import METADATA_KEY, SCHEMA, SCHEMA_VERSION

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
LICENSE_ID = re.compile(r"^[a-z0-9][a-z0-9.+-]{0,63}$")
DEFAULT_LICENSE = "apache-2.0"
"""The card's ``license`` (a Hub licence id): the licence of m2ad and of the M2AD release."""

M2AD_BIBTEX = """@article{cao2025m2ad,
  title   = {Visual Anomaly Detection under Complex View-Illumination Interplay: A Large-Scale Benchmark},
  author  = {Cao, Yunkang and Cheng, Yuqi and Xu, Xiaohao and Zhang, Yiheng and Sun, Yihan and Tan, Yuxiang and Zhang, Yuxin and Huang, Xiaonan and Shen, Weiming},
  journal = {arXiv preprint arXiv:2505.10996},
  year    = {2025},
  url     = {https://arxiv.org/abs/2505.10996}
}"""

_CARD_HEADER = """---
pretty_name: M2AD leaderboard
license: {license}
tags:
- anomaly-detection
- leaderboard
- m2ad
configs:
- config_name: summary
  data_files: data/summary.parquet
  default: true
- config_name: rows
  data_files: data/leaderboard.parquet
---
"""


class PublishError(RuntimeError):
    """Publishing cannot proceed (bad repository id, offline, no token, Hub refused)."""


def check_repo_id(repo: str) -> str:
    """``repo`` if it looks like ``ORG/NAME``, else a :class:`PublishError`."""
    if not REPO_ID.fullmatch(repo) or ".." in repo:
        raise PublishError(f"--repo must look like ORG/NAME (letters, digits, '.', '_', '-'), not {repo!r}")
    return repo


def check_license(license_id: str) -> str:
    """``license_id`` if it looks like a Hub licence id (``apache-2.0``, ``cc-by-4.0``, ``other``), else a :class:`PublishError`."""
    if not LICENSE_ID.fullmatch(license_id):
        raise PublishError(f"--license must be a Hugging Face licence id such as apache-2.0, cc-by-4.0 or other, not {license_id!r}")
    return license_id


def dataset_card(summary: pl.DataFrame, license_id: str = DEFAULT_LICENSE) -> str:
    """The dataset card: YAML licence and configs for the viewer, the tables (escaped markdown), citation."""
    return (
        _CARD_HEADER.format(license=check_license(license_id))
        + "\n# M2AD leaderboard\n\n"
        "Results on [M2AD](https://arxiv.org/abs/2505.10996) (multi-view, multi-illumination anomaly detection) "
        "collected by the `m2ad` toolkit: runs, submissions (`m2ad submit`) and the published paper tables.\n\n"
        "- `summary`: one row per entry, the mean over categories of every metric (fractions) and ranks.\n"
        "- `rows`: one row per (entry, protocol, dataset, resolution, category, metric), with provenance "
        f"(store schema version {SCHEMA_VERSION}).\n"
        "- `site/index.html`: the rendered leaderboard with figures.\n\n"
        "Paper rows (`source = paper`) are transcribed from the M2AD paper's Tables 2 and 3; see their `note` "
        "column for known anomalies (four RD++ rows identical at 256 and 512; the homepage's 71.0 typo "
        "for INP-Former's mean).\n\n"
        "## Leaderboard (percent, mean over categories)\n\n"
        + to_markdown(summary, heading_level=3)
        + f"\n## License\n\nThis leaderboard (its tables, rows and rendered site) is published under `{license_id}`. "
        "The paper rows restate results published in the M2AD paper: cite it (below) when you use them.\n"
        + "\n## Citation\n\n```bibtex\n"
        + M2AD_BIBTEX
        + "\n```\n"
    )


def build_folder(rows: pl.DataFrame, out: str | Path, license_id: str = DEFAULT_LICENSE) -> Path:
    """Write the exact folder that :func:`publish` uploads into ``out`` (must be empty or new)."""
    check_license(license_id)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise PublishError(f"{out} is not empty; give a new or empty folder")
    (out / "data").mkdir(parents=True, exist_ok=True)
    table = rows.to_arrow().cast(SCHEMA).replace_schema_metadata(
        {METADATA_KEY: json.dumps({"schema_version": SCHEMA_VERSION, "supersedes": []}).encode()}
    )
    pq.write_table(table, out / "data" / "leaderboard.parquet", compression="zstd")
    summary = summarize(rows)
    summary.write_parquet(out / "data" / "summary.parquet", compression="zstd")
    render_site(rows, out / "site")
    (out / "README.md").write_text(dataset_card(summary, license_id), encoding="utf-8")
    return out


def publish(rows: pl.DataFrame, repo: str, *, private: bool = False, token: str | None = None, license_id: str = DEFAULT_LICENSE) -> str:
    """Create (if needed) the dataset repository ``repo`` and upload the leaderboard folder in
    one commit; returns the commit URL.  Fails fast and clearly when offline or without a token."""
    check_repo_id(repo)
    check_license(license_id)
    import httpx2  # huggingface_hub's HTTP client: its transport errors mean "unreachable"
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise PublishError("HF_HUB_OFFLINE is set: publishing needs the Hub; unset it or use --dry-run")
    token = token or get_token()
    if not token:
        raise PublishError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (or use --dry-run)")
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    workdir = Path(tempfile.mkdtemp(prefix="m2ad-publish-"))
    try:
        api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)  # first: fails fast offline
        folder = build_folder(rows, workdir / "upload", license_id)
        commit = api.upload_folder(
            repo_id=repo, repo_type="dataset", folder_path=folder, commit_message="Update the M2AD leaderboard"
        )
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        raise PublishError(f"the Hub refused the upload to {repo} (HTTP {status}): {error.server_message or error}") from None
    except (OSError, httpx2.TransportError) as error:
        raise PublishError(f"cannot reach the Hub at {api.endpoint}: {error}") from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return str(commit.commit_url)

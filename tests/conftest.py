"""Test-wide settings: no network, every tool's cache inside a temporary folder, Ray on loopback."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_CACHE = Path(tempfile.mkdtemp(prefix="m2ad-tests-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HOME"] = str(_CACHE / "hf")
os.environ["HF_DATASETS_CACHE"] = str(_CACHE / "hf" / "datasets")
os.environ["MPLCONFIGDIR"] = str(_CACHE / "matplotlib")
os.environ["MPLBACKEND"] = "Agg"
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["M2AD_CACHE"] = str(_CACHE / "m2ad")
os.environ.setdefault("M2AD_LEADERBOARD", str(_CACHE / "leaderboard"))

"""Where a result came from: the software and machine of a run (``environment.json``) and the
provenance header of the predictions files it writes."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

import m2ad


def environment(include_ray: bool = False) -> dict[str, Any]:
    """Versions, git commit, host, CPU and GPU of this process, for ``environment.json``."""
    import datasets
    import pyarrow
    import safetensors

    info: dict[str, Any] = {
        "m2ad": m2ad.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "polars": pl.__version__,
        "pyarrow": pyarrow.__version__,
        "datasets": datasets.__version__,
        "safetensors": safetensors.__version__,
        "git_commit": git_commit(),
        "hostname": socket.gethostname(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())],
        "created": now(),
    }
    if include_ray:
        import ray

        info["ray"] = ray.__version__
        if ray.is_initialized():
            info["ray_cluster_resources"] = ray.cluster_resources()
    return info


def predictions_metadata(identity: dict[str, Any]) -> dict[str, Any]:
    """The free provenance of a predictions file written by the runner: producer, code version
    and what produced it (``identity``: a cell's or a fit's description)."""
    return {"producer": f"m2ad {m2ad.__version__} runner", "code_version": m2ad.__version__, **identity}


def git_commit() -> str | None:
    """The commit of the m2ad source tree, with ``-dirty`` if it has changes; None outside git."""
    root = Path(m2ad.__file__).resolve().parents[1]
    if shutil.which("git") is None:
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return commit.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


def cpu_model() -> str:
    """The CPU's model name (from ``/proc/cpuinfo`` on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def now() -> str:
    """The current UTC time, ISO 8601, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")

"""m2ad: benchmark harness and dataset toolkit for multi-view, multi-illumination anomaly detection.

Data flows one way: download -> shard (Arrow) -> protocol selects samples -> method predicts
-> predictions file -> metrics -> leaderboard.  The core modules of this package
(``schema``, ``synth``, ``shard``, ``data``, ``download``, ``metrics``, ``predictions``) import
nothing from ``protocols``, ``baselines`` or ``leaderboard``; only the orchestration modules
(``m2ad.run``, ``m2ad.embedded`` and ``m2ad.cli``) sit on top of everything.

The distribution also installs the top-level packages ``baselines``, ``protocols`` and
``leaderboard``.  Common names: a researcher's project may have its own ``baselines/`` in the
current folder, which Python (``python script.py``, ``python -m``) and Ray's workers (which put
the driver's current folder first on ``sys.path``) would find before ours.  Importing ``m2ad``
therefore puts :class:`SiblingFinder` first on ``sys.meta_path``: those three names resolve to
the folder m2ad itself was imported from, whatever ``sys.path`` says.  (A package of that name
that the user imported *before* m2ad stays theirs; import m2ad first.)
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

__version__ = "0.1.0"

SIBLING_PACKAGES = ("baselines", "protocols", "leaderboard")
INSTALL_ROOT = Path(__file__).resolve().parent.parent
"""The folder holding ``m2ad`` and its sibling packages (site-packages, or the repository for an
editable install)."""


class SiblingFinder(importlib.abc.MetaPathFinder):
    """Finds :data:`SIBLING_PACKAGES` in :data:`INSTALL_ROOT` only (their submodules follow their
    package's ``__path__``), so that a same-named package elsewhere on ``sys.path`` never shadows them."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in SIBLING_PACKAGES:
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, [str(INSTALL_ROOT)])


if not any(type(finder).__name__ == SiblingFinder.__name__ for finder in sys.meta_path):
    sys.meta_path.insert(0, SiblingFinder())

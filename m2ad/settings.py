"""The names of the evaluation settings, shared by the methods' cards (``baselines``), the
harness that owns them (``m2ad.run``) and the leaderboard that tells results apart.

``single-class``: one fit per category on its training images; ``multi-class``: one fit on the
training images of every category; ``few-shot``: one fit per category on K shots drawn by the
harness; ``zero-shot``: no fit on the target data (a training-free method, or a fit on another
dataset).  docs/settings.md says what each means in detail.
"""

from __future__ import annotations

SETTINGS = ("single-class", "multi-class", "few-shot", "zero-shot")

"""A test-only method for the runner tests (imported as ``from probe_method import ...``, also by
the ``m2ad`` subprocesses of the kill tests, with this folder on ``PYTHONPATH``): constant-ish
maps, scores from the image mean, failures, crashes, delays and fit counting on request."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from baselines.base import Batch, MethodCard, Setting

REGISTER = "import baselines; baselines._REGISTRY['probe'] = 'probe_method:ProbeMethod'; from m2ad.cli import app; app()"
"""``python -c`` code of an ``m2ad`` command that knows the probe method."""


@dataclasses.dataclass
class ProbeConfig:
    fail_category: str = ""
    """Raise in fit when this category is among the training images, every attempt."""
    crash_marker: str = ""
    """Kill the worker process in fit unless this file exists (it is created first): the
    first attempt dies, the retry succeeds."""
    predict_crash_marker: str = ""
    """The same, in predict."""
    require_gpu: bool = False
    """Fail unless Ray assigned this task a GPU."""
    fit_log: str = ""
    """Append one line per fit (its categories and image count) to this file."""
    predict_delay: float = 0.0
    """Seconds to sleep per predicted batch."""


class ProbeMethod:
    """Learns each category's mean image; scores are the distance of an image's mean to it."""

    name: ClassVar[str] = "probe"
    card: ClassVar[MethodCard] = MethodCard()
    Config: ClassVar[type] = ProbeConfig

    def __init__(self, config: ProbeConfig) -> None:
        self.config = config
        self.level = torch.zeros(1)

    def fit(self, train: Iterable[Batch], setting: Setting = Setting()) -> None:
        categories: set[str] = set()
        total, count = 0.0, 0
        for batch in train:
            categories.update(batch.categories)
            total += float(batch.images.float().mean(dim=(1, 2, 3)).sum())
            count += len(batch)
        if self.config.require_gpu:
            import ray

            assert ray.get_gpu_ids(), "the task was given no GPU"
        if self.config.fail_category in categories:
            raise RuntimeError(f"boom in {self.config.fail_category}")
        if self.config.crash_marker and not Path(self.config.crash_marker).exists():
            Path(self.config.crash_marker).touch()
            os._exit(3)
        if self.config.fit_log:
            with open(self.config.fit_log, "a") as log:
                log.write(f"{','.join(sorted(categories))} {count} {setting.name} {setting.shots}\n")
        self.level = torch.tensor([total / max(count, 1)], dtype=torch.float64)

    def predict(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        if self.config.predict_crash_marker and not Path(self.config.predict_crash_marker).exists():
            Path(self.config.predict_crash_marker).touch()
            os._exit(4)
        if self.config.predict_delay:
            time.sleep(self.config.predict_delay)
        images = batch.images.float().numpy()
        scores = np.abs(images.mean(axis=(1, 2, 3)) - float(self.level[0]))
        return scores, images.mean(axis=1) / 255.0

    def state_dict(self) -> dict[str, Any]:
        return {"level": self.level}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.level = state["level"]

"""The interface every anomaly-detection method implements, and its batch type.

A method sees images only, never masks or labels.  The runner builds the batches from the
shards (``m2ad.data``), calls ``fit`` once per cell on the training samples the protocol
selects, then ``predict`` on the test samples, and writes what comes back to a predictions file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch


@dataclass
class Batch:
    """A batch of images of one or more categories.

    ``images`` is uint8, shape (B, 3, H, W), at the evaluation resolution of the shards; a
    method normalises it itself.  The metadata lists have one entry per image; ``view`` and
    ``illumination`` are ``None`` for datasets without them.
    """

    sample_ids: list[str]
    images: torch.Tensor
    categories: list[str]
    views: list[str | None]
    illuminations: list[str | None]

    def __len__(self) -> int:
        return len(self.sample_ids)


@runtime_checkable
class Method(Protocol):
    """What the runner needs from a method.

    ``fit`` receives a re-iterable of batches (iterate it once per epoch) holding the training
    samples of one category, or of several for multi-class training.  ``predict`` returns
    image scores, shape (B,), and anomaly maps, shape (B, H, W), float32, at the size of
    ``batch.images``; higher means more anomalous.
    """

    name: ClassVar[str]
    config: Any

    def fit(self, train: Iterable[Batch]) -> None: ...

    def predict(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

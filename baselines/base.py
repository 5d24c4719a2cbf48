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

    def __post_init__(self) -> None:
        count = len(self.sample_ids)
        if self.images.ndim != 4 or self.images.shape[1] != 3 or self.images.dtype != torch.uint8:
            raise ValueError(f"Batch.images must be uint8 (B, 3, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        lengths = {len(self.images), len(self.categories), len(self.views), len(self.illuminations)}
        if lengths != {count}:
            raise ValueError(f"Batch fields disagree on the batch size: {count} sample ids, lengths {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.sample_ids)


@runtime_checkable
class Method(Protocol):
    """What the runner needs from a method.

    ``fit`` receives a re-iterable of batches (iterate it once per epoch) holding the training
    samples of one category, or of several for multi-class training.  ``predict`` returns
    image scores, shape (B,), and anomaly maps, shape (B, H, W), float32, at the size of
    ``batch.images``; higher means more anomalous.  ``state_dict`` returns tensors only (so
    that it can be saved without pickle) and ``load_state_dict`` restores a fitted method.

    A method class also carries ``Config``, the dataclass of its options (exposed on the CLI
    as ``--method-arg key=value``), and is built as ``cls(config)``.
    """

    name: ClassVar[str]
    config: Any

    def fit(self, train: Iterable[Batch]) -> None: ...

    def predict(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def image_score_from_map(maps: torch.Tensor, top_fraction: float) -> torch.Tensor:
    """Image scores (B,) from anomaly maps (B, H, W): the mean of the top ``top_fraction`` of
    each map's pixels (at least one pixel), or the maximum when ``top_fraction`` is 0.

    The top-1 % mean is the rule of the CDO, RD++ and INP-Former trainers of the official M2AD
    code (reference m2ad.md section 11.5); it is less noisy than the max.
    """
    if not 0.0 <= top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in [0, 1], got {top_fraction}")
    flat = maps.reshape(maps.shape[0], -1)
    if top_fraction == 0.0:
        return flat.amax(dim=1)
    count = max(1, int(flat.shape[1] * top_fraction))
    return flat.topk(count, dim=1).values.mean(dim=1)

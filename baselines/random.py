"""``random``: uniform random scores and maps, the sanity floor of every metric.

Its image AUROC is about 0.5 and its pixel metrics sit at the chance level, so a pipeline
that scores a real method near these values is broken somewhere.  Draws depend only on the
seed and the sample id, never on batch size or order, so reruns and resumed runs agree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from baselines.base import Batch, MethodCard, Setting


@dataclass
class RandomConfig:
    """Options of the ``random`` method."""

    seed: int | None = None
    """Base seed of the draws; ``None`` takes one from torch's global generator when the
    method is built, which the runner seeds from the cell seed (so each seed is a new draw)."""


class RandomMethod:
    """Scores and maps drawn uniformly from [0, 1), reproducibly per (seed, sample id)."""

    name: ClassVar[str] = "random"
    card: ClassVar[MethodCard] = MethodCard(inputs=("image", "points"), outputs=("pixel_map", "point_map"), needs_fit=False)
    Config: ClassVar[type] = RandomConfig

    def __init__(self, config: RandomConfig | None = None) -> None:
        self.config = config or RandomConfig()
        self._seed = self.config.seed if self.config.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())

    def fit(self, train: Iterable[Batch], setting: Setting = Setting()) -> None:
        """Nothing to learn (training-free: the harness never calls this)."""

    def _generator(self, sample_id: str) -> np.random.Generator:
        digest = hashlib.blake2b(sample_id.encode(), digest_size=8).digest()
        return np.random.default_rng([self._seed, int.from_bytes(digest, "little")])

    def predict(self, batch: Batch) -> tuple[np.ndarray, np.ndarray | list[np.ndarray]]:
        """One uniform score and one uniform (H, W) map per image; for point clouds, one
        uniform score per cloud and one per point."""
        scores = np.empty(len(batch), dtype=np.float32)
        if batch.points is not None:
            point_maps = []
            for index, (sample_id, cloud) in enumerate(zip(batch.sample_ids, batch.points)):
                generator = self._generator(sample_id)
                scores[index] = generator.random(dtype=np.float32)
                point_maps.append(generator.random(len(cloud), dtype=np.float32))
            return scores, point_maps
        assert batch.images is not None
        height, width = batch.images.shape[-2:]
        maps = np.empty((len(batch), height, width), dtype=np.float32)
        for index, sample_id in enumerate(batch.sample_ids):
            generator = self._generator(sample_id)
            scores[index] = generator.random(dtype=np.float32)
            maps[index] = generator.random((height, width), dtype=np.float32)
        return scores, maps

    def state_dict(self) -> dict[str, Any]:
        """The seed in use, as a tensor."""
        return {"seed": torch.tensor(self._seed, dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the seed."""
        self._seed = int(state["seed"])

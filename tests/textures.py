"""Striped colour textures with an obvious defect, and method batches of them: the overfit
fixtures of the method tests (imported as ``from textures import ...``)."""

from __future__ import annotations

import numpy as np
import torch

from baselines.base import Batch


def textures(count: int, seed: int, *, defect: bool = False, size: int = 64, square: int = 12) -> tuple[torch.Tensor, np.ndarray]:
    """``count`` uint8 images (N, 3, size, size) and their masks; with ``defect`` each image gets
    a white ``square`` x ``square`` patch at a random place, which its mask marks."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size]
    images, masks = [], []
    for _ in range(count):
        base = 128 + 60 * np.sin(xs / 3.0 + rng.uniform(0, 6.28)) * np.cos(ys / 4.0)
        image = np.stack([base, base * 0.8 + 20, 255 - base]) + rng.normal(0, 5, (3, size, size))
        mask = np.zeros((size, size), bool)
        if defect:
            y, x = rng.integers(8, size - square - 8, 2)
            image[:, y : y + square, x : x + square] = 255
            mask[y : y + square, x : x + square] = True
        images.append(np.clip(image, 0, 255).astype(np.uint8))
        masks.append(mask)
    return torch.from_numpy(np.stack(images)), np.stack(masks)


def method_batch(images: torch.Tensor, categories: list[str] | None = None, prefix: str = "s") -> Batch:
    """A ``Batch`` of ``images`` with ids ``<prefix><i>`` and no views or lights."""
    count = len(images)
    return Batch([f"{prefix}{i}" for i in range(count)], images, categories or ["c"] * count, [None] * count, [None] * count)

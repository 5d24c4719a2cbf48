"""The interface every anomaly-detection method implements: its batch, its card and its setting.

A method sees images (and, later, other modalities) only, never masks or labels.  The harness
(``m2ad.run``) owns the *setting*: it selects the training samples (every training image of one
category, of all categories, K seeded shots per category, or none), calls ``fit`` once per fit
unit, saves the fitted state, and calls ``predict`` on the test samples of each category.

Every method class declares a :class:`MethodCard`: what it reads and returns, the settings it
supports, whether it needs a fit, the unit it predicts on, and the pretrained weights it may
load.  The runner checks the card against the run before scheduling anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch

from m2ad.settings import SETTINGS


INPUTS = ("image", "image+xyz", "points")
"""What a method reads: RGB images, images with an aligned xyz map, or point clouds
(``Batch.points``)."""
OUTPUTS = ("pixel_map", "point_map")
"""What a method returns besides its sample scores: an anomaly map per image (``pixel_map``,
(B, H, W)), or one score per point of each cloud (``point_map``, a list of (N_i,) arrays).
The runner routes by the data: a point-cloud dataset needs ``points`` in ``inputs`` and
``point_map`` in ``outputs``."""
INPUT_UNITS = ("image", "view", "specimen")
"""What ``predict`` is given at once: any images (``image``), whole groups of the illuminations
of one (specimen, view) (``view``), or every image of a specimen (``specimen``)."""


@dataclass(frozen=True)
class MethodCard:
    """What a method is, in terms the runner can check before it schedules anything."""

    inputs: tuple[str, ...] = ("image",)
    """Accepted inputs (:data:`INPUTS`); the data must provide one of them."""
    outputs: tuple[str, ...] = ("pixel_map",)
    """What ``predict`` returns besides scores (:data:`OUTPUTS`)."""
    settings: tuple[str, ...] = SETTINGS
    """Settings the method supports (:data:`SETTINGS`)."""
    needs_fit: bool = True
    """False for a training-free method: the harness never calls ``fit`` and saves no state."""
    input_unit: str = "image"
    """What one ``predict`` call may rely on getting whole (:data:`INPUT_UNITS`); a batch never
    splits a group."""
    weights: tuple[str, ...] = ()
    """Names in ``baselines.weights.REGISTRY`` that the method may load."""
    reimplemented_from: str | None = None
    """Set for a re-implementation from a paper without usable official code: the paper (and
    what else it follows); the runner writes it into every predictions header and the
    leaderboard notes it.  ``None``: this project's own method or a reproduction of public code."""

    def __post_init__(self) -> None:
        for name, values, allowed in (("inputs", self.inputs, INPUTS), ("outputs", self.outputs, OUTPUTS),
                                      ("settings", self.settings, SETTINGS)):
            unknown = [value for value in values if value not in allowed]
            if not values or unknown:
                raise ValueError(f"MethodCard.{name} must be a non-empty subset of {allowed}, got {values}")
        if self.input_unit not in INPUT_UNITS:
            raise ValueError(f"MethodCard.input_unit must be one of {INPUT_UNITS}, got {self.input_unit!r}")


@dataclass(frozen=True)
class Setting:
    """The setting a fit is made in, as the method sees it: its name and, for few-shot, the
    number of shots per category the harness drew (each shot is one image or one specimen with
    all its images, as the dataset defines a shot)."""

    name: str = "single-class"
    shots: int | None = None

    def __post_init__(self) -> None:
        if self.name not in SETTINGS:
            raise ValueError(f"setting must be one of {', '.join(SETTINGS)}, got {self.name!r}")
        if self.shots is not None and self.shots < 1:
            raise ValueError(f"shots must be at least 1, got {self.shots}")


@dataclass
class Batch:
    """A batch of images of one or more categories, and what a method may know about them.

    ``images`` is uint8, shape (B, 3, H, W), at the evaluation resolution of the shards; a
    method normalises it itself.  The metadata lists have one entry per image; ``view`` and
    ``illumination`` are ``None`` for datasets without them.  ``class_names`` are the
    categories' names for text prompts (the category itself unless the dataset names it
    otherwise), ``specimens`` the physical objects (each image its own one unless given), and
    ``modalities`` extra per-image tensors keyed by modality (e.g. ``"xyz"``, leading dimension
    B; empty for image datasets).  A batch never carries ground truth: no label, mask or
    defect type.

    A batch of point clouds (a dataset whose modality is ``points``) has ``images=None`` and
    ``points``: one float32 NumPy array (N_i, 3) per sample, N_i varying, coordinates as the
    release has them (not centred); per-point labels are never in it.
    """

    sample_ids: list[str]
    images: torch.Tensor | None
    categories: list[str]
    views: list[str | None]
    illuminations: list[str | None]
    class_names: list[str] | None = None
    specimens: list[str] | None = None
    modalities: dict[str, torch.Tensor] = field(default_factory=dict)
    points: list[np.ndarray] | None = None

    def __post_init__(self) -> None:
        count = len(self.sample_ids)
        if self.images is None:
            if self.points is None:
                raise ValueError("a Batch needs images or points")
            bad = [np.shape(cloud) for cloud in self.points if np.ndim(cloud) != 2 or np.shape(cloud)[1] != 3]
            if bad:
                raise ValueError(f"Batch.points must be (N, 3) arrays, got shapes {bad[:3]}")
        elif self.images.ndim != 4 or self.images.shape[1] != 3 or self.images.dtype != torch.uint8:
            raise ValueError(f"Batch.images must be uint8 (B, 3, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.class_names is None:
            self.class_names = list(self.categories)
        if self.specimens is None:
            self.specimens = list(self.sample_ids)
        lengths = {len(self.images if self.images is not None else self.points), len(self.categories), len(self.views), len(self.illuminations), len(self.class_names),
                   len(self.specimens), *(len(tensor) for tensor in self.modalities.values())}
        if lengths != {count}:
            raise ValueError(f"Batch fields disagree on the batch size: {count} sample ids, lengths {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.sample_ids)


@runtime_checkable
class Method(Protocol):
    """What the runner needs from a method.

    ``fit`` receives a re-iterable of batches (iterate it once per epoch) holding the training
    samples the harness selected for the fit unit (one category, or several for multi-class
    training) and the :class:`Setting`.  ``predict`` returns image scores, shape (B,), and
    anomaly maps, shape (B, H, W), float32, at the size of ``batch.images``; higher means more
    anomalous.  On a batch of point clouds it returns object scores (B,) and a list of B
    per-point score arrays, (N_i,) each, in the order of ``batch.points[i]``.  ``state_dict`` returns tensors only (the harness saves it with safetensors) and
    ``load_state_dict`` restores a fitted method from it.

    A method class also carries ``card`` (its :class:`MethodCard`) and ``Config``, the dataclass
    of its options (exposed on the CLI as ``--method-arg key=value``), and is built as
    ``cls(config)``.
    """

    name: ClassVar[str]
    card: ClassVar[MethodCard]
    config: Any

    def fit(self, train: Iterable[Batch], setting: Setting = Setting()) -> None: ...

    def predict(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


def choose_device(method: str, device: str) -> torch.device:
    """The torch device of a method's ``device`` option: ``auto`` (CUDA when available), ``cpu``
    or ``cuda`` (refused in one line where CUDA is not available)."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{method}: device=cuda but CUDA is not available here")
    return torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")


def choose_seed(seed: int | None) -> int:
    """``seed``, or, when it is ``None``, one drawn from torch's global generator (which the runner
    seeds per cell)."""
    return seed if seed is not None else int(torch.randint(0, 2**31 - 1, ()))


def fill_from_preset(config: Any, presets: dict[str, dict[str, Any]]) -> None:
    """Set every field of ``config`` left at ``None`` to its preset's value (``config.preset``)."""
    if config.preset not in presets:
        raise ValueError(f"unknown preset {config.preset!r}; choose from {', '.join(presets)}")
    for key, value in presets[config.preset].items():
        if getattr(config, key) is None:
            setattr(config, key, value)


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

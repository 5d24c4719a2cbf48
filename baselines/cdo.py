"""``cdo``: CDO, Collaborative Discrepancy Optimization (Cao et al., IEEE TII 2023), faithful to
the authors' code (``caoyunkang/CDO`` at the paper's release, commit ``c4ba550``:
``models/CDO.py``, ``datasets/dataset.py``, ``train.py``, ``utils/training_utils.py``) and to the
M2AD release's version (``hustCYQ/M2AD`` ``model/cdo.py``, ``loss/cdo_loss.py``,
``trainer/cdo_trainer.py``, ``configs/benchmark/cdo/cdo_100e.py``).

Architecture (``CDOModel``): an *expert* (the pretrained backbone, frozen, eval mode) and an
*apprentice* of the same architecture initialised at random and trained whole (its BatchNorm
in train mode).  Both are read at three levels through the backbone registry's ``tap``
(HRNet: the last stage's branches at strides 4, 8, 16; WRN-50-2: ``layer1``-``layer3``).

Training (margin optimisation, MOM): every training image gets 0-4 white-noise rectangles
(``white_noise``) and the apprentice learns to match the expert on normal pixels and to
*differ* on the synthetic ones.  Loss (overlap optimisation, OOM; ``cdo_loss``): per level,
after bilinear resizing (``align_corners=True``) to the first level's grid,
d = ||f_E/|f_E| - f_A/|f_A|||^2 per position; normal positions weigh (d / mean d)^gamma, synthetic
ones (mean d / d)^gamma (weights detached, mean per group); the level's term is
(sum w_n d_n - sum w_s d_s) / (sum w_n + sum w_s) x B, summed over levels.

Anomaly map and image score: ``official`` (``CDOModel.cal_am``): d per level on the first
level's grid, bilinear (``align_corners=False``) to the input size, summed over levels, SciPy
Gaussian sigma 4, score = the map's maximum (``utils/metrics.py::metric_cal``).  ``m2ad``
(``compute_discrepancy_map`` + ``maximum_as_anomaly_score(., 0.01)``): 1 - cosine per level at
its own resolution, bilinear (``align_corners=True``) to the input size, sum / N^2, Gaussian
sigma 4, score = mean of the top 1 %.  See docs/methods.md for every difference.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from baselines.backbones import registry
from baselines.backbones.hrnet import backbone_state
from baselines.base import Batch, MethodCard, Setting, choose_device, choose_seed, fill_from_preset
from baselines.reconstruction import m2ad_discrepancy_map, resize_crop, smooth, top_mean
from baselines.training import Recipe, autocast, train_head

LAYERS: dict[str, tuple[str, str, str]] = {
    "hrnet18": ("stride4", "stride8", "stride16"),
    "hrnet32": ("stride4", "stride8", "stride16"),
    "hrnet48": ("stride4", "stride8", "stride16"),
    "hrnet_tiny": ("stride4", "stride8", "stride16"),
    "wide_resnet50_2": ("layer1", "layer2", "layer3"),
    "efficientnet_lite0": ("stride4", "stride8", "stride16"),
}
"""Backbones CDO can use and the three levels it reads (the official ``HRNet_`` and ``ResNet``
return exactly these; EfficientNet-Lite0 is this project's offline addition)."""

MAX_PATCH_TRIES = 200
"""The official ``MAX_TRY_NUMBER`` of the background-avoiding patch placement."""

BACKGROUND_CATEGORIES = frozenset({"bottle", "hazelnut", "metal_nut", "pill", "screw", "toothbrush", "zipper"})
"""MVTec AD categories whose patch centres the official code keeps off the background
(``SKIP_BACKGROUND``, ``datasets/dataset.py:29-46``; every MVTec 3D-AD category is False)."""
SKIP_BACKGROUND = ("official", "always", "never")


class CDOOutput(NamedTuple):
    """The expert's and the apprentice's feature maps, one (B, C_l, h_l, w_l) per level."""

    expert: list[torch.Tensor]
    apprentice: list[torch.Tensor]


class CDOModel(nn.Module):
    """Expert (frozen) and apprentice (trained) networks of one backbone architecture."""

    def __init__(self, backbone: str, expert: nn.Module, apprentice: nn.Module, normalize_features: bool = False) -> None:
        super().__init__()
        if backbone not in LAYERS:
            raise ValueError(f"cdo: unsupported backbone {backbone!r}; choose from {', '.join(LAYERS)}")
        self.backbone = backbone
        self.layers = LAYERS[backbone]
        self.expert = expert.eval().requires_grad_(False)
        self.apprentice = apprentice
        self.normalize_features = normalize_features
        """M2AD's ``CDO.forward`` L2-normalises every level before the loss and the map see it."""
        self.mixed_precision = True
        """bf16 autocast on CUDA (no effect on CPU); ``False`` runs float32 everywhere."""

    def train(self, mode: bool = True) -> CDOModel:
        """Train the apprentice only; the expert stays in eval mode."""
        super().train(mode)
        self.expert.eval()
        return self

    def forward(self, images: torch.Tensor) -> CDOOutput:
        """Normalised images (B, 3, H, W) -> ``CDOOutput``."""
        with torch.no_grad():
            expert = registry.tap(self.expert, images, self.layers)
        apprentice = registry.tap(self.apprentice, images, self.layers)
        if self.normalize_features:
            expert = [F.normalize(item, p=2, dim=1) for item in expert]
            apprentice = [F.normalize(item, p=2, dim=1) for item in apprentice]
        return CDOOutput(expert, apprentice)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, scoring: str = "official") -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (B,) and maps (B, H, W) at the input size of normalised images (see the module docstring)."""
        was_training = self.training
        self.eval()
        try:
            with autocast(images.device, self.mixed_precision):
                output = self(images)
        finally:
            self.train(was_training)
        size = tuple(images.shape[-2:])
        if scoring == "official":
            maps = smooth(official_map(output.expert, output.apprentice, size).float(), "scipy")[:, 0]
            return maps.reshape(maps.shape[0], -1).amax(dim=1), maps
        if scoring == "m2ad":
            maps = smooth(m2ad_discrepancy_map(output.expert, output.apprentice, size), "scipy")[:, 0]
            return top_mean(maps, 0.01), maps
        raise ValueError(f"scoring must be official or m2ad, got {scoring!r}")


def _to_first_grid(features: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every level resized (bilinear, ``align_corners=True``) to the first level's grid."""
    size = features[0].shape[-2:]
    return [F.interpolate(item.float(), size=size, mode="bilinear", align_corners=True) for item in features]


def _discrepancy(expert: torch.Tensor, apprentice: torch.Tensor) -> torch.Tensor:
    """Official ``cal_discrepancy`` distance: squared L2 between unit vectors along dim 1."""
    return torch.sum((F.normalize(expert, p=2, dim=1) - F.normalize(apprentice, p=2, dim=1)) ** 2, dim=1)


def official_map(expert: list[torch.Tensor], apprentice: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Official ``cal_am`` before smoothing: per level d on the first grid, bilinear
    (``align_corners=False``) to ``size``, summed -> (B, 1, H, W) float32."""
    total = None
    for target, output in zip(_to_first_grid(expert), _to_first_grid(apprentice), strict=True):
        level = F.interpolate(_discrepancy(target, output).unsqueeze(1), size=size, mode="bilinear", align_corners=False)
        total = level if total is None else total + level
    return total


def cdo_loss(expert: list[torch.Tensor], apprentice: list[torch.Tensor], mask: torch.Tensor, gamma: float = 2.0, oom: bool = True) -> torch.Tensor:
    """The official ``cal_loss`` / M2AD ``CDOLoss`` (see the module docstring); ``mask``
    (B, 1, H, W) marks the synthetic anomalies (non-zero), resized to each grid by nearest."""
    expert, apprentice = _to_first_grid(expert), _to_first_grid(apprentice)
    total = torch.zeros((), device=mask.device)
    for target, output in zip(expert, apprentice, strict=True):
        batch, channels, height, width = target.shape
        synthetic = (F.interpolate(mask.float(), size=(height, width), mode="nearest") != 0).permute(0, 2, 3, 1).reshape(-1)
        target = target.permute(0, 2, 3, 1).reshape(-1, channels)
        output = output.permute(0, 2, 3, 1).reshape(-1, channels)
        sums, weights = [], []
        for selected, normal in ((~synthetic, True), (synthetic, False)):
            distance = _discrepancy(target[selected], output[selected])
            if oom and distance.numel():
                mean = distance.mean()
                weight = ((distance / mean) ** gamma if normal else (mean / distance) ** gamma).detach()
            else:
                weight = torch.ones_like(distance)
            sums.append(torch.sum(distance * weight))
            weights.append(torch.sum(weight))
        total = total + (sums[0] - sums[1]) / (weights[0] + weights[1]) * batch
    return total


def estimate_background(image: np.ndarray, low: int = 30, high: int = 220) -> np.ndarray:
    """Official ``estimate_background`` of an (H, W, 3) uint8 image: grey mean outside
    [``low``, ``high``], median-filtered 7 x 7 (border replicated), dilated 19 x 19 -> bool mask."""
    grey = image.astype(np.float32).mean(axis=2)
    mask = ((grey > high) | (grey < low)).astype(np.uint8)
    mask = ndimage.median_filter(mask, size=7, mode="nearest")
    return ndimage.maximum_filter(mask, size=19, mode="constant", cval=0) > 0


def white_noise(image: np.ndarray, rng: np.random.RandomState, skip_background: bool = False, max_tries: int = MAX_PATCH_TRIES) -> tuple[np.ndarray, np.ndarray]:
    """The official ``augment_image``: 0-4 rectangles of uniform noise (0..254) with half-sides
    drawn in [side // 40, side // 10), centres inside the image (off the background when
    ``skip_background``: a patch whose ``max_tries`` draws all land there is dropped, as the
    official loop leaves it empty).  ``rng`` is consumed in the official order.  Returns (augmented uint8 (H, W, 3),
    mask float32 (H, W) in {0, 1})."""
    height, width = image.shape[:2]
    noise = rng.randint(0, 255, size=image.shape).astype(np.uint8)
    mask = np.zeros((height, width), dtype=np.float32)
    background = estimate_background(image) if skip_background else None
    for _ in range(rng.randint(0, 5)):
        top = left = bottom = right = 0
        for _ in range(max_tries):
            half_h = rng.randint(height // 40, height // 10)
            half_w = rng.randint(width // 40, width // 10)
            centre_h = rng.randint(half_h, height - half_h)
            centre_w = rng.randint(half_w, width - half_w)
            if background is not None and background[centre_h, centre_w]:
                continue
            top, left = max(centre_h - half_h, 0), max(centre_w - half_w, 0)
            bottom, right = min(centre_h + half_h, height), min(centre_w + half_w, width)
            break
        mask[top:bottom, left:right] = 1.0
    augmented = image.copy()
    augmented[mask > 0] = noise[mask > 0]
    return augmented, mask


def synthesize(images: torch.Tensor, rng: np.random.RandomState, input_size: int, work_size: int, skip_background: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """White-noise anomalies on uint8 (B, 3, S, S) images at ``input_size``: drawn at
    ``work_size`` (official: the input size; M2AD: 1024, then images and masks resized back
    bilinearly, the mask's soft edge counting as anomalous) -> (uint8 images, float masks (B, 1, S, S))."""
    if work_size != input_size:
        images = resize_crop(images, work_size, work_size)
    pairs = [white_noise(image.permute(1, 2, 0).numpy(), rng, skip_background) for image in images]
    augmented = torch.from_numpy(np.stack([pair[0] for pair in pairs])).permute(0, 3, 1, 2).contiguous()
    masks = torch.from_numpy(np.stack([pair[1] for pair in pairs])).unsqueeze(1)
    if work_size != input_size:
        augmented = resize_crop(augmented, input_size, input_size)
        masks = F.interpolate(masks, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=True)
    return augmented, masks


def apprentice_state(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The apprentice's own names from an official file (``CDOModel.save``: ``MA.state_dict()``,
    HRNet under ``model.``), an M2AD checkpoint (``net_s.*``) or our ``state_dict`` (``apprentice.*``)."""
    for prefix in ("apprentice.", "net_s."):
        if state_dict and any(key.startswith(prefix) for key in state_dict):
            state_dict = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
            break
    return backbone_state(state_dict)


def load_official(state_dict_or_path: dict[str, torch.Tensor] | str | Path, backbone: str = "hrnet32", expert_weights: str = "auto") -> CDOModel:
    """A ``CDOModel`` from a trained apprentice (the official ``<class>.pt`` that ``train.py``
    writes, or an M2AD checkpoint), loaded with ``strict=True``; the expert comes from the
    backbone registry (``expert_weights``).  Files are read with ``torch.load(weights_only=True)``.
    The authors publish no trained CDO checkpoints; this loads the ones their code writes."""
    if isinstance(state_dict_or_path, (str, Path)):
        path = Path(state_dict_or_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such checkpoint")
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    else:
        state_dict = state_dict_or_path
    if not isinstance(state_dict, dict):
        raise ValueError("a CDO checkpoint must hold a state dict (a dict of tensors)")
    if backbone not in LAYERS:
        raise ValueError(f"cdo: unsupported backbone {backbone!r}; choose from {', '.join(LAYERS)}")
    apprentice = registry.spec(backbone).build()
    apprentice.load_state_dict(apprentice_state(state_dict), strict=True)
    return CDOModel(backbone, registry.load_backbone(backbone, expert_weights), apprentice).eval()


PRESETS: dict[str, dict[str, Any]] = {
    "official": {
        "backbone": "hrnet32", "input_size": 256, "epochs": 50, "batch_size": 16, "optimizer": "adamw", "lr": 4e-4,
        "betas": (0.9, 0.999), "weight_decay": 1e-4, "schedule": "exponential", "epoch_decay": 0.95, "lr_step_epoch": 0,
        "grad_clip": 0.0, "gamma": 2.0, "oom": True, "mom": True, "work_size": 0, "skip_background": "official",
        "normalize_features": False, "scoring": "official",
    },
    "m2ad-paper": {
        "backbone": "hrnet32", "input_size": 256, "epochs": 100, "batch_size": 12, "optimizer": "adam", "lr": 3.75e-4,
        "betas": (0.5, 0.999), "weight_decay": 0.0, "schedule": "step", "epoch_decay": 0.95, "lr_step_epoch": 80,
        "grad_clip": 5.0, "gamma": 2.0, "oom": True, "mom": True, "work_size": 1024, "skip_background": "never",
        "normalize_features": True, "scoring": "m2ad",
    },
}
"""``work_size`` 0: the synthetic anomalies are drawn at the input size."""


@dataclass
class CDOConfig:
    """Options of the ``cdo`` method; options left ``None`` come from ``preset``."""

    preset: str = "official"
    """``official`` (the paper's code, ``caoyunkang/CDO`` c4ba550) or ``m2ad-paper`` (the M2AD benchmark code)."""
    backbone: str | None = None
    """Expert / apprentice architecture: ``hrnet32`` (both codes' default), ``hrnet18``, ``hrnet48``,
    ``wide_resnet50_2``, ``efficientnet_lite0`` (offline ImageNet weights) or ``hrnet_tiny`` (tests)."""
    expert_weights: str = "auto"
    """The expert's weights: ``auto`` (the registry's), a registry weights name, a file (HRNet:
    the HRNet-Image-Classification ImageNet checkpoint), or ``random``."""
    input_size: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    """``adamw`` (official), ``adam`` (M2AD) or ``stableadamw``."""
    lr: float | None = None
    betas: tuple[float, ...] | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    """``exponential`` (official ``ExponentialLR(0.95)`` per epoch), ``step`` (x0.1 at ``lr_step_epoch``) or ``constant``."""
    epoch_decay: float | None = None
    lr_step_epoch: int | None = None
    grad_clip: float | None = None
    """Gradient-norm clip; 0: none (official); M2AD clips at 5."""
    gamma: float | None = None
    """OOM exponent (both codes train with 2: the official ``--gamma`` never reaches ``cal_loss``)."""
    oom: bool | None = None
    """Overlap optimisation: adaptive weights; ``False`` weighs every position 1."""
    mom: bool | None = None
    """Margin optimisation: train on white-noise anomalies; ``False`` trains on clean images (plain distillation)."""
    work_size: int | None = None
    """Side at which anomalies are drawn (0: the input size; M2AD 1024)."""
    skip_background: str | None = None
    """Keep patch centres off the estimated background: ``official`` (when every category of the
    fit is one of the 7 MVTec AD objects of the official table), ``always`` or ``never`` (M2AD)."""
    normalize_features: bool | None = None
    """L2-normalise each level before resizing (M2AD's ``CDO.forward``)."""
    scoring: str | None = None
    """``official`` (sum of levels, maximum) or ``m2ad`` (sum / N^2 of 1 - cos, top-1 % mean)."""
    seed: int | None = None
    """Seed of the apprentice's initialisation, the shuffling and the anomalies; ``None`` draws one
    from torch's global generator, which the runner seeds per cell (official 111, M2AD 42)."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""

    def __post_init__(self) -> None:
        fill_from_preset(self, PRESETS)
        if self.backbone not in LAYERS:
            raise ValueError(f"cdo: unknown backbone {self.backbone!r}; choose from {', '.join(LAYERS)}")
        if self.scoring not in ("official", "m2ad"):
            raise ValueError(f"cdo: scoring must be official or m2ad, got {self.scoring!r}")
        if self.input_size < 32 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"cdo: input_size must be >= 32 and epochs, batch_size positive (got {self.input_size}, {self.epochs}, {self.batch_size})")
        if self.work_size and self.work_size < self.input_size:
            raise ValueError(f"cdo: work_size must be 0 or >= input_size ({self.input_size}), got {self.work_size}")
        if self.gamma < 0 or self.grad_clip < 0:
            raise ValueError(f"cdo: gamma and grad_clip must be >= 0, got {self.gamma} and {self.grad_clip}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"cdo: device must be auto, cpu or cuda, got {self.device!r}")
        if self.skip_background not in SKIP_BACKGROUND:
            raise ValueError(f"cdo: skip_background must be one of {', '.join(SKIP_BACKGROUND)}, got {self.skip_background!r}")
        Recipe(optimizer=self.optimizer, betas=tuple(self.betas), schedule=self.schedule)  # validates these three


class CDO:
    """CDO behind the runner's method interface (``baselines.base.Method``).

    One fit trains one apprentice on every image it is given (one category, every category, or
    the shots the harness drew)."""

    name: ClassVar[str] = "cdo"
    card: ClassVar[MethodCard] = MethodCard(settings=("single-class", "multi-class", "few-shot"), weights=("wide_resnet50_2", "efficientnet_lite0"))
    Config: ClassVar[type] = CDOConfig

    def __init__(self, config: CDOConfig | None = None) -> None:
        self.config = config or CDOConfig()
        self.device = choose_device(self.name, self.config.device)
        self.model: CDOModel | None = None
        self.seed = choose_seed(self.config.seed)

    def expert(self) -> nn.Module:
        """The frozen pretrained expert from the backbone registry."""
        config = self.config
        if config.expert_weights == "auto" and registry.spec(config.backbone).weights is None:
            raise ValueError(f"cdo: backbone {config.backbone} has no registered weights; pass its ImageNet checkpoint as expert_weights=PATH "
                             "(HRNet: hrnetv2_w32_imagenet_pretrained.pth), use expert_weights=random, or backbone=wide_resnet50_2 or efficientnet_lite0")
        return registry.load_backbone(config.backbone, config.expert_weights)

    def new_model(self) -> CDOModel:
        """Expert plus a freshly initialised apprentice (the architecture's own initialisation)."""
        expert = self.expert()
        apprentice = registry.spec(self.config.backbone).build()
        return CDOModel(self.config.backbone, expert, apprentice, self.config.normalize_features).to(self.device)

    def recipe(self) -> Recipe:
        """The preset's recipe for the shared loop (shuffled, no ``drop_last``, as both codes)."""
        config = self.config
        return Recipe(
            optimizer=config.optimizer, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay,
            schedule=config.schedule, epoch_decay=config.epoch_decay, step_epoch=config.lr_step_epoch,
            grad_clip=config.grad_clip or None, batch_size=config.batch_size, drop_last=False, epochs=config.epochs,
        )

    def fit(self, train: Iterable[Batch], setting: Setting = Setting()) -> None:
        """Train one apprentice on the training images with the preset's recipe."""
        torch.manual_seed(self.seed)
        model = self.new_model()
        images, categories = [], set()
        for batch in train:
            images.append(resize_crop(batch.images, self.config.input_size, self.config.input_size))
            categories.update(batch.categories)
        if not images:
            raise ValueError("cdo: no training images")
        self.train_model(model, torch.cat(images), self.skips_background(categories))
        self.model = model.eval()

    def skips_background(self, categories: set[str]) -> bool:
        """Whether anomalies avoid the background in a fit of ``categories`` (``skip_background``)."""
        if self.config.skip_background == "official":
            return bool(categories) and categories <= BACKGROUND_CATEGORIES
        return self.config.skip_background == "always"

    def train_model(self, model: CDOModel, images: torch.Tensor, skip_background: bool = False) -> list[float]:
        """The training loop on uint8 images at the input size; returns the loss of each iteration.
        Each batch gets fresh anomalies (``mom``); image and mask travel as 4 channels."""
        config = self.config
        rng = np.random.RandomState(self.seed % 2**32)

        def prepare(batch: torch.Tensor) -> torch.Tensor:
            if config.mom:
                batch, masks = synthesize(batch.cpu(), rng, config.input_size, config.work_size or config.input_size, skip_background)
            else:
                masks = torch.zeros(batch.shape[0], 1, *batch.shape[-2:])
            inputs = registry.normalize(batch.to(self.device), config.backbone)
            return torch.cat([inputs, masks.to(self.device)], dim=1)

        def loss(inputs: torch.Tensor, iteration: int) -> torch.Tensor:
            output = model(inputs[:, :3])
            return cdo_loss(output.expert, output.apprentice, inputs[:, 3:], config.gamma, config.oom)

        model.train()
        return train_head(list(model.apprentice.parameters()), images, loss, self.recipe(), prepare=prepare, device=self.device,
                          seed=self.seed, mixed_precision=model.mixed_precision, name="cdo")

    def predict(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """Scores (B,) and maps (B, H, W): computed at the input size, maps resized back bilinearly."""
        if self.model is None:
            raise RuntimeError("cdo: predict called before fit")
        size = self.config.input_size
        images = registry.normalize(resize_crop(batch.images, size, size).to(self.device), self.config.backbone)
        scores, maps = self.model.predict(images, scoring=self.config.scoring)
        height, width = batch.images.shape[-2:]
        maps = F.interpolate(maps.float().cpu().unsqueeze(1), size=(height, width), mode="bilinear", align_corners=False)[:, 0]
        return scores.float().cpu().numpy().astype(np.float32), maps.numpy().astype(np.float32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The fitted model: ``expert.*`` and ``apprentice.*`` (the official save keeps the apprentice only)."""
        if self.model is None:
            raise RuntimeError("cdo: state_dict called before fit")
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a model written by ``state_dict`` (strict), or an official / M2AD apprentice
        with the expert from ``expert_weights``."""
        backbone = self.config.backbone
        if any(key.startswith("expert.") for key in state):
            model = CDOModel(backbone, registry.spec(backbone).build(), registry.spec(backbone).build(), self.config.normalize_features)
            model.load_state_dict(state, strict=True)
        else:
            model = load_official(state, backbone, self.config.expert_weights)
            model.normalize_features = self.config.normalize_features
        self.model = model.to(self.device).eval()


__all__ = ["CDO", "LAYERS", "PRESETS", "CDOConfig", "CDOModel", "cdo_loss", "load_official", "official_map", "synthesize", "white_noise"]

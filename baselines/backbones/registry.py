"""The backbone registry: every frozen feature extractor the methods use, its weights, its
normalisation and its input geometry, behind one loader (``load_backbone``) and one feature-tap
call (``tap``).

A method names a backbone (``dinov2_vitb14_reg4``, ``wide_resnet50_2``, ...), gets a frozen
module in eval mode with the released weights loaded strictly (or random weights for smoke
tests), normalises its uint8 images with ``normalize(images, name)`` and asks ``tap`` for the
layers it reads:

* ViTs (DINOv2): ``layers`` are 0-indexed block numbers; each output is the block's full token
  sequence (B, 1 + registers + h*w, C), [CLS, registers, patches], without the final norm;
  blocks after the last requested one are not run.
* CNNs: ``layers`` are stage names (``layer1`` .. ``layer4`` for WRN-50-2, ``stride4``,
  ``stride8``, ``stride16`` for EfficientNet-Lite0, ``stride4`` .. ``stride32`` for HRNet);
  each output is a map (B, C, h, w).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from baselines import weights as weights_registry
from baselines.backbones import efficientnet_lite, hrnet, wide_resnet
from baselines.backbones.dinov2 import VIT_PRESETS, DinoVisionTransformer, ViTConfig, infer_vit_config

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

TINY_VIT = ViTConfig(embed_dim=40, depth=4, num_heads=4, patch_size=14, num_register_tokens=4, pos_grid=4)
"""A 40-wide, 4-head, 4-block DINOv2-shaped ViT for smoke tests with random weights."""


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone: how to build it, which released weights it loads, how its inputs are normalised."""

    name: str
    build: Callable[[], nn.Module]
    weights: str | None
    """Name in ``baselines.weights.REGISTRY`` of its released weights; ``None``: random only."""
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    stride: int
    """Input sides must be multiples of this (the ViT patch size; 1 for CNNs)."""
    pretrain_size: int
    """Side of the images the weights were trained on (DINOv2: 518 for the 37 x 37 position grid)."""
    vit: ViTConfig | None = None

    @property
    def is_vit(self) -> bool:
        """Whether ``tap`` returns token sequences (ViT) rather than maps (CNN)."""
        return self.vit is not None


def _vit_spec(name: str, config: ViTConfig, weights: str | None) -> BackboneSpec:
    return BackboneSpec(name, lambda: DinoVisionTransformer(config), weights, IMAGENET_MEAN, IMAGENET_STD, config.patch_size,
                        config.pos_grid * config.patch_size, config)


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        *(_vit_spec(f"dinov2_{size}_reg4", config, f"dinov2_{size}_reg4_pretrain") for size, config in VIT_PRESETS.items()),
        _vit_spec("dinov2_tiny", TINY_VIT, None),
        BackboneSpec("wide_resnet50_2", wide_resnet.WideResNet50, "wide_resnet50_2", IMAGENET_MEAN, IMAGENET_STD, 1, 224),
        BackboneSpec("efficientnet_lite0", efficientnet_lite.EfficientNetLite0, "efficientnet_lite0", efficientnet_lite.MEAN,
                     efficientnet_lite.STD, 1, 224),
        *(BackboneSpec(name, lambda config=config: hrnet.HRNet(config), None, IMAGENET_MEAN, IMAGENET_STD, 1, 224)
          for name, config in hrnet.HRNET_PRESETS.items()),
    )
}


def spec(name: str) -> BackboneSpec:
    """The registry entry ``name``; a one-line error listing the known ones otherwise."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}") from None


def load_backbone(name: str, weights: str = "auto") -> nn.Module:
    """The backbone ``name``, frozen and in eval mode.

    ``weights``: ``auto`` (its released weights from the weights cache; ``WeightsUnavailable``
    with the fetch/import commands when absent), ``random``, a ``baselines.weights`` name, or a
    file path (read with ``torch.load(weights_only=True)``).  Files load with ``strict=True``; a
    ViT file of another shape is refused with what it describes.
    """
    entry = spec(name)
    if weights == "random":
        model = entry.build()
    else:
        if weights == "auto":
            if entry.weights is None:
                raise ValueError(f"backbone {name!r} has no released weights registered; pass a checkpoint file as weights=<path>, or use weights=random")
            weights = entry.weights
        state = _read_state(weights)
        if entry.vit is not None:
            try:
                found = infer_vit_config(state, num_heads=entry.vit.num_heads)
            except ValueError as error:
                raise ValueError(f"weights {weights!r} do not fit the {name} backbone {entry.vit}: {error}") from None
            if replace(found, pos_grid=entry.vit.pos_grid) != entry.vit:
                raise ValueError(f"weights {weights!r} describe {found}: they do not fit the {name} backbone {entry.vit}")
            model = DinoVisionTransformer(found)
        else:
            model = entry.build()
            if isinstance(model, hrnet.HRNet):
                state = hrnet.backbone_state(state)
        model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


def dinov2_name(encoder: str) -> str:
    """The registry name of a reconstruction method's ``encoder`` setting (``tiny``, ``small``, ``base``, ...)."""
    return "dinov2_tiny" if encoder == "tiny" else f"dinov2_{encoder}_reg4"


def load_dinov2(encoder: str, weights: str) -> nn.Module:
    """The frozen DINOv2 encoder of a reconstruction method's ``encoder``/``encoder_weights`` settings."""
    if encoder == "tiny" and weights == "auto":
        raise ValueError("encoder=tiny has no pretrained weights; use encoder_weights=random")
    return load_backbone(dinov2_name(encoder), weights)


def _read_state(source: str) -> dict[str, torch.Tensor]:
    """A state dict from a weights-registry name or a file path, without pickle."""
    if source in weights_registry.REGISTRY:
        return weights_registry.load_state_dict(source)
    path = Path(source).expanduser()
    if not path.is_file():
        raise weights_registry.WeightsUnavailable(f"weights {source!r} are neither a known weights name nor a file")
    return torch.load(path, map_location="cpu", weights_only=True)


def normalize(images: torch.Tensor, name: str) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 in [0, 1] normalised with the backbone's mean and std
    (torchvision's ``ToTensor`` + ``Normalize``)."""
    entry = spec(name)
    mean = torch.tensor(entry.mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(entry.std, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def tap(backbone: nn.Module, images: torch.Tensor, layers: Sequence[int] | Sequence[str]) -> list[torch.Tensor]:
    """The outputs of ``layers`` of ``backbone`` for normalised ``images``, in the order asked
    (see the module docstring for what a layer is)."""
    if isinstance(backbone, DinoVisionTransformer):
        outputs = dict(zip(sorted(set(layers)), backbone.intermediate_layers(images, sorted(set(layers))), strict=True))
    elif isinstance(backbone, (wide_resnet.WideResNet50, efficientnet_lite.EfficientNetLite0, hrnet.HRNet)):
        outputs = backbone.features(images, tuple(layers))
    else:
        raise TypeError(f"tap does not know {type(backbone).__name__}")
    return [outputs[layer] for layer in layers]


__all__ = ["BACKBONES", "IMAGENET_MEAN", "IMAGENET_STD", "TINY_VIT", "BackboneSpec", "dinov2_name", "load_backbone", "load_dinov2", "normalize", "spec", "tap"]

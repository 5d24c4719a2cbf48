"""HRNet-W18/W32/W48 feature extractors in plain PyTorch with the HRNet parameter names.

The network is the multi-branch HRNet of Wang et al. (stem of two stride-2 3x3 convolutions,
``layer1`` of four bottlenecks, then stages of parallel branches joined by fuse layers), as
CDO uses it (``caoyunkang/CDO`` ``models/hrnet/hrnet.py`` and the M2AD ``model/cdo.py``): the
features are the outputs of the last stage's branches at strides 4, 8, 16 and 32.  Upsampling
in the fuse layers is bilinear with ``align_corners=True``, as in that code (the segmentation
variant of HRNet).

Names: ``conv1``, ``bn1``, ``conv2``, ``bn2``, ``layer1.{i}``, ``transition{1,2,3}.{i}``,
``stage{2,3,4}.{m}.branches.{b}.{k}`` and ``stage{2,3,4}.{m}.fuse_layers.{i}.{j}``: the names
and shapes of CDO's ``HighResolutionNet`` (checked against it for W18/W32/W48), into which CDO
loads the ``HRNet-Image-Classification`` ImageNet file; ``backbone_state`` drops a file's
classification / segmentation head (``incre_modules``, ``downsamp_modules``, ``final_layer``,
``classifier``, ``last_layer``) so that the rest loads strictly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

FEATURE_NAMES = ("stride4", "stride8", "stride16", "stride32")
HEAD_PREFIXES = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.", "last_layer.")
"""Keys of the classification / segmentation heads that the feature extractor does not have."""


@dataclass(frozen=True)
class HRNetConfig:
    """Branch width of an HRNet (18, 32 or 48) and the modules / blocks per stage."""

    width: int = 32
    stage_modules: tuple[int, int, int] = (1, 4, 3)
    blocks: int = 4

    def channels(self, branches: int) -> list[int]:
        """Channels of the first ``branches`` branches: width, 2 width, 4 width, 8 width."""
        return [self.width * 2**index for index in range(branches)]


HRNET_PRESETS = {"hrnet18": HRNetConfig(18), "hrnet32": HRNetConfig(32), "hrnet48": HRNetConfig(48),
                 "hrnet_tiny": HRNetConfig(4, (1, 1, 1), 1)}
"""``hrnet_tiny``: 4-wide branches, one module of one block per stage, for smoke tests with random weights."""


def _conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int, relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(out_channels)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity shortcut (the branches' block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual basic block."""
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + x)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 channels) with a projected shortcut when the width changes (``layer1``)."""

    def __init__(self, in_channels: int, planes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if in_channels != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual bottleneck."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + shortcut)


class HighResolutionModule(nn.Module):
    """Parallel branches of basic blocks, then every output branch sums all inputs brought to
    its resolution (1x1 conv + bilinear upsampling from lower resolutions, chains of stride-2
    3x3 convolutions from higher ones)."""

    def __init__(self, channels: list[int], blocks: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Sequential(*(BasicBlock(width) for _ in range(blocks))) for width in channels)
        count = len(channels)
        fuse_layers = []
        for target in range(count):
            row: list[nn.Module | None] = []
            for source in range(count):
                if source > target:
                    row.append(_conv_bn(channels[source], channels[target], 1, 1, relu=False))
                elif source == target:
                    row.append(None)
                else:
                    steps = target - source
                    row.append(nn.Sequential(*(
                        _conv_bn(channels[source], channels[target] if step == steps - 1 else channels[source], 3, 2, relu=step < steps - 1)
                        for step in range(steps)
                    )))
            fuse_layers.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(fuse_layers) if count > 1 else None

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Branch-wise blocks, then the fusion."""
        x = [branch(item) for branch, item in zip(self.branches, inputs, strict=True)]
        if self.fuse_layers is None:
            return x
        fused = []
        for target, row in enumerate(self.fuse_layers):
            total = x[0] if target == 0 else row[0](x[0])
            for source in range(1, len(x)):
                if source == target:
                    total = total + x[source]
                elif source > target:
                    total = total + F.interpolate(row[source](x[source]), size=x[target].shape[-2:], mode="bilinear", align_corners=True)
                else:
                    total = total + row[source](x[source])
            fused.append(F.relu(total))
        return fused


class HRNet(nn.Module):
    """HRNet feature extractor: stem, ``layer1``, transitions and stages 2-4 (no classifier)."""

    def __init__(self, config: HRNetConfig = HRNET_PRESETS["hrnet32"]) -> None:
        super().__init__()
        self.config = config
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.layer1 = nn.Sequential(*(Bottleneck(64 if index == 0 else 256, 64) for index in range(config.blocks)))
        previous = [256]
        for stage, modules in zip((2, 3, 4), config.stage_modules, strict=True):
            channels = config.channels(stage)
            setattr(self, f"transition{stage - 1}", self._transition(previous, channels))
            setattr(self, f"stage{stage}", nn.Sequential(*(HighResolutionModule(channels, config.blocks) for _ in range(modules))))
            previous = channels

    @staticmethod
    def _transition(previous: list[int], channels: list[int]) -> nn.ModuleList:
        """3x3 conv where a kept branch changes width, a stride-2 chain from the last branch for a new one."""
        layers: list[nn.Module | None] = []
        for index, width in enumerate(channels):
            if index < len(previous):
                layers.append(_conv_bn(previous[index], width, 3, 1, relu=True) if previous[index] != width else None)
            else:
                extra = index + 1 - len(previous)
                layers.append(nn.Sequential(*(
                    _conv_bn(previous[-1], width if step == extra - 1 else previous[-1], 3, 2, relu=True) for step in range(extra)
                )))
        return nn.ModuleList(layers)

    def features(self, images: torch.Tensor, names: tuple[str, ...] = FEATURE_NAMES[:3]) -> dict[str, torch.Tensor]:
        """The last stage's branch outputs named by stride (``stride4`` .. ``stride32``)."""
        unknown = set(names) - set(FEATURE_NAMES)
        if unknown:
            raise ValueError(f"unknown HRNet features {sorted(unknown)}; choose from {', '.join(FEATURE_NAMES)}")
        x = F.relu(self.bn1(self.conv1(images)))
        x = self.layer1(F.relu(self.bn2(self.conv2(x))))
        branches = [x]
        for stage in (2, 3, 4):
            transition = getattr(self, f"transition{stage - 1}")
            inputs = []
            for index, layer in enumerate(transition):
                source = branches[min(index, len(branches) - 1)]
                inputs.append(source if layer is None else layer(source))
            branches = getattr(self, f"stage{stage}")(inputs)
        return {name: branches[FEATURE_NAMES.index(name)] for name in names}

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The four branch outputs of normalised images."""
        outputs = self.features(images, FEATURE_NAMES)
        return [outputs[name] for name in FEATURE_NAMES]


def backbone_state(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A released HRNet checkpoint without its classification / segmentation head (and without
    the ``model.`` prefix of CDO's ``HRNet_`` wrapper), ready for a strict load."""
    if state_dict and all(key.startswith("model.") for key in state_dict):
        state_dict = {key[len("model."):]: value for key, value in state_dict.items()}
    return {key: value for key, value in state_dict.items() if not key.startswith(HEAD_PREFIXES)}


__all__ = ["FEATURE_NAMES", "HRNET_PRESETS", "HRNet", "HRNetConfig", "backbone_state"]

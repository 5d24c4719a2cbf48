"""Wide-ResNet-50-2 in plain PyTorch with torchvision's parameter names.

``conv1``, ``bn1``, ``layer{1..4}.{i}.{conv1,bn1,conv2,bn2,conv3,bn3,downsample.0,downsample.1}``
and ``fc``, as in ``torchvision.models.wide_resnet50_2``, so torchvision's ImageNet checkpoint
(``wide_resnet50_2-95faca4d.pth``) loads with ``strict=True``.  The stride of a downsampling
bottleneck sits on its 3x3 convolution (ResNet v1.5), as in torchvision.
"""

from __future__ import annotations

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURE_CHANNELS = {"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048}


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 bottleneck with a projection shortcut when shapes change."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, width_factor: int) -> None:
        super().__init__()
        width = planes * width_factor
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual bottleneck."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


class WideResNet50(nn.Module):
    """Wide-ResNet-50-2 (bottleneck width x2) with an ImageNet classifier head.

    ``base`` scales every stage (64: the real network, stage outputs 256, 512, 1024, 2048; a
    smaller one gives a narrow random-weight stand-in of the same layout for smoke tests).
    """

    def __init__(self, width_factor: int = 2, num_classes: int = 1000, base: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, base, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = base
        for index, (planes, blocks, stride) in enumerate(((base, 3, 1), (2 * base, 4, 2), (4 * base, 6, 2), (8 * base, 3, 2)), start=1):
            layer = []
            for block in range(blocks):
                layer.append(Bottleneck(in_channels, planes, stride if block == 0 else 1, width_factor))
                in_channels = planes * Bottleneck.expansion
            setattr(self, f"layer{index}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32 * base, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def features(self, images: torch.Tensor, layers: tuple[str, ...] = ("layer2", "layer3")) -> dict[str, torch.Tensor]:
        """Feature maps of the named stages (``layer1`` .. ``layer4``); later stages are skipped."""
        unknown = set(layers) - set(FEATURE_CHANNELS)
        if unknown:
            raise ValueError(f"unknown layers {sorted(unknown)}; choose from {sorted(FEATURE_CHANNELS)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        outputs = {}
        last = max(int(name[-1]) for name in layers)
        for index in range(1, last + 1):
            x = getattr(self, f"layer{index}")(x)
            if f"layer{index}" in layers:
                outputs[f"layer{index}"] = x
        return outputs

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, 1000) of normalised images."""
        x = self.features(images, ("layer4",))["layer4"]
        return self.fc(torch.flatten(self.avgpool(x), 1))


def wide_resnet50_2_from_state_dict(state_dict: dict[str, torch.Tensor]) -> WideResNet50:
    """A ``WideResNet50`` with torchvision's checkpoint ``state_dict`` loaded strictly.

    Old torchvision files lack the BatchNorm ``num_batches_tracked`` counters; PyTorch fills them.
    """
    model = WideResNet50()
    model.load_state_dict(state_dict, strict=True)
    return model

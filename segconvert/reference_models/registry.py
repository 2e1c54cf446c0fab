"""Model registry: architecture names, presets for the released checkpoints, ``create_model``."""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .caffe_generic import CaffeGenericNet, caffe_generic_config
from .deeplab_v2 import DeepLabV2, deeplabv2_config
from .icnet import ICNet, icnet_config
from .keras_generic import KerasGenericNet, keras_generic_config
from .pspnet import PSPNet, pspnet_config
from .resnet import ResNet, resnet_config

__all__ = ["create_model", "list_models", "get_config", "get_preset", "register_model", "PRESETS"]


@dataclass(frozen=True)
class _Arch:
    name: str
    build: Callable[..., nn.Module]
    resolve: Callable[..., dict[str, Any]]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""


def _resnet_resolve(num_classes: int = 0, **kw: Any) -> dict[str, Any]:
    return {**resnet_config(**kw), "num_classes": int(num_classes)}


_ARCHS: dict[str, _Arch] = {}
PRESETS: dict[str, dict[str, Any]] = {}

_CAFFE_PSP_MEAN_BGR = [103.939, 116.779, 123.68]
_DEEPLAB_MEAN_BGR = [104.008, 116.669, 122.675]


def register_model(
    name: str,
    build: Callable[..., nn.Module],
    resolve: Callable[..., dict[str, Any]],
    defaults: dict[str, Any] | None = None,
    description: str = "",
) -> None:
    """Register an architecture: ``build(**config)`` makes the module, ``resolve(**kwargs)`` the config."""
    _ARCHS[name] = _Arch(name, build, resolve, dict(defaults or {}), description)


register_model("resnet", ResNet, _resnet_resolve, {}, "Bottleneck ResNet backbone (MSRA / PSPNet / TF-Slim)")
register_model(
    "deeplabv2_resnet101",
    DeepLabV2,
    deeplabv2_config,
    {"depth": 101, "num_classes": 21, "msc": True},
    "DeepLab-v2 ResNet-101 + ASPP (Caffe), multi-scale MSC with msc=True",
)
register_model(
    "pspnet50",
    PSPNet,
    pspnet_config,
    {"depth": 50, "num_classes": 150, "input_size": [473, 473], "stride_in": "1x1"},
    "PSPNet ResNet-50 (deep stem, dilated, pyramid pooling)",
)
register_model(
    "pspnet101",
    PSPNet,
    pspnet_config,
    {"depth": 101, "num_classes": 21, "input_size": [473, 473], "stride_in": "3x3"},
    "PSPNet ResNet-101 (deep stem, dilated, pyramid pooling)",
)

register_model(
    "icnet",
    ICNet,
    icnet_config,
    {"num_classes": 19},
    "ICNet (1, 1/2, 1/4 cascade, PSPNet50-style backbone; hszhao/ICNet Caffe and its TF ports)",
)

# Generic Keras models (segconvert.converters.keras_generic): the config is the model's layer calls, no defaults.
register_model(
    "keras_generic",
    KerasGenericNet,
    keras_generic_config,
    {},
    "Any Keras model built from supported layers, one submodule per Keras layer (generic conversion)",
)

# Generic Caffe nets (segconvert.converters.caffe_generic): the config is the net's layer list, no defaults.
register_model(
    "caffe_generic",
    CaffeGenericNet,
    caffe_generic_config,
    {},
    "Any Caffe net built from supported layers, one submodule per Caffe layer (generic conversion)",
)


def _preset(name: str, arch: str, config: dict, mean_bgr: list[float], dataset: str, source: str) -> None:
    PRESETS[name] = {
        "arch": arch,
        "config": config,
        "dataset": dataset,
        "preprocessing": {"channel_order": "BGR", "mean": list(mean_bgr), "std": None, "scale": 1.0},
        "source": source,
    }


_preset(
    "pspnet50_ade20k",
    "pspnet50",
    {"num_classes": 150, "input_size": [473, 473], "stride_in": "1x1"},
    _CAFFE_PSP_MEAN_BGR,
    "ade20k",
    "hszhao/PSPNet pspnet50_ADE20K.caffemodel (evaluation/prototxt/pspnet50_ADE20K_473.prototxt)",
)
_preset(
    "pspnet101_voc2012",
    "pspnet101",
    {"num_classes": 21, "input_size": [473, 473], "stride_in": "3x3"},
    _CAFFE_PSP_MEAN_BGR,
    "voc2012",
    "hszhao/PSPNet pspnet101_VOC2012.caffemodel (evaluation/prototxt/pspnet101_VOC2012_473.prototxt)",
)
_preset(
    "pspnet101_cityscapes",
    "pspnet101",
    {"num_classes": 19, "input_size": [713, 713], "stride_in": "3x3"},
    _CAFFE_PSP_MEAN_BGR,
    "cityscapes",
    "hszhao/PSPNet pspnet101_cityscapes.caffemodel (evaluation/prototxt/pspnet101_cityscapes_713.prototxt)",
)
_preset(
    "deeplabv2_resnet101_voc12",
    "deeplabv2_resnet101",
    {"num_classes": 21, "msc": True, "input_size": [513, 513]},
    _DEEPLAB_MEAN_BGR,
    "voc2012",
    "DeepLab-v2 deeplab_aspp_resnet101 train_iter_20000.caffemodel (exper/voc12/config/resnet101/test.prototxt)",
)


def list_models(pattern: str | None = None, include_presets: bool = True) -> list[str]:
    """Architecture names (and preset names), optionally filtered by a shell-style ``pattern``."""
    names = sorted(_ARCHS) + (sorted(PRESETS) if include_presets else [])
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def _lookup(name: str) -> tuple[_Arch, dict[str, Any]]:
    if name in _ARCHS:
        arch = _ARCHS[name]
        return arch, copy.deepcopy(arch.defaults)
    if name in PRESETS:
        arch = _ARCHS[PRESETS[name]["arch"]]
        return arch, {**copy.deepcopy(arch.defaults), **copy.deepcopy(PRESETS[name]["config"])}
    raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}")


def get_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The complete, JSON-serialisable config ``create_model(name, **overrides)`` would use."""
    arch, cfg = _lookup(name)
    return arch.resolve(**{**cfg, **overrides})


def get_preset(name: str) -> dict[str, Any]:
    """A preset's ``arch``, resolved ``config``, ``dataset``, ``preprocessing`` and ``source``."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    p = copy.deepcopy(PRESETS[name])
    p["config"] = get_config(name)
    return p


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build an architecture or preset; ``create_model(m.arch_name, **m.config)`` rebuilds ``m``."""
    arch, _ = _lookup(name)
    model = arch.build(**get_config(name, **overrides))
    return model

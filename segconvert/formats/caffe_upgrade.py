"""Upgrade legacy V1 ``layers { type: CONVOLUTION }`` messages to V2 ``LayerParameter`` (as Caffe does)."""

from __future__ import annotations

from typing import Any

from segconvert.formats.caffe_schema import V1_TYPE_NAMES, LayerParameter

_V1_TYPES = V1_TYPE_NAMES()
_COPIED = ("name", "bottom", "top", "loss_weight")


def upgrade_v1_layer(v1: Any) -> Any:
    """Return the V2 LayerParameter equivalent of a V1LayerParameter (blobs are not copied)."""
    layer = LayerParameter()
    for fname in _COPIED:
        value = getattr(v1, fname)
        if isinstance(value, str):
            if v1.HasField(fname):
                setattr(layer, fname, value)
        else:
            getattr(layer, fname).extend(value)
    layer.type = _V1_TYPES.get(v1.type, f"V1_UNKNOWN_{v1.type}")
    for rule in v1.include:
        layer.include.add().CopyFrom(rule)
    for rule in v1.exclude:
        layer.exclude.add().CopyFrom(rule)
    n_specs = max(len(v1.param), len(v1.blobs_lr), len(v1.weight_decay))
    for i in range(n_specs):
        spec = layer.param.add()
        if i < len(v1.param):
            spec.name = v1.param[i]
        if i < len(v1.blobs_lr):
            spec.lr_mult = v1.blobs_lr[i]
        if i < len(v1.weight_decay):
            spec.decay_mult = v1.weight_decay[i]
    for field, value in v1.ListFields():
        if field.name.endswith("_param"):
            getattr(layer, field.name).CopyFrom(value)
    return layer

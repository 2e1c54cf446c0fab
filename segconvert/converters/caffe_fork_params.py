"""Generic-path constructor parameters of the fork layers (see :mod:`segconvert.reference_models.caffe_ssd_ops`).

Each function takes the converter state, the layer and its module name, returns the module's constructor
parameters and fills the layer's weights; :class:`Unsupported` says why a configuration cannot be expressed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from segconvert.graph import Layer
from segconvert.graph.shapes import ShapeError, upsample_factors

__all__ = ["FORK_ARITY", "FORK_PARAMS", "Unsupported"]

_CODE_TYPES = {1: "CORNER", 2: "CENTER_SIZE", 3: "CORNER_SIZE"}


class Unsupported(Exception):
    """A layer of a supported type whose configuration the generic path cannot express."""


def _f32(x: float) -> float:
    return float(str(np.float32(x)))


def _permute(c: Any, layer: Layer, module: str) -> dict[str, Any]:
    return {"order": [int(o) for o in layer.param.permute_param.order]}


def _normalize(c: Any, layer: Layer, module: str) -> dict[str, Any]:
    p = layer.param.norm_param
    n = math.prod(c.param_shapes(layer)[0])
    if p.channel_shared and n != 1:
        raise Unsupported(f"channel_shared Normalize with {n} scale values")
    blob = c.blob(layer, 0)
    c.fill(f"{module}.weight", None if blob is None else np.asarray(blob).reshape(n), f"{layer.name}[0]")
    channels = n if not p.channel_shared else (layer.output_shapes[0] or (0, 1))[1]
    return {
        "num_channels": int(channels),
        "across_spatial": bool(p.across_spatial),
        "channel_shared": bool(p.channel_shared),
        "eps": _f32(p.eps),
    }


def _prior_box(c: Any, layer: Layer, module: str) -> dict[str, Any]:
    p = layer.param.prior_box_param
    img_h, img_w = (int(p.img_h), int(p.img_w)) if p.HasField("img_h") or p.HasField("img_w") else (0, 0)
    if p.HasField("img_size"):
        img_h = img_w = int(p.img_size)
    step_h, step_w = (_f32(p.step_h), _f32(p.step_w)) if p.HasField("step_h") or p.HasField("step_w") else (0, 0)
    if p.HasField("step"):
        step_h = step_w = _f32(p.step)
    if not (img_h and img_w) and len(layer.bottoms) < 2:
        raise Unsupported("needs the image as second bottom, or img_size / img_h + img_w")
    return {
        "min_sizes": [_f32(v) for v in p.min_size],
        "max_sizes": [_f32(v) for v in p.max_size],
        "aspect_ratios": [_f32(v) for v in p.aspect_ratio],
        "flip": bool(p.flip),
        "clip": bool(p.clip),
        "variance": [_f32(v) for v in p.variance] or [_f32(0.1)],
        "img_h": img_h,
        "img_w": img_w,
        "step_h": step_h,
        "step_w": step_w,
        "offset": _f32(p.offset),
    }


def _detection_output(c: Any, layer: Layer, module: str) -> dict[str, Any]:
    p = layer.param.detection_output_param
    nms = p.nms_param
    if not p.num_classes:
        raise Unsupported("num_classes is not set")
    if not 0 < nms.eta <= 1 or nms.nms_threshold < 0:
        raise Unsupported("nms_param needs 0 < eta <= 1 and nms_threshold >= 0")
    if p.HasField("save_output_param") or p.visualize:
        c.notes.append(f"{layer.name}: save_output_param / visualize ignored (the module returns the detections)")
    return {
        "num_classes": int(p.num_classes),
        "share_location": bool(p.share_location),
        "background_label_id": int(p.background_label_id),
        "nms_threshold": _f32(nms.nms_threshold),
        "top_k": int(nms.top_k) if nms.HasField("top_k") else -1,
        "eta": _f32(nms.eta),
        "code_type": _CODE_TYPES[int(p.code_type)],
        "variance_encoded_in_target": bool(p.variance_encoded_in_target),
        "keep_top_k": int(p.keep_top_k),
        "confidence_threshold": _f32(p.confidence_threshold) if p.HasField("confidence_threshold") else None,
    }


def _shuffle_channel(c: Any, layer: Layer, module: str) -> dict[str, Any]:
    return {"group": int(layer.param.shuffle_channel_param.group)}


def _upsample(c: Any, layer: Layer, module: str) -> dict[str, Any]:
    p = layer.param.upsample_param
    if len(layer.bottoms) == 2:  # alexgkendall/caffe-segnet: max-unpooling by the pooling mask
        if p.HasField("upsample_h") and p.HasField("upsample_w"):
            return {"scale_h": 2, "scale_w": 2, "upsample_h": int(p.upsample_h), "upsample_w": int(p.upsample_w)}
        sh, sw = (int(p.scale_h), int(p.scale_w)) if p.HasField("scale_h") else (int(p.scale or 2),) * 2
        if sh < 2 or sw < 2 or (p.pad_out_h and sh != 2) or (p.pad_out_w and sw != 2):
            raise Unsupported("SegNet Upsample needs scales > 1 (and 2 with pad_out_h / pad_out_w)")
        return {"scale_h": sh, "scale_w": sw, "pad_out_h": bool(p.pad_out_h), "pad_out_w": bool(p.pad_out_w)}
    shape = c.net.blob_shapes.get(layer.bottoms[0])
    if shape is None and (p.HasField("upsample_h") or p.HasField("upsample_w")):
        raise Unsupported("upsample_h/upsample_w need the input shape")
    try:
        fh, fw = upsample_factors(p, *(shape[2:] if shape else (1, 1)))
    except ShapeError as exc:
        raise Unsupported(str(exc)) from None
    return {"scale_h": fh, "scale_w": fw}


def _relu6(c: Any, layer: Layer, module: str) -> dict[str, Any]:
    return {"negative_slope": _f32(layer.param.relu6_param.negative_slope)}


def _clip(c: Any, layer: Layer, module: str) -> dict[str, Any]:
    p = layer.param.clip_param
    if not (p.HasField("min") and p.HasField("max")):
        raise Unsupported("clip_param needs min and max (both required by BVLC's proto)")
    return {"min": _f32(p.min), "max": _f32(p.max)}


def _swish(c: Any, layer: Layer, module: str) -> dict[str, Any]:
    return {"beta": _f32(layer.param.swish_param.beta)}


def _no_params(c: Any, layer: Layer, module: str) -> dict[str, Any]:
    return {}


FORK_PARAMS = {
    "Permute": _permute,
    "Normalize": _normalize,
    "PriorBox": _prior_box,
    "DetectionOutput": _detection_output,
    "ShuffleChannel": _shuffle_channel,
    "Upsample": _upsample,
    "ReLU6": _relu6,
    "Clip": _clip,
    "Swish": _swish,
    "Axpy": _no_params,
}
# (min, max) bottoms and tops where not exactly one each
FORK_ARITY: dict[str, tuple[tuple[int, int | None], tuple[int, int | None]]] = {
    "PriorBox": ((1, 2), (1, 1)),
    "DetectionOutput": ((3, 3), (1, 1)),
    "Upsample": ((1, 2), (1, 1)),
    "Axpy": ((3, 3), (1, 1)),
}

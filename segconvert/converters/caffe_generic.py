"""The generic Caffe path: any net of supported layers -> a ``caffe_generic`` config and its state_dict.

:func:`convert_caffe_generic` turns a loaded :class:`~segconvert.graph.Net` (V1 nets upgraded, legacy
``input``/``input_dim`` declarations, weights bound by layer name) into a
:class:`~segconvert.reference_models.caffe_generic.CaffeGenericNet` config: one spec per Caffe layer with its
exact hyper-parameters, and a state_dict in which every source blob is used exactly once. Layers that share
weights through Caffe param names reuse their owner's module (their blobs must equal the owner's). Data layers
become inputs, losses / metrics / Silence are skipped and reported. Every unsupported layer of the net is listed
in one :class:`ConversionError`.

State-dict keys are natural: ``conv1.weight``, ``conv1.bias``, ``prelu1.weight``, ``bn1.running_mean``...;
BatchNorm statistics are stored already divided by Caffe's scale-factor blob, transposed InnerProduct weights
as (out, in). The tap map keys every single-top layer by its Caffe name (in-place layers included):
``Tap(module, call, layer, 0)`` for :func:`segconvert.parity.caffe.caffe_parity`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from segconvert.errors import ConversionError
from segconvert.graph import Layer, Net
from segconvert.graph.shapes import conv_geometry, interp_args, interp_size, needs_weights, pool_geometry
from segconvert.reference_models.caffe_generic import (
    SUPPORTED_TYPES,
    CaffeGenericNet,
    caffe_generic_config,
    python_name,
    reserved_attributes,
)
from segconvert.reference_models.ops import caffe_batchnorm_stats, psp_bn_to_params

from .caffe_fork_params import FORK_ARITY, FORK_PARAMS, Unsupported
from .caffe_names import CaffeConversion, Tap, _as_tensor

__all__ = ["convert_caffe_generic", "cut_net", "GENERIC_SKIPPED_TYPES"]

_DATA_TYPES = {"Data", "ImageData", "ImageSegData", "HDF5Data", "MemoryData", "WindowData", "DummyData"}
_DATA_TYPES |= {"AnnotatedData", "VideoData"}  # SSD fork
# Layers that are not part of inference: their tops are not computed (data layers give the net's inputs).
GENERIC_SKIPPED_TYPES = {
    **{t: "data layer (its first top is an input)" for t in _DATA_TYPES},
    "SoftmaxWithLoss": "loss",
    "SigmoidCrossEntropyLoss": "loss",
    "EuclideanLoss": "loss",
    "HingeLoss": "loss",
    "InfogainLoss": "loss",
    "MultinomialLogisticLoss": "loss",
    "ContrastiveLoss": "loss",
    "MultiBoxLoss": "loss",
    "DetectionEvaluate": "metric",
    "Accuracy": "metric",
    "SegAccuracy": "metric",
    "Silence": "no-op",
    "MatWrite": "writes results to disk",
}
_ELTWISE_OPS = {0: "prod", 1: "sum", 2: "max"}
# (min, max) bottoms and tops per type where not exactly one each (None: no upper bound).
_ARITY: dict[str, tuple[tuple[int, int | None], tuple[int, int | None]]] = {
    "Eltwise": ((2, None), (1, 1)),
    "Concat": ((1, None), (1, 1)),
    "Crop": ((2, 2), (1, 1)),
    "Scale": ((1, 2), (1, 1)),
    "Bias": ((1, 2), (1, 1)),
    "Slice": ((1, 1), (1, None)),
    "Pooling": ((1, 1), (1, 2)),
    **FORK_ARITY,
}


def _check_arity(layer: Layer) -> None:
    (b_lo, b_hi), (t_lo, t_hi) = _ARITY.get(layer.type, ((1, 1), (1, 1)))
    for what, n, lo, hi in (("bottom", len(layer.bottoms), b_lo, b_hi), ("top", len(layer.tops), t_lo, t_hi)):
        if n < lo or (hi is not None and n > hi):
            want = f"{lo}" if lo == hi else f"{lo} or more" if hi is None else f"{lo} to {hi}"
            raise _Unsupported(f"{n} {what}s, the generic path supports {want}")


_Unsupported = Unsupported  # a layer of a supported type whose configuration the generic path cannot express


def _f32(x: float) -> float:
    """A float32 field as the shortest decimal that reads back to the same float32 (0.1, not 0.100000001)."""
    return float(str(np.float32(x)))


def _hw(pair: tuple[int, int]) -> int | list[int]:
    return int(pair[0]) if pair[0] == pair[1] else [int(pair[0]), int(pair[1])]


class _Converter:
    def __init__(self, net: Net, with_weights: bool) -> None:
        self.net = net
        self.with_weights = with_weights
        self.state: dict[str, torch.Tensor] = {}
        self.filled_from: dict[str, str] = {}
        self.used: dict[str, set[int]] = {}
        self.notes: list[str] = []
        self.skipped: list[tuple[str, str, str]] = []
        self.shared: list[tuple[str, str]] = []
        self.unsupported: list[str] = []

    def fail(self, message: str, layer: str | None = None) -> ConversionError:
        return ConversionError(message, file=self.net.prototxt or self.net.caffemodel, layer=layer)

    # ------------------------------------------------------------------ weights
    def param_shapes(self, layer: Layer) -> list[tuple[int, ...]]:
        if layer.blobs:
            return [tuple(int(d) for d in b.shape) for b in layer.blobs]
        if layer.expected_blob_shapes is not None:
            return [tuple(int(d) for d in s) for s in layer.expected_blob_shapes]
        raise _Unsupported("its parameter shapes are unknown (give the caffemodel or declare the input shape)")

    def blob(self, layer: Layer, index: int) -> np.ndarray | None:
        """Blob ``index`` of ``layer``, marked used (None without weights)."""
        if not self.with_weights:
            return None
        if index >= len(layer.blobs):
            raise self.fail(f"{layer.type} needs blob {index}, the caffemodel has {len(layer.blobs)}", layer.name)
        used = self.used.setdefault(layer.name, set())
        if index in used:
            raise self.fail(f"blob {index} used twice", layer.name)
        used.add(index)
        return layer.blobs[index]

    def fill(self, key: str, value: np.ndarray | None, source: str) -> None:
        if value is None:
            return
        if key in self.filled_from:
            raise self.fail(f"tensor '{key}' filled twice ({self.filled_from[key]} and {source})")
        self.filled_from[key] = source
        self.state[key] = _as_tensor(np.asarray(value))


# ------------------------------------------------------------------------------------- per-type parameters
# Each returns the module's constructor parameters (see reference_models.caffe_generic.layer_ctor) and fills
# the layer's weights into ``c.state`` under ``module``.


def _convolution(c: _Converter, layer: Layer, module: str) -> dict[str, Any]:
    p = layer.param.convolution_param
    if int(p.axis) != 1 or len(p.kernel_size) > 2 or len(p.stride) > 2 or len(p.pad) > 2 or len(p.dilation) > 2:
        raise _Unsupported("only 2-D convolution on axis 1 is supported")
    shapes = c.param_shapes(layer)
    if len(shapes[0]) != 4:
        raise _Unsupported(f"weight shape {list(shapes[0])} is not 4-D")
    g = conv_geometry(p)
    groups = int(p.group) or 1
    deconv = layer.type == "Deconvolution"
    params = {
        "in_channels": shapes[0][0] if deconv else shapes[0][1] * groups,
        "out_channels": int(p.num_output),
        "kernel_size": _hw(g["kernel"]),
        "stride": _hw(g["stride"]),
        "padding": _hw(g["pad"]),
        "dilation": _hw(g["dilation"]),
        "groups": groups,
        "bias": bool(p.bias_term),
    }
    c.fill(f"{module}.weight", c.blob(layer, 0), f"{layer.name}[0]")
    if p.bias_term:
        c.fill(f"{module}.bias", c.blob(layer, 1), f"{layer.name}[1]")
    return params


def _pooling(c: _Converter, layer: Layer, module: str) -> dict[str, Any]:
    p = layer.param.pooling_param
    if int(p.pool) not in (0, 1):
        raise _Unsupported("STOCHASTIC pooling is not supported")
    if p.HasField("round_mode") and int(p.round_mode) != 0:
        raise _Unsupported("round_mode FLOOR is not supported (Caffe's default CEIL is)")
    if p.torch_pooling:
        raise _Unsupported("NVCaffe torch_pooling is not supported")
    mode = "max" if int(p.pool) == 0 else "ave"
    if p.global_pooling:
        if len(layer.tops) > 1:
            raise _Unsupported("global pooling with a mask top is not supported")
        return {"mode": mode, "global_pooling": True}
    g = pool_geometry(p)
    if any(pad >= k for pad, k in zip(g["pad"], g["kernel"], strict=True)):
        raise _Unsupported(f"pad {g['pad']} must be smaller than the kernel {g['kernel']}")
    params = {"mode": mode, "kernel_size": _hw(g["kernel"]), "stride": _hw(g["stride"]), "pad": _hw(g["pad"])}
    if len(layer.tops) == 2:  # Caffe's MAX pooling mask top, converted for its one reader: SegNet's Upsample
        readers = [x for x in c.net.layers if layer.tops[1] in x.bottoms]
        if not readers or any(x.type != "Upsample" or x.bottoms[1:] != layer.tops[1:] for x in readers):
            raise _Unsupported("2 tops: a mask top is converted only as the second bottom of SegNet's Upsample")
        if mode != "max":
            raise _Unsupported("a second (mask) top needs MAX pooling")
        params["top_mask"] = True
    return params


def _inner_product(c: _Converter, layer: Layer, module: str) -> dict[str, Any]:
    p = layer.param.inner_product_param
    w = c.param_shapes(layer)[0]
    if len(w) != 2:
        raise _Unsupported(f"weight shape {list(w)} is not 2-D")
    params = {
        "in_features": w[0] if p.transpose else w[1],
        "out_features": int(p.num_output),
        "bias": bool(p.bias_term),
        "axis": int(p.axis),
    }
    weight = c.blob(layer, 0)
    if p.transpose:
        c.notes.append(f"{layer.name}: transpose: true, weight stored transposed as (out, in) for nn.Linear")
        weight = None if weight is None else np.ascontiguousarray(np.asarray(weight).T)
    c.fill(f"{module}.weight", weight, f"{layer.name}[0]" + ("^T" if p.transpose else ""))
    if p.bias_term:
        c.fill(f"{module}.bias", c.blob(layer, 1), f"{layer.name}[1]")
    return params


def _relu(c: _Converter, layer: Layer, module: str) -> dict[str, Any]:
    return {"negative_slope": _f32(layer.param.relu_param.negative_slope)}


def _prelu(c: _Converter, layer: Layer, module: str) -> dict[str, Any]:
    n = math.prod(c.param_shapes(layer)[0])
    if layer.param.prelu_param.channel_shared and n != 1:
        raise _Unsupported(f"channel_shared PReLU with {n} slopes")
    blob = c.blob(layer, 0)
    c.fill(f"{module}.weight", None if blob is None else np.asarray(blob).reshape(n), f"{layer.name}[0]")
    return {"num_parameters": n}


def _elu(c: _Converter, layer: Layer, module: str) -> dict[str, Any]:
    return {"alpha": _f32(layer.param.elu_param.alpha)}


def _no_params(c: _Converter, layer: Layer, module: str) -> dict[str, Any]:
    return {}


def _power(c: _Converter, layer: Layer, module: str) -> dict[str, Any]:
    p = layer.param.power_param
    return {"power": _f32(p.power), "scale": _f32(p.scale), "shift": _f32(p.shift)}


def _batch_norm(c: _Converter, layer: Layer, module: str) -> dict[str, Any]:
    p = layer.param.batch_norm_param
    if p.scale_bias:
        raise _Unsupported("NVCaffe scale_bias (BatchNorm with its own scale and bias blobs) is not supported")
    n = math.prod(c.param_shapes(layer)[0])
    use_global = bool(p.use_global_stats) if p.HasField("use_global_stats") else c.net.phase == "TEST"
    if not use_global:
        c.notes.append(f"{layer.name}: use_global_stats false: normalises with the batch's statistics, as Caffe")
    blobs = [c.blob(layer, i) for i in range(3)]
    if blobs[0] is not None:
        mean, var = caffe_batchnorm_stats(blobs)  # type: ignore[arg-type]
        s = float(np.asarray(blobs[2]).reshape(-1)[0])
        if s == 0:
            c.notes.append(f"{layer.name}: scale factor blob is 0, so Caffe uses mean = var = 0")
        src = f"{layer.name}[{{}}] * factor of {layer.name}[2]"
        c.fill(f"{module}.running_mean", mean, src.format(0))
        c.fill(f"{module}.running_var", var, src.format(1))
    return {"num_features": n, "eps": _f32(p.eps), "use_global_stats": use_global}


def _scale(c: _Converter, layer: Layer, module: str) -> dict[str, Any]:
    p = layer.param.scale_param
    shapes = c.param_shapes(layer) if (len(layer.bottoms) == 1 or p.bias_term) else []
    weight_shape = list(shapes[0]) if len(layer.bottoms) == 1 else None
    bias_index = 1 if weight_shape is not None else 0
    bias_shape = list(shapes[bias_index]) if p.bias_term else None
    if weight_shape is not None:
        c.fill(f"{module}.weight", c.blob(layer, 0), f"{layer.name}[0]")
    if p.bias_term:
        c.fill(f"{module}.bias", c.blob(layer, bias_index), f"{layer.name}[{bias_index}]")
    return {"weight_shape": weight_shape, "bias_shape": bias_shape, "axis": int(p.axis)}


def _bias(c: _Converter, layer: Layer, module: str) -> dict[str, Any]:
    p = layer.param.bias_param
    shape = None
    if len(layer.bottoms) == 1:
        shape = list(c.param_shapes(layer)[0])
        c.fill(f"{module}.bias", c.blob(layer, 0), f"{layer.name}[0]")
    return {"shape": shape, "axis": int(p.axis)}


def _bn(c: _Converter, layer: Layer, module: str) -> dict[str, Any]:
    p = layer.param.bn_param
    n = math.prod(c.param_shapes(layer)[0])
    blobs = [c.blob(layer, i) for i in range(4)]
    if blobs[0] is not None:
        for i, (key, value) in enumerate(psp_bn_to_params(blobs).items()):  # type: ignore[arg-type]
            c.fill(f"{module}.{key}", value, f"{layer.name}[{i}]")
    return {"num_features": n, "eps": _f32(p.eps) if p.HasField("eps") else 1e-5}


def _interp(c: _Converter, layer: Layer, module: str) -> dict[str, Any]:
    if len(layer.bottoms) != 1:
        raise _Unsupported("Interp with a second bottom giving the size is not supported")
    args = interp_args(layer.param.interp_param)
    try:
        interp_size(64, 64, **args)
    except ValueError as exc:
        raise _Unsupported(str(exc)) from None
    return {k: int(v) for k, v in args.items() if not (k in ("pad_beg", "pad_end") and v == 0)}


def _eltwise(c: _Converter, layer: Layer, module: str) -> dict[str, Any]:
    p = layer.param.eltwise_param
    op = _ELTWISE_OPS[int(p.operation)]
    if len(layer.bottoms) < 2:
        raise _Unsupported("Eltwise needs at least two bottoms")
    if len(p.coeff) and (op != "sum" or len(p.coeff) != len(layer.bottoms)):
        raise _Unsupported("coeff needs operation SUM and one value per bottom")
    return {"operation": op, "coeff": [_f32(v) for v in p.coeff] if len(p.coeff) else None}


def _concat(c: _Converter, layer: Layer, module: str) -> dict[str, Any]:
    p = layer.param.concat_param
    return {"axis": int(p.axis if p.HasField("axis") or not p.HasField("concat_dim") else p.concat_dim)}


def _slice(c: _Converter, layer: Layer, module: str) -> dict[str, Any]:
    p = layer.param.slice_param
    axis = int(p.axis if p.HasField("axis") or not p.HasField("slice_dim") else p.slice_dim)
    points = [int(v) for v in p.slice_point]
    if points and len(points) != len(layer.tops) - 1:
        raise _Unsupported(f"{len(points)} slice points for {len(layer.tops)} tops")
    return {"axis": axis, "points": points, "num_tops": len(layer.tops)}


def _crop(c: _Converter, layer: Layer, module: str) -> dict[str, Any]:
    if len(layer.bottoms) != 2:
        raise _Unsupported("Crop needs two bottoms")
    p = layer.param.crop_param
    return {"axis": int(p.axis), "offsets": [int(v) for v in p.offset]}


def _flatten(c: _Converter, layer: Layer, module: str) -> dict[str, Any]:
    p = layer.param.flatten_param
    return {"start_dim": int(p.axis), "end_dim": int(p.end_axis)}


def _reshape(c: _Converter, layer: Layer, module: str) -> dict[str, Any]:
    p = layer.param.reshape_param
    dims = [int(d) for d in p.shape.dim]
    if sum(d == -1 for d in dims) > 1 or any(d < -1 for d in dims):
        raise _Unsupported(f"invalid shape {dims}")
    return {"shape": dims, "axis": int(p.axis), "num_axes": int(p.num_axes)}


def _dropout(c: _Converter, layer: Layer, module: str) -> dict[str, Any]:
    return {"p": _f32(layer.param.dropout_param.dropout_ratio)}


def _softmax(c: _Converter, layer: Layer, module: str) -> dict[str, Any]:
    return {"dim": int(layer.param.softmax_param.axis)}


def _lrn(c: _Converter, layer: Layer, module: str) -> dict[str, Any]:
    p = layer.param.lrn_param
    if int(p.local_size) % 2 != 1:
        raise _Unsupported(f"local_size {p.local_size} is even (Caffe accepts odd sizes only)")
    region = "across" if int(p.norm_region) == 0 else "within"
    params = {"size": int(p.local_size), "alpha": _f32(p.alpha), "beta": _f32(p.beta), "region": region}
    if region == "across":
        params["k"] = _f32(p.k)
    elif _f32(p.k) != 1.0:
        c.notes.append(f"{layer.name}: k = {_f32(p.k)} is ignored, as Caffe ignores it for WITHIN_CHANNEL")
    return params


def _argmax(c: _Converter, layer: Layer, module: str) -> dict[str, Any]:
    p = layer.param.argmax_param
    return {
        "top_k": int(p.top_k),
        "out_max_val": bool(p.out_max_val),
        "axis": int(p.axis) if p.HasField("axis") else None,
    }


_PARAMS = {
    "Convolution": _convolution,
    "Deconvolution": _convolution,
    "Pooling": _pooling,
    "InnerProduct": _inner_product,
    "ReLU": _relu,
    "PReLU": _prelu,
    "ELU": _elu,
    "Sigmoid": _no_params,
    "TanH": _no_params,
    "AbsVal": _no_params,
    "BNLL": _no_params,
    "Power": _power,
    "BatchNorm": _batch_norm,
    "Scale": _scale,
    "Bias": _bias,
    "BN": _bn,
    "Interp": _interp,
    "Eltwise": _eltwise,
    "Concat": _concat,
    "Slice": _slice,
    "Crop": _crop,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Dropout": _dropout,
    "Softmax": _softmax,
    "LRN": _lrn,
    "ArgMax": _argmax,
    **FORK_PARAMS,
}
# ------------------------------------------------------------------------------------------------ API


def convert_caffe_generic(net: Net, *, require_weights: bool = True) -> CaffeConversion:
    """Convert any Caffe net of supported layers (see the module docstring) to a ``caffe_generic`` model.

    With ``require_weights=False`` a prototxt-only net gives the config and tap map with an empty state_dict.
    """
    with_weights = net.caffemodel is not None
    if require_weights and not with_weights and any(needs_weights(layer.param) for layer in net.layers):
        raise ConversionError("the net has layers with weights but no caffemodel was given", file=net.prototxt)
    c = _Converter(net, with_weights)
    b = _Builder(c)
    for layer in net.layers:
        b.add(layer)
    if c.unsupported:
        raise c.fail(
            f"{len(c.unsupported)} layer(s) the generic path cannot convert: {'; '.join(c.unsupported)} "
            f"(supported types: {', '.join(SUPPORTED_TYPES)})"
        )
    _check_weights_used(c, net)
    for name in net.unused_weights:
        c.notes.append(f"ignored weights of layer {name} (not in prototxt)")
    try:
        config = caffe_generic_config(
            layers=b.specs, inputs=b.inputs, outputs=_outputs(b.inputs, b.specs), net_name=net.name
        )
    except ValueError as exc:
        raise c.fail(str(exc)) from None
    if with_weights:
        _check_state_dict(c, config)
    return CaffeConversion(
        arch="caffe_generic",
        config=config,
        state_dict=c.state,
        skipped_layers=c.skipped,
        shared_copies=c.shared,
        tap_map=_tap_map(config),
        notes=c.notes,
    )


def cut_net(net: Net, until: str) -> Net:
    """``net`` up to and including layer ``until`` (Caffe's order); the dropped layers are named in its warnings.

    For SSD-style nets: ``cut_net(net, "mbox_priorbox")`` keeps the raw heads (the unread blobs become the outputs)
    instead of the ``DetectionOutput`` post-processing.
    """
    index = next((i for i, layer in enumerate(net.layers) if layer.name == until), None)
    if index is None:
        raise ConversionError(f"--until: the net has no layer {until!r}", file=net.prototxt or net.caffemodel)
    dropped = net.layers[index + 1 :]
    note = f"cut after layer {until}: dropped {len(dropped)} later layer(s)"
    if dropped:
        note += f" ({', '.join(layer.name for layer in dropped[:8])}{', ...' if len(dropped) > 8 else ''})"
    weighted = [layer.name for layer in dropped if layer.blobs and not layer.shared_from]
    if weighted:
        note += f"; their weights are not converted: {', '.join(weighted)}"
    return dataclasses.replace(net, layers=net.layers[: index + 1], warnings=[*net.warnings, note])


def _shape(shape: tuple[int, ...] | None) -> list[int] | None:
    return None if shape is None else [int(d) for d in shape]


class _Builder:
    """Turns the net's layers, in order, into inputs and layer specs; collects what it cannot convert."""

    def __init__(self, c: _Converter) -> None:
        self.c = c
        self.inputs: list[dict[str, Any]] = [{"name": n, "shape": _shape(s)} for n, s in c.net.inputs.items()]
        self.specs: list[dict[str, Any]] = []
        self.by_name: dict[str, dict[str, Any]] = {}
        self.label_blobs: set[str] = set()  # computed from data layers' labels only
        self.module_names: set[str] = set()
        self.reserved = reserved_attributes()
        self.param_owner: dict[str, str] = {}  # Caffe param name -> first layer that declared it

    def skip(self, layer: Layer, reason: str) -> None:
        self.c.skipped.append((layer.name, layer.type, reason))

    def add(self, layer: Layer) -> None:
        kind = layer.type
        if kind in _DATA_TYPES:  # the image top becomes an input; the others are labels
            self.skip(layer, GENERIC_SKIPPED_TYPES[kind])
            if layer.tops:
                shape = layer.output_shapes[0] if layer.output_shapes else None
                self.inputs.append({"name": layer.tops[0], "shape": _shape(shape)})
                self.label_blobs.update(layer.tops[1:])
            return
        if kind in GENERIC_SKIPPED_TYPES:
            return self.skip(layer, GENERIC_SKIPPED_TYPES[kind])
        if layer.bottoms and all(b in self.label_blobs for b in layer.bottoms):
            self.label_blobs.update(layer.tops)
            return self.skip(layer, "label branch")
        if any(b in self.label_blobs for b in layer.bottoms):
            return self.c.unsupported.append(f"{layer.name} ({kind}: reads a data layer's label)")
        spec: dict[str, Any] = {
            "name": layer.name,
            "type": kind,
            "bottoms": list(layer.bottoms),
            "tops": list(layer.tops),
            "module": None,
            "params": {},
            "top_shapes": [_shape(s) for s in layer.output_shapes],
        }
        if kind == "Input":
            for top, shape in zip(layer.tops, layer.output_shapes, strict=False):
                self.inputs.append({"name": top, "shape": _shape(shape)})
        elif kind != "Split":
            try:
                spec.update(self.module_spec(layer))
            except _Unsupported as exc:
                detail = f": {exc}" if str(exc) else ""
                return self.c.unsupported.append(f"{layer.name} ({kind}{detail})")
        self.specs.append(spec)
        self.by_name[layer.name] = spec

    def module_spec(self, layer: Layer) -> dict[str, Any]:
        if layer.type not in _PARAMS:
            raise _Unsupported()
        _check_arity(layer)
        owner = layer.shared_from
        shared = [n for n in layer.param_names if n and self.param_owner.get(n, layer.name) != layer.name]
        if shared and owner is None:
            raise _Unsupported(f"shares only some of its parameters {shared}")
        for n in layer.param_names:
            if n:
                self.param_owner.setdefault(n, layer.name)
        if owner is not None:
            return self.shared_spec(layer, owner)
        module = python_name(layer.name, self.module_names, self.reserved)
        return {"module": module, "params": _PARAMS[layer.type](self.c, layer, module)}

    def shared_spec(self, layer: Layer, owner: str) -> dict[str, Any]:
        """A layer sharing all its weights with ``owner`` (Caffe param names) runs the owner's module."""
        c, own = self.c, self.by_name.get(owner)
        if own is None or own["module"] is None:
            raise _Unsupported(f"shares weights with '{owner}', which is not converted before it")
        src = c.net.layer(owner)
        if src.type != layer.type:
            raise _Unsupported(f"shares weights with '{owner}' of type {src.type}")
        if _PARAMS[layer.type](_Converter(c.net, with_weights=False), layer, own["module"]) != own["params"]:
            raise _Unsupported(f"shares weights with '{owner}' but has other hyper-parameters")
        if c.with_weights:
            if len(layer.blobs) != len(src.blobs) or any(
                a.shape != b.shape or not np.array_equal(a, b) for a, b in zip(layer.blobs, src.blobs, strict=True)
            ):
                raise c.fail(f"weights differ from '{owner}', whose parameters it shares by name", layer.name)
            c.used[layer.name] = set(range(len(layer.blobs)))
        c.shared.append((layer.name, owner))
        return {"module": own["module"], "shared_from": owner, "params": own["params"]}


def _check_weights_used(c: _Converter, net: Net) -> None:
    if not c.with_weights:
        return
    skipped = {name for name, _, _ in c.skipped}
    unused = []
    for layer in net.layers:
        left = sorted(set(range(len(layer.blobs))) - c.used.get(layer.name, set()))
        if not left:
            continue
        if layer.name in skipped:
            c.notes.append(f"ignored weights of layer {layer.name} ({layer.type}, not part of inference)")
        else:
            unused.append(f"{layer.name}{left}")
    if unused:
        raise c.fail(f"source blobs not used by the conversion: {', '.join(unused)}")


def _outputs(inputs: list[dict[str, Any]], specs: list[dict[str, Any]]) -> list[str]:
    """Blobs no later layer reads, sorted by name: Caffe's (and pycaffe's ``net.outputs``) order."""
    available = {i["name"] for i in inputs}
    for spec in specs:
        if spec["type"] == "Input":
            continue
        available.difference_update(spec["bottoms"])
        available.update(spec["tops"])
    return sorted(available)


def _check_state_dict(c: _Converter, config: dict[str, Any]) -> None:
    """The converted tensors must be exactly the model's, with the model's shapes."""
    with torch.device("meta"):
        model = CaffeGenericNet(**config)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(want) - set(c.state))
    unexpected = sorted(set(c.state) - set(want))
    if missing or unexpected:
        raise c.fail(f"converted tensors do not fit the generic model: missing {missing}, unexpected {unexpected}")
    for key, shape in want.items():
        value = c.state[key]
        if tuple(value.shape) != shape:
            if value.numel() != math.prod(shape):
                raise c.fail(f"{c.filled_from[key]} has shape {list(value.shape)}, '{key}' needs {list(shape)}")
            c.state[key] = value.reshape(shape)
    c.state = {k: c.state[k] for k in want}


def _tap_map(config: dict[str, Any]) -> dict[str, Tap]:
    """Caffe layer name -> Tap(module, call, layer, 0) for every single-top layer that has a module."""
    taps: dict[str, Tap] = {}
    calls: dict[str, int] = {}
    for spec in config["layers"]:
        module = spec.get("module")
        if module is None:
            continue
        call = calls.get(module, 0)
        calls[module] = call + 1
        if len(spec["tops"]) == 1:
            taps[spec["name"]] = Tap(module, call, spec["name"], 0)
    return taps

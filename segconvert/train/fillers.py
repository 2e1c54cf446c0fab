"""Caffe's fillers: a train net's initial parameters from its ``weight_filler`` / ``bias_filler`` (no caffemodel).

:func:`fill_net` gives every layer with learnable blobs of a :class:`~segconvert.graph.Net` loaded without
weights the blobs Caffe's ``LayerSetUp`` would create, in Caffe's shapes (inferred from the data layers' tops:
an ``HDF5Data`` layer's first file, as ``HDF5DataLayer`` reshapes, or the shapes the prototxt declares), filled
as ``include/caffe/filler.hpp`` fills them:

- ``constant`` (``value``), ``uniform`` (``min``, ``max``), ``gaussian`` (``mean``, ``std``; ``sparse`` >= 0 keeps
  each value with probability ``sparse / shape[0]``), ``positive_unitball`` (U(0, 1), each of the ``shape[0]``
  rows divided by its sum), ``xavier`` (U(-a, a), a = sqrt(3 / n)) and ``msra`` (N(0, sqrt(2 / n))) with
  n = fan_in = count / shape[0], fan_out = count / shape[1] or their mean (``variance_norm``), ``bilinear``
  (the upsampling kernel of a square 4-D blob);
- each layer's defaults: Convolution / Deconvolution / InnerProduct / Embed ``constant 0`` unless set; Scale's
  gamma ``constant 1``, its bias and Bias ``constant 0``; PReLU ``constant 0.25``; Normalize ``constant 1``;
  BatchNorm's three blobs 0; PSPNet ``BN`` slope 1 and bias 0 unless set, mean 0, variance 1;
- layers sharing all their blobs by param name take the owner's.

The random values come from one ``numpy.random.default_rng(random_seed)`` drawn in layer and blob order: the
same distributions as Caffe's, not Caffe's random stream (a Caffe run with the same seed gives other numbers).
``sparse`` with another filler, an unknown filler type, or a non-square / non-4-D ``bilinear`` blob is a
one-line error naming the prototxt, the layer and the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from segconvert.errors import ConversionError
from segconvert.graph import Net
from segconvert.graph.net import propagate_shapes
from segconvert.graph.shapes import needs_weights

from .caffe_net import layer_line

__all__ = ["FILLER_TYPES", "convert_filled", "fill", "fill_net", "infer_shapes"]

FILLER_TYPES = ("constant", "gaussian", "positive_unitball", "uniform", "xavier", "msra", "bilinear")
_VARIANCE_NORM = {0: "FAN_IN", 1: "FAN_OUT", 2: "AVERAGE"}
_SCALE_FILLED = {"Scale": "scale_param", "Bias": "bias_param"}


class FillerError(ValueError):
    """A filler Caffe would refuse (the message; the caller adds file, layer and field)."""


def _n(shape: tuple[int, ...], norm: int) -> float:
    count = math.prod(shape)
    fan_in = count // shape[0]
    fan_out = count // shape[1] if len(shape) > 1 else count
    name = _VARIANCE_NORM.get(int(norm), "FAN_IN")
    return float(fan_in if name == "FAN_IN" else fan_out if name == "FAN_OUT" else (fan_in + fan_out) / 2)


def fill(param: Any, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """One blob of ``shape`` filled as Caffe's filler ``param`` (a ``FillerParameter``) fills it, float32."""
    kind, sparse = str(param.type), int(param.sparse)
    shape = tuple(int(d) for d in shape)
    count = math.prod(shape)
    if kind not in FILLER_TYPES:
        raise FillerError(f"unknown filler type {kind!r} (Caffe's: {', '.join(FILLER_TYPES)})")
    if sparse != -1 and kind != "gaussian":
        raise FillerError(f"sparse is not supported by the {kind} filler (only gaussian)")
    if count == 0:
        raise FillerError("cannot fill an empty blob")
    if kind == "constant":
        return np.full(shape, np.float32(param.value), np.float32)
    if kind == "uniform":
        return rng.uniform(float(np.float32(param.min)), float(np.float32(param.max)), shape).astype(np.float32)
    if kind == "gaussian":
        if sparse < -1:
            raise FillerError(f"sparse must be -1 or more, got {sparse}")
        data = rng.normal(float(np.float32(param.mean)), float(np.float32(param.std)), shape).astype(np.float32)
        if sparse >= 0:
            if not shape:
                raise FillerError("a sparse gaussian filler needs a blob with at least one axis")
            keep = rng.random(shape) < min(1.0, sparse / shape[0])
            data = (data * keep).astype(np.float32)
        return data
    if kind == "positive_unitball":
        data = rng.uniform(0.0, 1.0, shape).astype(np.float32).reshape(shape[0] if shape else 1, -1)
        return (data / data.sum(axis=1, dtype=np.float32, keepdims=True)).astype(np.float32).reshape(shape)
    if kind in ("xavier", "msra"):
        n = _n(shape if shape else (1,), param.variance_norm)
        if kind == "xavier":
            scale = math.sqrt(3.0 / n)
            return rng.uniform(-scale, scale, shape).astype(np.float32)
        return rng.normal(0.0, math.sqrt(2.0 / n), shape).astype(np.float32)
    if len(shape) != 4 or shape[2] != shape[3]:
        raise FillerError(f"the bilinear filler needs a square 4-D blob, got {list(shape)}")
    k = shape[3]
    f = math.ceil(k / 2.0)
    c = np.float32((k - 1) / (2.0 * f))  # in float, as Caffe's Dtype arithmetic
    axis = np.float32(1) - np.abs(np.arange(k, dtype=np.float32) / np.float32(f) - c)
    kernel = np.multiply.outer(axis, axis)  # [y, x] = axis[y] * axis[x]
    return np.ascontiguousarray(np.broadcast_to(kernel, shape), dtype=np.float32)


def _default(value: float, kind: str = "constant") -> Any:
    from segconvert.formats.caffe_schema import message_class

    msg = message_class("FillerParameter")()
    msg.type = kind
    msg.value = value
    return msg


def _given(holder: Any, name: str, default: Any) -> Any:
    return getattr(holder, name) if holder.HasField(name) else default


def blob_fillers(layer: Any) -> list[tuple[str, Any]]:
    """``(field, FillerParameter)`` for each learnable blob of ``layer`` (a graph ``Layer``), Caffe's defaults
    where the prototxt sets none; None as the filler for blobs Caffe sets itself (BatchNorm, BN statistics)."""
    p, kind = layer.param, layer.type
    if kind in ("Convolution", "Deconvolution", "InnerProduct", "Embed"):
        group = {"InnerProduct": "inner_product_param", "Embed": "embed_param"}.get(kind, "convolution_param")
        holder = getattr(p, group)
        return [
            (f"{group}.weight_filler", _given(holder, "weight_filler", _default(0.0))),
            (f"{group}.bias_filler", _given(holder, "bias_filler", _default(0.0))),
        ]
    if kind == "Scale":
        sp = p.scale_param
        return [("scale_param.filler", _given(sp, "filler", _default(1.0))),
                ("scale_param.bias_filler", _given(sp, "bias_filler", _default(0.0)))]  # fmt: skip
    if kind == "Bias":
        return [("bias_param.filler", _given(p.bias_param, "filler", _default(0.0)))]
    if kind == "PReLU":
        return [("prelu_param.filler", _given(p.prelu_param, "filler", _default(0.25)))]
    if kind == "Normalize":
        return [("norm_param.scale_filler", _given(p.norm_param, "scale_filler", _default(1.0)))]
    if kind == "BatchNorm":
        return [("batch_norm_param", _default(0.0))] * 3
    if kind == "BN":
        bp = p.bn_param
        return [("bn_param.slope_filler", _given(bp, "slope_filler", _default(1.0))),
                ("bn_param.bias_filler", _given(bp, "bias_filler", _default(0.0))),
                ("bn_param", _default(0.0)), ("bn_param", _default(1.0))]  # fmt: skip
    return []


def infer_shapes(net: Net, data_shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Caffe's shapes of every top and learnable blob of ``net``, starting from the data layers' ``data_shapes``
    (top -> shape); sets ``output_shapes``, ``expected_blob_shapes`` and ``net.blob_shapes``."""
    net.blob_shapes = propagate_shapes(net, data_shapes, check_blobs=False, fail=lambda layer, m: _fail(net, layer, m))


def _fail(net: Net, layer: Any, message: str, key: str | None = None) -> ConversionError:
    return ConversionError(
        message, file=net.prototxt, line=layer_line(net.prototxt, layer.name), layer=layer.name, key=key
    )


def fill_net(net: Net, seed: int, data_shapes: Mapping[str, tuple[int, ...]] | None = None) -> None:
    """Give every learnable layer of ``net`` (loaded without weights) its filled blobs (module docstring)."""
    if data_shapes is not None:
        infer_shapes(net, data_shapes)
    rng = np.random.default_rng(int(seed))
    owners: dict[str, Any] = {}
    for layer in net.layers:
        named = [n for n in layer.param_names if n]
        if named and all(n in owners for n in named) and owners[named[0]] is not layer:
            layer.shared_from = owners[named[0]].name
            layer.blobs = list(owners[named[0]].blobs)
            continue
        for n in named:
            owners.setdefault(n, layer)
        if not needs_weights(layer.param) or layer.blobs:
            continue
        if layer.expected_blob_shapes is None:
            raise _fail(net, layer, f"{layer.type}: the blob shapes are unknown (its input shapes could not be "
                        "inferred), so it cannot be filled: give --weights or --init")  # fmt: skip
        fillers = blob_fillers(layer)
        if not fillers:
            raise _fail(net, layer, f"{layer.type} layers have no Caffe fillers here: give --weights or --init")
        blobs = []
        for (key, param), shape in zip(fillers, layer.expected_blob_shapes, strict=False):
            try:
                blobs.append(fill(param, tuple(shape), rng))
            except FillerError as exc:
                raise _fail(net, layer, str(exc), key=key) from None
        layer.blobs = blobs


def convert_filled(net: Net) -> Any:
    """:func:`~segconvert.converters.caffe_generic.convert_caffe_generic` of a net whose blobs may come from
    :func:`fill_net` (the converter reads blobs only from a net with a caffemodel: it is told the prototxt is)."""
    from segconvert.converters.caffe_generic import convert_caffe_generic

    filled = net.caffemodel is None
    if filled:
        net.caffemodel = net.prototxt or Path("<fillers>")
    try:
        return convert_caffe_generic(net)
    finally:
        if filled:
            net.caffemodel = None

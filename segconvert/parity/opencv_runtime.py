"""OpenCV dnn as an independent reference runtime for Caffe nets (``cv2.dnn.readNetFromCaffe``).

OpenCV 4.x implements most Caffe layers exactly, but not all of the forks' layers. The net is run through a
*twin*: a temporary prototxt + caffemodel in which the layers OpenCV lacks or gets wrong are rewritten into
exact equivalents it computes correctly (measured against real-Caffe outputs in
``tests/test_opencv_runtime.py``):

- PSPNet ``BN`` (no OpenCV layer): ``BatchNorm`` (mean, var, factor 1, same eps) + ``Scale`` (slope, bias);
  the Scale keeps the BN layer's name, so its output is the BN output.
- ``Interp``: OpenCV ignores ``shrink_factor`` and the negative pads. Every Interp becomes
  ``Interp {height, width}`` with Caffe's output size (the Caffe result depends on the sizes only); negative
  pads become ``Slice`` crops before it.
- ``InnerProduct`` with ``transpose: true`` (ignored by OpenCV): the weights are transposed instead.
- single-bottom ``Bias`` (no OpenCV layer): ``Scale`` with unit gamma and the bias.
- SSD ``PriorBox``: ``clip`` written out (OpenCV's default is true, the fork's false) and min/max sizes truncated
  to integers, as the fork computes them (OpenCV does not truncate). ``img_h``/``img_w`` (ignored by OpenCV) and
  ``DetectionOutput`` (OpenCV orders the keep_top_k survivors by score, the fork by label) stay unchecked here;
  ``tests/test_caffe_ssd_*.py`` compare them.

Layers no rewrite fixes (``ArgMax``, two-bottom ``Bias``, types not in :data:`VERIFIED_TYPES` or
:data:`FORK_CHECKED_TYPES`, data/loss layers)
are dropped from the twin and reported unchecked, together with every layer that depends on them.
Outputs are keyed by Caffe layer name: the layer's first top right after that layer ran (in-place chains
keep every stage, as in the fixtures' dumps).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segconvert.errors import SegconvertError

__all__ = [
    "VERIFIED_TYPES",
    "FORK_CHECKED_TYPES",
    "net_input",
    "OpenCVResult",
    "opencv_version",
    "opencv_run",
    "opencv_forward",
    "opencv_limitation",
]

# Layer types whose OpenCV 4.x result equals real Caffe (fixtures/caffe/layers, tests/test_opencv_runtime.py),
# with the parameter combinations covered. Rewritten types are listed with the rewrite.
VERIFIED_TYPES: dict[str, str] = {
    "AbsVal": "",
    "BatchNorm": "use_global_stats, eps, scale factor (incl. 0)",
    "BN": "rewritten: BatchNorm + Scale (PSPNet slope, bias, mean, var; eps)",
    "Bias": "rewritten: Scale with unit gamma (single bottom)",
    "Concat": "axis 1 and 2",
    "Convolution": "stride, pad, dilation, group, depthwise, rectangular, with/without bias",
    "Crop": "axis 2, one or per-axis offsets",
    "Deconvolution": "plain, grouped bilinear",
    "Dropout": "TEST phase (identity), in place",
    "ELU": "",
    "Eltwise": "SUM with coeff, PROD, MAX",
    "Flatten": "",
    "InnerProduct": "4-D input, axis 2, bias or not; transpose rewritten",
    "Input": "declared as the twin's input",
    "Interp": "rewritten: height/width (zoom, shrink, both, from/to 1x1); negative pads as Slice crops",
    "LRN": "ACROSS_CHANNELS, WITHIN_CHANNEL",
    "Pooling": "MAX, AVE (ceil rounding, clip rule, divisor), global",
    "Power": "",
    "PReLU": "channel-wise, shared",
    "ReLU": "plain, negative_slope, in place",
    "Reshape": "",
    "Scale": "axis/num_axes variants, bias or not, two bottoms",
    "Sigmoid": "",
    "Slice": "axis 1 and 2 (first top)",
    "Softmax": "axis 1",
    "Split": "implicit (reused blobs)",
    "TanH": "",
}
# Fork layers without a real-Caffe fixture: OpenCV's result equals the fork's forward pass as its code reads
# (segconvert.reference_models.caffe_ssd_ops, tests/test_caffe_ssd_layers.py, tests/test_caffe_forks.py).
FORK_CHECKED_TYPES: dict[str, str] = {
    "Normalize": "SSD: across_spatial / per pixel, shared or per-channel scale (not across_spatial + per-channel)",
    "Permute": "SSD: 4-D orders",
    "PriorBox": "SSD: rewritten: clip explicit, integer sizes; min/max sizes, ratios, flip, clip, step, offset",
    "ShuffleChannel": "farmingyard/ShuffleNet: group 2, 4",
    "ReLU6": "rog93/Caffe-MobileNetV2-ReLU6: negative_slope 0",
    "Swish": "BVLC: beta 1",
}

_NO_OPENCV = {
    "ArgMax": "OpenCV dnn has no ArgMax layer",
    "DetectionOutput": "OpenCV orders the keep_top_k detections by score, the SSD fork by label",
}


@dataclass
class OpenCVResult:
    outputs: dict[str, np.ndarray]  # Caffe layer name -> its first top right after it ran
    unchecked: list[tuple[str, str]]  # (layer, reason): layers OpenCV could not compute exactly
    rewrites: list[tuple[str, str]] = field(default_factory=list)  # (layer, rewrite)
    version: str = ""


def opencv_version() -> str | None:
    """The installed OpenCV version, or None."""
    try:
        import cv2
    except ImportError:
        return None
    return str(cv2.__version__)


def opencv_limitation(layer: Any) -> str | None:
    """Why OpenCV cannot compute this :class:`~segconvert.graph.Layer` exactly, even after rewrites (or None)."""
    if layer.type in _NO_OPENCV:
        return _NO_OPENCV[layer.type]
    if layer.type == "Bias" and len(layer.bottoms) != 1:
        return "OpenCV dnn has no Bias layer (two-bottom Bias cannot be rewritten)"
    if layer.type == "Pooling" and layer.param.pooling_param.pool == 2:
        return "STOCHASTIC pooling"
    fork = _fork_limitation(layer)
    if fork is not None:
        return fork
    if layer.type not in VERIFIED_TYPES and layer.type not in FORK_CHECKED_TYPES:
        return f"OpenCV's {layer.type} is not verified against Caffe"
    return None


def _fork_limitation(layer: Any) -> str | None:
    p = layer.param
    if layer.type == "Normalize" and p.norm_param.across_spatial and not p.norm_param.channel_shared:
        return "OpenCV 4.x rejects across_spatial Normalize with a per-channel scale"
    if layer.type == "PriorBox" and any(p.prior_box_param.HasField(f) for f in ("img_size", "img_h", "img_w")):
        return "OpenCV ignores PriorBox img_size / img_h / img_w"
    if layer.type == "ReLU6" and p.relu6_param.negative_slope != 0:
        return "OpenCV's ReLU6 has no negative_slope"
    if layer.type == "Swish" and p.swish_param.beta != 1:
        return "OpenCV's Swish has no beta"
    return None


def net_inputs(net: Any) -> list[tuple[str, tuple[int, ...] | None]]:
    """Every input of a net, in order: ``input``/``input_dim`` declarations, then ``Input`` layer tops."""
    found = list(net.inputs.items())
    for layer in net.layers:
        if layer.type == "Input":
            shapes = layer.output_shapes or [None] * len(layer.tops)
            found += [(top, shape) for top, shape in zip(layer.tops, shapes, strict=False)]
    return found


def net_input(net: Any) -> tuple[str, tuple[int, ...] | None]:
    """The single input of a net: ``input``/``input_dim`` declaration or an ``Input`` layer (name, shape)."""
    found = net_inputs(net)
    if len(found) != 1:
        names = [n for n, _ in found]
        raise SegconvertError(f"expected a net with one input, found {names or 'none'}", file=net.prototxt)
    return found[0]


# ------------------------------------------------------------------------------------------- the twin


class _Twin:
    """Builds the rewritten NetParameter and the blobs to write (see the module docstring)."""

    def __init__(self, net: Any) -> None:
        from segconvert.formats.caffe_schema import message_class

        self.net = net
        self.LayerParameter = message_class("LayerParameter")
        self.proto = message_class("NetParameter")()
        self.proto.name = net.name or "net"
        self.weights: list[tuple[Any, list[np.ndarray]]] = []
        self.unchecked: list[tuple[str, str]] = []
        self.rewrites: list[tuple[str, str]] = []
        self.names: list[str] = []  # original layers present in the twin, in order
        self.shapes: dict[str, tuple[int, ...] | None] = dict(net.inputs)
        for name, shape in net.inputs.items():
            if shape is None:
                raise SegconvertError("the net input has no declared shape", file=net.prototxt, key=name)
            self.proto.input.append(name)
            self.proto.input_dim.extend(int(d) for d in shape)
        tainted: dict[str, str] = {}
        for layer in net.layers:
            if layer.type == "Input":  # declared instead (same blob, same shape)
                for top, shape in zip(layer.tops, layer.output_shapes, strict=False):
                    self.proto.input.append(top)
                    self.proto.input_dim.extend(int(d) for d in shape or ())
                    self.shapes[top] = shape
                continue
            reason = opencv_limitation(layer)
            dep = next((tainted[b] for b in layer.bottoms if b in tainted), None)
            if reason is None and dep is not None:
                reason = f"its input depends on {dep}, which OpenCV cannot compute"
            if reason is not None:
                self.unchecked.append((layer.name, reason))
                for top in layer.tops:
                    tainted[top] = dep or layer.name
                continue
            self._add(layer)
            for top, shape in zip(layer.tops, layer.output_shapes, strict=False):
                self.shapes[top] = shape

    def _copy(self, layer: Any) -> Any:
        lp = self.LayerParameter()
        lp.CopyFrom(layer.param)
        for name in ("blobs", "include", "exclude", "param", "phase", "bn_param"):
            lp.ClearField(name)
        return lp

    def _layer(self, lp: Any, blobs: Sequence[np.ndarray] = ()) -> None:
        self.proto.layer.append(lp)
        if blobs:
            head = self.LayerParameter(name=lp.name, type=lp.type)
            self.weights.append((head, [np.asarray(b, dtype=np.float32) for b in blobs]))

    def _add(self, layer: Any) -> None:
        self.names.append(layer.name)
        blobs = list(layer.blobs)
        if layer.type == "BN":
            self._bn(layer, blobs)
        elif layer.type == "Interp":
            self._interp(layer)
        elif layer.type == "InnerProduct" and layer.param.inner_product_param.transpose:
            lp = self._copy(layer)
            lp.inner_product_param.transpose = False
            self._layer(lp, [np.ascontiguousarray(blobs[0].T), *blobs[1:]])
            self.rewrites.append((layer.name, "InnerProduct transpose: weights transposed"))
        elif layer.type == "PriorBox":
            lp = self._copy(layer)
            pb = lp.prior_box_param
            pb.clip = bool(pb.clip)  # written out: OpenCV defaults to clipping
            for field in (pb.min_size, pb.max_size):
                field[:] = [float(int(v)) for v in field]  # the fork's ``int min_size_``
            self._layer(lp)
            self.rewrites.append((layer.name, "PriorBox: clip written out, sizes truncated to integers"))
        elif layer.type == "Bias":
            bp = layer.param.bias_param
            lp = self.LayerParameter(name=layer.name, type="Scale", bottom=layer.bottoms, top=layer.tops)
            lp.scale_param.axis = bp.axis
            lp.scale_param.num_axes = bp.num_axes
            lp.scale_param.bias_term = True
            self._layer(lp, [np.ones_like(blobs[0]), blobs[0]])
            self.rewrites.append((layer.name, "Bias -> Scale with unit gamma"))
        else:
            self._layer(self._copy(layer), blobs)

    def _bn(self, layer: Any, blobs: list[np.ndarray]) -> None:
        if len(blobs) != 4:
            raise SegconvertError(
                f"PSPNet BN needs 4 blobs, got {len(blobs)}", file=self.net.caffemodel, layer=layer.name
            )
        slope, bias, mean, var = (np.asarray(b, np.float32).reshape(-1) for b in blobs)
        eps = layer.param.bn_param.eps if layer.param.bn_param.HasField("eps") else 1e-5
        norm = self.LayerParameter(name=f"{layer.name}__opencv_bn", type="BatchNorm", bottom=layer.bottoms)
        norm.top.extend(layer.tops)
        norm.batch_norm_param.use_global_stats = True
        norm.batch_norm_param.eps = eps
        self._layer(norm, [mean, var, np.ones(1, np.float32)])
        scale = self.LayerParameter(name=layer.name, type="Scale", bottom=layer.tops, top=layer.tops)
        scale.scale_param.bias_term = True
        self._layer(scale, [slope, bias])
        self.rewrites.append((layer.name, f"BN -> BatchNorm(eps {eps:g}) + Scale"))

    def _interp(self, layer: Any) -> None:
        ip = layer.param.interp_param
        out = layer.output_shapes[0]
        src = layer.bottoms[0]
        shape = self.shapes.get(src)
        if out is None or shape is None:
            raise SegconvertError("Interp input size unknown", file=self.net.prototxt, layer=layer.name)
        begin, end = -int(ip.pad_beg), int(ip.pad_end)
        if begin or end:
            for axis, n in ((2, shape[2]), (3, shape[3])):
                points = [p for p in (begin, n + end) if 0 < p < n]
                tops = [f"{layer.name}__crop{axis}_{i}" for i in range(len(points) + 1)]
                sl = self.LayerParameter(name=f"{layer.name}__crop{axis}", type="Slice", bottom=[src], top=tops)
                sl.slice_param.axis = axis
                sl.slice_param.slice_point.extend(points)
                self.proto.layer.append(sl)
                src = tops[1 if begin > 0 else 0]
        lp = self.LayerParameter(name=layer.name, type="Interp", bottom=[src])
        lp.top.extend(layer.tops)
        lp.interp_param.height, lp.interp_param.width = int(out[2]), int(out[3])
        self._layer(lp)
        what = ", ".join(f"{f.name} {v}" for f, v in ip.ListFields())
        self.rewrites.append((layer.name, f"Interp {{{what}}} -> height {out[2]} width {out[3]}"))


def _write_twin(twin: _Twin, workdir: Path) -> tuple[Path, Path | None]:
    from google.protobuf import text_format

    from segconvert.formats.caffemodel_writer import write_caffemodel

    proto = workdir / "twin.prototxt"
    proto.write_text(text_format.MessageToString(twin.proto))
    if not twin.weights:
        return proto, None
    return proto, write_caffemodel(workdir / "twin.caffemodel", twin.weights)


# ---------------------------------------------------------------------------------------------- runs


def opencv_run(
    prototxt: str | os.PathLike[str],
    caffemodel: str | os.PathLike[str],
    input_nchw: np.ndarray | Mapping[str, np.ndarray],
    layers: Iterable[str] | None = None,
    input_name: str | None = None,
) -> OpenCVResult:
    """Run the net's OpenCV twin on ``input_nchw``; return the outputs of ``layers`` (default: every layer).

    ``input_nchw``: the array for a one-input net, or ``{input name: array}`` for every input of the net.

    Requested layers that OpenCV cannot compute exactly are left out of ``outputs`` and listed in ``unchecked``.
    Raises :class:`SegconvertError` when OpenCV is not installed or fails on the net.
    """
    try:
        import cv2
    except ImportError:
        raise SegconvertError("OpenCV is not installed: pip install opencv-python-headless") from None
    from segconvert.graph import load_net

    declared = load_net(prototxt)
    if isinstance(input_nchw, Mapping):
        given = {str(k): np.ascontiguousarray(v, dtype=np.float32) for k, v in input_nchw.items()}
    else:
        name, _ = net_input(declared)
        if input_name is not None and input_name != name:
            raise SegconvertError(f"the net's input is {name!r}, not {input_name!r}", file=prototxt)
        given = {name: np.ascontiguousarray(input_nchw, dtype=np.float32)}
    found = dict(net_inputs(declared))
    if set(given) != set(found):
        raise SegconvertError(f"the net's inputs are {list(found)}, given {list(given)}", file=prototxt)
    for name, x in given.items():
        shape = found[name]
        if name not in declared.inputs and shape is not None and tuple(shape) != tuple(x.shape):
            raise SegconvertError(
                f"the Input layer declares {list(shape)}, the input is {list(x.shape)}", file=prototxt, key=name
            )
    redeclared = {n: tuple(x.shape) for n, x in given.items() if n in declared.inputs}
    net = load_net(prototxt, caffemodel, input_shapes=redeclared or None)
    twin = _Twin(net)
    wanted = list(layers) if layers is not None else [layer.name for layer in net.layers]
    in_twin = set(twin.names)
    asked = set(wanted)
    unchecked = [(n, r) for n, r in twin.unchecked if n in asked]
    known = {layer.name for layer in net.layers}
    unchecked += [(n, "no such layer in the net") for n in wanted if n not in known]
    fetch = [n for n in wanted if n in in_twin]
    outputs: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="segconvert-opencv-") as tmp:
        proto, model = _write_twin(twin, Path(tmp))
        try:
            cv_net = cv2.dnn.readNetFromCaffe(str(proto), str(model)) if model else cv2.dnn.readNetFromCaffe(str(proto))
            cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
            cv_net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
            cv_net.enableFusion(False)
            for name, x in given.items():
                cv_net.setInput(x, name)
            results = cv_net.forward(fetch) if fetch else []
        except cv2.error as exc:
            msg = " ".join(str(exc).split())
            raise SegconvertError(
                f"OpenCV dnn {cv2.__version__} failed on the net: {msg[:300]}", file=prototxt
            ) from None
    shapes = {layer.name: layer.output_shapes[0] if layer.output_shapes else None for layer in net.layers}
    for n, arr in zip(fetch, results, strict=True):
        want = shapes.get(n)
        if want is not None and tuple(arr.shape) != tuple(want) and arr.size == int(np.prod(want)):
            arr = arr.reshape(want)
        outputs[n] = arr
    return OpenCVResult(outputs, unchecked, twin.rewrites, str(cv2.__version__))


def opencv_forward(
    prototxt: str | os.PathLike[str],
    caffemodel: str | os.PathLike[str],
    input_nchw: np.ndarray,
    layers: Iterable[str] | None = None,
) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
    """``(outputs by layer name, unchecked [(layer, reason)])``; see :func:`opencv_run`."""
    result = opencv_run(prototxt, caffemodel, input_nchw, layers)
    return result.outputs, result.unchecked

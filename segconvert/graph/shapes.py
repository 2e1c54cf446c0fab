"""Caffe's exact output-shape rules, one function per layer type.

Each rule takes the layer parameters and the bottom shapes and returns the top shapes (a list of tuples)
plus the expected parameter-blob shapes (a list of tuples, empty for layers without weights).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from typing import Any

Shape = tuple[int, ...]


class ShapeError(ValueError):
    """The layer's parameters do not fit its bottom shapes."""


def _pair(repeated: Sequence[int], h: int | None, w: int | None, has_h: bool, default: int) -> tuple[int, int]:
    if has_h:
        return int(h or 0), int(w or 0)
    if len(repeated) == 0:
        return default, default
    if len(repeated) == 1:
        return int(repeated[0]), int(repeated[0])
    return int(repeated[0]), int(repeated[1])


def conv_geometry(p: Any) -> dict[str, tuple[int, int]]:
    """kernel, stride, pad, dilation of a ConvolutionParameter as (h, w) pairs."""
    return {
        "kernel": _pair(p.kernel_size, p.kernel_h, p.kernel_w, p.HasField("kernel_h"), 0),
        "stride": _pair(p.stride, p.stride_h, p.stride_w, p.HasField("stride_h"), 1),
        "pad": _pair(p.pad, p.pad_h, p.pad_w, p.HasField("pad_h"), 0),
        "dilation": _pair(p.dilation, None, None, False, 1),
    }


def pool_geometry(p: Any, in_hw: tuple[int, int] | None = None) -> dict[str, tuple[int, int]]:
    """kernel, stride, pad of a PoolingParameter; global pooling takes the input size as kernel."""
    if p.global_pooling:
        if in_hw is None:
            raise ShapeError("global pooling needs the input size")
        kernel = in_hw
    elif p.HasField("kernel_h"):
        kernel = (p.kernel_h, p.kernel_w)
    else:
        kernel = (p.kernel_size, p.kernel_size)
    stride = (p.stride_h, p.stride_w) if p.HasField("stride_h") else (p.stride, p.stride)
    pad = (p.pad_h, p.pad_w) if p.HasField("pad_h") else (p.pad, p.pad)
    if p.global_pooling:
        stride, pad = (1, 1), (0, 0)
    return {"kernel": tuple(map(int, kernel)), "stride": tuple(map(int, stride)), "pad": tuple(map(int, pad))}


def caffe_pool_size(size: int, kernel: int, stride: int, pad: int, any_pad: bool, ceil: bool = True) -> int:
    """Caffe's pooled size: ceil rounding, minus one when the last window would start in the padding."""
    if ceil:
        out = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1
    else:
        out = (size + 2 * pad - kernel) // stride + 1
    if any_pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def interp_size(
    h: int,
    w: int,
    *,
    height: int | None = None,
    width: int | None = None,
    zoom_factor: int | None = None,
    shrink_factor: int | None = None,
    pad_beg: int = 0,
    pad_end: int = 0,
) -> tuple[int, int]:
    """Output size of the DeepLab/PSPNet ``Interp`` layer (fields tested by presence, in Caffe's order)."""
    if pad_beg > 0 or pad_end > 0:
        raise ShapeError("Interp pad_beg/pad_end must be <= 0 (only cropping is supported)")
    h_eff, w_eff = h + pad_beg + pad_end, w + pad_beg + pad_end
    if h_eff <= 0 or w_eff <= 0:
        raise ShapeError(f"Interp input {h}x{w} is empty after pads {pad_beg}/{pad_end}")
    if shrink_factor is not None and zoom_factor is None:
        if shrink_factor < 1:
            raise ShapeError("Interp shrink_factor must be >= 1")
        return (h_eff - 1) // shrink_factor + 1, (w_eff - 1) // shrink_factor + 1
    if zoom_factor is not None and shrink_factor is None:
        if zoom_factor < 1:
            raise ShapeError("Interp zoom_factor must be >= 1")
        return h_eff + (h_eff - 1) * (zoom_factor - 1), w_eff + (w_eff - 1) * (zoom_factor - 1)
    if height is not None and width is not None:
        if height < 1 or width < 1:
            raise ShapeError(f"Interp height/width must be >= 1, got {height}x{width}")
        return int(height), int(width)
    if shrink_factor is not None and zoom_factor is not None:
        if shrink_factor < 1 or zoom_factor < 1:
            raise ShapeError("Interp shrink_factor and zoom_factor must be >= 1")
        h2, w2 = (h_eff - 1) // shrink_factor + 1, (w_eff - 1) // shrink_factor + 1
        return h2 + (h2 - 1) * (zoom_factor - 1), w2 + (w2 - 1) * (zoom_factor - 1)
    raise ShapeError("Interp needs height+width, zoom_factor and/or shrink_factor")


def interp_args(p: Any) -> dict[str, Any]:
    """The InterpParameter fields that are present, as keyword arguments of :func:`interp_size`."""
    out: dict[str, Any] = {"pad_beg": p.pad_beg, "pad_end": p.pad_end}
    for name in ("height", "width", "zoom_factor", "shrink_factor"):
        if p.HasField(name):
            out[name] = getattr(p, name)
    if ("height" in out) != ("width" in out):
        out.pop("height", None)
        out.pop("width", None)
    return out


def _axis(axis: int, ndim: int) -> int:
    a = axis + ndim if axis < 0 else axis
    if not 0 <= a < max(ndim, 1):
        raise ShapeError(f"axis {axis} out of range for a {ndim}-D blob")
    return a


def _count(shape: Sequence[int]) -> int:
    return int(math.prod(shape))


# Rules ---------------------------------------------------------------------------------------------
Rule = Callable[[Any, list[Shape]], tuple[list[Shape], list[Shape]]]


def _convolution(layer: Any, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.convolution_param
    g = conv_geometry(p)
    n, c, h, w = _nchw(bottoms[0])
    groups = p.group or 1
    if c % groups or p.num_output % groups:
        raise ShapeError(f"channels {c} / num_output {p.num_output} not divisible by group {groups}")
    outs = []
    for hw, k, s, pad, d in zip((h, w), g["kernel"], g["stride"], g["pad"], g["dilation"], strict=True):
        if k <= 0 or s <= 0:
            raise ShapeError("kernel size and stride must be positive")
        o = (hw + 2 * pad - (d * (k - 1) + 1)) // s + 1
        if o <= 0:
            raise ShapeError(f"output size {o} <= 0 (input {hw}, kernel {k}, dilation {d}, pad {pad})")
        outs.append(o)
    params = [(p.num_output, c // groups, *g["kernel"])]
    if p.bias_term:
        params.append((p.num_output,))
    return [(n, p.num_output, outs[0], outs[1])] * len(layer.top), params


def _deconvolution(layer: Any, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.convolution_param
    g = conv_geometry(p)
    n, c, h, w = _nchw(bottoms[0])
    groups = p.group or 1
    outs = [
        s * (hw - 1) + d * (k - 1) + 1 - 2 * pad
        for hw, k, s, pad, d in zip((h, w), g["kernel"], g["stride"], g["pad"], g["dilation"], strict=True)
    ]
    params = [(c, p.num_output // groups, *g["kernel"])]
    if p.bias_term:
        params.append((p.num_output,))
    return [(n, p.num_output, outs[0], outs[1])], params


def _pooling(layer: Any, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.pooling_param
    n, c, h, w = _nchw(bottoms[0])
    g = pool_geometry(p, (h, w))
    if p.global_pooling:
        return [(n, c, 1, 1)] * len(layer.top), []
    any_pad = g["pad"][0] > 0 or g["pad"][1] > 0
    ceil = p.round_mode == 0
    if g["pad"][0] >= g["kernel"][0] or g["pad"][1] >= g["kernel"][1]:
        raise ShapeError("pooling pad must be smaller than the kernel")
    oh = caffe_pool_size(h, g["kernel"][0], g["stride"][0], g["pad"][0], any_pad, ceil)
    ow = caffe_pool_size(w, g["kernel"][1], g["stride"][1], g["pad"][1], any_pad, ceil)
    return [(n, c, oh, ow)] * len(layer.top), []


def _inner_product(layer: Any, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.inner_product_param
    shape = bottoms[0]
    axis = _axis(p.axis, len(shape))
    k = _count(shape[axis:])
    params = [(k, p.num_output) if p.transpose else (p.num_output, k)]
    if p.bias_term:
        params.append((p.num_output,))
    return [(*shape[:axis], p.num_output)], params


def _same(layer: Any, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    return [bottoms[0]] * max(len(layer.top), 1), []


def _batch_norm(layer: Any, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    c = bottoms[0][1]
    return [bottoms[0]], [(c,), (c,), (1,)]


def _bn_psp(layer: Any, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    c = bottoms[0][1]
    return [bottoms[0]], [(1, c, 1, 1)] * 4


def _scale_like(layer: Any, bottoms: list[Shape], p: Any, bias_term: bool) -> tuple[list[Shape], list[Shape]]:
    shape = bottoms[0]
    axis = _axis(p.axis, len(shape)) if shape else 0
    num_axes = p.num_axes
    pshape = tuple(shape[axis:]) if num_axes == -1 else tuple(shape[axis : axis + num_axes])
    params = [pshape]
    if bias_term:
        params.append(pshape)
    return [shape], params


def _scale(layer: Any, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.scale_param
    if len(bottoms) > 1:
        params = [tuple(bottoms[1])] if p.bias_term else []
        return [bottoms[0]], params
    return _scale_like(layer, bottoms, p, p.bias_term)


def _bias(layer: Any, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    if len(bottoms) > 1:
        return [bottoms[0]], []
    return _scale_like(layer, bottoms, layer.bias_param, False)


def _prelu(layer: Any, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    c = bottoms[0][1] if len(bottoms[0]) > 1 else 1
    return [bottoms[0]], [() if layer.prelu_param.channel_shared else (c,)]  # Caffe: a 0-axis blob when shared


def _interp(layer: Any, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    n, c, h, w = _nchw(bottoms[0])
    p = layer.interp_param
    args = interp_args(p)
    if len(bottoms) > 1 and "height" not in args and "zoom_factor" not in args and "shrink_factor" not in args:
        oh, ow = bottoms[1][2], bottoms[1][3]
    else:
        oh, ow = interp_size(h, w, **args)
    return [(n, c, oh, ow)], []


def _eltwise(layer: Any, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    for b in bottoms[1:]:
        if tuple(b) != tuple(bottoms[0]):
            raise ShapeError(f"Eltwise bottoms differ in shape: {list(bottoms[0])} vs {list(b)}")
    p = layer.eltwise_param
    if len(p.coeff) and len(p.coeff) != len(bottoms):
        raise ShapeError("Eltwise needs one coeff per bottom")
    return [bottoms[0]], []


def _concat(layer: Any, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.concat_param
    ref = list(bottoms[0])
    axis = _axis(p.axis if p.HasField("axis") or not p.HasField("concat_dim") else p.concat_dim, len(ref))
    total = 0
    for b in bottoms:
        if len(b) != len(ref) or any(b[i] != ref[i] for i in range(len(ref)) if i != axis):
            raise ShapeError(f"Concat bottoms differ outside axis {axis}: {ref} vs {list(b)}")
        total += b[axis]
    ref[axis] = total
    return [tuple(ref)], []


def _slice(layer: Any, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.slice_param
    shape = list(bottoms[0])
    axis = _axis(p.axis if p.HasField("axis") or not p.HasField("slice_dim") else p.slice_dim, len(shape))
    n_top = len(layer.top)
    points = list(p.slice_point)
    if points:
        if len(points) != n_top - 1:
            raise ShapeError("Slice needs one slice_point fewer than tops")
        bounds = [0, *points, shape[axis]]
    else:
        if shape[axis] % n_top:
            raise ShapeError(f"Slice: axis size {shape[axis]} not divisible by {n_top} tops")
        step = shape[axis] // n_top
        bounds = [i * step for i in range(n_top + 1)]
    outs = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if b <= a:
            raise ShapeError("Slice points must increase")
        s = list(shape)
        s[axis] = b - a
        outs.append(tuple(s))
    return outs, []


def _split(layer: Any, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    return [bottoms[0]] * len(layer.top), []


def _crop(layer: Any, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.crop_param
    a, b = bottoms[0], bottoms[1]
    axis = _axis(p.axis, len(a))
    out = (*a[:axis], *b[axis:])
    offsets = list(p.offset)
    for i in range(axis, len(a)):
        off = 0 if not offsets else offsets[0] if len(offsets) == 1 else offsets[i - axis]
        if off + out[i] > a[i]:
            raise ShapeError(f"Crop offset {off} + size {out[i]} exceeds bottom size {a[i]} on axis {i}")
    return [out], []


def _flatten(layer: Any, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.flatten_param
    s = bottoms[0]
    a = _axis(p.axis, len(s))
    e = _axis(p.end_axis, len(s))
    return [(*s[:a], _count(s[a : e + 1]), *s[e + 1 :])], []


def _reshape(layer: Any, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.reshape_param
    s = list(bottoms[0])
    start = _axis(p.axis, len(s) + 1) if p.axis >= 0 else len(s) + 1 + p.axis
    end = len(s) if p.num_axes == -1 else start + p.num_axes
    dims = list(p.shape.dim)
    new = []
    infer = -1
    for i, d in enumerate(dims):
        if d == 0:
            new.append(s[start + i])
        elif d == -1:
            if infer >= 0:
                raise ShapeError("Reshape: more than one -1")
            infer = len(new)
            new.append(1)
        else:
            new.append(int(d))
    out = s[:start] + new + s[end:]
    if infer >= 0:
        known = _count(out)
        pos = start + infer
        if known == 0 or _count(s) % known:
            raise ShapeError("Reshape: cannot infer the -1 dimension")
        out[pos] = _count(s) // known
    if _count(out) != _count(s):
        raise ShapeError(f"Reshape: {s} has {_count(s)} values, {out} needs {_count(out)}")
    return [tuple(out)], []


def _argmax(layer: Any, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    p = layer.argmax_param
    s = list(bottoms[0])
    if p.HasField("axis"):
        a = _axis(p.axis, len(s))
        s[a] = p.top_k
        return [tuple(s)], []
    out = [1] * max(len(s), 3)
    out[0] = s[0]
    out[2] = p.top_k
    if p.out_max_val:
        out[1] = 2
    return [tuple(out)], []


def _input(layer: Any, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    shapes = [tuple(int(d) for d in s.dim) for s in layer.input_param.shape]
    if len(shapes) == 1:
        shapes = shapes * len(layer.top)
    if len(shapes) != len(layer.top):
        raise ShapeError("Input needs one shape, or one per top")
    return shapes, []


def _scalar(layer: Any, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    return [()] * len(layer.top), []


def _silence(layer: Any, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    return [], []


def _data(layer: Any, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    """Data layers: (batch, 3, crop, crop) where the prototxt says so; the label has one channel."""
    crop = layer.transform_param.crop_size
    batch = 1
    for pname in ("image_data_param", "data_param", "memory_data_param"):
        if layer.HasField(pname):
            batch = getattr(layer, pname).batch_size or 1
    if layer.HasField("memory_data_param"):
        m = layer.memory_data_param
        return [(m.batch_size, m.channels, m.height, m.width), (m.batch_size, 1, 1, 1)][: len(layer.top)], []
    if not crop:
        raise ShapeError("data layer without crop_size: output shape unknown")
    # image, label, and DeepLab's ImageSegData ``data_dim`` (height, width of each image)
    shapes = [(batch, 3, crop, crop), (batch, 1, crop, crop), (batch, 1, 1, 2)]
    return shapes[: len(layer.top)], []


# Fork layers (SSD: weiliu89/caffe ssd; farmingyard/ShuffleNet; ChenYingpeng/caffe-yolov3; BVLC master; SENet)
def _f32(v: float) -> float:
    return struct.unpack("<f", struct.pack("<f", v))[0]


def prior_box_ratios(p: Any) -> list[float]:
    """The SSD fork's aspect-ratio list: 1, then each ratio once (within 1e-6) and, with flip, its reciprocal."""
    ratios = [1.0]
    for ar in (_f32(a) for a in p.aspect_ratio):
        if all(abs(ar - r) >= 1e-6 for r in ratios):
            ratios.append(ar)
            if p.flip:
                ratios.append(_f32(1.0 / ar))
    return ratios


def prior_box_count(p: Any) -> int:
    """Priors per feature-map cell of a PriorBoxParameter (the fork's ``num_priors_``)."""
    if not len(p.min_size) or any(m <= 0 for m in p.min_size):
        raise ShapeError("PriorBox needs positive min_size values")
    if len(p.max_size) and len(p.max_size) != len(p.min_size):
        raise ShapeError("PriorBox needs as many max_size as min_size values")
    if any(mx <= mn for mn, mx in zip(p.min_size, p.max_size, strict=False)):
        raise ShapeError("PriorBox max_size must be greater than min_size")
    if len(p.variance) not in (0, 1, 4):
        raise ShapeError(f"PriorBox needs 1 or 4 variance values, got {len(p.variance)}")
    return len(prior_box_ratios(p)) * len(p.min_size) + len(p.max_size)


def _prior_box(layer: Any, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    _, _, h, w = _nchw(bottoms[0])
    p = layer.prior_box_param
    if not (p.HasField("img_h") or p.HasField("img_size")) and len(bottoms) < 2:
        raise ShapeError("PriorBox needs the image as second bottom, or img_size / img_h + img_w")
    return [(1, 2, h * w * prior_box_count(p) * 4)], []


def _permute(layer: Any, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    s = bottoms[0]
    order = list(layer.permute_param.order)
    if any(o >= len(s) for o in order) or len(set(order)) != len(order):
        raise ShapeError(f"Permute order {order} does not fit a {len(s)}-D blob (or repeats an axis)")
    order += [i for i in range(len(s)) if i not in order]
    return [tuple(s[o] for o in order)], []


def _normalize(layer: Any, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    c = bottoms[0][1]
    return [bottoms[0]], [(1,) if layer.norm_param.channel_shared else (c,)]


def _shuffle_channel(layer: Any, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    group = layer.shuffle_channel_param.group
    if group < 1 or bottoms[0][1] % group:
        raise ShapeError(f"ShuffleChannel: {bottoms[0][1]} channels not divisible by group {group}")
    return [bottoms[0]], []


def upsample_factors(p: Any, h: int, w: int) -> tuple[int, int]:
    """Integer (h, w) factors of a one-bottom ``Upsample``: scale, scale_h/scale_w or upsample_h/upsample_w."""
    if p.HasField("upsample_h") or p.HasField("upsample_w"):
        if p.upsample_h % h or p.upsample_w % w or p.upsample_h < h or p.upsample_w < w:
            raise ShapeError(f"Upsample to {p.upsample_h}x{p.upsample_w} is not an integer multiple of {h}x{w}")
        return p.upsample_h // h, p.upsample_w // w
    if p.HasField("scale_h") or p.HasField("scale_w"):
        return int(p.scale_h), int(p.scale_w)
    return (int(p.scale), int(p.scale)) if p.HasField("scale") else (1, 1)  # the YOLOv3 fork's default


def _upsample(layer: Any, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    n, c, h, w = _nchw(bottoms[0])
    p = layer.upsample_param
    if len(bottoms) > 1:  # SegNet max-unpooling: the size of the output
        if p.HasField("upsample_h"):
            return [(n, c, p.upsample_h, p.upsample_w)], []
        sh, sw = (p.scale_h, p.scale_w) if p.HasField("scale_h") else (p.scale or 2, p.scale or 2)
        return [(n, c, h * sh - int(p.pad_out_h), w * sw - int(p.pad_out_w))], []
    fh, fw = upsample_factors(p, h, w)
    if fh < 1 or fw < 1:
        raise ShapeError("Upsample factors must be >= 1")
    return [(n, c, h * fh, w * fw)], []


def _axpy(layer: Any, bottoms: list[Shape]) -> tuple[list[Shape], list[Shape]]:
    a, x, y = bottoms[0], bottoms[1], bottoms[2]
    if tuple(x) != tuple(y) or len(a) < 2 or tuple(a[:2]) != tuple(x[:2]) or _count(a[2:]) != 1:
        raise ShapeError(f"Axpy needs a (N, C, 1, 1), x and y of one shape: {list(a)}, {list(x)}, {list(y)}")
    return [x], []


RULES: dict[str, Rule] = {
    "Convolution": _convolution,
    "Deconvolution": _deconvolution,
    "Pooling": _pooling,
    "InnerProduct": _inner_product,
    "ReLU": _same,
    "PReLU": _prelu,
    "ELU": _same,
    "Sigmoid": _same,
    "TanH": _same,
    "AbsVal": _same,
    "Power": _same,
    "BNLL": _same,
    "Exp": _same,
    "Log": _same,
    "Threshold": _same,
    "Dropout": _same,
    "Softmax": _same,
    "LRN": _same,
    "MVN": _same,
    "BatchNorm": _batch_norm,
    "BN": _bn_psp,
    "Scale": _scale,
    "Bias": _bias,
    "Interp": _interp,
    "Eltwise": _eltwise,
    "Concat": _concat,
    "Slice": _slice,
    "Split": _split,
    "Crop": _crop,
    "Flatten": _flatten,
    "Reshape": _reshape,
    "ArgMax": _argmax,
    "Input": _input,
    "SoftmaxWithLoss": _scalar,
    "Accuracy": _scalar,
    "EuclideanLoss": _scalar,
    "SigmoidCrossEntropyLoss": _scalar,
    "Silence": _silence,
    "ImageSegData": _data,
    "ImageData": _data,
    "Data": _data,
    "MemoryData": _data,
    "Permute": _permute,
    "Normalize": _normalize,
    "PriorBox": _prior_box,
    "ShuffleChannel": _shuffle_channel,
    "Upsample": _upsample,
    "ReLU6": _same,
    "Clip": _same,
    "Swish": _same,
    "Axpy": _axpy,
    "MultiBoxLoss": _scalar,
    "DetectionEvaluate": _scalar,
    # DetectionOutput: the number of detections is data dependent (its top's shape stays unknown)
}

# Layer types whose blobs are learned parameters (a prototxt layer of these types needs weights).
WEIGHTED_TYPES = {"Convolution", "Deconvolution", "InnerProduct", "BatchNorm", "BN", "PReLU", "Embed", "Normalize"}


def needs_weights(layer: Any) -> bool:
    if layer.type in WEIGHTED_TYPES:
        return True
    return layer.type in ("Scale", "Bias") and len(layer.bottom) == 1


def _nchw(shape: Shape) -> tuple[int, int, int, int]:
    if len(shape) != 4:
        raise ShapeError(f"expects a 4-D (N, C, H, W) bottom, got {list(shape)}")
    return shape[0], shape[1], shape[2], shape[3]

"""One Keras layer -> its module spec (constructor, arguments, layouts) and tensors, for the generic Keras path.

:func:`translate` reads the layer's config exactly as Keras 1, 2 (tf_keras) or 3 wrote it (Keras 1 names such as
``Convolution2D`` / ``border_mode`` / ``nb_filter`` are normalised first), maps its weights onto the module's
state_dict (HWIO -> OIHW, Dense transposed, depthwise (kh, kw, in, m) -> (in*m, 1, kh, kw)), and says which
layout each input needs (``nc``: channels at dim 1, ``keras``: as Keras holds it, ``None``: either).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["LayerSpec", "Unsupported", "translate", "SUPPORTED", "IDENTITY_LAYERS", "keras1_normalise"]


class Unsupported(Exception):
    """The layer (class or configuration) has no exact PyTorch module here."""


@dataclass
class LayerSpec:
    ctor: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    layouts: list[str | None] | None = None
    out_layout: str | None = None
    out_ranks: list[int] | None = None
    state: dict[str, np.ndarray] = field(default_factory=dict)
    activation: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


IDENTITY_LAYERS = (
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise", "GaussianDropout",
    "AlphaDropout", "ActivityRegularization",
)  # fmt: skip
_MERGE = {"Add": "add", "Subtract": "subtract", "Multiply": "multiply", "Average": "average", "Maximum": "maximum",
          "Minimum": "minimum"}  # fmt: skip
_K1_MERGE = {"sum": "add", "mul": "multiply", "ave": "average", "max": "maximum"}
_K1_CLASSES = {"Convolution1D": "Conv1D", "Convolution2D": "Conv2D", "Convolution3D": "Conv3D",
               "AtrousConvolution2D": "Conv2D", "AtrousConvolution1D": "Conv1D",
               "SeparableConvolution2D": "SeparableConv2D", "Deconvolution2D": "Conv2DTranspose"}  # fmt: skip
_ACTS = {"relu": ("nn.ReLU", []), "relu6": ("nn.ReLU6", []), "sigmoid": ("nn.Sigmoid", []), "tanh": ("nn.Tanh", []),
         "softplus": ("nn.Softplus", []), "softsign": ("nn.Softsign", []), "swish": ("nn.SiLU", []),
         "silu": ("nn.SiLU", []), "gelu": ("nn.GELU", []), "elu": ("nn.ELU", []), "selu": ("nn.SELU", []),
         "linear": ("nn.Identity", []), "leaky_relu": ("nn.LeakyReLU", [0.2]), "mish": ("nn.Mish", [])}  # fmt: skip
_ARG_ACTS = (*_ACTS, "hard_sigmoid", "softmax", "log_softmax")


def _f32(v: Any) -> float:
    """A float32 config value as the shortest decimal of that float32 (0.1, not 0.10000000149011612)."""
    return float(str(np.float32(v)))


def _pair(v: Any, n: int) -> list[int]:
    if isinstance(v, int | float):
        return [int(v)] * n
    v = [int(x) for x in v]
    return v * n if len(v) == 1 else v


def keras1_normalise(cls: str, cfg: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Keras 1 class and config keys -> their Keras 2 equivalents (one to one)."""
    c = dict(cfg)
    cls = _K1_CLASSES.get(cls, cls)
    ren = {"nb_filter": "filters", "border_mode": "padding", "subsample": "strides", "atrous_rate": "dilation_rate",
           "output_dim": "units", "bias": "use_bias", "subsample_length": "strides", "pool_length": "pool_size",
           "stride": "strides", "filter_length": "kernel_size", "concat_axis": "axis", "p": "rate"}  # fmt: skip
    for old, new in ren.items():
        if old in c and new not in c:
            c[new] = c.pop(old)
    if "nb_row" in c and "kernel_size" not in c:
        c["kernel_size"] = [c.pop("nb_row"), c.pop("nb_col")]
    if "dim_ordering" in c and "data_format" not in c:
        c["data_format"] = "channels_first" if c["dim_ordering"] == "th" else "channels_last"
    if c.get("padding") == "full":
        raise Unsupported("border_mode 'full'")
    return cls, c


def _act_name(v: Any) -> str:
    if isinstance(v, dict):  # Keras 3 serialised function
        v = v.get("config") if isinstance(v.get("config"), str) else v.get("class_name")
    return str(v or "linear")


def act_spec(name: str, dim: int, hard_slope: float) -> tuple[str, list[Any]]:
    """(constructor, args) of an activation module."""
    if name == "softmax":
        return "nn.Softmax", [dim]
    if name == "log_softmax":
        return "nn.LogSoftmax", [dim]
    if name == "hard_sigmoid":
        return "HardSigmoid", [hard_slope]
    if name not in _ACTS:
        raise Unsupported(f"activation {name!r}")
    return _ACTS[name]


class Ctx:
    """What :func:`translate` knows about one layer call."""

    def __init__(self, cls, cfg, ranks, layouts, weights, hard_slope, channels_first_file=False) -> None:
        self.cls, self.cfg, self.ranks, self.layouts = cls, cfg, ranks, layouts
        self.weights, self.hard_slope = weights, hard_slope

    def axis(self, a: int, rank: int, layout: str | None) -> int:
        """Internal dim of Keras axis ``a`` for a tensor of ``rank`` held in ``layout``."""
        a = a % rank
        if layout != "nc" or rank < 3:
            return a
        return 1 if a == rank - 1 else a if a == 0 else a + 1

    def take(self, names: list[str]) -> dict[str, np.ndarray]:
        """The layer's weights named ``names`` (by name where the file names them, else in order)."""
        w = self.weights
        if w and all(n is not None for n, _ in w):
            got = {n: a for n, a in w}
            if sorted(got) != sorted(names):
                raise ValueError(f"weights {sorted(got)} do not fit the config (expects {names})")
            return got
        if len(w) != len(names):
            raise ValueError(f"{len(w)} weight arrays, the config needs {len(names)} ({names})")
        return {n: a for n, (_, a) in zip(names, w, strict=True)}

    def activation(self, spec: LayerSpec, layout: str | None) -> LayerSpec:
        name = _act_name(self.cfg.get("activation"))
        if name != "linear":
            if name not in _ARG_ACTS:
                raise Unsupported(f"activation {name!r}")
            rank = (spec.out_ranks or self.ranks)[0]
            spec.activation = {"name": name, "dim": self.axis(-1, rank, layout), "hard_slope": self.hard_slope}
        return spec


def _image(cfg: dict[str, Any]) -> str:
    return "keras" if cfg.get("data_format") == "channels_first" else "nc"


def _conv(c: Ctx) -> LayerSpec:
    cfg, rank = c.cfg, c.ranks[0] - 2
    lay = _image(cfg)
    k = _pair(cfg["kernel_size"], rank)
    s, d = _pair(cfg.get("strides", 1), rank), _pair(cfg.get("dilation_rate", 1), rank)
    pad = str(cfg.get("padding", "valid")).lower()
    bias = bool(cfg.get("use_bias", True))
    groups = int(cfg.get("groups", 1))
    if c.cls.startswith("DepthwiseConv"):
        w = c.take(["depthwise_kernel" if c.weights and c.weights[0][0] else "kernel"] + ["bias"] * bias)
        kern = w.pop("depthwise_kernel", None)
        kern = w.pop("kernel") if kern is None else kern
        cin, mult = kern.shape[-2], kern.shape[-1]
        weight = np.moveaxis(kern.reshape(*k, cin * mult), -1, 0)[:, None]
        cout, groups = cin * mult, cin
    else:
        w = c.take(["kernel"] + ["bias"] * bias)
        kern = w["kernel"]
        if cfg.get("data_format") == "channels_first" and kern.shape[0] != k[0] and kern.shape[-1] != cfg["filters"]:
            kern = np.moveaxis(kern, (0, 1), (-1, -2))  # Keras 1 'th' kernel (out, in, *k)
        weight = np.moveaxis(kern, (-1, -2), (0, 1))
        cout = weight.shape[0]
        cin = weight.shape[1] * groups
    state = {"weight": weight, **({"bias": w["bias"]} if bias else {})}
    args = [cin, cout, k, s]
    static = pad == "valid" or (
        pad == "same" and s == [1] * rank and all((kk - 1) * dd % 2 == 0 for kk, dd in zip(k, d, strict=True))
    )
    if static:
        p = [0] * rank if pad == "valid" else [(kk - 1) * dd // 2 for kk, dd in zip(k, d, strict=True)]
        spec = LayerSpec(f"nn.Conv{rank}d", args, {"padding": p, "dilation": d, "groups": groups, "bias": bias})
    else:
        spec = LayerSpec("Conv", args, {"dilation": d, "groups": groups, "bias": bias, "padding": pad})
    spec.layouts, spec.out_layout, spec.state = [lay], lay, state
    return c.activation(spec, lay)


def _separable(c: Ctx) -> LayerSpec:
    cfg, rank = c.cfg, c.ranks[0] - 2
    lay = _image(cfg)
    bias = bool(cfg.get("use_bias", True))
    w = c.take(["depthwise_kernel", "pointwise_kernel"] + ["bias"] * bias)
    k = _pair(cfg["kernel_size"], rank)
    dk, pk = w["depthwise_kernel"], w["pointwise_kernel"]
    cin, mult = dk.shape[-2], dk.shape[-1]
    state = {
        "depthwise.weight": np.moveaxis(dk.reshape(*k, cin * mult), -1, 0)[:, None],
        "pointwise.weight": np.moveaxis(pk, (-1, -2), (0, 1)),
        **({"pointwise.bias": w["bias"]} if bias else {}),
    }
    kwargs = {"dilation": _pair(cfg.get("dilation_rate", 1), rank), "depth_multiplier": int(mult), "bias": bias,
              "padding": str(cfg.get("padding", "valid")).lower()}  # fmt: skip
    spec = LayerSpec("SeparableConv", [cin, pk.shape[-1], k, _pair(cfg.get("strides", 1), rank)], kwargs)
    spec.layouts, spec.out_layout, spec.state = [lay], lay, state
    return c.activation(spec, lay)


def _transpose(c: Ctx) -> LayerSpec:
    cfg, rank = c.cfg, c.ranks[0] - 2
    lay = _image(cfg)
    bias = bool(cfg.get("use_bias", True))
    w = c.take(["kernel"] + ["bias"] * bias)
    weight = np.moveaxis(w["kernel"], (-1, -2), (0, 1))  # (k.., out, in) -> (in, out, k..)
    op = cfg.get("output_padding")
    kwargs = {"dilation": _pair(cfg.get("dilation_rate", 1), rank), "bias": bias,
              "padding": str(cfg.get("padding", "valid")).lower(),
              "output_padding": None if op is None else _pair(op, rank)}  # fmt: skip
    args = [weight.shape[0], weight.shape[1], _pair(cfg["kernel_size"], rank), _pair(cfg.get("strides", 1), rank)]
    spec = LayerSpec("ConvTranspose", args, kwargs, [lay], lay)
    spec.state = {"weight": weight, **({"bias": w["bias"]} if bias else {})}
    return c.activation(spec, lay)


def _dense(c: Ctx) -> LayerSpec:
    bias = bool(c.cfg.get("use_bias", True))
    w = c.take(["kernel"] + ["bias"] * bias)
    lay, rank = c.layouts[0], c.ranks[0]
    dim = c.axis(-1, rank, lay)
    args = [w["kernel"].shape[0], w["kernel"].shape[1]]
    spec = (
        LayerSpec("nn.Linear", args, {"bias": bias})
        if dim == rank - 1
        else LayerSpec("Dense", args, {"bias": bias, "dim": dim})
    )
    spec.state = {"weight": w["kernel"].T, **({"bias": w["bias"]} if bias else {})}
    return c.activation(spec, lay)


def _batchnorm(c: Ctx) -> LayerSpec:
    cfg = c.cfg
    axis = cfg.get("axis", -1)
    axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
    if not isinstance(axis, int):
        raise Unsupported(f"axis {axis}")
    center, scale = bool(cfg.get("center", True)), bool(cfg.get("scale", True))
    w = c.take(["gamma"] * scale + ["beta"] * center + ["moving_mean", "moving_variance"])
    n = w["moving_mean"].shape[0]
    dim = c.axis(axis, c.ranks[0], c.layouts[0])
    spec = LayerSpec("BatchNorm", [n], {"eps": float(cfg.get("epsilon", 1e-3)), "dim": dim})
    spec.state = {"weight": w.get("gamma", np.ones(n, np.float32)), "bias": w.get("beta", np.zeros(n, np.float32)),
                  "running_mean": w["moving_mean"], "running_var": w["moving_variance"]}  # fmt: skip
    spec.notes += [f"no {k} (scale/center off): using {v}" for k, v, on in (("gamma", 1, scale), ("beta", 0, center))
                   if not on]  # fmt: skip
    return spec


def _layernorm(c: Ctx) -> LayerSpec:
    cfg, rank = c.cfg, c.ranks[0]
    axes = cfg.get("axis", -1)
    axes = [axes] if isinstance(axes, int) else list(axes)
    center, scale = bool(cfg.get("center", True)), bool(cfg.get("scale", True))
    w = c.take(["gamma"] * scale + ["beta"] * center)
    shape = list((w.get("gamma") if scale else w.get("beta")).shape) if w else None
    if shape is None:
        raise Unsupported("neither center nor scale (shape unknown)")
    spec = LayerSpec("LayerNorm", [shape, [a % rank for a in axes]], {"eps": float(cfg.get("epsilon", 1e-3))})
    spec.layouts, spec.out_layout = ["keras"], "keras"
    spec.state = {
        "weight": w.get("gamma", np.ones(shape, np.float32)),
        "bias": w.get("beta", np.zeros(shape, np.float32)),
    }
    return spec


def _activation_layer(c: Ctx) -> LayerSpec:
    cls, cfg = c.cls, c.cfg
    dim = c.axis(-1, c.ranks[0], c.layouts[0])
    if cls == "Activation":
        ctor, args = act_spec(_act_name(cfg.get("activation")), dim, c.hard_slope)
        return LayerSpec(ctor, args)
    if cls == "Softmax":
        axis = cfg.get("axis", -1)
        axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
        if not isinstance(axis, int):
            raise Unsupported(f"axis {axis}")
        return LayerSpec("nn.Softmax", [c.axis(axis, c.ranks[0], c.layouts[0])])
    if cls == "ReLU":
        mx, slope, thr = cfg.get("max_value"), _f32(cfg.get("negative_slope") or 0), _f32(cfg.get("threshold") or 0)
        if mx is None and slope == 0 and thr == 0:
            return LayerSpec("nn.ReLU")
        if mx is not None and float(mx) == 6 and slope == 0 and thr == 0:
            return LayerSpec("nn.ReLU6")
        return LayerSpec("KerasReLU", [], {"max_value": None if mx is None else _f32(mx), "negative_slope": slope,
                                             "threshold": thr})  # fmt: skip
    if cls == "LeakyReLU":
        return LayerSpec("nn.LeakyReLU", [_f32(cfg.get("alpha", cfg.get("negative_slope", 0.3)))])
    if cls == "ELU":
        return LayerSpec("nn.ELU", [_f32(cfg.get("alpha", 1.0))])
    if cls == "PReLU":
        a = c.take(["alpha"])["alpha"]
        lay = c.layouts[0]
        spec = LayerSpec("PReLU", [list(a.shape)], {"channels_first": lay == "nc" and c.ranks[0] >= 3})
        spec.state = {"weight": a}
        return spec
    raise Unsupported()


def _pool(c: Ctx) -> LayerSpec:
    cfg, rank = c.cfg, c.ranks[0] - 2
    lay = _image(cfg)
    k = _pair(cfg.get("pool_size", 2), rank)
    s = _pair(cfg.get("strides") or k, rank)
    pad = str(cfg.get("padding", "valid")).lower()
    mode = "max" if c.cls.startswith("Max") else "avg"
    if pad == "valid" and rank <= 2:
        ctor = f"nn.{'Max' if mode == 'max' else 'Avg'}Pool{rank}d"
        return LayerSpec(ctor, [k, s], {}, [lay], lay)
    return LayerSpec("Pool", [mode, k, s], {"padding": pad}, [lay], lay)


def _global_pool(c: Ctx) -> LayerSpec:
    keep = bool(c.cfg.get("keepdims", False))
    lay = _image(c.cfg)
    mode = "max" if "Max" in c.cls else "avg"
    return LayerSpec("GlobalPool", [mode], {"keepdims": keep}, [lay], lay, [c.ranks[0] if keep else 2])


def _resize(c: Ctx) -> LayerSpec:
    cfg, cls = c.cfg, c.cls
    lay = _image(cfg)
    interp = str(cfg.get("interpolation", "nearest" if cls.startswith("UpSampling") else "bilinear"))
    if cls.startswith("UpSampling"):
        rank = c.ranks[0] - 2
        size = _pair(cfg.get("size", 2), rank)
        if interp not in ("nearest", "bilinear") or (interp == "bilinear" and rank != 2):
            raise Unsupported(f"interpolation {interp!r}")
        return LayerSpec("Resize", [interp], {"scale": size}, [lay], lay)
    if cls == "BilinearUpsampling":
        if cfg.get("output_size"):
            kw = {"size": [int(v) for v in cfg["output_size"]]}
        else:
            kw = {"scale": _pair(cfg.get("upsampling", 2), 2)}
        return LayerSpec("Resize", ["bilinear"], {**kw, "align_corners": True}, [lay], lay)
    if cfg.get("crop_to_aspect_ratio") or cfg.get("pad_to_aspect_ratio"):
        raise Unsupported("crop/pad to aspect ratio")
    if interp not in ("nearest", "bilinear"):
        raise Unsupported(f"interpolation {interp!r}")
    mode = "nearest-exact" if interp == "nearest" else "bilinear"
    return LayerSpec("Resize", [mode], {"size": [int(cfg["height"]), int(cfg["width"])]}, [lay], lay)


def _pads(v: Any, rank: int) -> list[list[int]]:
    if isinstance(v, int):
        return [[v, v]] * rank
    v = list(v)
    if rank == 1:
        return [[int(v[0]), int(v[1])]] if len(v) == 2 else [[int(v[0])] * 2]
    if len(v) == 4 and all(isinstance(x, int) for x in v):  # Keras 1 (top, bottom, left, right)
        return [[v[0], v[1]], [v[2], v[3]]]
    return [[int(x), int(x)] if isinstance(x, int) else [int(x[0]), int(x[1])] for x in v]


def _shape_ops(c: Ctx) -> LayerSpec:
    cls, cfg, rank = c.cls, c.cfg, c.ranks[0]
    if cls.startswith("ZeroPadding") or cls.startswith("Cropping"):
        lay = _image(cfg)
        key = "padding" if cls.startswith("Zero") else "cropping"
        return LayerSpec("ZeroPad" if key == "padding" else "Crop", [_pads(cfg.get(key, 1), rank - 2)], {}, [lay], lay)
    if cls == "Flatten":
        if cfg.get("data_format") == "channels_first" and rank > 2:
            raise Unsupported("channels_first Flatten")
        return LayerSpec("nn.Flatten", [], {}, ["keras"], "keras", [2])
    if cls == "Reshape":
        shape = [int(v) for v in cfg["target_shape"]]
        return LayerSpec("Reshape", [shape], {}, ["keras"], "keras", [len(shape) + 1])
    if cls == "Permute":
        return LayerSpec("Permute", [[int(v) for v in cfg["dims"]]], {}, ["keras"], "keras")
    if cls == "RepeatVector":
        return LayerSpec("RepeatVector", [int(cfg["n"])], {}, ["keras"], "keras", [3])
    raise Unsupported()


def _merge(c: Ctx) -> LayerSpec:
    cls, cfg = c.cls, c.cfg
    lay = c.layouts[0]
    if len(set(c.ranks)) != 1:
        raise Unsupported(f"inputs of different ranks {c.ranks}")
    if cls == "Merge":
        mode = cfg.get("mode", "sum")
        if mode == "concat":
            cls = "Concatenate"
        elif mode in _K1_MERGE:
            return LayerSpec("Merge", [_K1_MERGE[mode]], {}, [lay] * len(c.ranks), lay)
        else:
            raise Unsupported(f"mode {mode!r}")
    if cls == "Concatenate":
        axis = int(cfg.get("axis", -1))
        return LayerSpec("Concat", [c.axis(axis, c.ranks[0], lay)], {}, [lay] * len(c.ranks), lay)
    return LayerSpec("Merge", [_MERGE[cls]], {}, [lay] * len(c.ranks), lay)


def _affine(c: Ctx) -> LayerSpec:
    cfg = c.cfg
    if c.cls == "Rescaling":
        return LayerSpec("Affine", [], {"scale": float(cfg.get("scale", 1.0)), "offset": float(cfg.get("offset", 0.0))})
    axis = cfg.get("axis", -1)
    axis = axis[0] if isinstance(axis, list | tuple) and len(axis) == 1 else axis
    if not isinstance(axis, int) or cfg.get("invert"):
        raise Unsupported(f"axis {axis}" if not isinstance(axis, int) else "invert=True")
    names = [n for n, _ in c.weights]
    w = c.take(["mean", "variance", "count"][: len(c.weights)] if None in names else names)
    mean, var = w["mean"].reshape(-1), w["variance"].reshape(-1)
    spec = LayerSpec("Affine", [], {"num_features": int(mean.shape[0]), "dim": c.axis(axis, c.ranks[0], c.layouts[0])})
    spec.state = {"mean": mean, "variance": var}
    return spec


def _segnet(c: Ctx) -> LayerSpec:
    cfg = c.cfg
    if c.cls == "MaxPoolingWithArgmax2D":
        k = _pair(cfg.get("pool_size", 2), 2)
        s = _pair(cfg.get("strides") or k, 2)
        spec = LayerSpec(
            "MaxPoolWithArgmax", [k, s], {"padding": str(cfg.get("padding", "same")).lower()}, ["nc"], "nc"
        )
        spec.out_ranks = [4, 4]
        return spec
    return LayerSpec("MaxUnpool", [_pair(cfg.get("size", 2), 2)], {}, ["nc", "nc"], "nc")


_TABLE = {
    **dict.fromkeys(("Conv1D", "Conv2D", "Conv3D", "DepthwiseConv2D", "DepthwiseConv1D"), _conv),
    **dict.fromkeys(("SeparableConv1D", "SeparableConv2D"), _separable),
    **dict.fromkeys(("Conv1DTranspose", "Conv2DTranspose"), _transpose),
    "Dense": _dense,
    "BatchNormalization": _batchnorm,
    "LayerNormalization": _layernorm,
    **dict.fromkeys(("Activation", "Softmax", "ReLU", "LeakyReLU", "ELU", "PReLU"), _activation_layer),
    **dict.fromkeys(("MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D"), _pool),
    **dict.fromkeys(
        ("GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D"), _global_pool
    ),
    **dict.fromkeys(("UpSampling1D", "UpSampling2D", "Resizing", "BilinearUpsampling"), _resize),
    **dict.fromkeys(
        ("ZeroPadding1D", "ZeroPadding2D", "Cropping1D", "Cropping2D", "Flatten", "Reshape", "Permute", "RepeatVector"),
        _shape_ops,
    ),
    **dict.fromkeys(("Merge", "Concatenate", *_MERGE), _merge),
    **dict.fromkeys(("Rescaling", "Normalization"), _affine),
    **dict.fromkeys(("MaxPoolingWithArgmax2D", "MaxUnpooling2D"), _segnet),
}
SUPPORTED: tuple[str, ...] = tuple(sorted({*_TABLE, *IDENTITY_LAYERS, "InputLayer"}))


def translate(c: Ctx) -> LayerSpec:
    """The module spec of one layer call (raises :class:`Unsupported`, or ``ValueError`` for weights that do not fit
    the config)."""
    if c.cls in IDENTITY_LAYERS:
        if c.weights:
            raise ValueError("an identity layer with weights")
        return LayerSpec("nn.Identity")
    fn = _TABLE.get(c.cls)
    if fn is None:
        raise Unsupported()
    spec = fn(c)
    if spec.out_ranks is None:
        spec.out_ranks = [c.ranks[0]]
    return spec

"""One Keras layer -> its module spec (constructor, arguments, layouts) and tensors, for the generic Keras path.

:func:`translate` reads the layer's config exactly as Keras 1, 2 (tf_keras) or 3 wrote it (Keras 1 names such as
``Convolution2D`` / ``border_mode`` / ``nb_filter`` are normalised first), maps its weights onto the module's
state_dict (HWIO -> OIHW, Dense transposed, depthwise (kh, kw, in, m) -> (in*m, 1, kh, kw)), and says which
layout each input needs (``nc``: channels at dim 1, ``keras``: as Keras holds it, ``None``: either).
"""

from __future__ import annotations

import numpy as np

from .keras_layer_spec import (
    IDENTITY_LAYERS,
    Ctx,
    LayerSpec,
    Unsupported,
    _act_name,
    _f32,
    _image,
    _pair,
    act_spec,
    keras1_normalise,
)
from .keras_layers_shape import SHAPE_TABLE

__all__ = [
    "LayerSpec",
    "Unsupported",
    "Ctx",
    "translate",
    "SUPPORTED",
    "IDENTITY_LAYERS",
    "keras1_normalise",
    "act_spec",
]


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


_TABLE = {
    **dict.fromkeys(("Conv1D", "Conv2D", "Conv3D", "DepthwiseConv2D", "DepthwiseConv1D"), _conv),
    **dict.fromkeys(("SeparableConv1D", "SeparableConv2D"), _separable),
    **dict.fromkeys(("Conv1DTranspose", "Conv2DTranspose"), _transpose),
    "Dense": _dense,
    "BatchNormalization": _batchnorm,
    "LayerNormalization": _layernorm,
    **dict.fromkeys(("Activation", "Softmax", "ReLU", "LeakyReLU", "ELU", "PReLU"), _activation_layer),
    **SHAPE_TABLE,
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

"""The shared pieces of the Keras layer translation: :class:`LayerSpec` (what a layer becomes), :class:`Ctx`
(what is known about one layer call), Keras 1 name normalisation and the activation table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["LayerSpec", "Unsupported", "Ctx", "IDENTITY_LAYERS", "keras1_normalise", "act_spec"]


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

"""Any Caffe net as a PyTorch module: one named submodule per Caffe layer, run in Caffe's execution order.

The model is built from a JSON-serialisable config (see :func:`caffe_generic_config`), so
``create_model("caffe_generic", **model.config)`` and ``segconvert.weights.store.load_model`` rebuild it:

- ``net_name``: the Caffe net's name;
- ``inputs``: ``[{"name": "data", "shape": [1, 3, 12, 12] | None}, ...]``, the order of ``forward``'s arguments;
- ``layers``: Caffe's layers in execution order, each ``{"name", "type", "bottoms", "tops", "module", "params"}``
  (+ ``"shared_from"`` for a layer that reuses another layer's weights through Caffe param names).
  ``module`` is the submodule attribute (the Caffe name made a Python identifier, ``conv5-3`` -> ``conv5_3``),
  ``None`` for ``Input`` and ``Split`` (a Split's tops are its bottom). ``params`` are the constructor arguments
  of the layer's module (:func:`layer_ctor`); ``top_shapes`` (optional, informative) the tops' shapes at the
  declared input shape;
- ``outputs``: the net's output blobs, in Caffe's order (``pycaffe``'s ``net.outputs``: sorted by name).

``forward(*inputs)`` returns the output blob when there is one, else a tuple in ``output_names`` order.
:meth:`CaffeGenericNet.layer_outputs` returns every layer's tops keyed ``"<layer>/<top index>"`` like a
Caffe per-layer dump (in-place layers included), for layer-by-layer parity.
"""

from __future__ import annotations

import json
import keyword
import re
from collections.abc import Iterable
from typing import Any, NamedTuple

import torch
from torch import nn

from . import caffe_ops, caffe_ssd_ops
from .ops import CaffePool2d, FrozenBatchNorm2d, Interp

__all__ = [
    "CaffeGenericNet",
    "SUPPORTED_TYPES",
    "build_layer",
    "caffe_generic_config",
    "layer_ctor",
    "python_name",
    "reserved_attributes",
]

# Caffe type -> (constructor, positional parameter names, keyword parameter names). "nn.X" is torch.nn.X; the
# other names are Caffe-exact modules (segconvert.reference_models.ops / caffe_ops), also emitted inline by
# segconvert.converters.caffe_codegen. ReLU and LRN pick their constructor from their parameters.
_CTORS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "Convolution": (
        "nn.Conv2d",
        ("in_channels", "out_channels"),
        ("kernel_size", "stride", "padding", "dilation", "groups", "bias"),
    ),
    "Deconvolution": (
        "nn.ConvTranspose2d",
        ("in_channels", "out_channels"),
        ("kernel_size", "stride", "padding", "dilation", "groups", "bias"),
    ),
    "Pooling": ("CaffePool2d", ("mode",), ("kernel_size", "stride", "pad", "global_pooling")),
    "InnerProduct": ("InnerProduct", ("in_features", "out_features"), ("bias", "axis")),
    "ReLU": ("nn.ReLU", (), ()),
    "PReLU": ("nn.PReLU", ("num_parameters",), ()),
    "ELU": ("nn.ELU", (), ("alpha",)),
    "Sigmoid": ("nn.Sigmoid", (), ()),
    "TanH": ("nn.Tanh", (), ()),
    "AbsVal": ("AbsVal", (), ()),
    "BNLL": ("nn.Softplus", (), ()),
    "Power": ("Power", (), ("power", "scale", "shift")),
    "BatchNorm": ("BatchNorm", ("num_features",), ("eps", "use_global_stats")),
    "Scale": ("Scale", (), ("weight_shape", "bias_shape", "axis")),
    "Bias": ("Bias", (), ("shape", "axis")),
    "BN": ("FrozenBatchNorm2d", ("num_features",), ("eps",)),
    "Interp": ("Interp", (), ("height", "width", "zoom_factor", "shrink_factor", "pad_beg", "pad_end")),
    "Eltwise": ("Eltwise", ("operation",), ("coeff",)),
    "Concat": ("Concat", (), ("axis",)),
    "Slice": ("Slice", (), ("axis", "points", "num_tops")),
    "Crop": ("Crop", (), ("axis", "offsets")),
    "Flatten": ("nn.Flatten", ("start_dim", "end_dim"), ()),
    "Reshape": ("Reshape", ("shape",), ("axis", "num_axes")),
    "Dropout": ("nn.Dropout", ("p",), ()),
    "Softmax": ("nn.Softmax", (), ("dim",)),
    "LRN": ("nn.LocalResponseNorm", ("size",), ("alpha", "beta", "k")),
    "ArgMax": ("ArgMax", (), ("top_k", "out_max_val", "axis")),
    # Fork layers (segconvert.reference_models.caffe_ssd_ops names each fork)
    "Permute": ("Permute", ("order",), ()),
    "Normalize": ("Normalize", ("num_channels",), ("across_spatial", "channel_shared", "eps")),
    "PriorBox": (
        "PriorBox",
        ("min_sizes",),
        ("max_sizes", "aspect_ratios", "flip", "clip", "variance", "img_h", "img_w", "step_h", "step_w", "offset"),
    ),
    "DetectionOutput": (
        "DetectionOutput",
        ("num_classes",),
        (
            "share_location",
            "background_label_id",
            "nms_threshold",
            "top_k",
            "eta",
            "code_type",
            "variance_encoded_in_target",
            "keep_top_k",
            "confidence_threshold",
        ),
    ),
    "ShuffleChannel": ("ShuffleChannel", ("group",), ()),
    "Upsample": ("Upsample", ("scale_h", "scale_w"), ("upsample_h", "upsample_w", "pad_out_h", "pad_out_w")),
    "ReLU6": ("ReLU6", (), ("negative_slope",)),
    "Clip": ("Clip", ("min", "max"), ()),
    "Swish": ("Swish", (), ("beta",)),
    "Axpy": ("Axpy", (), ()),
}
# Layers without a module: Input (its tops are forward's arguments) and Split (its tops alias its bottom).
_NO_MODULE = ("Input", "Split")
SUPPORTED_TYPES: tuple[str, ...] = tuple(sorted((*_CTORS, *_NO_MODULE)))


_LOCAL = {"CaffePool2d": CaffePool2d, "Interp": Interp, "FrozenBatchNorm2d": FrozenBatchNorm2d}


def layer_ctor(spec: dict[str, Any]) -> tuple[str, list[Any], dict[str, Any]]:
    """``(constructor name, args, kwargs)`` of a layer spec's module; the code generator prints the same call."""
    kind, params = spec["type"], spec.get("params", {})
    if kind == "ReLU":
        slope = params.get("negative_slope", 0.0)
        return ("nn.LeakyReLU", [slope], {}) if slope else ("nn.ReLU", [], {})
    if kind == "Pooling" and params.get("top_mask"):  # MAX with the mask as second top (SegNet)
        return "MaxPoolWithMask", [params["kernel_size"]], {"stride": params["stride"], "pad": params["pad"]}
    if kind == "LRN" and params.get("region", "across") == "within":
        return "LRNWithinChannel", [params["size"]], {"alpha": params["alpha"], "beta": params["beta"]}
    if kind not in _CTORS:
        raise ValueError(f"layer '{spec.get('name')}': no module for Caffe type {kind!r}")
    name, positional, keywords = _CTORS[kind]
    args = [params[k] for k in positional]
    kwargs = {k: params[k] for k in keywords if k in params}
    return name, args, kwargs


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def build_layer(spec: dict[str, Any]) -> nn.Module:
    """The module of one layer spec (see :func:`layer_ctor`)."""
    name, args, kwargs = layer_ctor(spec)
    if name.startswith("nn."):
        cls = getattr(nn, name[3:])
    else:
        cls = _LOCAL.get(name) or getattr(caffe_ops, name, None) or getattr(caffe_ssd_ops, name)
    return cls(*_tuples(args), **{k: _tuples(v) for k, v in kwargs.items()})


_IDENTIFIER = re.compile(r"[^0-9A-Za-z_]")


def python_name(name: str, taken: set[str], reserved: Iterable[str] = (), prefix: str = "layer_") -> str:
    """A Python identifier for a Caffe name, unique in ``taken`` (which it is added to).

    ``conv5-3`` -> ``conv5_3``, ``conv1/bn`` -> ``conv1_bn``; a leading digit gets ``prefix``; keywords and
    ``reserved`` names get a trailing ``_``; clashes get ``_2``, ``_3``...
    """
    base = _IDENTIFIER.sub("_", name) or "_"
    if base[0].isdigit():
        base = prefix + base
    if keyword.iskeyword(base) or base in reserved:
        base += "_"
    candidate, n = base, 2
    while candidate in taken or candidate in reserved:
        candidate, n = f"{base}_{n}", n + 1
    taken.add(candidate)
    return candidate


def reserved_attributes() -> set[str]:
    """Names a layer submodule may not take (attributes of ``nn.Module`` and :class:`CaffeGenericNet`)."""
    return set(dir(CaffeGenericNet)) | {"config", "net_name", "input_names", "output_names", "_steps"}


def caffe_generic_config(
    layers: list[dict[str, Any]],
    inputs: list[dict[str, Any]],
    outputs: list[str],
    net_name: str = "",
) -> dict[str, Any]:
    """Check and normalise (JSON round trip) a generic-net config; ``create_model`` calls this."""
    config = json.loads(json.dumps({"net_name": net_name, "inputs": inputs, "layers": layers, "outputs": outputs}))
    produced = {i["name"] for i in config["inputs"]}
    modules: dict[str, str] = {}
    for spec in config["layers"]:
        missing = [k for k in ("name", "type", "bottoms", "tops") if k not in spec]
        if missing:
            raise ValueError(f"layer spec {spec.get('name', '?')!r} lacks {missing}")
        if spec["type"] not in SUPPORTED_TYPES:
            raise ValueError(f"layer '{spec['name']}': unsupported Caffe type {spec['type']!r}")
        absent = [b for b in spec["bottoms"] if b not in produced]
        if absent:
            raise ValueError(f"layer '{spec['name']}' reads blobs {absent} that nothing produced before it")
        produced.update(spec["tops"])
        module = spec.get("module")
        if (module is None) != (spec["type"] in _NO_MODULE):
            raise ValueError(f"layer '{spec['name']}': module {module!r} does not fit type {spec['type']}")
        if module is not None:
            if not module.isidentifier() or keyword.iskeyword(module):
                raise ValueError(f"layer '{spec['name']}': module name {module!r} is not a Python identifier")
            owner = spec.get("shared_from")
            if owner is None and module in modules:
                raise ValueError(f"layers '{modules[module]}' and '{spec['name']}' both own module '{module}'")
            if owner is not None and modules.get(module) != owner:
                raise ValueError(f"layer '{spec['name']}' shares module '{module}' of '{owner}', defined earlier")
            modules.setdefault(module, spec["name"])
    absent = [o for o in config["outputs"] if o not in produced]
    if absent:
        raise ValueError(f"outputs {absent} are not produced by the net")
    return config


class _Step(NamedTuple):
    name: str
    type: str
    module: str | None
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]


class CaffeGenericNet(nn.Module):
    """A Caffe net as a readable PyTorch module (see the module docstring for the config and outputs)."""

    arch_name = "caffe_generic"

    def __init__(
        self,
        layers: list[dict[str, Any]],
        inputs: list[dict[str, Any]],
        outputs: list[str],
        net_name: str = "",
    ) -> None:
        super().__init__()
        self.config = caffe_generic_config(layers=layers, inputs=inputs, outputs=outputs, net_name=net_name)
        self.net_name = net_name
        self.input_names = [i["name"] for i in self.config["inputs"]]
        self.output_names = list(self.config["outputs"])
        reserved = reserved_attributes()
        self._steps: list[_Step] = []
        for spec in self.config["layers"]:
            module = spec.get("module")
            if module is not None and module not in self._modules:
                if module in reserved:
                    raise ValueError(f"layer '{spec['name']}': module name {module!r} is reserved")
                self.add_module(module, build_layer(spec))
            self._steps.append(_Step(spec["name"], spec["type"], module, tuple(spec["bottoms"]), tuple(spec["tops"])))

    def _run(self, inputs: tuple[torch.Tensor, ...], record: dict[str, torch.Tensor] | None) -> dict[str, Any]:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"expected {len(self.input_names)} input(s) {self.input_names}, got {len(inputs)}")
        blobs: dict[str, torch.Tensor] = dict(zip(self.input_names, inputs, strict=True))
        for step in self._steps:
            if step.type == "Input":
                tops: list[torch.Tensor] = [blobs[t] for t in step.tops]
            elif step.type == "Split":
                tops = [blobs[step.bottoms[0]]] * len(step.tops)
            else:
                out = self._modules[step.module](*(blobs[b] for b in step.bottoms))
                tops = list(out) if isinstance(out, tuple) else [out]
            for i, (top, value) in enumerate(zip(step.tops, tops, strict=True)):
                blobs[top] = value
                if record is not None:
                    record[f"{step.name}/{i}"] = value
        return blobs

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        blobs = self._run(inputs, None)
        outs = tuple(blobs[name] for name in self.output_names)
        return outs[0] if len(outs) == 1 else outs

    @torch.no_grad()
    def layer_outputs(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every top of every layer right after that layer ran, keyed ``"<layer>/<top index>"`` (no grad)."""
        record: dict[str, torch.Tensor] = {}
        self._run(inputs, record)
        return record

    def extra_repr(self) -> str:
        return f"name={self.net_name!r}, inputs={self.input_names}, outputs={self.output_names}"

"""Readable, standalone PyTorch source for a generic Caffe conversion (``caffe2torch --emit-source``).

:func:`emit_source` prints a ``caffe_generic`` config as a module that imports nothing but torch: one
``__init__`` attribute per Caffe layer with its literal hyper-parameters (``nn.Conv2d(3, 10, kernel_size=3,
stride=1, padding=0, dilation=1, groups=1, bias=True)``), a ``forward`` in Caffe's order whose variables are the
blob names (an in-place layer reassigns its blob's variable, a Split is just a second name for its bottom),
and the Caffe-exact helper classes the net uses, copied inline. Attribute and parameter names equal
:class:`~segconvert.reference_models.caffe_generic.CaffeGenericNet`'s, so the weights written by ``caffe2torch``
load with ``load_state_dict`` unchanged.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import json
import keyword
import re
from typing import Any

from segconvert import __version__
from segconvert.reference_models import caffe_ops, caffe_ssd_ops
from segconvert.reference_models.caffe_generic import caffe_generic_config, layer_ctor, python_name

__all__ = ["emit_source"]

# Torch-only twins of segconvert.reference_models.ops' CaffePool2d / Interp / FrozenBatchNorm2d (same constructor
# arguments and state_dict keys) for generated files, which must not import segconvert.
_POOL = '''
class CaffePool2d(nn.Module):
    """Caffe ``Pooling`` MAX / AVE with Caffe's ceil rounding: the last window is dropped when it would start in
    the padding. MAX windows are clipped to the input; AVE divides by the window clipped to H + pad (the padding
    counts, positions past H + pad do not). ``global_pooling`` pools the whole plane."""

    def __init__(self, mode="max", kernel_size=1, stride=1, pad=0, global_pooling=False) -> None:
        super().__init__()
        self.mode, self.global_pooling = mode, global_pooling
        self.kernel_size, self.stride, self.pad = (
            tuple(v) if isinstance(v, tuple | list) else (v, v) for v in (kernel_size, stride, pad)
        )

    @staticmethod
    def out_size(size: int, k: int, s: int, p: int, any_pad: bool) -> int:
        out = -(-(size + 2 * p - k) // s) + 1
        return out - 1 if any_pad and (out - 1) * s >= size + p else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.global_pooling:
            return x.amax((-2, -1), keepdim=True) if self.mode == "max" else x.mean((-2, -1), keepdim=True)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.pad
        h, w = x.shape[-2:]
        oh, ow = self.out_size(h, kh, sh, ph, ph + pw > 0), self.out_size(w, kw, sw, pw, ph + pw > 0)
        pads = (pw, max(0, (ow - 1) * sw + kw - w - pw), ph, max(0, (oh - 1) * sh + kh - h - ph))
        if self.mode == "max":
            return F.max_pool2d(F.pad(x, pads, value=float("-inf")), (kh, kw), (sh, sw))[..., :oh, :ow]
        total = F.avg_pool2d(F.pad(x, pads), (kh, kw), (sh, sw), divisor_override=1)[..., :oh, :ow]
        start_h = torch.arange(oh, device=x.device) * sh - ph
        start_w = torch.arange(ow, device=x.device) * sw - pw
        div_h = torch.clamp(start_h + kh, max=h + ph) - start_h
        div_w = torch.clamp(start_w + kw, max=w + pw) - start_w
        return total / (div_h[:, None] * div_w[None, :]).to(x.dtype)
'''

_INTERP = '''
class Interp(nn.Module):
    """Caffe ``Interp`` (DeepLab-v2 / PSPNet): crop by the (non-positive) pads, then bilinear resize with
    align_corners=True to the size set by shrink_factor, zoom_factor or height/width, tested in Caffe's order."""

    def __init__(self, height=None, width=None, zoom_factor=None, shrink_factor=None, pad_beg=0, pad_end=0) -> None:
        super().__init__()
        self.height, self.width, self.zoom_factor, self.shrink_factor = height, width, zoom_factor, shrink_factor
        self.pad_beg, self.pad_end = pad_beg, pad_end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = x[..., -self.pad_beg : h + self.pad_end, -self.pad_beg : w + self.pad_end]
        h, w = x.shape[-2:]
        shrink, zoom = self.shrink_factor, self.zoom_factor
        if shrink is not None and zoom is None:
            size = ((h - 1) // shrink + 1, (w - 1) // shrink + 1)
        elif zoom is not None and shrink is None:
            size = (h + (h - 1) * (zoom - 1), w + (w - 1) * (zoom - 1))
        elif self.height is not None and self.width is not None:
            size = (self.height, self.width)
        else:  # shrink, then zoom
            h, w = (h - 1) // shrink + 1, (w - 1) // shrink + 1
            size = (h + (h - 1) * (zoom - 1), w + (w - 1) * (zoom - 1))
        if size == tuple(x.shape[-2:]):
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
'''

_FROZEN_BN = '''
class FrozenBatchNorm2d(nn.Module):
    """PSPNet ``BN`` with fixed statistics: ``(x - running_mean) / sqrt(running_var + eps) * weight + bias``."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)
'''

_TEMPLATES = {"CaffePool2d": _POOL, "Interp": _INTERP, "FrozenBatchNorm2d": _FROZEN_BN}
_DEPENDS = {"Scale": ("along_axis",), "Bias": ("along_axis",), "BatchNorm": ("along_axis",)}
_HELPER_ORDER = tuple(
    dict.fromkeys(
        ("along_axis", "CaffePool2d", "Interp", "FrozenBatchNorm2d", *caffe_ops.__all__, *caffe_ssd_ops.__all__)
    )
)
_WRAP_AT = 120  # the generated file is ruff-format clean at line-length 120


def _helper_source(name: str) -> str:
    if name in _TEMPLATES:
        return _TEMPLATES[name].strip("\n")
    module = caffe_ops if hasattr(caffe_ops, name) else caffe_ssd_ops
    return inspect.getsource(getattr(module, name)).strip("\n")


def _literal(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        items = [_literal(v) for v in value]
        return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"
    raise TypeError(f"cannot print {value!r} as a literal")


def _call(func: str, args: list[str], indent: str, prefix: str) -> list[str]:
    """``prefix + func(args)`` on one line, or wrapped like ruff format when too long."""
    line = f"{indent}{prefix}{func}({', '.join(args)})"
    if len(line) <= _WRAP_AT:
        return [line]
    inner = f"{indent}    {', '.join(args)}"
    if len(inner) <= _WRAP_AT:
        return [f"{indent}{prefix}{func}(", inner, f"{indent})"]
    return [f"{indent}{prefix}{func}(", *(f"{indent}    {a}," for a in args), f"{indent})"]


def _text(s: str) -> str:
    """A name safe inside a comment or docstring."""
    return re.sub(r"[^ -~]", "?", s).replace("\\", "/").replace('"""', "'''")


def emit_source(
    config: dict[str, Any], class_name: str = "Net", *, source: str | None = None, weights_file: str | None = None
) -> str:
    """Python source of a standalone ``nn.Module`` subclass ``class_name`` for a ``caffe_generic`` config.

    ``source`` (the prototxt's name) and ``weights_file`` (the converted weights' name) only go into the docstring.
    """
    config = caffe_generic_config(**config)
    if not class_name.isidentifier() or keyword.iskeyword(class_name):
        raise ValueError(f"class name {class_name!r} is not a Python identifier")
    helpers: set[str] = set()
    init: list[str] = []
    body: list[str] = []
    reserved = {"self", "torch", "nn", "F", class_name, *_HELPER_ORDER, *dir(builtins)}
    names: set[str] = set()
    var_of: dict[str, str] = {}
    ndims: dict[str, int | None] = {}  # blob -> number of axes at the declared input shape (None: unknown)
    args = []
    for spec in config["inputs"]:
        var_of[spec["name"]] = python_name(spec["name"], names, reserved, prefix="blob_")
        ndims[spec["name"]] = len(spec["shape"]) if spec.get("shape") else None
        args.append(var_of[spec["name"]])
    for spec in config["layers"]:
        kind, module = spec["type"], spec.get("module")
        shapes = spec.get("top_shapes") or [None] * len(spec["tops"])
        ndims.update({t: len(s) if s else None for t, s in zip(spec["tops"], shapes, strict=True)})
        if kind == "Input":
            continue
        if kind == "Split":
            for top in spec["tops"]:
                var_of[top] = var_of[spec["bottoms"][0]]
            continue
        func, ctor_args, ctor_kwargs = layer_ctor(spec)
        call_args = [var_of[b] for b in spec["bottoms"]]
        if kind == "InnerProduct":  # nn.Linear on the bottom flattened from axis (when it is not flat already)
            func = "nn.Linear"
            axis = ctor_kwargs.pop("axis")
            ndim = ndims.get(spec["bottoms"][0])
            if axis != -1 and (ndim is None or axis not in (ndim - 1, -1)):
                call_args = [f"{call_args[0]}.flatten({axis})"]
        if spec.get("shared_from") is None:
            if not func.startswith("nn."):
                helpers.add(func)
            if module != re.sub(r"[^0-9A-Za-z_]", "_", spec["name"]):  # not just "conv5-3" -> "conv5_3"
                init.append(f"        # Caffe layer {_text(spec['name'])!r}")
            printed = [_literal(a) for a in ctor_args]
            printed += [f"{k}={_literal(v)}" for k, v in ctor_kwargs.items() if v is not None]  # None: the default
            init.extend(_call(func, printed, "        ", f"self.{module} = "))
        tops = [_assign(top, var_of, names, reserved) for top in spec["tops"]]
        target = tops[0] if len(tops) == 1 and kind != "Slice" else ", ".join(tops) + ("," if len(tops) == 1 else "")
        body.extend(_call(f"self.{module}", call_args, "        ", f"{target} = "))
    outs = [var_of[o] for o in config["outputs"]]
    returns = "torch.Tensor" if len(outs) == 1 else f"tuple[{', '.join(['torch.Tensor'] * len(outs))}]"
    if len(returns) > 60:
        returns = "tuple[torch.Tensor, ...]"
    signature = ", ".join(["self", *(f"{a}: torch.Tensor" for a in args)])
    for dep in [d for h in helpers for d in _DEPENDS.get(h, ())]:
        helpers.add(dep)
    helper_text = "\n\n\n".join(_helper_source(h) for h in _HELPER_ORDER if h in helpers)
    net_name = _text(config.get("net_name") or "")
    ins = ", ".join(f"{_text(i['name'])} {tuple(i['shape'] or ()) or '(shape not declared)'}" for i in config["inputs"])
    out_doc = ", ".join(_text(o) for o in config["outputs"])
    lines = [
        f'"""Caffe net {net_name!r} as PyTorch: generated by segconvert {__version__}'
        + (f" from {_text(source)}." if source else "."),
        "",
        "Attributes are the Caffe layers, in Caffe's order; forward's variables are the Caffe blobs (an in-place layer",
        "reassigns its blob). Characters other than letters, digits and _ in Caffe names became _. Load the weights",
        "written with this file by ``segconvert caffe2torch``:",
        "",
        f"    model = {class_name}().eval()",
        *_load_lines(_text(weights_file) if weights_file else None),
        '"""',
        "",
    ]
    class_doc = f"Inputs: {ins}. Returns {out_doc}{'' if len(outs) == 1 else ' (sorted by name, as Caffe)'}."
    return render_module(
        lines, helper_text, class_name, class_doc, init, signature, returns, body, outs, probe=helper_text
    )


def render_module(
    doc: list[str],
    helper_text: str,
    class_name: str,
    class_doc: str,
    init: list[str],
    signature: str,
    returns: str,
    body: list[str],
    rets: list[str],
    *,
    probe: str,
) -> str:
    """The generated file: ``doc`` (module docstring lines), the imports ``probe`` needs (``math``, ``F``), the
    helpers, then the class with ``__init__``/``forward``; checked to parse (a generator bug must not produce a
    file that does not even parse)."""
    lines = list(doc)
    if re.search(r"\bmath\.", probe):
        lines += ["import math", ""]
    lines.append("import torch")
    if re.search(r"\bF\.", probe):
        lines.append("import torch.nn.functional as F")
    lines += ["from torch import nn", ""]
    if helper_text:
        lines += ["", helper_text, ""]
    lines += [
        "",
        f"class {class_name}(nn.Module):",
        f'    """{class_doc}"""',
        "",
        "    def __init__(self) -> None:",
        "        super().__init__()",
        *init,
        "",
        f"    def forward({signature}) -> {returns}:",
        *body,
        f"        return {', '.join(rets)}",
        "",
    ]
    text = "\n".join(lines)
    ast.parse(text)
    return text


def _load_lines(weights_file: str | None) -> list[str]:
    st = f"    model.load_state_dict(safetensors.torch.load_file({json.dumps(weights_file or 'weights.safetensors')}))"
    pth = f"    model.load_state_dict(torch.load({json.dumps(weights_file or 'weights.pth')}, weights_only=True)"
    pth += '["state_dict"])'
    if weights_file is None:
        return [st + "  # or, for a .pth:", pth]
    return [pth if weights_file.endswith((".pth", ".pt")) else st]


def _assign(top: str, var_of: dict[str, str], names: set[str], reserved: set[str]) -> str:
    """The variable a layer writes ``top`` to: the blob's own variable, unless a Split made it shared."""
    var = var_of.get(top)
    if var is None or sum(v == var for v in var_of.values()) > 1:
        var = python_name(top, names, reserved, prefix="blob_")
    var_of[top] = var
    return var

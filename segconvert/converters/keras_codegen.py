"""Readable, standalone PyTorch source for a generic Keras conversion (``keras2torch --emit-source``).

:func:`emit_source` prints a ``keras_generic`` config as a module that imports nothing but torch: one ``__init__``
attribute per Keras layer with its literal hyper-parameters, a ``forward`` in the Keras graph's order whose
variables are the layer names, the axis moves between the channels-first and Keras layouts written out
(``x.movedim(1, -1)``), fused activations as expressions, and the Keras-exact helper classes the model uses
copied inline from :mod:`segconvert.reference_models.keras_ops`. Attribute and parameter names equal
:class:`~segconvert.reference_models.keras_generic.KerasGenericNet`'s, so the weights written by ``keras2torch``
load with ``load_state_dict`` unchanged.
"""

from __future__ import annotations

import builtins
import inspect
import keyword
import re
from typing import Any

from segconvert import __version__
from segconvert.reference_models import keras_ops
from segconvert.reference_models.caffe_generic import python_name
from segconvert.reference_models.keras_generic import keras_generic_config

from .caffe_codegen import _call, _literal, _load_lines, _text, render_module

__all__ = ["emit_source"]

_DEPENDS = {
    "Conv": ("tf_same_pads", "_pad_input", "_same_as_zero_taps"),
    "SeparableConv": ("tf_same_pads", "_pad_input", "_same_as_zero_taps"),
    "Pool": ("tf_same_pads",),
    "MaxPoolWithArgmax": ("tf_same_pads",),
}
_ORDER = ("tf_same_pads", "_pad_input", "_same_as_zero_taps", *[n for n in keras_ops.__all__ if n[0].isupper()])
_ACT = {
    "relu": "F.relu({x})", "relu6": "F.relu6({x})", "sigmoid": "torch.sigmoid({x})", "tanh": "torch.tanh({x})",
    "softmax": "F.softmax({x}, dim={dim})", "log_softmax": "F.log_softmax({x}, dim={dim})",
    "softplus": "F.softplus({x})", "softsign": "F.softsign({x})", "swish": "{x} * torch.sigmoid({x})",
    "silu": "{x} * torch.sigmoid({x})", "gelu": "F.gelu({x})", "elu": "F.elu({x})", "selu": "F.selu({x})",
    "exponential": "torch.exp({x})", "leaky_relu": "F.leaky_relu({x}, 0.2)",
    "mish": "{x} * torch.tanh(F.softplus({x}))",
    "hard_sigmoid": "torch.clamp({x} * {slope} + 0.5, 0.0, 1.0)",
}  # fmt: skip


def _helper(name: str) -> str:
    return inspect.getsource(getattr(keras_ops, name)).strip("\n")


def _move(var: str, have: str, want: str | None) -> str:
    if want is None or want == have:
        return var
    return f"{var}.movedim(1, -1)" if want == "keras" else f"{var}.movedim(-1, 1)"


def emit_source(
    config: dict[str, Any], class_name: str = "Net", *, source: str | None = None, weights_file: str | None = None
) -> str:
    """Python source of a standalone ``nn.Module`` subclass ``class_name`` for a ``keras_generic`` config."""
    config = keras_generic_config(**config)
    if not class_name.isidentifier() or keyword.iskeyword(class_name):
        raise ValueError(f"class name {class_name!r} is not a Python identifier")
    reserved = {"self", "torch", "nn", "F", "math", class_name, *_ORDER, *dir(builtins)}
    names: set[str] = set()
    var: dict[str, tuple[str, str]] = {}  # tensor -> (variable, layout)
    args = []
    for spec in config["inputs"]:
        v = python_name(spec["name"].split(":")[0], names, reserved, prefix="x_")
        var[spec["name"]] = (v, spec["layout"])
        args.append(v)
    helpers: set[str] = set()
    init: list[str] = []
    body: list[str] = []
    for step in config["steps"]:
        ctor, module = step["ctor"], step["module"]
        if not step.get("shared"):
            if not ctor.startswith("nn."):
                helpers.add(ctor)
            if module != re.sub(r"[^0-9A-Za-z_]", "_", step["name"]):
                init.append(f"        # Keras layer {_text(step['name'])!r}")
            printed = [_literal(a) for a in step.get("args", [])]
            printed += [f"{k}={_literal(v)}" for k, v in step.get("kwargs", {}).items() if v is not None]
            init.extend(_call(ctor, printed, "        ", f"self.{module} = "))
        wants = step.get("layouts") or [None] * len(step["inputs"])
        call_args = [_move(*var[t], w) for t, w in zip(step["inputs"], wants, strict=True)]
        layout = step.get("out_layout") or var[step["inputs"][0]][1]
        outs = [python_name(step["name"] + (f"_{j}" if j else ""), names, reserved, prefix="x_")
                for j in range(len(step["outputs"]))]  # fmt: skip
        target = outs[0] if len(outs) == 1 else ", ".join(outs)
        body.extend(_call(f"self.{module}", call_args, "        ", f"{target} = "))
        act = step.get("activation")
        if act:
            expr = _ACT[act["name"]].format(x=outs[0], dim=act.get("dim", 1), slope=act.get("hard_slope", 0.2))
            body.append(f"        {outs[0]} = {expr}")
        for t, v in zip(step["outputs"], outs, strict=True):
            var[t] = (v, layout)
    rets = [_move(*var[o["name"]], o["layout"]) for o in config["outputs"]]
    returns = "torch.Tensor" if len(rets) == 1 else "tuple[torch.Tensor, ...]"
    for h in list(helpers):
        helpers.update(_DEPENDS.get(h, ()))
    helper_text = "\n\n\n".join(_helper(h) for h in _ORDER if h in helpers)
    ins = ", ".join(f"{_text(i['name'].split(':')[0])} {i['shape']} ({i['layout']})" for i in config["inputs"])
    lines = [
        f'"""Keras model {_text(config["model_name"])!r} as PyTorch: generated by segconvert {__version__}'
        + (f" from {_text(source)}." if source else "."),
        "",
        "Attributes are the Keras layers; forward's variables are the layer outputs. Tensors are channels-first",
        "inside (layout 'nc': the Keras channel axis at dim 1) and in the Keras layout where a layer needs it",
        "(Flatten, Reshape, ...). Load the weights written with this file by ``segconvert keras2torch``:",
        "",
        f"    model = {class_name}().eval()",
        *_load_lines(_text(weights_file) if weights_file else None),
        '"""',
        "",
    ]
    signature = "self, " + ", ".join(f"{a}: torch.Tensor" for a in args)
    probe = helper_text + "\n".join(body)
    return render_module(
        lines, helper_text, class_name, f"Inputs: {ins}.", init, signature, returns, body, rets, probe=probe
    )

"""Any Keras model as a PyTorch module: one named submodule per Keras layer, run in the Keras graph's order.

Built from a JSON-serialisable config (made by :mod:`segconvert.converters.keras_generic`), so
``create_model("keras_generic", **model.config)`` and ``segconvert.load_model`` rebuild it:

- ``model_name``, ``keras_version``: informative;
- ``inputs``: ``[{"name": tensor, "shape": Keras shape without batch, "layout": "nc" | "keras"}]``: the order of
  ``forward``'s arguments and the layout each is given in (``nc``: channels at dim 1, the default for a
  channels_last model; ``keras``: the Keras layout, ``--nhwc``);
- ``steps``: ``[{"name", "class", "module", "ctor", "args", "kwargs", "inputs", "layouts", "outputs",
  "out_layout", "activation"}]``, one per layer call. ``layouts[i]`` is the layout the module needs for input
  ``i`` (``null``: as it comes); ``out_layout`` the layout of its outputs (``null``: that of its first input);
  ``activation`` an optional fused Keras activation ``{"name", "dim", "hard_slope"}``. A shared layer's later
  calls repeat its ``module``;
- ``outputs``: ``[{"name": tensor, "layout": layout returned}]``;
- ``aliases``: ``{nested model name: layer_outputs key}`` (a nested model's output is its last layer's).

Layouts: a Keras tensor of rank >= 3 is held either as is (``keras``) or with its last axis moved to dim 1
(``nc``); every image module works channels-first.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from . import keras_ops

__all__ = ["KerasGenericNet", "keras_generic_config", "build_module", "to_layout"]

LAYOUTS = ("nc", "keras")


def to_layout(x: torch.Tensor, have: str, want: str | None) -> torch.Tensor:
    """Move the channel axis between the ``nc`` (dim 1) and ``keras`` (last) layouts."""
    if want is None or have == want or x.dim() < 3:
        return x
    return x.movedim(1, -1) if want == "keras" else x.movedim(-1, 1)


def _tuples(v: Any) -> Any:
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def build_module(ctor: str, args: list[Any], kwargs: dict[str, Any]) -> nn.Module:
    """``nn.X`` or a :mod:`keras_ops` class, called with the spec's arguments."""
    cls = getattr(nn, ctor[3:]) if ctor.startswith("nn.") else getattr(keras_ops, ctor)
    if ctor.startswith("nn."):
        return cls(*_tuples(args), **{k: _tuples(v) for k, v in kwargs.items()})
    return cls(*args, **kwargs)


def keras_generic_config(
    inputs: list[dict[str, Any]],
    steps: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    model_name: str = "",
    keras_version: str | None = None,
    aliases: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Check and normalise (JSON round trip) a generic Keras config; ``create_model`` calls this."""
    config = {
        "model_name": model_name,
        "keras_version": keras_version,
        "inputs": inputs,
        "steps": steps,
        "outputs": outputs,
    }
    config = json.loads(json.dumps({**config, "aliases": aliases or {}}))
    known = {i["name"] for i in config["inputs"]}
    owners: dict[str, str] = {}
    for step in config["steps"]:
        for key in ("name", "class", "module", "ctor", "inputs", "outputs"):
            if key not in step:
                raise ValueError(f"step {step.get('name', '?')!r} lacks {key!r}")
        absent = [t for t in step["inputs"] if t not in known]
        if absent:
            raise ValueError(f"layer '{step['name']}' reads tensors {absent} that nothing produced before it")
        known.update(step["outputs"])
        module = step["module"]
        if module is not None and (not module.isidentifier() or module.startswith("_")):
            raise ValueError(f"layer '{step['name']}': module name {module!r} is not a Python identifier")
        if module is not None and owners.setdefault(module, step["name"]) != step["name"] and not step.get("shared"):
            raise ValueError(f"layers '{owners[module]}' and '{step['name']}' both own module '{module}'")
    absent = [o["name"] for o in config["outputs"] if o["name"] not in known]
    if absent:
        raise ValueError(f"outputs {absent} are not produced by the model")
    return config


class KerasGenericNet(nn.Module):
    """A Keras model as a readable PyTorch module (see the module docstring for the config)."""

    arch_name = "keras_generic"

    def __init__(
        self,
        inputs: list[dict[str, Any]],
        steps: list[dict[str, Any]],
        outputs: list[dict[str, Any]],
        model_name: str = "",
        keras_version: str | None = None,
        aliases: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.config = keras_generic_config(inputs, steps, outputs, model_name, keras_version, aliases)
        self.input_names = [i["name"] for i in self.config["inputs"]]
        self.output_names = [o["name"] for o in self.config["outputs"]]
        reserved = set(dir(nn.Module)) | {"config", "input_names", "output_names", "steps", "layer_outputs"}
        reserved |= {"activation_in_module", "softmax_in_layout"}
        for step in self.config["steps"]:
            module = step["module"]
            if module is not None and module not in self._modules:
                if module in reserved:
                    raise ValueError(f"layer '{step['name']}': module name {module!r} is reserved")
                self.add_module(module, build_module(step["ctor"], step.get("args", []), step.get("kwargs", {})))
        self.steps = self.config["steps"]
        # layers whose activation an inference pass moved into a module (segconvert.inference.onednn_keras);
        # not state: the config, state_dict and emitted source are unchanged
        self.activation_in_module: set[str] = set()
        # in-layer softmax along the channel axis as it lies in memory (the inference form sets it:
        # segconvert.inference.layout); off, it is F.softmax, exactly as the emitted source computes it
        self.softmax_in_layout = False

    def _run(self, inputs: tuple[torch.Tensor, ...], record: dict[str, torch.Tensor] | None) -> dict[str, Any]:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"expected {len(self.input_names)} input(s) {self.input_names}, got {len(inputs)}")
        blobs: dict[str, tuple[torch.Tensor, str]] = {
            spec["name"]: (x, spec["layout"]) for spec, x in zip(self.config["inputs"], inputs, strict=True)
        }
        calls: dict[str, int] = {}
        for step in self.steps:
            wants = step.get("layouts") or [None] * len(step["inputs"])
            args = [to_layout(*blobs[t], w) for t, w in zip(step["inputs"], wants, strict=True)]
            first = wants[0] if wants and wants[0] else blobs[step["inputs"][0]][1] if step["inputs"] else "nc"
            layout = step.get("out_layout") or first
            if step["module"] is None:
                out: Any = args[0]
            else:
                out = self._modules[step["module"]](*args)
            outs = list(out) if isinstance(out, tuple) else [out]
            act = step.get("activation")
            if act and step["name"] not in getattr(self, "activation_in_module", ()):
                args = (act["name"], act.get("dim", 1), act.get("hard_slope", 0.2), self.softmax_in_layout)
                outs = [keras_ops.activation(o, *args) for o in outs]
            call = calls.get(step["name"], 0)
            calls[step["name"]] = call + 1
            for i, (t, v) in enumerate(zip(step["outputs"], outs, strict=True)):
                blobs[t] = (v, layout)
                if record is not None:
                    key = step["name"] + (f"@{call}" if call else "") + (f"/{i}" if i else "")
                    value = to_layout(v, layout, "keras")
                    if step["class"] == "MaxPoolingWithArgmax2D" and i == 1:  # TF's flat NHWC index
                        c = v.shape[1]
                        value = value * c + torch.arange(c, device=v.device)
                    record[key] = value
        return blobs

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        blobs = self._run(inputs, None)
        outs = tuple(to_layout(*blobs[o["name"]], o["layout"]) for o in self.config["outputs"])
        return outs[0] if len(outs) == 1 else outs

    @torch.no_grad()
    def layer_outputs(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every layer call's outputs in the Keras layout, keyed ``"<layer>[@call][/output index]"`` (no grad)."""
        record: dict[str, torch.Tensor] = {}
        self._run(inputs, record)
        for alias, key in self.config["aliases"].items():
            if key in record:
                record[alias] = record[key]
        return record

    def extra_repr(self) -> str:
        return f"model_name={self.config['model_name']!r}, inputs={self.input_names}, outputs={self.output_names}"

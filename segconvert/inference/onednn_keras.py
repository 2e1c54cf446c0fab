"""Keras in-layer activations (``Conv2D(activation="relu")`` ...) fused into the oneDNN convolutions.

The generic Keras module (:class:`~segconvert.reference_models.keras_generic.KerasGenericNet`) applies a
layer's own activation as a function in its run loop, right after the layer's module, so the conv output has
that activation as its only reader by construction (``Activation`` / ``ReLU`` layers are modules: the
trace-based pass fuses those). :func:`fuse_keras_activations` moves it into the oneDNN convolution that
replaced the layer's module (every call of a shared layer must carry the same activation) and names the
layer in ``net.activation_in_module``, which the run loop then skips. The config, state_dict and emitted
source are unchanged; the fallback path applies the same Keras function.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from segconvert.reference_models import keras_ops

__all__ = ["KerasActivation", "fuse_keras_activations", "keras_unary"]

# Keras activation name -> (oneDNN post-op, exact): exact = bit-identical to keras_ops.activation on float32
_FORMS: dict[str, tuple[tuple[str, list[float], str], bool]] = {
    "relu": (("relu", [], ""), True),
    "relu6": (("hardtanh", [0.0, 6.0], ""), True),
    "leaky_relu": (("leaky_relu", [0.2], ""), True),
    "sigmoid": (("sigmoid", [], ""), False),
    "tanh": (("tanh", [], ""), False),
    "swish": (("swish", [], ""), False),
    "silu": (("swish", [], ""), False),
    "gelu": (("gelu", [], "none"), False),
}


class KerasActivation(nn.Module):
    """A Keras activation by name as a module (the fallback of a fused Keras activation)."""

    def __init__(self, name: str, dim: int = 1, hard_slope: float = 0.2) -> None:
        super().__init__()
        self.name, self.dim, self.hard_slope = name, dim, hard_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return keras_ops.activation(x, self.name, self.dim, self.hard_slope)

    def extra_repr(self) -> str:
        return repr(self.name)


def keras_unary(act: dict[str, Any] | None, approximate: bool) -> tuple[str, list[float], str] | None:
    """The oneDNN post-op equal to a step's ``activation`` spec, or None (none, or not exact enough)."""
    if not act or act.get("name") not in _FORMS:
        return None
    unary, exact = _FORMS[act["name"]]
    return unary if exact or approximate else None


def fuse_keras_activations(model: nn.Module, approximate: bool, fused: dict[str, str], qual: dict[int, str]) -> None:
    """Fuse every generic Keras net's in-layer activations into its oneDNN convolutions (see the docstring).

    ``fused``: the report's conv -> activation map, extended; ``qual``: module id -> qualified name."""
    from segconvert.reference_models.keras_generic import KerasGenericNet

    for net in model.modules():
        if isinstance(net, KerasGenericNet):
            prefix = qual.get(id(net), "")
            for where, what in _fuse_net(net, approximate):
                fused[f"{prefix}.{where}" if prefix else where] = f"{prefix}.{what}" if prefix else what


def _target(net: nn.Module, module: str | None) -> Any:
    """The OneDNNConv2d that would apply an activation for ``module`` (a separable's pointwise), or None."""
    from segconvert.inference.onednn import OneDNNConv2d, OneDNNSeparable

    mod = net._modules.get(module) if module else None
    conv = mod.pointwise if isinstance(mod, OneDNNSeparable) else mod
    return conv if isinstance(conv, OneDNNConv2d) and conv.unary[0] == "none" else None


def _fuse(conv: Any, spec: dict[str, Any], unary: tuple[str, list[float], str]) -> None:
    conv.fuse_activation(KerasActivation(spec["name"], spec.get("dim", 1), spec.get("hard_slope", 0.2)), unary)


def _fuse_net(net: Any, approximate: bool) -> list[tuple[str, str]]:
    done: list[tuple[str, str]] = []
    by_module: dict[str, list[dict[str, Any]]] = {}
    by_name: dict[str, int] = {}
    for step in net.steps:
        by_name[step["name"]] = by_name.get(step["name"], 0) + 1
        if step["module"] is not None:
            by_module.setdefault(step["module"], []).append(step)
    for name, calls in by_module.items():
        conv, specs = _target(net, name), [c.get("activation") or None for c in calls]
        if conv is None or any(s != specs[0] for s in specs) or (unary := keras_unary(specs[0], approximate)) is None:
            continue
        if sum(by_name[c["name"]] for c in {c["name"]: c for c in calls}.values()) != len(calls):
            continue  # a layer name shared with other modules' calls
        _fuse(conv, specs[0], unary)  # type: ignore[arg-type]
        net.activation_in_module.update(c["name"] for c in calls)
        done.append((name, f"{name}.activation {specs[0]['name']}"))  # type: ignore[index]
    return done

"""Capture intermediate outputs of named submodules with forward hooks (for layer-by-layer parity)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["capture_outputs"]


def capture_outputs(
    model: nn.Module, inputs: Any, taps: Mapping[str, str | Sequence[Any]] | Sequence[str]
) -> tuple[Any, dict[str, Tensor]]:
    """Run ``model(inputs)`` under ``torch.no_grad`` and return (output, captured).

    ``taps`` maps a key to a module path, or to ``(module_path, call_index)`` for modules that run more than
    once per forward (DeepLab MSC: index 0/1/2 = 1x/0.75x/0.5x); a plain list of paths means ``{path: path}``.
    Tensors are cloned when captured, so later in-place ops do not change them. Missing calls raise KeyError.
    """
    if not isinstance(taps, Mapping):
        taps = {p: p for p in taps}
    wanted: dict[str, list[tuple[str, int]]] = {}
    for key, spec in taps.items():
        path, call = (spec, 0) if isinstance(spec, str) else (str(spec[0]), int(spec[1]))
        wanted.setdefault(path, []).append((key, call))
    captured: dict[str, Tensor] = {}
    handles = []

    def make_hook(path: str):
        counter = {"n": 0}

        def hook(_module, _args, output):
            n = counter["n"]
            counter["n"] += 1
            for key, call in wanted[path]:
                if call == n:
                    captured[key] = output.detach().clone()

        return hook

    try:
        for path in wanted:
            handles.append(model.get_submodule(path).register_forward_hook(make_hook(path)))
        with torch.no_grad():
            out = model(inputs)
    finally:
        for h in handles:
            h.remove()
    missing = [k for k in taps if k not in captured]
    if missing:
        raise KeyError(f"no output captured for {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    return out, captured

"""Recording one run of a model: which module call reads which tensor (the data flow the inference passes
need). ``run_trace`` runs the model under a ``TorchFunctionMode`` with module hooks, on an empty batch first
(the real kernels on zero elements: no arithmetic, a few MB), then on the meta device (no arithmetic, but its
Python shape functions import sympy and torch's decompositions, which stay resident), else
for real on the inputs. Used by :mod:`segconvert.inference.fuse` and :mod:`segconvert.inference.onednn`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["Call", "Trace", "example_inputs", "module_names", "run_trace", "sole_reader", "tensors_in"]

# Tensor methods / properties that read metadata only (not a use of the values).
_METADATA = frozenset(
    {"size", "dim", "numel", "stride", "is_contiguous", "storage_offset", "data_ptr", "element_size",
     "__len__", "is_floating_point", "is_complex", "get_device", "ndimension", "nelement", "type"}
)  # fmt: skip


@dataclass
class Call:
    module: nn.Module
    enter: int
    exit: int = -1
    inputs: tuple[int, ...] = ()  # ids of the tensor arguments, in order
    n_args: int = 0
    outputs: tuple[int, ...] = ()


def tensors_in(obj: Any) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            out.extend(tensors_in(o))
    elif isinstance(obj, dict):
        for o in obj.values():
            out.extend(tensors_in(o))
    return out


class Trace(TorchFunctionMode):
    """Records every torch call's tensor inputs (data uses only) and every module call (enter/exit, in/out)."""

    def __init__(self) -> None:
        super().__init__()
        self.seq = 0
        self.uses: dict[int, list[int]] = {}
        self.calls: list[Call] = []
        self.keep: list[Any] = []  # every tensor stays alive, so ids are unique for the whole trace

    def tick(self) -> int:
        self.seq += 1
        return self.seq

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name not in _METADATA and not (name == "__get__" and not isinstance(out, torch.Tensor)):
            s = self.tick()
            for t in tensors_in((args, kwargs)):
                self.uses.setdefault(id(t), []).append(s)
                self.keep.append(t)
        self.keep.append(out)
        return out

    def hook(self, model: nn.Module) -> list[Any]:
        stack: dict[int, list[Call]] = {}

        def pre(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            ts = tensors_in((args, kwargs))
            self.keep.extend(ts)
            call = Call(mod, self.tick(), inputs=tuple(id(t) for t in ts), n_args=len(args) + len(kwargs))
            self.calls.append(call)
            stack.setdefault(id(mod), []).append(call)

        def post(mod: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            call = stack[id(mod)].pop()
            call.exit = self.tick()
            ts = tensors_in(out)
            self.keep.extend(ts)
            call.outputs = tuple(id(t) for t in ts)

        handles = []
        for m in model.modules():
            handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(m.register_forward_hook(post, with_kwargs=True))
        return handles


def example_inputs(model: nn.Module, size: Sequence[int] | None = None) -> list[torch.Tensor]:
    """Seeded inputs of the shapes the model's metadata records (see ``segconvert.weights.inputs``); a
    3-channel 64x64 image for a model without metadata. ``size``: (H, W) for the free / image axes."""
    meta = getattr(model, "segconvert_meta", None)
    if not meta:
        h, w = size or (64, 64)
        return [torch.randn(1, 3, int(h), int(w), generator=torch.Generator().manual_seed(0))]
    from segconvert.weights.inputs import input_specs, synthetic_inputs

    return synthetic_inputs(input_specs(meta), size=size)


def _empty_batch(inputs: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
    """The inputs with a batch of 0 (every shape otherwise kept), or None when some input has no batch axis."""
    if not inputs or any(x.dim() < 2 or x.shape[0] < 1 for x in inputs):
        return None
    return [x[:0] for x in inputs]


def run_trace(model: nn.Module, inputs: Sequence[torch.Tensor]) -> tuple[Trace, set[int], str]:
    """Run ``model`` under the recorder: on an empty batch first (the real kernels on zero elements: no
    arithmetic, no memory), then on the meta device (no arithmetic, but its Python shape functions import
    sympy and the decompositions, which stay resident), else for real on the inputs."""
    errors = []
    empty = _empty_batch(inputs)
    for device in ("empty", "meta", "real") if empty is not None else ("meta", "real"):
        trace = Trace()
        handles = trace.hook(model)
        try:
            with torch.no_grad(), trace:
                if device == "meta":
                    state = {
                        k: v.to("meta")
                        for k, v in {**dict(model.named_parameters()), **dict(model.named_buffers())}.items()
                    }
                    xs = [x.to("meta") for x in inputs]
                    trace.keep.extend(xs)
                    out = torch.func.functional_call(model, state, tuple(xs), strict=False)
                else:  # the real kernels, on the empty batch or on the inputs themselves
                    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
                    xs = [x.to(dev) for x in (empty if device == "empty" else inputs)]  # type: ignore[union-attr]
                    trace.keep.extend(xs)
                    out = model(*xs)
                    if device == "empty" and any(t.dim() and t.shape[0] != 0 for t in tensors_in(out)):
                        raise RuntimeError("an output is not batch-first")
            outs = tensors_in(out)
            trace.keep.extend(outs)
            return trace, {id(t) for t in outs} | {id(x) for x in xs}, device
        except Exception as exc:  # noqa: BLE001 - a model the meta device cannot run is traced for real
            errors.append(f"{device}: {type(exc).__name__}: {exc}")
        finally:
            for h in handles:
                h.remove()
    raise RuntimeError("cannot trace the model for fusion (" + "; ".join(errors) + ")")


def module_names(model: nn.Module) -> dict[int, list[tuple[nn.Module, str, str]]]:
    """id(module) -> every (parent, attribute, qualified name) it sits under."""
    out: dict[int, list[tuple[nn.Module, str, str]]] = {}
    for pname, parent in model.named_modules(remove_duplicate=False):
        for attr, child in parent._modules.items():
            if child is not None:
                out.setdefault(id(child), []).append((parent, attr, f"{pname}.{attr}" if pname else attr))
    return out


def sole_reader(trace: Trace, tensor: int, after: int, pinned: set[int]) -> Call | None:
    """The module call that reads ``tensor`` as its only argument and contains every use of it, if any."""
    if tensor in pinned:
        return None
    uses = trace.uses.get(tensor, [])
    if not uses:
        return None
    best = None  # the innermost such call (a container around the reader contains the uses too)
    for call in trace.calls:
        if call.enter > after and call.inputs == (tensor,) and call.n_args == 1:
            if all(call.enter < u < call.exit for u in uses) and (best is None or call.enter > best.enter):
                best = call
    return best

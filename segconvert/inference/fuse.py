"""The inference form of a converted model: per-channel affine layers folded into the preceding convolution.

``fuse_model`` finds, by running the model once on example inputs (on a batch of 0 when the model allows it,
else on the ``meta`` device: no arithmetic either way), every convolution whose output is read by nothing but
a chain of per-channel affine layers -- PSPNet ``BN`` / :class:`FrozenBatchNorm2d`, ``nn.BatchNorm2d`` in eval
mode, Caffe ``BatchNorm`` (global statistics), ``Scale`` and ``Bias`` with learned per-channel parameters --
and folds the chain into the convolution's weight and bias (computed in float64, stored in the weight's
dtype). The folded layers become :class:`Folded` (an identity that names its convolution). Activations whose
input is a fresh convolution / affine output read by nothing else are switched to ``inplace=True``.

The analysis is by data flow, not by module names, so it applies to the named reference models and to the
generic (one module per source layer) nets alike; a module used several times (DeepLab-v2 MSC's shared
backbone) is folded only when every use has the same chain. The fused model is for inference: its
intermediate values (``layer_outputs``, forward hooks) are not those of the source layers any more.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from segconvert.reference_models.caffe_ops import BatchNorm as CaffeBatchNorm
from segconvert.reference_models.caffe_ops import Bias as CaffeBias
from segconvert.reference_models.caffe_ops import Scale as CaffeScale
from segconvert.reference_models.keras_ops import Conv as KerasConv
from segconvert.reference_models.keras_ops import ConvTranspose as KerasConvTranspose
from segconvert.reference_models.ops import FrozenBatchNorm2d

from .trace import Call, example_inputs, module_names, run_trace, sole_reader, tensors_in

__all__ = [
    "Absorbed",
    "Folded",
    "FuseCheck",
    "FuseReport",
    "channel_affine",
    "check_fused",
    "example_inputs",
    "fuse_model",
]

log = logging.getLogger(__name__)

_CONVS = (nn.Conv2d, nn.ConvTranspose2d, KerasConv, KerasConvTranspose)  # Keras ones: weights laid out as torch's
_FOLD_BLOCK = 1 << 16  # float64 elements per block when folding a scale into a weight


class Absorbed(nn.Identity):
    """A layer whose effect now lives in the module ``into`` (named, so the model still reads as its source)."""

    verb = "absorbed"

    def __init__(self, into: str, kind: str) -> None:
        super().__init__()
        self.into, self.kind = into, kind

    def forward(self, x: torch.Tensor, *_: Any) -> torch.Tensor:  # noqa: D102
        return x

    def extra_repr(self) -> str:
        return f"{self.kind} {self.verb} into {self.into}"


class Folded(Absorbed):
    """A per-channel affine layer whose effect now lives in the weights of ``into``."""

    verb = "folded"


@dataclass
class FuseReport:
    """What ``fuse_model`` did: ``folded`` conv -> affine module names, ``inplace`` activations, trace device."""

    folded: dict[str, list[str]] = field(default_factory=dict)
    inplace: list[str] = field(default_factory=list)
    pyramid: list[str] = field(default_factory=list)  # head convs fed at the pyramid's size (inference.pyramid)
    trace_device: str = "empty"
    check: FuseCheck | None = None  # set by check_fused

    def describe(self) -> str:
        n = sum(len(v) for v in self.folded.values())
        pyr = f", pyramid path for {', '.join(self.pyramid)}" if self.pyramid else ""
        return (
            f"{n} affine layers folded into {len(self.folded)} convolutions, {len(self.inplace)} in-place activations"
            f"{pyr}"
        )


def channel_affine(module: nn.Module, channels: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scale, shift), float64 of shape (channels,), when ``module(x) == x * scale + shift`` per channel of a
    (N, channels, H, W) input; None when the module is not such a layer (or not in a foldable configuration)."""

    def f64(t: torch.Tensor | None, default: float) -> torch.Tensor:
        if t is None:
            return torch.full((channels,), default, dtype=torch.float64)
        return t.detach().to("cpu", torch.float64).reshape(-1)

    if isinstance(module, FrozenBatchNorm2d):
        scale = f64(module.weight, 1.0) / torch.sqrt(f64(module.running_var, 1.0) + module.eps)
        shift = f64(module.bias, 0.0) - f64(module.running_mean, 0.0) * scale
    elif isinstance(module, nn.modules.batchnorm._BatchNorm) and type(module) in (nn.BatchNorm2d, nn.SyncBatchNorm):
        if module.training or module.running_mean is None or module.running_var is None:
            return None
        scale = f64(module.weight, 1.0) / torch.sqrt(f64(module.running_var, 1.0) + module.eps)
        shift = f64(module.bias, 0.0) - f64(module.running_mean, 0.0) * scale
    elif isinstance(module, CaffeBatchNorm):
        if not module.use_global_stats:
            return None
        scale = 1.0 / torch.sqrt(f64(module.running_var, 1.0) + module.eps)
        shift = -f64(module.running_mean, 0.0) * scale
    elif isinstance(module, CaffeScale):
        if module.axis not in (1, -3) or module.weight is None or module.weight.dim() != 1:
            return None
        if module.bias is not None and module.bias.dim() != 1:
            return None
        scale, shift = f64(module.weight, 1.0), f64(module.bias, 0.0)
    elif isinstance(module, CaffeBias):
        if module.axis not in (1, -3) or module.bias is None or module.bias.dim() != 1:
            return None
        scale, shift = torch.ones(channels, dtype=torch.float64), f64(module.bias, 0.0)
    elif callable(getattr(module, "channel_affine", None)):  # other converters' per-channel layers
        got = module.channel_affine()
        if got is None:
            return None
        scale, shift = (f64(t, 0.0) for t in got)
    else:
        return None
    if scale.numel() == 1:
        scale = scale.expand(channels).clone()
    if shift.numel() == 1:
        shift = shift.expand(channels).clone()
    if scale.numel() != channels or shift.numel() != channels:
        return None
    return scale, shift


def _foldable_type(module: nn.Module) -> bool:
    return isinstance(module, (FrozenBatchNorm2d, nn.BatchNorm2d, CaffeBatchNorm, CaffeScale, CaffeBias)) or callable(
        getattr(module, "channel_affine", None)
    )


def _activation(module: nn.Module) -> bool:
    return module.__class__.__module__ == "torch.nn.modules.activation" and getattr(module, "inplace", None) is False


# --------------------------------------------------------------------------------------------- tracing


def _fold_into(conv: nn.Module, chain: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    w = conv.weight.detach()
    out_ch = conv.out_channels
    scale = torch.ones(out_ch, dtype=torch.float64)
    shift = (
        conv.bias.detach().to("cpu", torch.float64)
        if conv.bias is not None
        else torch.zeros(out_ch, dtype=torch.float64)
    )
    for s, t in chain:
        scale, shift = scale * s, shift * s + t
    if isinstance(conv, (nn.ConvTranspose2d, KerasConvTranspose)):  # (in, out / g, *k): channel = group * out/g + col
        g = conv.groups
        row_scale = scale.reshape(g, 1, out_ch // g).expand(g, w.shape[0] // g, out_ch // g).reshape(w.shape[0], -1)
    else:
        row_scale = scale.reshape(-1, 1)
    # float64 products rounded once to the weight's dtype, a block of rows at a time (the same numbers as
    # the whole tensor at once, without a float64 copy of the largest weights alive: PSPNet's 4096->512 3x3
    # conv is 150 MB in float64)
    per_row = max(1, w[0].numel())
    step = max(1, _FOLD_BLOCK // per_row)
    with torch.no_grad():
        for r in range(0, w.shape[0], step):
            block = w[r : r + step].to("cpu", torch.float64)
            factor = row_scale[r : r + step].reshape(block.shape[0], -1, *([1] * (w.dim() - 2)))
            w[r : r + step].copy_((block * factor).to(w.dtype))
        bias = shift.to(device=w.device, dtype=w.dtype)
        if conv.bias is None:
            conv.bias = nn.Parameter(bias, requires_grad=conv.weight.requires_grad)
        else:
            conv.bias.copy_(bias)


def fuse_model(
    model: nn.Module,
    inputs: Sequence[torch.Tensor] | None = None,
    *,
    inplace: bool = False,
    activations: bool = True,
) -> tuple[nn.Module, FuseReport]:
    """Fold per-channel affine layers into their convolutions (see the module docstring); returns
    ``(fused model, report)``. ``inputs``: example inputs (default :func:`example_inputs`); ``inplace``: modify
    ``model`` itself instead of a deep copy. The model must be in eval mode."""
    if model.training:
        raise ValueError("fuse_model needs a model in eval mode (BatchNorm statistics are folded)")
    if not inplace:
        model = copy.deepcopy(model)
    report = FuseReport()
    candidates = any(_foldable_type(m) for m in model.modules())
    acts = activations and any(_activation(m) for m in model.modules())
    if not candidates and not acts:
        report.trace_device = "none"
        return model, report
    trace, pinned, report.trace_device = run_trace(model, list(inputs) if inputs is not None else example_inputs(model))
    names = module_names(model)
    qual = {mid: where[0][2] for mid, where in names.items()}
    calls_of: dict[int, list[Call]] = {}
    for c in trace.calls:
        calls_of.setdefault(id(c.module), []).append(c)

    # conv -> the chain of affine calls after every one of its calls (the same modules each time)
    plans: dict[int, list[nn.Module]] = {}
    producer_kind: dict[int, str] = {}  # tensor id -> "fresh" when made by a conv / affine / linear call
    for mid, calls in calls_of.items():
        mod = calls[0].module
        if isinstance(mod, (nn.Linear, *_CONVS)) or _foldable_type(mod):
            for c in calls:
                for t in c.outputs:
                    producer_kind[t] = "fresh"
        if not isinstance(mod, _CONVS) or (isinstance(mod, nn.ConvTranspose2d) and mod.out_channels % mod.groups):
            continue
        chains = []
        for c in calls:
            chain: list[nn.Module] = []
            if len(c.outputs) == 1:
                cur, after = c.outputs[0], c.exit
                while (reader := sole_reader(trace, cur, after, pinned)) is not None:
                    if not _foldable_type(reader.module) or len(reader.outputs) != 1:
                        break
                    if channel_affine(reader.module, mod.out_channels) is None:
                        break
                    chain.append(reader.module)
                    cur, after = reader.outputs[0], reader.exit
            chains.append(tuple(id(m) for m in chain))
            if len(chains) == 1:
                plans[mid] = chain
        if not chains[0] or len(set(chains)) != 1:
            plans.pop(mid, None)
    # every call of a folded affine module must belong to that conv's chains
    owner: dict[int, int] = {}
    for cid, chain in list(plans.items()):
        for m in chain:
            n_uses = len(calls_of[cid])
            if len(calls_of[id(m)]) != n_uses or owner.setdefault(id(m), cid) != cid:
                plans.pop(cid)
                break
    for cid, chain in plans.items():
        conv = calls_of[cid][0].module
        _fold_into(conv, [channel_affine(m, conv.out_channels) for m in chain])  # type: ignore[misc]
        report.folded[qual[cid]] = [qual[id(m)] for m in chain]
        for m in chain:
            for parent, attr, _ in names[id(m)]:
                parent._modules[attr] = Folded(qual[cid], type(m).__name__)

    if activations:
        for mid, calls in calls_of.items():
            mod = calls[0].module
            if not _activation(mod):
                continue
            ok = True
            for c in calls:
                t = c.inputs[0] if len(c.inputs) == 1 and c.n_args == 1 else None
                uses = trace.uses.get(t, []) if t is not None else []
                if (
                    t is None
                    or t in pinned
                    or producer_kind.get(t) != "fresh"
                    or not uses
                    or not all(c.enter < u < c.exit for u in uses)
                ):
                    ok = False
                    break
            if ok:
                mod.inplace = True
                report.inplace.append(qual[mid])
    log.debug("fuse_model: %s (traced on %s)", report.describe(), report.trace_device)
    return model, report


# ---------------------------------------------------------------------------------------------- checking


@dataclass
class FuseCheck:
    """``check_fused``: worst folded layer and the whole-model difference, both relative to max |unfused|."""

    layers: int
    worst_layer: str | None
    worst_layer_rel: float
    output_rel: float
    argmax_agreement: float | None  # share of pixels whose argmax over channels agrees (4-D outputs)

    def ok(self, layer_rtol: float = 1e-5, output_rtol: float = 2e-3) -> bool:
        return self.worst_layer_rel <= layer_rtol and self.output_rel <= output_rtol

    def describe(self) -> str:
        agree = "" if self.argmax_agreement is None else f", argmax agreement {100 * self.argmax_agreement:.3f}%"
        return (
            f"{self.layers} folded layers, worst {self.worst_layer} {self.worst_layer_rel:.1e} x magnitude; "
            f"output {self.output_rel:.1e} x magnitude{agree}"
        )


def _run_hooked(model: nn.Module, xs: list[torch.Tensor], handles: list) -> Any:
    """``model(*xs)`` without grad, removing the hook ``handles`` afterwards (also when it raises)."""
    try:
        with torch.no_grad():
            return model(*xs)
    finally:
        for h in handles:
            h.remove()


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-12))


def check_fused(
    unfused: nn.Module, fused: nn.Module, report: FuseReport, inputs: Sequence[torch.Tensor] | None = None
) -> FuseCheck:
    """Run both models on ``inputs`` (default :func:`example_inputs`). Every folded convolution is checked on
    the input it really gets: fused conv vs unfused conv + chain (float32 exactness: ~1e-7..1e-6 x magnitude).
    The whole-model difference grows with depth like any change of float32 rounding order (about 1e-4 x
    magnitude after ResNet-101), which is why the bound of :meth:`FuseCheck.ok` on it is the one between
    two correct implementations of the net (2e-3, the fixtures' end-to-end tolerance)."""
    xs = list(inputs) if inputs is not None else example_inputs(unfused)
    dev = next((p.device for p in unfused.parameters()), torch.device("cpu"))
    xs = [x.to(dev) for x in xs]
    worst: tuple[float, str | None] = (0.0, None)
    pending: dict[str, list[torch.Tensor]] = {}
    handles = []
    for conv_name, chain in report.folded.items():
        conv, last = unfused.get_submodule(conv_name), unfused.get_submodule(chain[-1])
        fconv = fused.get_submodule(conv_name)

        def pre(mod: nn.Module, args: tuple, name: str = conv_name) -> None:
            pending.setdefault(name, []).append(args[0])

        def post(mod: nn.Module, args: tuple, out: torch.Tensor, name: str = conv_name, f: nn.Module = fconv) -> None:
            nonlocal worst
            x = pending[name].pop(0)
            rel = _rel(f(x), out)
            if rel >= worst[0]:
                worst = (rel, name)

        handles += [conv.register_forward_pre_hook(pre), last.register_forward_hook(post)]
    ref = _run_hooked(unfused, xs, handles)

    def pyramid(mod: nn.Module, args: tuple, out: torch.Tensor, name: str) -> None:
        nonlocal worst
        if not isinstance(args[0], torch.Tensor):  # the pyramid path vs upsample + concat + convolution
            rel = _rel(out, mod.reference(args[0]))
            if rel >= worst[0]:
                worst = (rel, f"{name} (pyramid)")

    handles = [
        fused.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: pyramid(m, a, o, n)) for n in report.pyramid
    ]
    got = _run_hooked(fused, xs, handles)
    refs, gots = tensors_in(ref), tensors_in(got)
    out_rel = max((_rel(g, r) for g, r in zip(gots, refs, strict=True)), default=0.0)
    agree = None
    if refs and refs[-1].dim() == 4 and refs[-1].shape[1] > 1:
        agree = float((refs[-1].argmax(1) == gots[-1].argmax(1)).double().mean())
    check = FuseCheck(len(report.folded), worst[1], worst[0], out_rel, agree)
    report.check = check
    return check

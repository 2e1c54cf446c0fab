"""oneDNN inference pass: convolutions (+ the activation that alone reads them) as one oneDNN primitive.

``onednn_model`` runs after BatchNorm folding (:mod:`segconvert.inference.fuse`). It replaces every
``nn.Conv2d``, 2-D Keras ``Conv`` (TF ``SAME`` padding, resolved per input size) and Keras ``SeparableConv``
by :class:`OneDNNConv2d`, which calls ``torch.ops.mkldnn._convolution_pointwise`` -- the kernel inductor's CPU
freezing uses, callable eagerly: oneDNN's NHWC depthwise / 1x1 kernels (eager PyTorch takes slower paths
for depthwise) with the activation applied in the same pass over the output. The weights stay the ordinary
parameters (the same tensors, nothing copied; oneDNN reorders them per call as eager PyTorch does). An NCHW
input of a depthwise conv takes the eager path (oneDNN's NCHW depthwise kernel is no faster); the gain is
largest on channels_last inputs (``prepare_model(channels_last=True)``). The sums are oneDNN's: the same
as eager ``F.conv2d`` where that runs oneDNN too, else a reordering of float32 sums (~1e-7..1e-6 x magnitude
per layer).

An activation module is fused when the trace (fuse.py's recorder) shows it reads the conv output and nothing
else reads that value (an in-place activation's later readers read the activated value). Fused by default:
only those whose oneDNN form is bit-exact to PyTorch's -- ReLU, ReLU6 / Hardtanh, LeakyReLU, Keras ``ReLU``
(threshold 0; max_value or negative_slope); ``approximate=True`` adds Sigmoid, Tanh, SiLU, Hardswish,
Hardsigmoid, GELU (a few float32 ulps: <= 2e-7 x magnitude). The fused activation module becomes
:class:`FusedActivation` (an identity naming its conv).

:class:`OneDNNConv2d` falls back to ``F.conv2d`` + the original activation, with the same weights, when
oneDNN cannot give the same answer: an input that is not float32 on the CPU, ``torch.autocast`` active,
gradients wanted, TorchScript tracing / ONNX export / ``torch.compile``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from segconvert.inference.fuse import Absorbed
from segconvert.inference.onednn_keras import fuse_keras_activations
from segconvert.inference.trace import Call, Trace, example_inputs, module_names, run_trace, sole_reader
from segconvert.reference_models.keras_ops import Conv as KerasConv
from segconvert.reference_models.keras_ops import KerasReLU, SeparableConv, _pad_input, _same_as_zero_taps
from segconvert.reference_models.keras_ops_pool import tf_same_pads

__all__ = ["FusedActivation", "OneDNNConv2d", "OneDNNReport", "onednn_available", "onednn_model", "unary_attr"]

log = logging.getLogger(__name__)

Unary = tuple[str, list[float], str]  # (attr, scalars, algorithm) of _convolution_pointwise
_EXACT = "exact"  # bit-identical to PyTorch's activation on float32
_APPROX = "approximate"  # within a few float32 ulps


def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN (mkldnn) and its fused convolution op."""
    try:
        return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    except (AttributeError, RuntimeError):
        return False


def unary_attr(module: nn.Module) -> tuple[Unary, str] | None:
    """(oneDNN post-op, exactness) equal to ``module``'s activation, or None when there is none."""
    t = type(module)
    if t is nn.ReLU:
        return ("relu", [], ""), _EXACT
    if t in (nn.ReLU6, nn.Hardtanh):
        lo, hi = float(module.min_val), float(module.max_val)  # type: ignore[attr-defined]
        return (("hardtanh", [lo, hi], ""), _EXACT) if lo <= hi else None
    if t is nn.LeakyReLU:
        return ("leaky_relu", [float(module.negative_slope)], ""), _EXACT  # type: ignore[attr-defined]
    if t is KerasReLU:
        mx, slope, thr = module.max_value, module.negative_slope, module.threshold  # type: ignore[attr-defined]
        if thr != 0:
            return None
        if slope == 0:  # where(x >= 0, x, 0 * x), clamped at max: relu / clip(0, max)
            return (("relu", [], ""), _EXACT) if mx is None else (("hardtanh", [0.0, float(mx)], ""), _EXACT)
        return (("leaky_relu", [float(slope)], ""), _EXACT) if mx is None else None
    simple = {nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.SiLU: "swish", nn.Hardswish: "hardswish",
              nn.Hardsigmoid: "hardsigmoid"}  # fmt: skip
    if t in simple:
        return (simple[t], [], ""), _APPROX
    if t is nn.GELU:
        return ("gelu", [], module.approximate), _APPROX  # type: ignore[attr-defined]
    return None


class FusedActivation(Absorbed):
    """An activation now applied inside the oneDNN convolution ``into``."""

    verb = "fused"


class OneDNNConv2d(nn.Conv2d):
    """A 2-D convolution (+ fused activation) through ``torch.ops.mkldnn._convolution_pointwise``.

    An ``nn.Conv2d`` (same attributes, ``weight`` / ``bias`` the replaced conv's parameters: shared, same
    state_dict keys) whose forward is oneDNN's. ``same``: TF SAME padding computed from each input's size
    (``padding`` is then 0: symmetric pads go to oneDNN, a depthwise kernel's extra pad becomes a zero tap,
    other convs pad the input as Keras ``Conv`` does)."""

    def __init__(
        self,
        weight: nn.Parameter,
        bias: nn.Parameter | None,
        stride: Sequence[int],
        padding: Sequence[int],
        dilation: Sequence[int],
        groups: int,
        same: bool = False,
        source: str = "Conv2d",
    ) -> None:
        nn.Module.__init__(self)  # no weights of its own: nn.Conv2d's attributes, the given parameters
        self.in_channels, self.out_channels = weight.shape[1] * groups, weight.shape[0]
        self.kernel_size = tuple(weight.shape[2:])
        self.stride, self.padding, self.dilation = tuple(stride), tuple(padding), tuple(dilation)
        self.transposed, self.output_padding, self.groups, self.padding_mode = False, (0, 0), groups, "zeros"
        self._reversed_padding_repeated_twice = [p for p in reversed(self.padding) for _ in range(2)]
        self.weight, self.bias = weight, bias
        self.same, self.source = same, source
        self._depthwise = groups > 1 and weight.shape[1] == 1
        self.unary: Unary = ("none", [], "")
        self._act: tuple[nn.Module, ...] = ()  # the fused activation module, for the fallback (not a child)

    def fuse_activation(self, module: nn.Module, unary: Unary) -> None:
        """Apply ``module`` (whose oneDNN form is ``unary``) inside this convolution from now on."""
        self.unary, self._act = unary, (module,)

    def fast(self, x: torch.Tensor) -> bool:
        """Whether oneDNN gives this input the answer of the eager path."""
        w = self.weight
        return (
            x.dtype == torch.float32
            and x.dim() == 4
            and x.device.type == "cpu"
            and not x.is_mkldnn
            and w.dtype == torch.float32
            and w.device.type == "cpu"
            and (self.bias is None or self.bias.dtype == torch.float32)
            and not torch.is_autocast_enabled("cpu")
            and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))
            and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling()
            and not torch.onnx.is_in_onnx_export()
        )

    def _same(self, x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """(input, weight, symmetric padding) realising TF SAME for this input's size."""
        k = list(weight.shape[2:])
        pads = tf_same_pads(list(x.shape[2:]), k, self.stride, self.dilation)  # [left, right, top, bottom]
        if pads[0] == pads[1] and pads[2] == pads[3]:
            return x, weight, [pads[2], pads[0]]
        if weight.shape[1] == 1:  # depthwise: a zero tap instead of a padded copy of the input
            fast = _same_as_zero_taps(x, weight, self.stride, self.dilation)
            if fast is not None:
                return x, fast[0], list(fast[1])
        return _pad_input(x, "same", k, self.stride, self.dilation), weight, [0, 0]

    def eager(self, x: torch.Tensor) -> torch.Tensor:
        """The fallback: ``F.conv2d`` with the same weights, then the fused activation's own module."""
        w, pad = self.weight, list(self.padding)
        if self.same:
            x, w, pad = self._same(x, w)
        y = F.conv2d(x, w, self.bias, self.stride, pad, self.dilation, self.groups)
        return self._act[0](y) if self._act else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if not self.fast(x) or (self._depthwise and not x.is_contiguous(memory_format=torch.channels_last)):
            return self.eager(x)  # (oneDNN's NCHW depthwise kernel is no faster than PyTorch's)
        w, pad = self.weight, list(self.padding)
        if self.same:
            x, w, pad = self._same(x, w)
        attr, scalars, algorithm = self.unary
        return torch.ops.mkldnn._convolution_pointwise(
            x, w, self.bias, pad, list(self.stride), list(self.dilation), self.groups, attr, scalars, algorithm
        )

    def extra_repr(self) -> str:
        o, i, *k = self.weight.shape
        pad = "same" if self.same else list(self.padding)
        act = "" if self.unary[0] == "none" else f", {self.unary[0]}{self.unary[1] or ''}"
        return (
            f"{i * self.groups}, {o}, kernel_size={k}, stride={list(self.stride)}, padding={pad}, "
            f"dilation={list(self.dilation)}, groups={self.groups}{act} (from {self.source})"
        )


class OneDNNSeparable(nn.Module):
    """Keras ``SeparableConv`` (2-D) as a oneDNN depthwise then a oneDNN pointwise convolution."""

    def __init__(self, depthwise: OneDNNConv2d, pointwise: OneDNNConv2d) -> None:
        super().__init__()
        self.depthwise, self.pointwise = depthwise, pointwise

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.pointwise(self.depthwise(x))


@dataclass
class OneDNNReport:
    """What ``onednn_model`` did: ``convs`` now on oneDNN, ``fused`` conv -> activation, ``skipped`` why not."""

    convs: list[str] = field(default_factory=list)
    fused: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    reason: str | None = None  # why the pass did not run at all

    def describe(self) -> str:
        if self.reason:
            return f"oneDNN pass off: {self.reason}"
        kinds: dict[str, int] = {}
        for k in self.fused.values():
            kinds[k.split(" ")[-1]] = kinds.get(k.split(" ")[-1], 0) + 1
        acts = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none"
        return f"{len(self.convs)} convolutions on oneDNN, activations fused: {acts}"


# ----------------------------------------------------------------------------------------- conversion


def _conv2d_of(conv: nn.Module, name: str, report: OneDNNReport) -> OneDNNConv2d | None:
    """The oneDNN form of an ``nn.Conv2d`` / 2-D Keras ``Conv``, or None (reason in ``report.skipped``)."""
    w, b = getattr(conv, "weight", None), getattr(conv, "bias", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 4:
        return None
    if w.dtype != torch.float32 or w.device.type != "cpu" or (b is not None and b.dtype != torch.float32):
        report.skipped[name] = f"weights {w.dtype} on {w.device}"
        return None
    if type(conv) is nn.Conv2d:
        pad = conv.padding
        if conv.padding_mode != "zeros" or (isinstance(pad, str) and pad != "valid"):
            report.skipped[name] = f"padding {pad!r} / {conv.padding_mode}"
            return None
        pad = [0, 0] if isinstance(pad, str) else list(pad)
        return OneDNNConv2d(w, b, conv.stride, pad, conv.dilation, conv.groups, source="Conv2d")  # type: ignore[arg-type]
    if type(conv) is KerasConv and len(conv.kernel_size) == 2 and conv.padding in ("same", "valid"):
        same = conv.padding == "same"
        return OneDNNConv2d(w, b, conv.stride, [0, 0], conv.dilation, conv.groups, same=same, source="Conv")  # type: ignore[arg-type]
    report.skipped[name] = f"{type(conv).__name__} configuration"
    return None


def _separable_of(sep: SeparableConv, name: str, report: OneDNNReport) -> OneDNNSeparable | None:
    dw, pw = sep.depthwise, sep.pointwise
    if len(sep.kernel_size) != 2 or sep.padding not in ("same", "valid") or type(dw) is not nn.Conv2d:
        report.skipped[name] = "SeparableConv configuration"
        return None
    d = _conv2d_of(dw, name + ".depthwise", report)
    p = _conv2d_of(pw, name + ".pointwise", report)
    if d is None or p is None:
        return None
    d.same, d.source = sep.padding == "same", "SeparableConv"
    return OneDNNSeparable(d, p)


def _activation_reader(trace: Trace, tensor: int, after: int, pinned: set[int]) -> Call | None:
    """The activation module call that is the only reader of ``tensor`` (a conv output made at ``after``).

    Out-of-place: fuse.py's sole reader. In place (the call returns ``tensor`` itself): the first call to read
    it, with no read before it; later reads see the activated value, which the fused conv returns."""
    sole = sole_reader(trace, tensor, after, pinned)
    if sole is not None:
        return sole
    uses = [u for u in trace.uses.get(tensor, []) if u > after]
    for call in trace.calls:  # in call order: the first in-place activation of the tensor
        if call.enter > after and call.inputs == (tensor,) and call.n_args == 1 and call.outputs == (tensor,):
            if unary_attr(call.module) is None:
                continue
            if uses and all(u > call.enter for u in uses) and any(u < call.exit for u in uses):
                return call
            return None
    return None


def onednn_model(
    model: nn.Module, inputs: Sequence[torch.Tensor] | None = None, *, approximate: bool = False
) -> OneDNNReport:
    """Replace ``model``'s 2-D convolutions (in place) by :class:`OneDNNConv2d`, fusing the activation that
    alone reads each one's output (see the module docstring). ``inputs``: example inputs for the trace
    (default :func:`segconvert.inference.fuse.example_inputs`). Returns the report, also kept as
    ``model.segconvert_onednn``; a model it cannot apply to is left as it was (``report.reason``)."""
    report = OneDNNReport()
    params = list(model.parameters())
    if not onednn_available():
        report.reason = "PyTorch has no oneDNN (mkldnn) here"
    elif model.training:
        report.reason = "model in training mode"
    elif any(p.device.type != "cpu" for p in params):
        report.reason = "model not on the CPU"
    if report.reason is None:
        _convert(model, inputs, approximate, report)
    log.debug("onednn_model: %s", report.describe())
    model.segconvert_onednn = report
    return report


def _convert(model: nn.Module, inputs: Sequence[torch.Tensor] | None, approximate: bool, report: OneDNNReport) -> None:
    units: dict[int, nn.Module] = {}  # id -> SeparableConv / conv to replace
    inner: set[int] = set()
    for m in model.modules():
        if type(m) is SeparableConv:
            units[id(m)] = m
            inner.update((id(m.depthwise), id(m.pointwise)))
    for m in model.modules():
        if id(m) not in inner and (type(m) is nn.Conv2d or type(m) is KerasConv):
            units[id(m)] = m
    if not units:
        report.reason = "no 2-D convolutions"
        return
    trace, pinned, _ = run_trace(model, list(inputs) if inputs is not None else example_inputs(model))
    names = module_names(model)
    qual = {mid: where[0][2] for mid, where in names.items()}
    calls_of: dict[int, list[Call]] = {}
    for c in trace.calls:
        calls_of.setdefault(id(c.module), []).append(c)

    new: dict[int, OneDNNConv2d | OneDNNSeparable] = {}
    for uid, mod in units.items():
        if isinstance(mod, SeparableConv):
            got: OneDNNConv2d | OneDNNSeparable | None = _separable_of(mod, qual[uid], report)
        else:
            got = _conv2d_of(mod, qual[uid], report)
        if got is not None:
            new[uid] = got
    # activations: every call of the conv read by an activation of the same oneDNN form (one module, or one
    # per call: DeepLab MSC's per-scale ReLUs after a shared conv), every call of those modules such a read
    acts_of: dict[int, list[nn.Module]] = {}
    read_by: dict[int, list[int]] = {}  # conv id -> the activation module of each of its calls
    act_mod: dict[int, nn.Module] = {}
    for uid in new:
        calls = calls_of.get(uid, [])
        readers = [
            _activation_reader(trace, c.outputs[0], c.exit, pinned) if len(c.outputs) == 1 else None for c in calls
        ]
        if not calls or any(r is None for r in readers):
            continue
        mods = list({id(r.module): r.module for r in readers}.values())  # type: ignore[union-attr]
        forms = [unary_attr(m) for m in mods]
        if any(f is None or (f[1] == _APPROX and not approximate) or f[0] != forms[0][0] for f in forms):  # type: ignore[index]
            continue
        acts_of[uid], read_by[uid] = mods, [id(r.module) for r in readers]  # type: ignore[union-attr]
        act_mod.update((id(m), m) for m in mods)
    changed = True
    while changed:  # drop convs whose activations also run on something not fused, until none is left
        counts: dict[int, int] = {}
        for uid in acts_of:
            for mid in read_by[uid]:
                counts[mid] = counts.get(mid, 0) + 1
        bad = [u for u, mods in acts_of.items() if any(counts[id(m)] != len(calls_of[id(m)]) for m in mods)]
        for u in bad:
            del acts_of[u]
        changed = bool(bad)
    for uid, module in new.items():
        for parent, attr, _ in names[uid]:
            parent._modules[attr] = module
        report.convs.append(qual[uid])
        mods = acts_of.get(uid)
        if mods:
            unary = unary_attr(mods[0])[0]  # type: ignore[index]
            (module.pointwise if isinstance(module, OneDNNSeparable) else module).fuse_activation(mods[0], unary)
            report.fused[qual[uid]] = f"{', '.join(qual[id(m)] for m in mods)} {type(mods[0]).__name__}"
    into: dict[int, list[str]] = {}
    for uid, mods in acts_of.items():
        for m in mods:
            into.setdefault(id(m), []).append(qual[uid])
    for mid, convs in into.items():
        for parent, attr, _ in names[mid]:
            parent._modules[attr] = FusedActivation(", ".join(convs), type(act_mod[mid]).__name__)
    fuse_keras_activations(model, approximate, report.fused, qual)

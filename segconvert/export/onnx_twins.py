"""Export twins: modules swapped in while :func:`segconvert.export.onnx.export_onnx` traces a model, so that the
ONNX graph computes exactly what the eager module does (see that module's docstring for the rules).

TF ``SAME`` padding, TF1 legacy resize and PSPNet's per-size pyramid pooling take their sizes as Python ints in
the eager modules, so a static export gets exact constant pads / kernels / indices at any input size; the twins
here cover what the exporter would otherwise get wrong: Caffe pooling (rounding, clip rule, divisor) and TF
``SAME`` average pooling (``divisor_override`` is dropped by the exporter), plus the in-graph size arithmetic
of a dynamic export.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segconvert.reference_models.layers import Resize, UpsampleToInput
from segconvert.reference_models.ops import (
    CaffePool2d,
    Conv2dSame,
    Interp,
    SamePad2d,
    TFSamePool2d,
    caffe_pool_out,
)
from segconvert.reference_models.pspnet import PPMPool

__all__ = ["pool_plan", "export_twins", "dynamic_blockers", "TWINNED"]

TWINNED = (CaffePool2d, Interp, UpsampleToInput, TFSamePool2d, PPMPool)  # a root module of these gets wrapped


# --------------------------------------------------------------------------------------------- pooling


def _axis_sizes(n: int, k: int, s: int, p: int, any_pad: bool) -> tuple[int, int, int, int]:
    """(Caffe, floor, ceil as PyTorch/onnxruntime compute it, ceil as ONNX shape inference computes it).

    ``any_pad``: whether either axis is padded (Caffe then applies its clip rule on both axes)."""
    caffe = caffe_pool_out(n, k, s, p, any_pad)
    floor = (n + 2 * p - k) // s + 1
    onnx_ceil = -(-(n + 2 * p - k) // s) + 1
    torch_ceil = onnx_ceil - 1 if (onnx_ceil - 1) * s >= n + p else onnx_ceil
    return caffe, floor, torch_ceil, onnx_ceil


def pool_plan(hw: Sequence[int], kernel: Sequence[int], stride: Sequence[int], pad: Sequence[int]) -> str:
    """How a Caffe pooling geometry is written: ``"ceil"`` (ceil_mode=1), ``"floor"`` or ``"explicit"``."""
    if any(p > k // 2 for k, p in zip(kernel, pad, strict=True)):
        return "explicit"  # PyTorch's pooling (and so the exporter) needs pad <= kernel/2
    any_pad = any(p > 0 for p in pad)
    sizes = [_axis_sizes(n, k, s, p, any_pad) for n, k, s, p in zip(hw, kernel, stride, pad, strict=True)]
    if all(c == tc == oc for c, _, tc, oc in sizes):
        return "ceil"
    if all(c == f for c, f, _, _ in sizes):
        return "floor"
    return "explicit"


class _OnnxCaffePool(nn.Module):
    """Export twin of :class:`CaffePool2d` (same results; see the module docstring)."""

    def __init__(self, pool: CaffePool2d, dynamic: bool, plans: Counter) -> None:
        super().__init__()
        self.orig = pool
        self.dynamic = dynamic
        self.plans = plans

    def forward(self, x: Tensor) -> Tensor:
        p = self.orig
        if p.global_pooling:
            self.plans["global"] += 1
            return p(x)
        k, s, pad = p.kernel_size, p.stride, p.pad
        if self.dynamic:
            plan = "ceil"
        else:
            plan = pool_plan([int(v) for v in x.shape[-2:]], k, s, pad)
        self.plans[plan] += 1
        if plan in ("ceil", "floor"):
            ceil = plan == "ceil"
            if p.mode == "max":
                return F.max_pool2d(x, k, s, pad, ceil_mode=ceil)
            return F.avg_pool2d(x, k, s, pad, ceil_mode=ceil, count_include_pad=True)
        return self._explicit(x)

    def _explicit(self, x: Tensor) -> Tensor:
        p = self.orig
        (kh, kw), (sh, sw), (ph, pw) = p.kernel_size, p.stride, p.pad
        h, w = (int(v) for v in x.shape[-2:])
        oh, ow = p.output_size(h, w)
        eh = max(0, (oh - 1) * sh + kh - h - ph)
        ew = max(0, (ow - 1) * sw + kw - w - pw)
        if p.mode == "max":
            xp = F.pad(x, (pw, ew, ph, eh), value=-math.inf)
            return F.max_pool2d(xp, (kh, kw), (sh, sw))[..., :oh, :ow]
        total = F.avg_pool2d(F.pad(x, (pw, ew, ph, eh)), (kh, kw), (sh, sw)) * float(kh * kw)
        return total[..., :oh, :ow] / p._divisor(h, w, oh, ow, x)


def _tf_same_avg(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """TF ``avg_pool`` SAME (divides by the non-padded cells) without ``divisor_override``, which the exporter drops:
    explicit pads, a plain ``AveragePool`` and a constant per-cell factor kernel area / valid cells."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    pads = SamePad2d(kernel, stride).pads(h, w)
    if not any(pads):
        return F.avg_pool2d(x, kernel, stride)
    ones = F.pad(torch.ones((1, 1, h, w), dtype=torch.float64), pads)
    count = F.avg_pool2d(ones, kernel, stride) * float(kernel[0] * kernel[1])  # float64: exact small integers
    factor = (float(kernel[0] * kernel[1]) / count).to(x.dtype)
    return F.avg_pool2d(F.pad(x, pads), kernel, stride) * factor


class _OnnxTFSamePool(nn.Module):
    """Export twin of :class:`TFSamePool2d` (avg: see :func:`_tf_same_avg`; max exports as is)."""

    def __init__(self, pool: TFSamePool2d) -> None:
        super().__init__()
        self.orig = pool

    def forward(self, x: Tensor) -> Tensor:
        p = self.orig
        return p(x) if p.mode == "max" else _tf_same_avg(x, p.kernel_size, p.stride)


class _OnnxPPMPool(nn.Module):
    """Export twin of PSPNet's ``PPMPool`` in ``tf_same`` mode (its pooling is built per input size)."""

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.orig = pool

    def forward(self, x: Tensor) -> Tensor:
        p = self.orig
        if p.mode != "tf_same":
            return p(x)
        k = (max(1, int(x.shape[-2]) // p.bin_size), max(1, int(x.shape[-1]) // p.bin_size))
        return _tf_same_avg(x, k, k)


# ------------------------------------------------------------------------------------- dynamic sizes


class _DynamicInterp(nn.Module):
    """Export twin of Caffe ``Interp`` computing the output size in the graph (no Python ints)."""

    def __init__(self, interp: Interp) -> None:
        super().__init__()
        self.orig = interp

    def forward(self, x: Tensor) -> Tensor:
        p = self.orig
        h, w = x.shape[-2], x.shape[-1]
        if p.pad_beg or p.pad_end:
            b = -p.pad_beg
            x = x[..., b : h + p.pad_end, b : w + p.pad_end]
        he, we = h + p.pad_beg + p.pad_end, w + p.pad_beg + p.pad_end
        shrink, zoom = p.shrink_factor, p.zoom_factor
        if shrink is not None:
            he, we = (he - 1) // shrink + 1, (we - 1) // shrink + 1
        if zoom is not None:
            he, we = he + (he - 1) * (zoom - 1), we + (we - 1) * (zoom - 1)
        if shrink is None and zoom is None:
            he, we = p.height, p.width
        return F.interpolate(x, size=(he, we), mode="bilinear", align_corners=True)


class _DynamicUpsampleToInput(nn.Module):
    """Export twin of the final ``Interp(zoom 8)`` + crop to the input size, sizes computed in the graph."""

    def __init__(self, up: UpsampleToInput) -> None:
        super().__init__()
        self.orig = up
        self.interp = _DynamicInterp(up.interp) if up.interp is not None else None

    def forward(self, x: Tensor, size: Sequence[Any]) -> Tensor:
        h, w = size[0], size[1]
        if self.interp is None:  # half_pixel (tf1_legacy is refused before export)
            return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        return self.interp(x)[..., :h, :w]


def dynamic_blockers(model: nn.Module) -> list[str]:
    """Modules whose pads / kernels / indices are fixed for one input size (see the module docstring)."""
    found: dict[str, str] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, PPMPool) and mod.mode == "fixed":
            found.setdefault("fixed", f"{name} (PSPNet fixed pyramid-pooling kernels for {mod.feature_size} features)")
        elif isinstance(mod, PPMPool) and mod.mode in ("tf_same", "tf_valid"):
            found.setdefault("ppm_tf", f"{name} (TF {mod.mode[3:].upper()} pyramid pooling, sized per input)")
        elif isinstance(mod, PPMPool) and mod.mode == "adaptive":
            found.setdefault("adaptive", f"{name} (adaptive pooling: the exporter needs a static input size)")
        elif isinstance(mod, (TFSamePool2d, SamePad2d, Conv2dSame)):
            found.setdefault("same", f"{name} (TF SAME padding)")
        elif isinstance(mod, (Resize, UpsampleToInput)) and mod.mode == "tf1_legacy":
            found.setdefault("tf1", f"{name} (TF1 legacy resize)")
        elif isinstance(mod, CaffePool2d) and not mod.global_pooling and not _dynamic_pool_ok(mod):
            found.setdefault(
                "pool",
                f"{name} (Caffe pooling k={mod.kernel_size} s={mod.stride} p={mod.pad}: no ceil_mode equivalent)",
            )
    return list(found.values())


def _dynamic_pool_ok(pool: CaffePool2d) -> bool:
    """ceil_mode pooling equals Caffe's at every size unless pad > kernel/2 (PyTorch refuses) or, without padding,
    stride > kernel (Caffe then keeps a last window that starts past the input; PyTorch/onnxruntime drop it).
    Caffe's clip applies to both axes as soon as either is padded, so an unpadded axis only matters without pads."""
    any_pad = any(p > 0 for p in pool.pad)
    return all(
        p <= k // 2 and (any_pad or s <= k) for k, s, p in zip(pool.kernel_size, pool.stride, pool.pad, strict=True)
    )


@contextmanager
def export_twins(model: nn.Module, dynamic: bool, plans: Counter) -> Iterator[None]:
    """Swap modules for their export twins in place; always put the originals back."""
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for name, mod in list(model.named_modules()):
        twin: nn.Module | None = None
        if isinstance(mod, CaffePool2d):
            twin = _OnnxCaffePool(mod, dynamic, plans)
        elif isinstance(mod, TFSamePool2d) and mod.mode == "avg":
            twin = _OnnxTFSamePool(mod)
        elif isinstance(mod, PPMPool) and mod.mode == "tf_same":
            twin = _OnnxPPMPool(mod)
        elif dynamic and isinstance(mod, UpsampleToInput):
            twin = _DynamicUpsampleToInput(mod)
        elif dynamic and isinstance(mod, Interp):
            twin = _DynamicInterp(mod)
        if twin is None or not name:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(parent, _DynamicUpsampleToInput):  # its Interp already has a twin
            continue
        swapped.append((parent, attr, mod))
        setattr(parent, attr, twin)
    try:
        yield
    finally:
        for parent, attr, mod in reversed(swapped):
            setattr(parent, attr, mod)

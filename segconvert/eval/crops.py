"""Crops through the network: window plans, the :class:`Runtime` (device, batching, memory format, autocast),
one batched forward (:func:`forward_batch`) and the sliding-window accumulation (:func:`slide`)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from segconvert.errors import WeightsFileError

__all__ = ["Runtime", "ScalePlan", "Window", "forward_batch", "mmseg_starts", "slide", "sliding_starts"]


@dataclass(frozen=True)
class Window:
    y0: int
    y1: int
    x0: int
    x1: int


@dataclass(frozen=True)
class ScalePlan:
    """How one scale is run: image resized to ``resized``, padded (top, bottom, left, right) to ``padded``."""

    scale: float
    resized: tuple[int, int]
    padded: tuple[int, int]
    pad: tuple[int, int, int, int]
    windows: tuple[Window, ...]
    flip: bool = False  # whole-image flip augmentation (mmseg TTA / whole); per-crop flips are in the fusion


def sliding_starts(length: int, crop: int, stride: int) -> list[int]:
    """PSPNet / semseg grid: ceil((length - crop) / stride) + 1 windows, the last aligned to the border."""
    n = int(math.ceil((length - crop) / stride)) + 1
    return [min(i * stride + crop, length) - crop for i in range(n)]


def mmseg_starts(length: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """mmseg grid: (start, end) pairs, max(length - crop + stride - 1, 0) // stride + 1 windows, clipped."""
    n = max(length - crop + stride - 1, 0) // stride + 1
    out = []
    for i in range(n):
        end = min(i * stride + crop, length)
        out.append((max(end - crop, 0), end))
    return out


@dataclass
class Runtime:
    """Where and how crops run: device, crops per forward, memory format and autocast.

    Defaults follow the device: on CUDA 8 crops per forward, channels_last and float16 autocast; on CPU one
    crop at a time (batching measured within 10 % of it there), contiguous, float32 -- :meth:`for_model`
    takes the memory format of an inference form (channels_last) instead. ``amp``: ``"bf16"`` / ``"fp16"``
    (fp16 on GPUs only), True (the device's usual one: fp16 on CUDA, bf16 on CPU) or False (off anywhere);
    ``channels_last=False`` switches channels_last off anywhere. ``batch_memory``
    (MiB, used when ``batch_size`` is not given): crops per forward from that budget, measured per crop size
    on the first crop (:mod:`segconvert.eval.batching`).
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int | None = None
    amp: bool | str | None = None
    channels_last: bool | None = None
    batch_memory: float | None = None
    fitted: dict[tuple[int, ...], int] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def for_model(cls, model: nn.Module, device: torch.device, *args: Any, **kwargs: Any) -> Runtime:
        """A runtime whose memory format, when ``channels_last`` is not given, is the model's own choice
        (``segconvert_channels_last``: set by ``prepare_model``; absent on a plain module: the device's)."""
        rt = cls(device, *args, **kwargs)
        if rt.channels_last is None:
            rt.channels_last = getattr(model, "segconvert_channels_last", None)
        return rt

    @property
    def crops_per_forward(self) -> int:
        if self.batch_size:
            return max(1, int(self.batch_size))
        if self.batch_memory and self.fitted:
            return max(self.fitted.values())
        return 8 if self.device.type == "cuda" else 1

    def crops_for(self, model: nn.Module, crop: torch.Tensor) -> int:
        """Crops per forward for crops shaped like ``crop`` (1, C, h, w): the budget's, else the fixed count."""
        if self.batch_size or not self.batch_memory:
            return self.crops_per_forward
        key = tuple(crop.shape[1:])
        if key not in self.fitted:
            from segconvert.eval.batching import crops_for_budget

            self.fitted[key] = crops_for_budget(model, crop.contiguous(), self, self.batch_memory)
        return self.fitted[key]

    @property
    def memory_format(self) -> torch.memory_format:
        on = self.device.type == "cuda" if self.channels_last is None else bool(self.channels_last)
        return torch.channels_last if on else torch.contiguous_format

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """float16 on CUDA (unless ``amp`` says otherwise), on CPU only when asked (bf16), else None."""
        kind = self.device.type
        if isinstance(self.amp, str):
            from segconvert.inference.prepare import amp_dtype

            return amp_dtype(self.amp, self.device)
        if self.amp is False or (self.amp is None and kind != "cuda"):
            return None
        return {"cuda": torch.float16, "cpu": torch.bfloat16}.get(kind)

    @property
    def use_amp(self) -> bool:
        return self.autocast_dtype is not None


def forward_batch(model: nn.Module, x: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """Logits (float32) of a (B, 3, h, w) batch in ``rt``'s memory format and autocast, checked for size."""
    x = x.contiguous(memory_format=rt.memory_format)
    dtype = rt.autocast_dtype
    amp = torch.autocast(rt.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with torch.inference_mode(), amp:
        out = model(x)
    if isinstance(out, (list, tuple)):
        out = out[-1]
    if out.dim() != 4 or out.shape[0] != x.shape[0] or out.shape[-2:] != x.shape[-2:]:
        raise WeightsFileError(
            f"model returned {tuple(out.shape)} for input {tuple(x.shape)}: expected (N, classes, h, w) logits "
            "at input resolution"
        )
    return out.float()


def _chunks(items: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), max(1, n)):
        yield items[i : i + max(1, n)]


def slide(
    model: nn.Module,
    x: torch.Tensor,
    windows: tuple[Window, ...],
    rt: Runtime,
    fuse: str,
    flip: bool,
    acc_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Run all windows of the (3, Hp, Wp) input in batches; return the count-averaged fused crop scores.

    ``fuse``: 'psp' (logits + flipped logits, then softmax), 'semseg' (mean of the softmaxes of the plain and
    flipped pass), 'softmax' or 'logits' (flip must be off). Sums and counts are kept in ``acc_dtype``.
    """
    acc: torch.Tensor | None = None
    count = torch.zeros(1, x.shape[1], x.shape[2], dtype=acc_dtype, device=x.device)
    first = windows[0]
    n = rt.crops_for(model, x[None, :, first.y0 : first.y1, first.x0 : first.x1])
    per_batch = max(1, n // 2) if flip else n
    for chunk in _chunks(list(windows), per_batch):
        crops = torch.stack([x[:, w.y0 : w.y1, w.x0 : w.x1] for w in chunk])
        if flip:
            logits = forward_batch(model, torch.cat([crops, crops.flip(-1)]), rt)
            plain, flipped = logits[: len(chunk)], logits[len(chunk) :].flip(-1)
            if fuse == "psp":
                scores = torch.softmax(plain + flipped, dim=1)
            elif fuse == "semseg":
                scores = (torch.softmax(plain, dim=1) + torch.softmax(flipped, dim=1)) / 2
            else:
                raise ValueError(f"fusion {fuse!r} has no per-crop flip")
        else:
            logits = forward_batch(model, crops, rt)
            scores = logits if fuse == "logits" else torch.softmax(logits, dim=1)
        if acc is None:
            acc = torch.zeros(scores.shape[1], x.shape[1], x.shape[2], dtype=acc_dtype, device=x.device)
        for w, s in zip(chunk, scores, strict=True):
            acc[:, w.y0 : w.y1, w.x0 : w.x1] += s
            count[:, w.y0 : w.y1, w.x0 : w.x1] += 1
    assert acc is not None
    return acc / count

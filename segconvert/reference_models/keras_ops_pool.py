"""Keras pooling, resizing, padding/cropping and SegNet pool-index layers as PyTorch modules (channels-first),
and TF SAME padding. Only ``torch`` is used: :mod:`segconvert.converters.keras_codegen` copies them verbatim."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["tf_same_pads", "Pool", "GlobalPool", "Resize", "ZeroPad", "Crop", "MaxPoolWithArgmax", "MaxUnpool"]


def tf_same_pads(sizes: list[int], kernel: list[int], stride: list[int], dilation: list[int]) -> list[int]:
    """``F.pad`` pads (last axis first) for TF ``SAME``: total = max((ceil(n/s)-1)*s + (k-1)*d + 1 - n, 0), the
    smaller half before."""
    pads: list[int] = []
    for n, k, s, d in reversed(list(zip(sizes, kernel, stride, dilation, strict=True))):
        total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
        pads += [total // 2, total - total // 2]
    return pads


class Pool(nn.Module):
    """Keras Max/AveragePoolingND, ``valid`` or ``same`` (TF SAME; the average excludes the padding)."""

    def __init__(self, mode: str, kernel_size: list[int], stride: list[int], padding: str = "valid") -> None:
        super().__init__()
        self.mode, self.kernel_size, self.stride, self.padding = mode, list(kernel_size), list(stride), padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rank = len(self.kernel_size)
        pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d) if self.mode == "max" else (F.avg_pool1d, F.avg_pool2d)
        pool = pool[rank - 1]
        pads = [0] * (2 * rank)
        if self.padding == "same":
            pads = tf_same_pads(list(x.shape[2:]), self.kernel_size, self.stride, [1] * rank)
        if not any(pads):
            return pool(x, self.kernel_size, self.stride)
        if self.mode == "max":
            return pool(F.pad(x, pads, value=float("-inf")), self.kernel_size, self.stride)
        total = pool(F.pad(x, pads), self.kernel_size, self.stride) * math.prod(self.kernel_size)
        ones = torch.ones([1, 1, *x.shape[2:]], dtype=x.dtype, device=x.device)
        count = pool(F.pad(ones, pads), self.kernel_size, self.stride) * math.prod(self.kernel_size)
        return total / count

    def extra_repr(self) -> str:
        return f"{self.mode}, kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding!r}"


class GlobalPool(nn.Module):
    """Keras Global{Average,Max}PoolingND over every axis after the channels (``keepdims`` keeps them as 1)."""

    def __init__(self, mode: str, keepdims: bool = False) -> None:
        super().__init__()
        self.mode, self.keepdims = mode, keepdims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = list(range(2, x.dim()))
        if self.mode == "max":
            return x.amax(dims, keepdim=self.keepdims)
        return x.mean(dims, keepdim=self.keepdims)


class Resize(nn.Module):
    """UpSampling2D / Resizing / BilinearUpsampling: ``scale`` or ``size``; ``bilinear`` half-pixel (TF2
    ``tf.image.resize``) or with ``align_corners``; ``nearest`` (integer UpSampling2D) or ``nearest-exact``
    (TF2 half-pixel nearest)."""

    def __init__(self, mode="nearest", scale=None, size=None, align_corners=False) -> None:
        super().__init__()
        self.mode, self.scale, self.size, self.align_corners = mode, scale, size, align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = list(self.size) if self.size else [n * s for n, s in zip(x.shape[2:], self.scale, strict=True)]
        if size == list(x.shape[2:]):
            return x
        if self.mode == "bilinear":
            return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)
        return F.interpolate(x, size=size, mode=self.mode)


class ZeroPad(nn.Module):
    """Keras ZeroPaddingND: ``pads`` as ``[[before, after], ...]`` per spatial axis."""

    def __init__(self, pads: list[list[int]]) -> None:
        super().__init__()
        self.pads = [list(p) for p in pads]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, [v for p in reversed(self.pads) for v in p])


class Crop(nn.Module):
    """Keras CroppingND: ``crops`` as ``[[before, after], ...]`` per spatial axis."""

    def __init__(self, crops: list[list[int]]) -> None:
        super().__init__()
        self.crops = [list(c) for c in crops]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (a, b) in enumerate(self.crops):
            x = x.narrow(2 + i, a, x.shape[2 + i] - a - b)
        return x


class MaxPoolWithArgmax(nn.Module):
    """SegNet's MaxPoolingWithArgmax2D: max pool (TF SAME or VALID) and the argmax as torch plane indices
    (``y * W + x``; TF's flat NHWC index is ``index * C + c``)."""

    def __init__(self, kernel_size: list[int], stride: list[int], padding: str = "same") -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = list(kernel_size), list(stride), padding

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pad, ceil = [0, 0], False
        if self.padding == "same":
            p = [int(v) for v in tf_same_pads([int(n) for n in x.shape[2:]], self.kernel_size, self.stride, [1, 1])]
            if not {p[1] - p[0], p[3] - p[2]} <= {0, 1}:
                raise ValueError(f"SAME pads {p} cannot be expressed with indices")
            pad, ceil = [p[2], p[0]], p[1] > p[0] or p[3] > p[2]
        return F.max_pool2d(x, self.kernel_size, self.stride, pad, 1, ceil, return_indices=True)


class MaxUnpool(nn.Module):
    """SegNet's MaxUnpooling2D: scatter into a (H*size, W*size) plane at the pooling indices."""

    def __init__(self, size: list[int]) -> None:
        super().__init__()
        self.size = list(size)

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        out = [x.shape[2] * self.size[0], x.shape[3] * self.size[1]]
        n, c = x.shape[:2]
        flat = torch.zeros(n, c, out[0] * out[1], dtype=x.dtype, device=x.device)
        flat.scatter_(2, indices.flatten(2).long(), x.flatten(2))
        return flat.reshape(n, c, *out)

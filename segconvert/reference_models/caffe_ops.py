"""Caffe layers that ``torch.nn`` lacks, exact to Caffe's forward pass (TEST phase).

Each class uses nothing but ``torch`` and :func:`along_axis`, so :mod:`segconvert.converters.caffe_codegen`
copies its source verbatim into generated model files: the in-memory generic model and the emitted source
run the same code. Caffe pooling, ``Interp`` and PSPNet ``BN`` are in :mod:`.ops`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AbsVal",
    "ArgMax",
    "BatchNorm",
    "Bias",
    "Concat",
    "Crop",
    "Eltwise",
    "InnerProduct",
    "LRNWithinChannel",
    "Power",
    "Reshape",
    "Scale",
    "Slice",
    "along_axis",
]


def along_axis(t: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    """View ``t`` (shaped like ``x.shape[axis:axis + t.dim()]``) so that it broadcasts against ``x``."""
    a = axis + x.dim() if axis < 0 else axis
    if t.dim() == 0:
        a = 0
    return t.reshape([1] * a + list(t.shape) + [1] * (x.dim() - a - t.dim()))


class InnerProduct(nn.Linear):
    """Caffe ``InnerProduct``: flatten from ``axis``, then ``nn.Linear`` (weight (out, in) as Caffe stores it)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, axis: int = 1) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.axis = axis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(self.axis))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, axis={self.axis}"


class AbsVal(nn.Module):
    """Caffe ``AbsVal``: ``|x|``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.abs(x)


class Power(nn.Module):
    """Caffe ``Power``: ``(shift + scale * x) ** power`` in Caffe's order; a constant when ``power * scale == 0``."""

    def __init__(self, power: float = 1.0, scale: float = 1.0, shift: float = 0.0) -> None:
        super().__init__()
        self.power, self.scale, self.shift = power, scale, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.power * self.scale == 0:
            return torch.full_like(x, 1.0 if self.power == 0 else self.shift**self.power)
        if self.scale != 1:
            x = x * self.scale
        if self.shift != 0:
            x = x + self.shift
        return x if self.power == 1 else torch.pow(x, self.power)

    def extra_repr(self) -> str:
        return f"power={self.power}, scale={self.scale}, shift={self.shift}"


class BatchNorm(nn.Module):
    """Caffe ``BatchNorm`` (no affine part): ``(x - mean) / sqrt(var + eps)`` per channel (axis 1).

    ``running_mean``/``running_var`` are Caffe's blobs 0/1 already multiplied by the factor of blob 2
    (1/s, or 0 when s is 0). ``use_global_stats=False`` normalises with the batch's own statistics, as Caffe does.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, use_global_stats: bool = True) -> None:
        super().__init__()
        self.num_features, self.eps, self.use_global_stats = num_features, eps, use_global_stats
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_global_stats:
            mean = along_axis(self.running_mean, x, 1)
            var = along_axis(self.running_var, x, 1)
        else:
            dims = [0, *range(2, x.dim())]
            mean = x.mean(dims, keepdim=True)
            var = (x - mean).pow(2).mean(dims, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, use_global_stats={self.use_global_stats}"


class Scale(nn.Module):
    """Caffe ``Scale``: ``x * gamma (+ beta)``, gamma and beta spanning the axes of x from ``axis`` on.

    gamma is the learned ``weight`` of ``weight_shape`` or, when ``weight_shape`` is None, the second input.
    """

    def __init__(
        self, weight_shape: tuple[int, ...] | None = None, bias_shape: tuple[int, ...] | None = None, axis: int = 1
    ) -> None:
        super().__init__()
        self.axis = axis
        self.weight = None if weight_shape is None else nn.Parameter(torch.ones(weight_shape))
        self.bias = None if bias_shape is None else nn.Parameter(torch.zeros(bias_shape))

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        gamma = self.weight if scale is None else scale
        y = x * along_axis(gamma, x, self.axis)
        return y if self.bias is None else y + along_axis(self.bias, x, self.axis)

    def extra_repr(self) -> str:
        return f"axis={self.axis}, bias={self.bias is not None}"


class Bias(nn.Module):
    """Caffe ``Bias``: ``x + beta``; beta is the learned ``bias`` of ``shape`` or (``shape=None``) the second input."""

    def __init__(self, shape: tuple[int, ...] | None = None, axis: int = 1) -> None:
        super().__init__()
        self.axis = axis
        self.bias = None if shape is None else nn.Parameter(torch.zeros(shape))

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return x + along_axis(self.bias if bias is None else bias, x, self.axis)

    def extra_repr(self) -> str:
        return f"axis={self.axis}"


class Eltwise(nn.Module):
    """Caffe ``Eltwise``: ``"sum"`` (optionally weighted by ``coeff``), ``"prod"`` or ``"max"``, left to right."""

    def __init__(self, operation: str = "sum", coeff: tuple[float, ...] | None = None) -> None:
        super().__init__()
        if operation not in ("sum", "prod", "max"):
            raise ValueError(f"Eltwise operation must be sum, prod or max, got {operation!r}")
        self.operation, self.coeff = operation, coeff

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.operation == "prod":
            y = xs[0]
            for x in xs[1:]:
                y = y * x
            return y
        if self.operation == "max":
            y = xs[0]
            for x in xs[1:]:
                y = torch.maximum(y, x)
            return y
        coeff = self.coeff or (1.0,) * len(xs)
        y = xs[0] if coeff[0] == 1 else coeff[0] * xs[0]
        for c, x in zip(coeff[1:], xs[1:], strict=True):
            y = y + x if c == 1 else y + c * x
        return y

    def extra_repr(self) -> str:
        return self.operation + (f", coeff={self.coeff}" if self.coeff else "")


class Concat(nn.Module):
    """Caffe ``Concat`` along ``axis``, inputs in order."""

    def __init__(self, axis: int = 1) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=self.axis)

    def extra_repr(self) -> str:
        return f"axis={self.axis}"


class Slice(nn.Module):
    """Caffe ``Slice`` along ``axis`` at ``points``, or into ``num_tops`` equal parts when there are none."""

    def __init__(self, axis: int = 1, points: tuple[int, ...] = (), num_tops: int = 2) -> None:
        super().__init__()
        self.axis, self.points, self.num_tops = axis, tuple(points), num_tops

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.points:
            return torch.tensor_split(x, list(self.points), dim=self.axis)
        if x.shape[self.axis] % self.num_tops:
            raise ValueError(f"Slice: size {x.shape[self.axis]} is not divisible into {self.num_tops} parts")
        return torch.tensor_split(x, self.num_tops, dim=self.axis)

    def extra_repr(self) -> str:
        return f"axis={self.axis}, points={self.points}" if self.points else f"axis={self.axis}, {self.num_tops} parts"


class Crop(nn.Module):
    """Caffe ``Crop``: for every axis from ``axis`` on, take ``like``'s size starting at that axis's offset.

    ``offsets``: none (all 0), one for every axis, or one per axis.
    """

    def __init__(self, axis: int = 2, offsets: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.axis, self.offsets = axis, tuple(offsets)

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        axis = self.axis + x.dim() if self.axis < 0 else self.axis
        for i in range(axis, x.dim()):
            offset = 0
            if len(self.offsets) == 1:
                offset = self.offsets[0]
            elif self.offsets:
                offset = self.offsets[i - axis]
            x = x.narrow(i, offset, like.shape[i])
        return x

    def extra_repr(self) -> str:
        return f"axis={self.axis}, offsets={self.offsets}"


class Reshape(nn.Module):
    """Caffe ``Reshape``: axes ``[axis, axis + num_axes)`` become ``shape`` (0 copies that axis, -1 is inferred)."""

    def __init__(self, shape: tuple[int, ...], axis: int = 0, num_axes: int = -1) -> None:
        super().__init__()
        self.shape, self.axis, self.num_axes = tuple(shape), axis, num_axes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = list(x.shape)
        start = self.axis if self.axis >= 0 else self.axis + len(dims) + 1
        end = len(dims) if self.num_axes == -1 else start + self.num_axes
        new = [dims[start + i] if d == 0 else d for i, d in enumerate(self.shape)]
        return x.reshape(dims[:start] + new + dims[end:])

    def extra_repr(self) -> str:
        return f"shape={self.shape}, axis={self.axis}, num_axes={self.num_axes}"


class LRNWithinChannel(nn.Module):
    """Caffe ``LRN`` WITHIN_CHANNEL: ``x * (1 + alpha * mean of x^2 over a size x size window) ** -beta``.

    The window mean is Caffe's AVE pooling with pad (size - 1) / 2, which always divides by size^2 here.
    """

    def __init__(self, size: int = 5, alpha: float = 1.0, beta: float = 0.75) -> None:
        super().__init__()
        self.size, self.alpha, self.beta = size, alpha, beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = F.avg_pool2d(x * x, self.size, stride=1, padding=(self.size - 1) // 2, count_include_pad=True)
        return x * torch.pow(1 + self.alpha * mean, -self.beta)

    def extra_repr(self) -> str:
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}"


class ArgMax(nn.Module):
    """Caffe ``ArgMax``: indices (as floats) of the ``top_k`` largest values, or the values with ``out_max_val``.

    Along ``axis`` when given; otherwise over each item's flattened values, giving shape (N, 1, top_k, 1...) or,
    with ``out_max_val``, (N, 2, top_k, 1...) holding indices then values. Ties go to the larger index, as in Caffe.
    """

    def __init__(self, top_k: int = 1, out_max_val: bool = False, axis: int | None = None) -> None:
        super().__init__()
        self.top_k, self.out_max_val, self.axis = top_k, out_max_val, axis

    def _top(self, x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        values, order = torch.sort(x.flip(dim), dim=dim, descending=True, stable=True)
        index = (x.shape[dim] - 1) - order.narrow(dim, 0, self.top_k)
        return values.narrow(dim, 0, self.top_k), index.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.axis is not None:
            values, index = self._top(x, self.axis)
            return values if self.out_max_val else index
        values, index = self._top(x.reshape(x.shape[0], -1), 1)
        y = torch.stack([index, values], dim=1) if self.out_max_val else index.unsqueeze(1)
        return y.reshape(list(y.shape) + [1] * (max(x.dim(), 3) - 3))

    def extra_repr(self) -> str:
        return f"top_k={self.top_k}, out_max_val={self.out_max_val}, axis={self.axis}"

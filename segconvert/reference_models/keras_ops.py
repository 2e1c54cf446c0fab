"""Keras layers as PyTorch modules, exact to Keras's (TensorFlow backend) inference.

Every module works on channels-first tensors (the channel axis is dim 1, as ``torch.nn``); the generic net moves
axes at the layout boundaries. Each class uses nothing but ``torch`` and the helpers above it, so
:mod:`segconvert.converters.keras_codegen` copies its source verbatim into generated model files. This module holds
convolutions, Dense, normalisation and activations, and re-exports the pooling / resize / padding ops
(:mod:`.keras_ops_pool`) and the merge / reshape ops (:mod:`.keras_ops_shape`): one namespace for the net.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .keras_ops_pool import Crop, GlobalPool, MaxPoolWithArgmax, MaxUnpool, Pool, Resize, ZeroPad, tf_same_pads
from .keras_ops_shape import Affine, Concat, Dot, Flatten, Merge, Permute, RepeatVector, Reshape, Softmax

__all__ = [
    "tf_same_pads",
    "activation",
    "layout_softmax",
    "Conv",
    "ConvTranspose",
    "SeparableConv",
    "HardSigmoid",
    "Dense",
    "BatchNorm",
    "LayerNorm",
    "KerasReLU",
    "PReLU",
    "Pool",
    "GlobalPool",
    "Resize",
    "ZeroPad",
    "Crop",
    "Merge",
    "Concat",
    "Dot",
    "Softmax",
    "Flatten",
    "Reshape",
    "Permute",
    "RepeatVector",
    "Affine",
    "MaxPoolWithArgmax",
    "MaxUnpool",
]


def layout_softmax(x: torch.Tensor, dim: int, log: bool = False) -> torch.Tensor:
    """(Log-)softmax along ``dim``; when ``dim`` is innermost in memory but ``x`` is not contiguous (channels_last
    scores), along a permuted view in that layout -- PyTorch's strided softmax would first copy to NCHW."""
    f = F.log_softmax if log else F.softmax
    if x.dim() > 2 and x.stride(dim) == 1 and x.shape[dim] > 1 and not x.is_contiguous():
        return f(x.movedim(dim, -1), dim=-1).movedim(-1, dim)
    return f(x, dim=dim)


def activation(x: torch.Tensor, name: str, dim: int = 1, hard_slope: float = 0.2, layout: bool = False) -> torch.Tensor:
    """A Keras activation by name (``dim``: softmax axis; ``hard_slope``: hard_sigmoid 0.2 (Keras 1/2) or 1/6;
    ``layout``: softmax by :func:`layout_softmax`, else ``F.softmax`` as the emitted source has it)."""
    if name == "linear":
        return x
    if name == "relu":
        return F.relu(x)
    if name == "relu6":
        return F.relu6(x)
    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "hard_sigmoid":
        return torch.clamp(x * hard_slope + 0.5, 0.0, 1.0)
    if name == "tanh":
        return torch.tanh(x)
    if name in ("softmax", "log_softmax"):
        if layout:
            return layout_softmax(x, dim, log=name == "log_softmax")
        return F.softmax(x, dim=dim) if name == "softmax" else F.log_softmax(x, dim=dim)
    if name == "softplus":
        return F.softplus(x)
    if name == "softsign":
        return F.softsign(x)
    if name in ("swish", "silu"):
        return x * torch.sigmoid(x)
    if name == "gelu":
        return F.gelu(x)
    if name == "elu":
        return F.elu(x)
    if name == "selu":
        return F.selu(x)
    if name == "exponential":
        return torch.exp(x)
    if name == "leaky_relu":
        return F.leaky_relu(x, 0.2)
    if name == "mish":
        return x * torch.tanh(F.softplus(x))
    raise ValueError(f"unknown activation {name!r}")


def _pad_input(x: torch.Tensor, padding: str, kernel: list[int], stride: list[int], dilation: list[int]):
    if padding == "same":
        pads = tf_same_pads(list(x.shape[2:]), kernel, stride, dilation)
        return F.pad(x, pads) if any(pads) else x
    if padding == "causal":
        return F.pad(x, [(kernel[0] - 1) * dilation[0], 0])
    return x


def _same_as_zero_taps(x: torch.Tensor, weight: torch.Tensor, stride: list[int], dilation: list[int]):
    """TF SAME of a depthwise kernel without copying the input: where an axis pads ``[a, a + 1]`` (stride 2,
    even size), a zero tap before the kernel and symmetric padding ``a + 1`` give the same sums; None when the
    pads do not all have that form (dilation > 1) or when tracing (ONNX export: a weight of static shape)."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return None
    k = list(weight.shape[2:])
    pads = tf_same_pads(list(x.shape[2:]), k, stride, dilation)
    before, after = pads[0::2][::-1], pads[1::2][::-1]  # per spatial axis, first axis first
    if any(b - a not in (0, 1) or (b > a and d != 1) for a, b, d in zip(before, after, dilation, strict=True)):
        return None
    taps = [v for a, b in zip(reversed(before), reversed(after), strict=True) for v in (b - a, 0)]
    return (F.pad(weight, taps) if any(taps) else weight), after


class Conv(nn.Module):
    """Keras ConvND / DepthwiseConv2D (``groups`` = in_channels) with ``padding`` ``same`` (TF SAME, asymmetric
    when the input size needs it) or ``causal`` (Conv1D: (k-1)*d zeros before); ``weight`` is (out, in/groups, *k)."""

    def __init__(
        self, in_channels, out_channels, kernel_size, stride, dilation=None, groups=1, bias=True, padding="same"
    ) -> None:
        super().__init__()
        self.kernel_size, self.stride = list(kernel_size), list(stride)
        self.dilation = list(dilation or [1] * len(self.kernel_size))
        self.in_channels, self.out_channels, self.groups, self.padding = in_channels, out_channels, groups, padding
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = (F.conv1d, F.conv2d, F.conv3d)[len(self.kernel_size) - 1]
        if self.padding == "same" and self.weight.shape[1] == 1:  # depthwise: no padded copy of the input
            fast = _same_as_zero_taps(x, self.weight, self.stride, self.dilation)
            if fast is not None:
                return conv(x, fast[0], self.bias, self.stride, fast[1], self.dilation, self.groups)
        x = _pad_input(x, self.padding, self.kernel_size, self.stride, self.dilation)
        return conv(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    def extra_repr(self) -> str:
        k, s, d = self.kernel_size, self.stride, self.dilation
        return f"kernel_size={k}, stride={s}, dilation={d}, padding={self.padding!r}"


class ConvTranspose(nn.Module):
    """Keras Conv{1,2}DTranspose: the full transposed convolution (``weight`` (in, out, *k)), cropped or
    zero-extended to Keras's output size (``same``: TF's smaller half cropped first; ``output_padding``)."""

    def __init__(
        self, in_channels, out_channels, kernel_size, stride, dilation=None, bias=True, padding="valid",
        output_padding=None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.kernel_size, self.stride = list(kernel_size), list(stride)
        self.dilation = list(dilation or [1] * len(self.kernel_size))
        self.padding, self.output_padding = padding, output_padding
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, 1
        self.weight = nn.Parameter(torch.zeros(in_channels, out_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = list(x.shape[2:])
        op = F.conv_transpose1d if x.dim() == 3 else F.conv_transpose2d
        y = op(x, self.weight, None, self.stride, 0, 0, 1, self.dilation)
        for i, n in enumerate(sizes):
            k = (self.kernel_size[i] - 1) * self.dilation[i] + 1
            s = self.stride[i]
            if self.output_padding is None:
                out = n * s if self.padding == "same" else n * s + max(k - s, 0)
            else:
                out = (n - 1) * s + k - 2 * (k // 2 if self.padding == "same" else 0) + self.output_padding[i]
            before = max((n - 1) * s + k - out, 0) // 2 if self.padding == "same" else 0
            y = y.narrow(2 + i, before, min(out, y.shape[2 + i] - before))
            if y.shape[2 + i] < out:
                y = F.pad(y, [0, 0] * (y.dim() - 3 - i) + [0, out - y.shape[2 + i]])
        if self.bias is not None:
            y = y + self.bias.reshape([1, -1] + [1] * (y.dim() - 2))
        return y


class SeparableConv(nn.Module):
    """Keras SeparableConv{1,2}D: depthwise (``depth_multiplier``, no bias) then pointwise 1x1 (with the bias)."""

    def __init__(
        self, in_channels, out_channels, kernel_size, stride, dilation=None, depth_multiplier=1, bias=True,
        padding="valid",
    ) -> None:  # fmt: skip
        super().__init__()
        rank = len(kernel_size)
        self.kernel_size, self.stride = list(kernel_size), list(stride)
        self.dilation = list(dilation or [1] * rank)
        self.padding = padding
        conv = (nn.Conv1d, nn.Conv2d)[rank - 1]
        mid = in_channels * depth_multiplier
        self.depthwise = conv(in_channels, mid, kernel_size, stride, 0, self.dilation, in_channels, bias=False)
        self.pointwise = conv(mid, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dw = self.depthwise
        if self.padding == "same" and dw.weight.shape[1] == 1:  # no padded copy of the input
            fast = _same_as_zero_taps(x, dw.weight, self.stride, self.dilation)
            if fast is not None:
                conv = (F.conv1d, F.conv2d)[len(self.kernel_size) - 1]
                return self.pointwise(conv(x, fast[0], None, self.stride, fast[1], self.dilation, dw.groups))
        x = _pad_input(x, self.padding, self.kernel_size, self.stride, self.dilation)
        return self.pointwise(dw(x))


class HardSigmoid(nn.Module):
    """Keras hard_sigmoid: ``clip(x * slope + 0.5, 0, 1)``; slope 0.2 in Keras 1/2 and tf_keras, 1/6 in Keras 3."""

    def __init__(self, slope: float = 0.2) -> None:
        super().__init__()
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x * self.slope + 0.5, 0.0, 1.0)


class Dense(nn.Linear):
    """Keras Dense: a matmul over the features axis ``dim`` (the last Keras axis; 1 in channels-first layout)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dim: int = -1) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dim in (-1, x.dim() - 1):
            return super().forward(x)
        return super().forward(x.movedim(self.dim, -1)).movedim(-1, self.dim)


class BatchNorm(nn.Module):
    """Keras BatchNormalization at inference: ``(x - mean) * gamma / sqrt(var + eps) + beta`` along ``dim``."""

    def __init__(self, num_features: int, eps: float = 1e-3, dim: int = 1) -> None:
        super().__init__()
        self.eps, self.dim = eps, dim
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dim == 1:  # one fused pass
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        shape = [1] * x.dim()
        shape[self.dim] = -1
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        return x * scale.reshape(shape) + (self.bias - self.running_mean * scale).reshape(shape)

    def channel_affine(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(scale, shift) in float64 when normalising dim 1: ``segconvert.inference.fuse`` folds it into a conv."""
        if self.dim != 1:
            return None
        w, b, mean, var = (t.detach().double() for t in (self.weight, self.bias, self.running_mean, self.running_var))
        scale = w / torch.sqrt(var + self.eps)
        return scale, b - mean * scale

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, dim={self.dim}"


class LayerNorm(nn.Module):
    """Keras LayerNormalization over ``dims`` (Keras axes, Keras layout); gamma/beta have those axes' sizes."""

    def __init__(self, shape: list[int], dims: list[int], eps: float = 1e-3) -> None:
        super().__init__()
        self.dims, self.eps = list(dims), eps
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = sorted(d % x.dim() for d in self.dims)
        mean = x.mean(dims, keepdim=True)
        var = ((x - mean) ** 2).mean(dims, keepdim=True)
        shape = [x.shape[d] if d in dims else 1 for d in range(x.dim())]
        inv = torch.rsqrt(var + self.eps) * self.weight.reshape(shape)
        return x * inv + (self.bias.reshape(shape) - mean * inv)


class KerasReLU(nn.Module):
    """Keras ReLU(max_value, negative_slope, threshold): x in [threshold, max), slope*(x-threshold) below."""

    def __init__(self, max_value: float | None = None, negative_slope: float = 0.0, threshold: float = 0.0) -> None:
        super().__init__()
        self.max_value, self.negative_slope, self.threshold = max_value, negative_slope, threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.where(x >= self.threshold, x, (x - self.threshold) * self.negative_slope)
        return y if self.max_value is None else torch.clamp(y, max=self.max_value)


class PReLU(nn.Module):
    """Keras PReLU: alpha has the Keras (channels-last) input shape with shared axes of size 1."""

    def __init__(self, shape: list[int], channels_first: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(shape))
        self.channels_first = channels_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.weight.movedim(-1, 0) if self.channels_first and self.weight.dim() > 1 else self.weight
        if self.channels_first and self.weight.dim() == 1 and x.dim() > 2:
            a = a.reshape([-1] + [1] * (x.dim() - 2))
        return torch.where(x >= 0, x, x * a)

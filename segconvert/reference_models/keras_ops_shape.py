"""Keras merge, dot, softmax, reshape-type and affine layers as PyTorch modules. Merge / Concat / Softmax /
Affine work channels-first; Dot, Flatten, Reshape, Permute and RepeatVector on Keras-layout tensors. Only ``torch``
is used: :mod:`segconvert.converters.keras_codegen` copies them verbatim."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Merge", "Concat", "Dot", "Softmax", "Flatten", "Reshape", "Permute", "RepeatVector", "Affine"]


class Merge(nn.Module):
    """Keras Add / Subtract / Multiply / Average / Maximum / Minimum of its inputs, in order."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        y = xs[0]
        for x in xs[1:]:
            if self.op in ("add", "average"):
                y = y + x
            elif self.op == "subtract":
                y = y - x
            elif self.op == "multiply":
                y = y * x
            elif self.op == "maximum":
                y = torch.maximum(y, x)
            else:
                y = torch.minimum(y, x)
        return y / len(xs) if self.op == "average" else y

    def extra_repr(self) -> str:
        return self.op


class Concat(nn.Module):
    """Keras Concatenate along ``dim``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, self.dim)


class Dot(nn.Module):
    """Keras Dot on Keras-layout inputs of rank 2 or 3: the batched dot product over ``axes`` (one per input,
    the batch axis being 0), of L2-normalised inputs with ``normalize``; a scalar per sample comes out as (N, 1)."""

    def __init__(self, axes: list[int], normalize: bool = False) -> None:
        super().__init__()
        self.axes, self.normalize = list(axes), normalize

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            a = F.normalize(a, dim=self.axes[0], eps=1e-6)
            b = F.normalize(b, dim=self.axes[1], eps=1e-6)
        a, b = a.movedim(self.axes[0], -1), b.movedim(self.axes[1], 1)
        y = torch.bmm(a.unsqueeze(1) if a.dim() == 2 else a, b.unsqueeze(2) if b.dim() == 2 else b)
        if b.dim() == 2:
            y = y.squeeze(2)
        if a.dim() == 2:
            y = y.squeeze(1)
        return y.unsqueeze(1) if y.dim() == 1 else y


class Softmax(nn.Module):
    """Keras Softmax / Activation('softmax') along ``dim``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(x, dim=self.dim)


class Flatten(nn.Module):
    """Keras Flatten on a Keras-layout tensor (the element order of a channels_last model is kept);
    ``channels_first``: Keras moves the channel axis (dim 1) last before flattening."""

    def __init__(self, channels_first: bool = False) -> None:
        super().__init__()
        self.channels_first = channels_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.movedim(1, -1) if self.channels_first and x.dim() > 2 else x).flatten(1)


class Reshape(nn.Module):
    """Keras Reshape (``shape`` without the batch axis; -1 allowed) on a Keras-layout tensor."""

    def __init__(self, shape: list[int]) -> None:
        super().__init__()
        self.shape = list(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape([x.shape[0], *self.shape])


class Permute(nn.Module):
    """Keras Permute (``dims`` 1-based, without the batch axis) on a Keras-layout tensor."""

    def __init__(self, dims: list[int]) -> None:
        super().__init__()
        self.dims = list(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute([0, *self.dims])


class RepeatVector(nn.Module):
    """Keras RepeatVector: (N, F) -> (N, n, F)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1).expand(-1, self.n, -1)


class Affine(nn.Module):
    """Keras Rescaling (``x * scale + offset``) and Normalization (``(x - mean) / sqrt(variance)``, along ``dim``:
    mean and variance are buffers)."""

    def __init__(self, scale: float = 1.0, offset: float = 0.0, num_features: int = 0, dim: int = 1) -> None:
        super().__init__()
        self.scale, self.offset, self.dim = scale, offset, dim
        if num_features:
            self.register_buffer("mean", torch.zeros(num_features))
            self.register_buffer("variance", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "mean"):
            shape = [1] * x.dim()
            shape[self.dim] = -1
            return (x - self.mean.reshape(shape)) / torch.sqrt(self.variance.reshape(shape)).clamp_min(1e-7)
        return x * self.scale + self.offset

"""Small named modules shared by the segmentation heads (so every intermediate result is hookable)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .ops import RESIZE_MODES, Interp, check_choice, make_norm, resize

__all__ = ["Resize", "ConvBNReLU", "EltwiseMax", "UpsampleToInput", "fit_to_size"]


class Resize(nn.Module):
    """Bilinear resize to a size given at call time, with a fixed coordinate convention (``RESIZE_MODES``)."""

    def __init__(self, mode: str = "align_corners") -> None:
        super().__init__()
        check_choice("resize", mode, RESIZE_MODES)
        self.mode = mode

    def forward(self, x: Tensor, size: Sequence[int]) -> Tensor:
        return resize(x, size, self.mode)

    def extra_repr(self) -> str:
        return self.mode


class ConvBNReLU(nn.Module):
    """``conv`` (no bias) -> ``bn`` -> ``relu``."""

    def __init__(self, cin: int, cout: int, kernel_size: int, norm: str, eps: float, padding: int | None = None):
        super().__init__()
        pad = kernel_size // 2 if padding is None else padding
        self.conv = nn.Conv2d(cin, cout, kernel_size, padding=pad, bias=False)
        self.bn = make_norm(norm, cout, eps)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class EltwiseMax(nn.Module):
    """Caffe ``Eltwise`` MAX over any number of equally shaped inputs."""

    def forward(self, *xs: Tensor) -> Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = torch.maximum(out, x)
        return out


def fit_to_size(y: Tensor, h: int, w: int, mode: str = "align_corners") -> Tensor:
    """Crop ``y`` to HxW when it is at least that large (top-left aligned, as Caffe's pad-then-crop protocol),
    else resize it."""
    yh, yw = y.shape[-2:]
    if yh >= h and yw >= w:
        return y[..., :h, :w] if (yh, yw) != (h, w) else y
    return resize(y, (h, w), mode)


class UpsampleToInput(nn.Module):
    """Final logits upsampling.

    ``align_corners``: Caffe ``Interp(zoom_factor=factor)`` (output 8(h-1)+1 = H for H = 8k+1), then cropped to
    the input size (output pixel i sits on input pixel i). Other modes resize straight to the input size.
    """

    def __init__(self, factor: int, mode: str = "align_corners") -> None:
        super().__init__()
        self.factor, self.mode = int(factor), mode
        self.interp = Interp(zoom_factor=self.factor) if mode == "align_corners" else None

    def forward(self, x: Tensor, size: Sequence[int]) -> Tensor:
        h, w = int(size[0]), int(size[1])
        if self.interp is not None:
            return fit_to_size(self.interp(x), h, w, self.mode)
        return resize(x, (h, w), self.mode)

    def extra_repr(self) -> str:
        return f"factor={self.factor}, mode={self.mode}"

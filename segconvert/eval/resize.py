"""Image and score-map resizing as the evaluation protocols' own tools do it.

- :func:`matlab_imresize`: MATLAB ``imresize(A, [rows cols], 'bilinear')`` (Image Processing Toolbox, R2007a+
  algorithm), used by the official PSPNet evaluation. Separable: per dimension a weight table from the triangle
  kernel, widened by 1/scale when shrinking (antialiasing, on by default for 'bilinear'), input coordinate
  ``u = x/scale + 0.5(1 - 1/scale)`` (1-based), out-of-range taps clamped to the border, weights normalised
  to sum 1. Dimensions are processed in order of increasing scale factor (rows first on ties). A uint8 image
  is rounded (half away from zero) and saturated back to uint8 after each dimension, as MATLAB returns the
  input's class from each pass.
- :func:`bilinear`: OpenCV ``INTER_LINEAR`` / PyTorch ``align_corners=False`` (half-pixel centres, no
  antialiasing), used by semseg and mmseg.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _triangle(x: np.ndarray) -> np.ndarray:
    return (x + 1) * ((-1 <= x) & (x < 0)) + (1 - x) * ((0 <= x) & (x <= 1))


def matlab_contributions(in_len: int, out_len: int, antialias: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Weights (out_len, P) float64 and 0-based source indices (out_len, P) of one dimension."""
    scale = out_len / in_len
    width = 2.0
    if scale < 1 and antialias:

        def kernel(x: np.ndarray) -> np.ndarray:
            return scale * _triangle(scale * x)

        width = width / scale
    else:
        kernel = _triangle
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    w = kernel(u[:, None] - idx)
    w = w / w.sum(axis=1, keepdims=True)
    idx = np.clip(idx, 1, in_len).astype(np.int64) - 1
    keep = np.any(w != 0, axis=0)
    return w[:, keep], idx[:, keep]


def _resize_dim(x: torch.Tensor, dim: int, out_len: int, antialias: bool, acc_dtype: torch.dtype) -> torch.Tensor:
    w, idx = matlab_contributions(x.shape[dim], out_len, antialias)
    shape = [1] * x.dim()
    shape[dim] = out_len
    last = dim == x.dim() - 1
    out: torch.Tensor | None = None
    for p in range(w.shape[1]):
        wp = torch.as_tensor(w[:, p], dtype=acc_dtype, device=x.device).view(shape)
        ip = torch.as_tensor(idx[:, p], device=x.device)
        src = (x[..., ip] if last else x[..., ip, :]).to(acc_dtype)  # advanced indexing: fast on both dims
        if out is None:
            out = src * wp
        else:
            out.addcmul_(src, wp)
    assert out is not None
    return out


def matlab_imresize(
    x: torch.Tensor, size: tuple[int, int], *, uint8: bool = False, antialias: bool = True
) -> torch.Tensor:
    """Resize the last two dims of ``x`` to ``size`` = (rows, cols) like MATLAB ``imresize(..., 'bilinear')``.

    ``uint8=True`` emulates a uint8 image: values are rounded and clipped to 0..255 after each dimension.
    The result has ``x``'s dtype (float64 accumulation for float64 inputs and for ``uint8``).
    """
    in_h, in_w = x.shape[-2], x.shape[-1]
    out_h, out_w = int(size[0]), int(size[1])
    if (in_h, in_w) == (out_h, out_w):
        return x.clone()
    acc = torch.float64 if (uint8 or x.dtype == torch.float64) and x.device.type != "mps" else torch.float32
    scales = [out_h / in_h, out_w / in_w]
    order = sorted(range(2), key=lambda k: scales[k])  # stable: rows first on ties
    y = x
    for k in order:
        dim = x.dim() - 2 + k
        target = (out_h, out_w)[k]
        if y.shape[dim] == target:
            continue
        y = _resize_dim(y, dim, target, antialias, acc)
        if uint8:
            y = torch.floor(y + 0.5).clamp_(0, 255)
    return y.to(x.dtype)


def bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Half-pixel bilinear resize of the last two dims (cv2 ``INTER_LINEAR`` / ``align_corners=False``)."""
    if tuple(x.shape[-2:]) == (int(size[0]), int(size[1])):
        return x
    lead = x.shape[:-2]
    y = F.interpolate(
        x.reshape(1, -1, *x.shape[-2:]).float(), size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False
    )
    return y.reshape(*lead, *y.shape[-2:]).to(x.dtype if x.dtype.is_floating_point else torch.float32)


def round_half_away(v: float) -> int:
    """MATLAB ``round``: halves away from zero."""
    return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)

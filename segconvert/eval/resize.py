"""Image and score-map resizing as the evaluation protocols' own tools do it.

- :func:`matlab_imresize`: MATLAB ``imresize(A, [rows cols], 'bilinear')`` (Image Processing Toolbox, R2007a+
  algorithm), used by the official PSPNet evaluation. Separable: per dimension a weight table from the triangle
  kernel, widened by 1/scale when shrinking (antialiasing, on by default for 'bilinear'), input coordinate
  ``u = x/scale + 0.5(1 - 1/scale)`` (1-based), weights normalised to sum 1. Out-of-range taps are mirrored
  (``boundary="symmetric"``, ``aux = [1:n, n:-1:1]``, the MathWorks code of the releases we could read from
  2018 on) or clamped (``"replicate"``, the R2013-era code); the two differ only when shrinking below ~0.37.
  Dimensions are processed in order of increasing scale factor (rows first on ties). Each pass returns the
  input's class, as ``imresizemex`` does: float64 accumulation, then a uint8 image is rounded (half away from
  zero) and saturated, a single (float32) map is rounded to single.
- :func:`cv2_linear`: OpenCV ``resize(..., INTER_LINEAR)``, used by semseg (float32 images, float64 score
  maps) and mmcv/mmseg (uint8 images). OpenCV itself when it is installed (exact: its uint8 path is 11-bit
  fixed point), otherwise :func:`bilinear` (uint8 emulated by rounding: about 13 % of the pixels differ by 1).
- :func:`bilinear`: PyTorch ``align_corners=False`` (half-pixel centres, no antialiasing), the resize of
  mmseg's logits and of the ``whole`` protocol.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

BOUNDARIES = ("symmetric", "replicate")


def _triangle(x: np.ndarray) -> np.ndarray:
    return (x + 1) * ((-1 <= x) & (x < 0)) + (1 - x) * ((0 <= x) & (x <= 1))


def matlab_contributions(
    in_len: int, out_len: int, antialias: bool = True, boundary: str = "symmetric"
) -> tuple[np.ndarray, np.ndarray]:
    """Weights (out_len, P) float64 and 0-based source indices (out_len, P) of one dimension."""
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
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
    idx = (left[:, None] + np.arange(taps, dtype=np.float64)[None, :]).astype(np.int64)  # 1-based
    w = kernel(u[:, None] - idx)
    w = w / w.sum(axis=1, keepdims=True)
    if boundary == "symmetric":
        aux = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
        idx = aux[np.mod(idx - 1, 2 * in_len)]
    else:
        idx = np.clip(idx, 1, in_len) - 1
    keep = np.any(w != 0, axis=0)
    return w[:, keep], idx[:, keep]


def _resize_dim(x: torch.Tensor, dim: int, out_len: int, antialias: bool, boundary: str, acc: torch.dtype):
    w, idx = matlab_contributions(x.shape[dim], out_len, antialias, boundary)
    shape = [1] * x.dim()
    shape[dim] = out_len
    last = dim == x.dim() - 1
    out: torch.Tensor | None = None
    for p in range(w.shape[1]):  # taps in MATLAB's order
        wp = torch.as_tensor(w[:, p], dtype=acc, device=x.device).view(shape)
        ip = torch.as_tensor(idx[:, p], device=x.device)
        src = (x[..., ip] if last else x[..., ip, :]).to(acc)  # advanced indexing: fast on both dims
        if out is None:
            out = src * wp
        else:
            out.addcmul_(src, wp)
    assert out is not None
    return out


def matlab_imresize(
    x: torch.Tensor,
    size: tuple[int, int],
    *,
    uint8: bool = False,
    antialias: bool = True,
    boundary: str = "symmetric",
) -> torch.Tensor:
    """Resize the last two dims of ``x`` to ``size`` = (rows, cols) like MATLAB ``imresize(..., 'bilinear')``.

    ``uint8=True`` emulates a uint8 image: values are rounded and clipped to 0..255 after each dimension.
    Otherwise each pass is rounded to ``x``'s dtype (MATLAB: double accumulation, result of the input's class).
    Returns ``x``'s dtype.
    """
    in_h, in_w = x.shape[-2], x.shape[-1]
    out_h, out_w = int(size[0]), int(size[1])
    if (in_h, in_w) == (out_h, out_w):
        return x.clone()
    acc = torch.float32 if x.device.type == "mps" else torch.float64
    scales = [out_h / in_h, out_w / in_w]
    order = sorted(range(2), key=lambda k: scales[k])  # stable: rows first on ties
    y = x
    for k in order:
        dim = x.dim() - 2 + k
        target = (out_h, out_w)[k]
        if y.shape[dim] == target:
            continue
        y = _resize_dim(y, dim, target, antialias, boundary, acc)
        y = torch.floor(y + 0.5).clamp_(0, 255) if uint8 else y.to(x.dtype)
    return y.to(x.dtype)


def bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Half-pixel bilinear resize of the last two dims (PyTorch ``align_corners=False``)."""
    if tuple(x.shape[-2:]) == (int(size[0]), int(size[1])):
        return x
    lead = x.shape[:-2]
    y = F.interpolate(
        x.reshape(1, -1, *x.shape[-2:]).float(), size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False
    )
    return y.reshape(*lead, *y.shape[-2:]).to(x.dtype if x.dtype.is_floating_point else torch.float32)


@functools.cache
def _cv2() -> Any:
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def cv2_backend() -> str:
    """'opencv X.Y' when OpenCV resizes (exact), else 'torch' (float emulation)."""
    cv2 = _cv2()
    return f"opencv {cv2.__version__}" if cv2 is not None else "torch"


_CV_MAX_CHANNELS = 512  # CV_CN_MAX


def cv2_linear(x: torch.Tensor, size: tuple[int, int], *, uint8: bool = False) -> torch.Tensor:
    """OpenCV ``INTER_LINEAR`` resize of a (C, H, W) tensor; ``uint8=True``: an 8-bit image (integer values).

    The result keeps ``x``'s dtype and device. Without OpenCV: :func:`bilinear` (and rounding for uint8).
    """
    out_h, out_w = int(size[0]), int(size[1])
    if tuple(x.shape[-2:]) == (out_h, out_w):
        return x
    cv2 = _cv2()
    if cv2 is None:
        y = bilinear(x.float() if uint8 else x, (out_h, out_w))
        return (torch.floor(y + 0.5).clamp_(0, 255) if uint8 else y).to(x.dtype)
    arr = x.detach().cpu().numpy()
    arr = arr.astype(np.uint8) if uint8 else arr
    parts = []
    for c0 in range(0, arr.shape[0], _CV_MAX_CHANNELS):
        hwc = np.ascontiguousarray(arr[c0 : c0 + _CV_MAX_CHANNELS].transpose(1, 2, 0))
        r = cv2.resize(hwc, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        parts.append(r.reshape(out_h, out_w, -1).transpose(2, 0, 1))
    out = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return torch.from_numpy(np.ascontiguousarray(out)).to(device=x.device, dtype=x.dtype)


def round_half_away(v: float) -> int:
    """MATLAB ``round``: halves away from zero."""
    return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)

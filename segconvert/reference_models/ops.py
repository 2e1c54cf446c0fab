"""Framework-exact building blocks: Caffe Interp / Pooling / BatchNorm, TF SAME padding and TF1 resize.

Everything here follows ``SPEC.md`` sections 2 (Caffe layer semantics) and 5.1/5.3 (TF padding, resize).
Sizes are given for H; W behaves the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segconvert.graph.shapes import caffe_pool_size, interp_size  # the one implementation of Caffe's size rules

__all__ = [
    "check_choice",
    "interp_size",
    "Interp",
    "caffe_pool_out",
    "CaffePool2d",
    "FrozenBatchNorm2d",
    "make_norm",
    "caffe_batchnorm_stats",
    "caffe_bn_scale_to_params",
    "psp_bn_to_params",
    "tf_same_pads",
    "conv2d_same_pads",
    "SamePad2d",
    "TFSamePool2d",
    "Conv2dSame",
    "conv2d_same",
    "resize_bilinear_tf1_legacy",
    "resize",
    "RESIZE_MODES",
]

_Pair = int | Sequence[int]


def _pair(v: _Pair) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(x) for x in v)
    if len(t) == 1:
        return (t[0], t[0])
    if len(t) != 2:
        raise ValueError(f"expected one or two values, got {v!r}")
    return t  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------- Interp


def _resize_align_corners(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class Interp(nn.Module):
    """Caffe ``Interp`` (DeepLab-v2 / PSPNet forks): crop by negative pads, then align-corners bilinear.

    Equal input/output sizes are a plain copy. Parameters mirror ``InterpParameter``; ``None`` = absent.
    """

    def __init__(
        self,
        *,
        height: int | None = None,
        width: int | None = None,
        zoom_factor: int | None = None,
        shrink_factor: int | None = None,
        pad_beg: int = 0,
        pad_end: int = 0,
    ) -> None:
        super().__init__()
        self.height, self.width = height, width
        self.zoom_factor, self.shrink_factor = zoom_factor, shrink_factor
        self.pad_beg, self.pad_end = pad_beg, pad_end
        interp_size(16, 16, **self._params())  # validate once

    def _params(self) -> dict:
        return dict(
            height=self.height,
            width=self.width,
            zoom_factor=self.zoom_factor,
            shrink_factor=self.shrink_factor,
            pad_beg=self.pad_beg,
            pad_end=self.pad_end,
        )

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        return interp_size(h, w, **self._params())

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        size = self.output_size(h, w)
        if self.pad_beg or self.pad_end:
            b = -self.pad_beg
            x = x[..., b : h + self.pad_end, b : w + self.pad_end]
        return _resize_align_corners(x, size)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self._params().items() if v not in (None, 0))


# --------------------------------------------------------------------------------------------- Pooling


def caffe_pool_out(size: int, k: int, s: int, p: int = 0, any_pad: bool | None = None) -> int:
    """Caffe pooled size: ceil((H + 2p - k) / s) + 1, minus one if the last window starts in the padding.

    Caffe applies that clip on both axes as soon as *either* axis has a pad (``if (pad_h_ || pad_w_)``):
    pass ``any_pad`` for a 2-D pooling; by default only this axis' pad counts.
    """
    if k < 1 or s < 1 or p < 0:
        raise ValueError(f"bad pooling parameters k={k} s={s} p={p}")
    if size + 2 * p < k:
        raise ValueError(f"pooling kernel {k} larger than padded input {size}+2*{p}")
    return caffe_pool_size(size, k, s, p, any_pad=p > 0 if any_pad is None else any_pad)


class CaffePool2d(nn.Module):
    """Caffe ``Pooling`` (MAX / AVE), ceil rounding with Caffe's clip rule, exact AVE divisor.

    MAX clips each window to the input. AVE divides by the window size clipped to ``H + pad`` (padding counts,
    cells past ``H + pad`` do not). Any ``pad < kernel`` works (PyTorch's own pooling needs ``pad <= k/2``).
    """

    def __init__(
        self,
        mode: str = "max",
        kernel_size: _Pair = 1,
        stride: _Pair = 1,
        pad: _Pair = 0,
        global_pooling: bool = False,
    ) -> None:
        super().__init__()
        if mode not in ("max", "ave"):
            raise ValueError(f"CaffePool2d mode must be 'max' or 'ave', got {mode!r}")
        self.mode = mode
        self.kernel_size, self.stride, self.pad = _pair(kernel_size), _pair(stride), _pair(pad)
        self.global_pooling = bool(global_pooling)
        if not self.global_pooling:
            for k, p in zip(self.kernel_size, self.pad, strict=True):
                if p >= k:
                    raise ValueError(f"Caffe pooling needs pad < kernel, got pad {p} kernel {k}")

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        if self.global_pooling:
            return 1, 1
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.pad
        any_pad = ph > 0 or pw > 0  # Caffe clips both axes when either is padded
        return caffe_pool_out(h, kh, sh, ph, any_pad), caffe_pool_out(w, kw, sw, pw, any_pad)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if self.global_pooling:
            return x.amax(dim=(-2, -1), keepdim=True) if self.mode == "max" else x.mean((-2, -1), keepdim=True)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.pad
        oh, ow = self.output_size(h, w)
        # pad so that every window [o*s - p, o*s - p + k) lies inside the padded tensor
        eh = max(0, (oh - 1) * sh + kh - h - ph)
        ew = max(0, (ow - 1) * sw + kw - w - pw)
        if self.mode == "max":
            xp = F.pad(x, (pw, ew, ph, eh), value=-math.inf) if (pw or ew or ph or eh) else x
            return F.max_pool2d(xp, (kh, kw), (sh, sw))[..., :oh, :ow]
        xp = F.pad(x, (pw, ew, ph, eh)) if (pw or ew or ph or eh) else x
        total = F.avg_pool2d(xp, (kh, kw), (sh, sw), divisor_override=1)[..., :oh, :ow]
        return total / self._divisor(h, w, oh, ow, x)

    def _divisor(self, h: int, w: int, oh: int, ow: int, like: Tensor) -> Tensor:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.pad
        start_h = np.arange(oh) * sh - ph
        start_w = np.arange(ow) * sw - pw
        dh = np.minimum(start_h + kh, h + ph) - start_h
        dw = np.minimum(start_w + kw, w + pw) - start_w
        div = torch.from_numpy(np.outer(dh, dw).astype(np.float32))
        return div.to(device=like.device, dtype=like.dtype)

    def extra_repr(self) -> str:
        if self.global_pooling:
            return f"{self.mode}, global_pooling=True"
        return f"{self.mode}, kernel_size={self.kernel_size}, stride={self.stride}, pad={self.pad}"


# ----------------------------------------------------------------------------------------- BatchNorm


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters (torchvision-style buffers).

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = float(eps)
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        state_dict.pop(prefix + "num_batches_tracked", None)  # tolerate nn.BatchNorm2d checkpoints
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


NORM_KINDS = ("frozen", "bn", "syncbn")


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    """Raise ``ValueError("<name> must be one of <choices>, got <value>")`` unless ``value`` is a choice."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def make_norm(kind: str, num_features: int, eps: float = 1e-5) -> nn.Module:
    """``"frozen"`` (inference / fine-tuning with fixed stats), ``"bn"`` or ``"syncbn"`` (training)."""
    if kind == "frozen":
        return FrozenBatchNorm2d(num_features, eps)
    if kind == "bn":
        return nn.BatchNorm2d(num_features, eps=eps)
    if kind == "syncbn":
        return nn.SyncBatchNorm(num_features, eps=eps)
    raise ValueError(f"norm must be one of {NORM_KINDS}, got {kind!r}")


def caffe_batchnorm_stats(blobs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Caffe ``BatchNorm`` blobs [mean*s, var*s, s] -> (mean, var) as float32, factor 0 if s == 0 else 1/s.

    Mirrors Caffe's float32 arithmetic: ``factor = 1/s`` in float32, then ``blob * factor``.
    """
    if len(blobs) < 3:
        raise ValueError(f"Caffe BatchNorm needs 3 blobs [mean*s, var*s, s], got {len(blobs)}")
    s = np.float32(np.asarray(blobs[2], dtype=np.float32).reshape(-1)[0])
    factor = np.float32(0.0) if s == 0 else np.float32(1.0) / s
    mean = (np.asarray(blobs[0], dtype=np.float32).reshape(-1) * factor).astype(np.float32)
    var = (np.asarray(blobs[1], dtype=np.float32).reshape(-1) * factor).astype(np.float32)
    return mean, var


def caffe_bn_scale_to_params(
    bn_blobs: Sequence[np.ndarray], scale_blobs: Sequence[np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Caffe ``BatchNorm`` (+ optional ``Scale`` [gamma, (beta)]) -> FrozenBatchNorm2d tensors (numpy)."""
    mean, var = caffe_batchnorm_stats(bn_blobs)
    c = mean.shape[0]
    weight = np.ones(c, np.float32)
    bias = np.zeros(c, np.float32)
    if scale_blobs:
        weight = np.asarray(scale_blobs[0], dtype=np.float32).reshape(-1).copy()
        if len(scale_blobs) > 1:
            bias = np.asarray(scale_blobs[1], dtype=np.float32).reshape(-1).copy()
    return {"weight": weight, "bias": bias, "running_mean": mean, "running_var": var}


def psp_bn_to_params(blobs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """PSPNet ``BN`` blobs (1,C,1,1) [slope, bias, mean, var] -> weight / bias / running_mean / running_var."""
    if len(blobs) != 4:
        raise ValueError(f"PSPNet BN needs 4 blobs [slope, bias, mean, var], got {len(blobs)}")
    names = ("weight", "bias", "running_mean", "running_var")
    return {n: np.asarray(b, dtype=np.float32).reshape(-1).copy() for n, b in zip(names, blobs, strict=True)}


# ----------------------------------------------------------------------------------------- TF padding


def tf_same_pads(size: int, k: int, s: int = 1, d: int = 1) -> tuple[int, int]:
    """TF ``padding='SAME'``: total = max((ceil(H/s) - 1) s + k_eff - H, 0); extra pixel at the end."""
    k_eff = k + (k - 1) * (d - 1)
    total = max((-(-size // s) - 1) * s + k_eff - size, 0)
    return total // 2, total - total // 2


def conv2d_same_pads(k: int, d: int = 1) -> tuple[int, int]:
    """TF-Slim ``conv2d_same`` explicit pads (used for stride > 1): beg = (k_eff-1)//2, end = rest."""
    k_eff = k + (k - 1) * (d - 1)
    beg = (k_eff - 1) // 2
    return beg, k_eff - 1 - beg


class SamePad2d(nn.Module):
    """Pad like TF ``SAME`` for a given kernel/stride/dilation (computed per input size)."""

    def __init__(self, kernel_size: _Pair, stride: _Pair = 1, dilation: _Pair = 1, value: float = 0.0) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        self.value = float(value)

    def pads(self, h: int, w: int) -> tuple[int, int, int, int]:
        t, b = tf_same_pads(h, self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = tf_same_pads(w, self.kernel_size[1], self.stride[1], self.dilation[1])
        return left, right, t, b

    def forward(self, x: Tensor) -> Tensor:
        p = self.pads(int(x.shape[-2]), int(x.shape[-1]))  # Python ints: an ONNX export gets exact constant pads
        return F.pad(x, p, value=self.value) if any(p) else x

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, dilation={self.dilation}, value={self.value}"


class TFSamePool2d(nn.Module):
    """TF ``max_pool``/``avg_pool`` with ``padding='SAME'``: -inf padding for max; avg divides by the
    number of non-padded cells."""

    def __init__(self, mode: str, kernel_size: _Pair, stride: _Pair) -> None:
        super().__init__()
        if mode not in ("max", "avg"):
            raise ValueError(f"TFSamePool2d mode must be 'max' or 'avg', got {mode!r}")
        self.mode = mode
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.pad = SamePad2d(self.kernel_size, self.stride, value=-math.inf if mode == "max" else 0.0)

    def forward(self, x: Tensor) -> Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        p = self.pad.pads(h, w)
        if self.mode == "max":
            return F.max_pool2d(self.pad(x), self.kernel_size, self.stride)
        if not any(p):
            return F.avg_pool2d(x, self.kernel_size, self.stride)
        total = F.avg_pool2d(F.pad(x, p), self.kernel_size, self.stride, divisor_override=1)
        ones = torch.ones((1, 1, h, w), dtype=x.dtype, device=x.device)
        count = F.avg_pool2d(F.pad(ones, p), self.kernel_size, self.stride, divisor_override=1)
        return total / count

    def extra_repr(self) -> str:
        return f"{self.mode}, kernel_size={self.kernel_size}, stride={self.stride}, padding=SAME"


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TF ``SAME`` padding computed per input (Keras ``padding='same'``), same keys."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["padding"] = 0
        super().__init__(*args, **kwargs)
        self._same = SamePad2d(self.kernel_size, self.stride, self.dilation)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(self._same(x))


class _Conv2dExplicitPad(nn.Conv2d):
    """``nn.Conv2d`` with fixed, possibly asymmetric padding (left, right, top, bottom)."""

    def __init__(self, *args, pads: tuple[int, int, int, int], **kwargs) -> None:
        kwargs["padding"] = 0
        super().__init__(*args, **kwargs)
        self.pads = tuple(pads)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, self.pads))


def conv2d_same(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1, bias: bool = False
) -> nn.Conv2d:
    """TF-Slim ``conv2d_same``: stride 1 -> SAME (= symmetric for odd k_eff); stride > 1 -> explicit pads then
    VALID. Returns a plain ``nn.Conv2d`` whenever the padding is symmetric."""
    beg, end = conv2d_same_pads(kernel_size, dilation)
    kw = dict(stride=stride, dilation=dilation, bias=bias)
    if stride == 1:
        total = kernel_size + (kernel_size - 1) * (dilation - 1) - 1
        beg, end = total // 2, total - total // 2
    if beg == end:
        return nn.Conv2d(in_channels, out_channels, kernel_size, padding=beg, **kw)
    return _Conv2dExplicitPad(in_channels, out_channels, kernel_size, pads=(beg, end, beg, end), **kw)


# ------------------------------------------------------------------------------------------- resizing

RESIZE_MODES = ("align_corners", "tf1_legacy", "half_pixel")


def _legacy_axis(in_size: int, out_size: int, device) -> tuple[Tensor, Tensor, Tensor]:
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.arange(out_size, dtype=np.float32) * scale
    lo = np.floor(src)
    lerp = (src - lo).astype(np.float32)
    lower = np.maximum(lo, 0).astype(np.int64)
    upper = np.minimum(np.ceil(src), in_size - 1).astype(np.int64)
    t = [torch.from_numpy(a).to(device) for a in (lower, upper, lerp)]
    return t[0], t[1], t[2]


def resize_bilinear_tf1_legacy(x: Tensor, size: Sequence[int]) -> Tensor:
    """TF1 ``resize_bilinear(align_corners=False, half_pixel_centers=False)``: src = dst * in/out, clamped."""
    oh, ow = int(size[0]), int(size[1])
    h, w = int(x.shape[-2]), int(x.shape[-1])  # the indices are constants (an ONNX export is for this size)
    ylo, yhi, ylerp = _legacy_axis(h, oh, x.device)
    xlo, xhi, xlerp = _legacy_axis(w, ow, x.device)
    ylerp, xlerp = ylerp.to(x.dtype).reshape(-1, 1), xlerp.to(x.dtype)
    top = x.index_select(-2, ylo)
    bot = x.index_select(-2, yhi)
    tl, tr = top.index_select(-1, xlo), top.index_select(-1, xhi)
    bl, br = bot.index_select(-1, xlo), bot.index_select(-1, xhi)
    top_i = tl + (tr - tl) * xlerp
    bot_i = bl + (br - bl) * xlerp
    return top_i + (bot_i - top_i) * ylerp


def resize(x: Tensor, size: Sequence[int], mode: str = "align_corners") -> Tensor:
    """Bilinear resize with the source-coordinate convention ``mode`` (SPEC 5.3)."""
    size = (int(size[0]), int(size[1]))
    if mode == "align_corners":
        return _resize_align_corners(x, size)
    if mode == "tf1_legacy":
        return resize_bilinear_tf1_legacy(x, size)
    if mode == "half_pixel":
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")

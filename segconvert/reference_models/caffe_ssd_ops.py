"""Layers of the Caffe forks beyond DeepLab/PSPNet, exact to each fork's forward pass (TEST phase).

SSD fork (weiliu89/caffe, branch ``ssd``): :class:`Permute`, :class:`Normalize`, :class:`PriorBox` and
:class:`DetectionOutput` (the post-processing: decode + per-class NMS + ``keep_top_k``). Float rounding follows
the fork's C++ (float storage, the double intermediates it has), so priors and boxes are bit-exact where the fork's
arithmetic is. Other public forks: :class:`ShuffleChannel` (farmingyard/ShuffleNet), :class:`Upsample`
(ChenYingpeng/caffe-yolov3, nearest neighbour by an integer factor), :class:`ReLU6`
(rog93/Caffe-MobileNetV2-ReLU6), :class:`Clip` and :class:`Swish` (BVLC master), :class:`Axpy`
(hujie-frank/SENet). Like :mod:`.caffe_ops`, each class uses nothing but ``torch``, so
:mod:`segconvert.converters.caffe_codegen` copies it verbatim into generated files.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Axpy",
    "Clip",
    "DetectionOutput",
    "MaxPoolWithMask",
    "Normalize",
    "Permute",
    "PriorBox",
    "ReLU6",
    "ShuffleChannel",
    "Swish",
    "Upsample",
]


class Permute(nn.Module):
    """SSD ``Permute``: the listed axes first, then the unlisted ones in their order."""

    def __init__(self, order: tuple[int, ...]) -> None:
        super().__init__()
        self.order = tuple(order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        order = list(self.order) + [i for i in range(x.dim()) if i not in self.order]
        return x.permute(order).contiguous()

    def extra_repr(self) -> str:
        return f"order={self.order}"


class Normalize(nn.Module):
    """SSD ``Normalize``: divide by the L2 norm (``sqrt(sum x^2 + eps)``) over C*H*W per image (across_spatial) or
    over C per pixel, then multiply by ``weight`` (one value when channel_shared, else one per channel)."""

    def __init__(
        self, num_channels: int, across_spatial: bool = True, channel_shared: bool = True, eps: float = 1e-10
    ) -> None:
        super().__init__()
        self.across_spatial, self.channel_shared, self.eps = across_spatial, channel_shared, eps
        self.weight = nn.Parameter(torch.ones(1 if channel_shared else num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sq = x * x
        eps = torch.tensor(self.eps, dtype=x.dtype, device=x.device)
        if self.across_spatial:  # the fork: x * (1 / norm), the reciprocal rounded to the blob's type
            norm = torch.sqrt(sq.flatten(1).sum(1) + eps)
            y = x * (1.0 / norm.double()).to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        else:
            y = x / torch.sqrt(sq.sum(1, keepdim=True) + eps)
        w = self.weight if self.channel_shared else self.weight.reshape(1, -1, *([1] * (x.dim() - 2)))
        return y * w

    def extra_repr(self) -> str:
        return f"across_spatial={self.across_spatial}, channel_shared={self.channel_shared}, eps={self.eps}"


class PriorBox(nn.Module):
    """SSD ``PriorBox``: (1, 2, H*W*num_priors*4) prior boxes (xmin, ymin, xmax, ymax, normalised) and variances
    for a feature map (first input) of an image (second input, or img_h/img_w). Per cell: for each min_size the
    square box, the sqrt(min*max) box when max sizes are given, then one box per aspect ratio (1 first, each ratio
    once, its reciprocal after it with ``flip``). As the fork: sizes are truncated to integers, centres are
    ``(i + offset) * step`` in float, step defaults to image size / feature size."""

    def __init__(
        self,
        min_sizes: tuple[float, ...],
        max_sizes: tuple[float, ...] = (),
        aspect_ratios: tuple[float, ...] = (),
        flip: bool = True,
        clip: bool = False,
        variance: tuple[float, ...] = (0.1,),
        img_h: int = 0,
        img_w: int = 0,
        step_h: float = 0.0,
        step_w: float = 0.0,
        offset: float = 0.5,
    ) -> None:
        super().__init__()
        self.min_sizes, self.max_sizes = tuple(min_sizes), tuple(max_sizes)
        self.aspect_ratios, self.flip, self.clip = tuple(aspect_ratios), flip, clip
        self.variance = tuple(variance)
        self.img_h, self.img_w, self.step_h, self.step_w, self.offset = img_h, img_w, step_h, step_w, offset
        ratios = [1.0]
        for ar in (self._f32(a) for a in self.aspect_ratios):
            if all(abs(ar - r) >= 1e-6 for r in ratios):
                ratios.append(ar)
                if flip:
                    ratios.append(self._f32(1.0 / ar))
        sizes = []  # (width, height) of each prior of a cell, in the fork's order
        for s, min_size in enumerate(self.min_sizes):
            m = int(min_size)
            sizes.append((float(m), float(m)))
            if self.max_sizes:
                side = self._f32(
                    float(torch.tensor(float(m * int(self.max_sizes[s])), dtype=torch.float64, device="cpu").sqrt())
                )
                sizes.append((side, side))
            for ar in ratios[1:]:
                root = float(torch.tensor(ar, dtype=torch.float64, device="cpu").sqrt())
                sizes.append((self._f32(m * root), self._f32(m / root)))
        self.sizes = tuple(sizes)

    @staticmethod
    def _f32(v: float) -> float:
        return float(torch.tensor(v, dtype=torch.float32, device="cpu"))

    @property
    def num_priors(self) -> int:
        return len(self.sizes)

    def forward(self, x: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        lh, lw = int(x.shape[-2]), int(x.shape[-1])
        if self.img_h and self.img_w:
            ih, iw = self.img_h, self.img_w
        else:
            if image is None:
                raise ValueError("PriorBox needs the image (second input) or img_h/img_w")
            ih, iw = int(image.shape[-2]), int(image.shape[-1])
        f32, f64 = torch.float32, torch.float64
        if self.step_h and self.step_w:
            sh, sw = torch.tensor(self.step_h, dtype=f32), torch.tensor(self.step_w, dtype=f32)
        else:
            sh, sw = torch.tensor(float(ih), dtype=f32) / lh, torch.tensor(float(iw), dtype=f32) / lw
        offset = torch.tensor(self.offset, dtype=f32)
        cx = ((torch.arange(lw, dtype=f32) + offset) * sw).to(f64).reshape(1, lw, 1)
        cy = ((torch.arange(lh, dtype=f32) + offset) * sh).to(f64).reshape(lh, 1, 1)
        bw = torch.tensor([s[0] for s in self.sizes], dtype=f64) / 2
        bh = torch.tensor([s[1] for s in self.sizes], dtype=f64) / 2
        shape = (lh, lw, len(self.sizes))
        boxes = torch.stack(
            [
                ((cx - bw) / iw).to(f32).expand(shape),
                ((cy - bh) / ih).to(f32).expand(shape),
                ((cx + bw) / iw).to(f32).expand(shape),
                ((cy + bh) / ih).to(f32).expand(shape),
            ],
            dim=-1,
        ).reshape(-1)
        if self.clip:
            boxes = boxes.clamp(0.0, 1.0)
        var = torch.tensor(self.variance, dtype=f32)
        var = var.expand(boxes.numel()) if var.numel() == 1 else var.repeat(boxes.numel() // 4)
        return torch.stack([boxes, var]).unsqueeze(0).to(x.device)

    def extra_repr(self) -> str:
        return f"min_sizes={self.min_sizes}, max_sizes={self.max_sizes}, sizes={self.sizes}, clip={self.clip}"


class DetectionOutput(nn.Module):
    """SSD ``DetectionOutput`` as post-processing: ``(loc, conf, priors)`` -> (1, 1, K, 7) rows
    ``[image, label, score, xmin, ymin, xmax, ymax]``.

    As the fork: boxes decoded from the priors (code_type CORNER / CENTER_SIZE / CORNER_SIZE, variances from the
    priors unless variance_encoded_in_target); per image and non-background class, candidates scoring above
    confidence_threshold, best first (stable), cut to nms top_k, then greedy NMS keeping a box whose Jaccard overlap
    with every kept box is <= the threshold (which shrinks by eta while > 0.5); over all classes the keep_top_k best
    remain. Rows are per image, by label, best first within a label. No detection at all: one row
    ``[i, -1, -1, -1, -1, -1, -1]`` per image. Equal scores cut by keep_top_k keep class order (Caffe's unstable
    sort leaves that order unspecified).
    """

    CODE_TYPES = ("CORNER", "CENTER_SIZE", "CORNER_SIZE")

    def __init__(
        self,
        num_classes: int,
        share_location: bool = True,
        background_label_id: int = 0,
        nms_threshold: float = 0.3,
        top_k: int = -1,
        eta: float = 1.0,
        code_type: str = "CORNER",
        variance_encoded_in_target: bool = False,
        keep_top_k: int = -1,
        confidence_threshold: float | None = None,
    ) -> None:
        super().__init__()
        if code_type not in self.CODE_TYPES:
            raise ValueError(f"code_type must be one of {self.CODE_TYPES}, got {code_type!r}")
        self.num_classes, self.share_location, self.background_label_id = (
            num_classes,
            share_location,
            background_label_id,
        )
        self.nms_threshold, self.top_k, self.eta, self.code_type = nms_threshold, top_k, eta, code_type
        self.variance_encoded_in_target, self.keep_top_k = variance_encoded_in_target, keep_top_k
        self.confidence_threshold = confidence_threshold

    def decode(self, prior: torch.Tensor, var: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        """Decoded boxes (..., 4) in float32 with the fork's operation order."""
        f64 = torch.float64
        px1, py1, px2, py2 = prior.unbind(-1)
        if self.variance_encoded_in_target:
            var = torch.ones_like(var)
        v = var.unbind(-1)
        l0, l1, l2, l3 = loc.unbind(-1)
        if self.code_type == "CORNER":
            return torch.stack([px1 + v[0] * l0, py1 + v[1] * l1, px2 + v[2] * l2, py2 + v[3] * l3], -1)
        pw, ph = px2 - px1, py2 - py1
        if self.code_type == "CORNER_SIZE":
            return torch.stack(
                [px1 + v[0] * l0 * pw, py1 + v[1] * l1 * ph, px2 + v[2] * l2 * pw, py2 + v[3] * l3 * ph], -1
            )
        pcx, pcy = (px1 + px2) / 2, (py1 + py2) / 2
        cx, cy = (v[0] * l0 * pw + pcx).to(f64), (v[1] * l1 * ph + pcy).to(f64)
        half_w = (torch.exp((v[2] * l2).to(f64)) * pw.to(f64)).to(loc.dtype).to(f64) / 2
        half_h = (torch.exp((v[3] * l3).to(f64)) * ph.to(f64)).to(loc.dtype).to(f64) / 2
        return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], -1).to(loc.dtype)

    @staticmethod
    def box_size(b: torch.Tensor) -> torch.Tensor:
        w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
        return torch.where((w < 0) | (h < 0), torch.zeros_like(w), w * h)

    @staticmethod
    def jaccard(b: torch.Tensor, size: torch.Tensor) -> list[list[float]]:
        """Pairwise Jaccard overlaps of (M, 4) boxes in float32, as the fork's JaccardOverlap."""
        iw = torch.minimum(b[:, None, 2], b[None, :, 2]) - torch.maximum(b[:, None, 0], b[None, :, 0])
        ih = torch.minimum(b[:, None, 3], b[None, :, 3]) - torch.maximum(b[:, None, 1], b[None, :, 1])
        inter = iw * ih
        iou = inter / (size[:, None] + size[None, :] - inter)
        return torch.where((iw > 0) & (ih > 0), iou, torch.zeros_like(iou)).tolist()

    def nms(self, boxes: torch.Tensor, sizes: torch.Tensor, scores: torch.Tensor) -> list[int]:
        """Kept prior indices of one class, best first (the fork's ApplyNMSFast)."""
        if self.confidence_threshold is None:
            cand = torch.arange(scores.numel(), device=scores.device)
        else:
            cand = torch.nonzero(scores > self.confidence_threshold).flatten()
        order = torch.sort(scores[cand], descending=True, stable=True).indices
        cand = cand[order]
        if self.top_k > -1:
            cand = cand[: self.top_k]
        iou = self.jaccard(boxes[cand], sizes[cand])
        threshold = float(torch.tensor(self.nms_threshold, dtype=torch.float32))
        kept: list[int] = []
        for m in range(len(cand)):
            row = iou[m]
            if all(row[k] <= threshold for k in kept):
                kept.append(m)
                if self.eta < 1 and threshold > 0.5:
                    threshold = float(torch.tensor(threshold * self.eta, dtype=torch.float32))
        return cand[kept].tolist()

    @torch.no_grad()
    def forward(self, loc: torch.Tensor, conf: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        n = loc.shape[0]
        num_priors = prior.shape[2] // 4
        num_loc = 1 if self.share_location else self.num_classes
        loc = loc.reshape(n, num_priors, num_loc, 4)
        conf = conf.reshape(n, num_priors, self.num_classes)
        pbox, pvar = prior[0, 0].reshape(num_priors, 1, 4), prior[0, 1].reshape(num_priors, 1, 4)
        boxes = self.decode(pbox, pvar, loc)
        sizes = self.box_size(boxes)
        rows: list[torch.Tensor] = []
        for i in range(n):
            picked: dict[int, list[int]] = {}
            for c in range(self.num_classes):
                if c == self.background_label_id:
                    continue
                j = 0 if self.share_location else c
                picked[c] = self.nms(boxes[i, :, j], sizes[i, :, j], conf[i, :, c])
            if -1 < self.keep_top_k < sum(len(v) for v in picked.values()):
                pairs = [(float(conf[i, p, c]), c, p) for c in picked for p in picked[c]]
                pairs = sorted(pairs, key=lambda t: -t[0])[: self.keep_top_k]  # stable
                picked = {}
                for _, c, p in pairs:
                    picked.setdefault(c, []).append(p)
            for c in sorted(picked):
                j = 0 if self.share_location else c
                for p in picked[c]:
                    head = torch.tensor([float(i), float(c)], dtype=conf.dtype, device=conf.device)
                    rows.append(torch.cat([head, conf[i, p, c : c + 1], boxes[i, p, j]]))
        if not rows:
            out = torch.full((n, 7), -1.0, dtype=conf.dtype, device=conf.device)
            out[:, 0] = torch.arange(n, dtype=conf.dtype, device=conf.device)
            return out.reshape(1, 1, n, 7)
        return torch.stack(rows).reshape(1, 1, len(rows), 7)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, code_type={self.code_type}, nms_threshold={self.nms_threshold}, "
            f"top_k={self.top_k}, keep_top_k={self.keep_top_k}, confidence_threshold={self.confidence_threshold}"
        )


class ShuffleChannel(nn.Module):
    """farmingyard/ShuffleNet ``ShuffleChannel``: channels as (group, C/group), transposed to (C/group, group)."""

    def __init__(self, group: int = 1) -> None:
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        return x.reshape(n, self.group, c // self.group, *x.shape[2:]).transpose(1, 2).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"group={self.group}"


class MaxPoolWithMask(nn.Module):
    """Caffe MAX ``Pooling`` with a second top (BVLC; SegNet's encoder): the pooled values and, as floats, where
    each maximum is in its input plane (``h * W + w``, the first maximum of the window in row-major order). Caffe's
    ceil rounding, the last window dropped when it would start in the padding, windows clipped to the input."""

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] = 1, pad: int | tuple = 0):
        super().__init__()
        self.kernel_size, self.stride, self.pad = (
            tuple(v) if isinstance(v, tuple | list) else (v, v) for v in (kernel_size, stride, pad)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.pad
        h, w = int(x.shape[-2]), int(x.shape[-1])
        sizes = []
        for size, k, s, p in ((h, kh, sh, ph), (w, kw, sw, pw)):
            out = -(-(size + 2 * p - k) // s) + 1
            sizes.append(out - 1 if ph + pw > 0 and (out - 1) * s >= size + p else out)
        oh, ow = sizes
        pads = (pw, max(0, (ow - 1) * sw + kw - w - pw), ph, max(0, (oh - 1) * sh + kh - h - ph))
        padded = F.pad(x, pads, value=float("-inf"))
        values, index = F.max_pool2d(padded, (kh, kw), (sh, sw), return_indices=True)
        values, index = values[..., :oh, :ow], index[..., :oh, :ow]
        row, col = index // padded.shape[-1] - ph, index % padded.shape[-1] - pw
        return values, (row * w + col).to(x.dtype)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, pad={self.pad}"


class Upsample(nn.Module):
    """``Upsample``. One input: ChenYingpeng/caffe-yolov3's nearest neighbour, each value repeated scale_h x scale_w
    times. Two inputs (values, pooling mask): alexgkendall/caffe-segnet's max-unpooling, each value put at its mask
    index of a zero (upsample_h, upsample_w) plane, or (H * scale_h - pad_out_h, W * scale_w - pad_out_w)."""

    def __init__(
        self,
        scale_h: int = 2,
        scale_w: int = 2,
        upsample_h: int = 0,
        upsample_w: int = 0,
        pad_out_h: bool = False,
        pad_out_w: bool = False,
    ) -> None:
        super().__init__()
        self.scale_h, self.scale_w, self.upsample_h, self.upsample_w = scale_h, scale_w, upsample_h, upsample_w
        self.pad_out_h, self.pad_out_w = pad_out_h, pad_out_w

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            return x.repeat_interleave(self.scale_h, dim=-2).repeat_interleave(self.scale_w, dim=-1)
        n, c, h, w = x.shape
        oh = self.upsample_h or h * self.scale_h - int(self.pad_out_h)
        ow = self.upsample_w or w * self.scale_w - int(self.pad_out_w)
        out = x.new_zeros(n, c, oh * ow)
        out.scatter_(2, mask.reshape(n, c, h * w).long(), x.reshape(n, c, h * w))
        return out.reshape(n, c, oh, ow)

    def extra_repr(self) -> str:
        return f"scale_h={self.scale_h}, scale_w={self.scale_w}"


class ReLU6(nn.Module):
    """rog93/Caffe-MobileNetV2-ReLU6 ``ReLU6``: ``min(max(x, 0) + negative_slope * min(x, 0), 6)``."""

    def __init__(self, negative_slope: float = 0.0) -> None:
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.negative_slope:
            return torch.clamp(x, 0.0, 6.0)
        return torch.clamp(torch.clamp(x, min=0.0) + self.negative_slope * torch.clamp(x, max=0.0), max=6.0)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class Clip(nn.Module):
    """BVLC ``Clip``: ``max(min, min(x, max))``."""

    def __init__(self, min: float, max: float) -> None:
        super().__init__()
        self.min, self.max = min, max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, self.min, self.max)

    def extra_repr(self) -> str:
        return f"min={self.min}, max={self.max}"


class Swish(nn.Module):
    """BVLC ``Swish``: ``x * sigmoid(beta * x)``."""

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x if self.beta == 1 else self.beta * x)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class Axpy(nn.Module):
    """hujie-frank/SENet ``Axpy``: ``a * x + y`` with ``a`` (N, C, 1, 1) scaling ``x`` per channel."""

    def forward(self, a: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return a.reshape(a.shape[0], a.shape[1], *([1] * (x.dim() - 2))) * x + y

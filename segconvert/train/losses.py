"""Caffe loss and metric layers, forward values and gradients as Caffe computes them.

- :func:`softmax_with_loss`: ``SoftmaxWithLoss`` with ``ignore_label`` and ``normalization`` FULL / VALID /
  BATCH_SIZE / NONE (legacy ``normalize: true|false`` = VALID / BATCH_SIZE); the normaliser is
  ``max(1, count)``, so an all-ignored batch gives loss 0 and no gradient. The loss is
  ``-log(max(p, FLT_MIN))``; the gradient is Caffe's ``p - onehot`` (the clamp does not cut it).
- :func:`sigmoid_cross_entropy_loss` (default normalisation BATCH_SIZE, as BVLC), :func:`euclidean_loss`
  (``sum((a - b)^2) / N / 2``).
- :func:`accuracy` (``Accuracy``: top_k, ignore_label) and :func:`seg_accuracy` (DeepLab ``SegAccuracy``: pixel
  accuracy, mean class accuracy, mean IoU of the batch), reported, never back-propagated.
Labels are read as Caffe reads them: ``static_cast<int>`` of the float label (truncation).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "NORMALIZATIONS",
    "accuracy",
    "euclidean_loss",
    "normalizer",
    "seg_accuracy",
    "sigmoid_cross_entropy_loss",
    "softmax_with_loss",
]

NORMALIZATIONS = ("FULL", "VALID", "BATCH_SIZE", "NONE")
_LOG_FLT_MIN = math.log(float(np.finfo(np.float32).tiny))


def normalizer(mode: str, outer: int, inner: int, valid: Tensor | int) -> Tensor | float:
    """Caffe ``LossLayer::GetNormalizer``, then ``max(1, .)``."""
    if mode == "FULL":
        return float(max(1, outer * inner))
    if mode == "VALID":
        return valid.clamp(min=1).to(torch.float32) if isinstance(valid, Tensor) else float(max(1, valid))
    if mode == "BATCH_SIZE":
        return float(max(1, outer))
    if mode == "NONE":
        return 1.0
    raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {mode!r}")


def _int_label(label: Tensor, like: Tensor, axis: int) -> Tensor:
    """Caffe's label blob (N x 1 x H x W or N x H x W, float) as int64 indices shaped like ``like`` without ``axis``."""
    want = list(like.shape[:axis]) + list(like.shape[axis + 1 :])
    if label.numel() != math.prod(want):
        raise ValueError(f"label has {label.numel()} values, the scores need {math.prod(want)} ({want})")
    lab = label.reshape(want)
    return lab.long() if lab.is_floating_point() else lab.to(torch.int64)  # .long() truncates like static_cast


def softmax_with_loss(
    scores: Tensor,
    label: Tensor,
    *,
    ignore_label: int | None = None,
    normalization: str = "VALID",
    axis: int = 1,
) -> tuple[Tensor, int]:
    """Caffe ``SoftmaxWithLoss``: returns (loss, number of counted labels)."""
    lab = _int_label(label, scores, axis)
    logp = F.log_softmax(scores, dim=axis)
    # value of -log(max(p, FLT_MIN)), gradient of the unclamped log-softmax (Caffe's backward ignores the clamp)
    logp = logp + (logp.clamp(min=_LOG_FLT_MIN) - logp).detach()
    valid = lab != ignore_label if ignore_label is not None else torch.ones_like(lab, dtype=torch.bool)
    n_classes = scores.shape[axis]
    if bool(((lab < 0) | (lab >= n_classes))[valid].any()):
        bad = lab[valid & ((lab < 0) | (lab >= n_classes))][0].item()
        raise ValueError(f"label value {bad} outside 0..{n_classes - 1} (and not the ignore_label)")
    safe = torch.where(valid, lab, torch.zeros_like(lab))
    picked = logp.gather(axis, safe.unsqueeze(axis)).squeeze(axis)
    total = -(picked * valid.to(picked.dtype)).sum()
    outer = math.prod(scores.shape[:axis])
    inner = math.prod(scores.shape[axis + 1 :])
    count = int(valid.sum())
    return total / normalizer(normalization, outer, inner, count), count


def sigmoid_cross_entropy_loss(
    scores: Tensor, target: Tensor, *, ignore_label: int | None = None, normalization: str = "BATCH_SIZE"
) -> Tensor:
    """Caffe ``SigmoidCrossEntropyLoss``: ``sum(BCE-with-logits)`` over counted targets / normaliser."""
    target = target.reshape(scores.shape).to(scores.dtype)
    valid = target != ignore_label if ignore_label is not None else torch.ones_like(target, dtype=torch.bool)
    per = F.binary_cross_entropy_with_logits(scores, torch.where(valid, target, 0), reduction="none")
    total = (per * valid.to(per.dtype)).sum()
    return total / normalizer(normalization, scores.shape[0], scores[0].numel(), int(valid.sum()))


def euclidean_loss(a: Tensor, b: Tensor) -> Tensor:
    """Caffe ``EuclideanLoss``: ``sum((a - b)^2) / N / 2``."""
    return ((a - b.reshape(a.shape)) ** 2).sum() / a.shape[0] / 2


@torch.no_grad()
def accuracy(scores: Tensor, label: Tensor, *, top_k: int = 1, ignore_label: int | None = None, axis: int = 1) -> float:
    """Caffe ``Accuracy``: fraction of counted labels among the ``top_k`` scores."""
    lab = _int_label(label, scores, axis)
    top = scores.topk(top_k, dim=axis).indices
    hit = (top == lab.unsqueeze(axis)).any(dim=axis)
    valid = lab != ignore_label if ignore_label is not None else torch.ones_like(hit)
    n = int(valid.sum())
    return float((hit & valid).sum()) / n if n else 0.0


@torch.no_grad()
def seg_accuracy(scores: Tensor, label: Tensor, *, ignore_labels: tuple[int, ...] = (255,)) -> dict[str, float]:
    """DeepLab ``SegAccuracy`` of one batch: pixel accuracy, mean class accuracy and mean IoU (classes present)."""
    lab = _int_label(label, scores, 1)
    pred = scores.argmax(1)
    valid = torch.ones_like(lab, dtype=torch.bool)
    for ig in ignore_labels:
        valid &= lab != ig
    n = scores.shape[1]
    conf = torch.bincount(lab[valid] * n + pred[valid], minlength=n * n).reshape(n, n).double()
    tp, gt, pr = conf.diag(), conf.sum(1), conf.sum(0)
    present = gt > 0
    acc = float(tp.sum() / gt.sum()) if gt.sum() else 0.0
    cls = float((tp[present] / gt[present]).mean()) if present.any() else 0.0
    union = gt + pr - tp
    iou = float((tp[present] / union[present]).mean()) if present.any() else 0.0
    return {"pixel_accuracy": acc, "mean_accuracy": cls, "mean_iou": iou}

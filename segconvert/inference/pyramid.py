"""Inference pass: PSPNet's head convolution over the pyramid branches at the branches' own resolution.

PSPNet's 3x3 head convolution (``conv5_4``) reads ``concat([x, up(p6), up(p3), up(p2), up(p1)])``: half of its
input channels (and of its FLOPs, 42 % of PSPNet50's at 473) are the bilinear upsamplings of the 1x1 .. 6x6
pooled branches. Convolution and a resize are both linear and the resize treats every channel alike, so

    conv3x3(up(p), W) = sum over taps t of  shift_t(up(W_t p))  =  M @ Q,

with ``Q`` the branch channels mixed by each tap's weights at the pooled size (50 positions for bins 6, 3, 2, 1)
and ``M`` the resize operator with each tap's shift and the zero padding built in -- obtained by running the
branch's own ``upsample`` on one-hot images, so it is exactly the resize the plain model runs (any
``RESIZE_MODES`` convention). The same sums in another order: float32 rounding only (~1e-7..1e-6 x magnitude),
checked by ``prepare_model(check=True)`` on the pyramid path itself. The ``x`` channels keep the ordinary
convolution; the pooled branch maps never go through the concat.

:func:`fold_pyramid_heads` swaps ``ppm`` for :class:`PyramidBranches` (the same branch modules: state_dict keys
unchanged; returns :class:`PyramidFeatures`, not the concat) and ``head.conv`` for :class:`PyramidHeadConv`
(the same weight and bias parameters; a plain tensor input still takes the ordinary convolution).
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segconvert.reference_models.layers import Resize
from segconvert.reference_models.pspnet import PSPHead, PyramidPooling

__all__ = ["PyramidBranches", "PyramidFeatures", "PyramidHeadConv", "fold_pyramid_heads"]

log = logging.getLogger(__name__)

_CACHE = 4  # resize operators kept per head (one per feature size; sliding crops share one)


class PyramidFeatures(NamedTuple):
    """What :class:`PyramidBranches` hands the head: the feature map and each branch before its upsample."""

    x: Tensor
    branches: tuple[Tensor, ...]


class PyramidBranches(nn.Module):
    """``ppm`` of the inference form: the branches' pooled maps, not the concat of their upsamplings."""

    def __init__(self, ppm: PyramidPooling) -> None:
        super().__init__()
        self.names = list(ppm.names)
        for name in self.names:
            self.add_module(name, getattr(ppm, name))
        self.out_channels = ppm.out_channels

    def forward(self, x: Tensor) -> PyramidFeatures:
        return PyramidFeatures(x, tuple(getattr(self, name).pooled(x) for name in self.names))


class PyramidHeadConv(nn.Module):
    """The head's 3x3 convolution (same ``weight`` / ``bias``) fed by :class:`PyramidFeatures`.

    A tensor input is the concat: the ordinary convolution. Falls back to upsample + concat + convolution when
    the branch maps are not small against the feature map (the pyramid path would not save work).
    """

    def __init__(self, conv: nn.Conv2d, x_channels: int, branch_channels: list[int], upsamples: list[Resize]) -> None:
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.x_channels, self.branch_channels = int(x_channels), [int(c) for c in branch_channels]
        self._upsamples = list(upsamples)  # the branches' own modules (not children: no state, named in ppm)
        self._ops: OrderedDict[tuple, Tensor] = OrderedDict()

    def conv(self, x: Tensor, weight: Tensor | None = None) -> Tensor:
        return F.conv2d(x, self.weight if weight is None else weight, self.bias, 1, 1)

    def reference(self, feats: PyramidFeatures) -> Tensor:
        """The plain model's computation: upsample every branch, concat, convolve."""
        size = feats.x.shape[-2:]
        ups = [up(p, size) for up, p in zip(self._upsamples, feats.branches, strict=True)]
        return self.conv(torch.cat([feats.x, *ups], dim=1))

    def _worth_it(self, feats: PyramidFeatures) -> bool:
        hw = feats.x.shape[-2] * feats.x.shape[-1]
        plain = sum(hw * c for c in self.branch_channels)
        pairs = zip(feats.branches, self.branch_channels, strict=True)
        pyramid = sum(p.shape[-2] * p.shape[-1] * (c + hw) for p, c in pairs)
        return 2 * pyramid < plain

    def operator(self, feats: PyramidFeatures) -> Tensor:
        """``M`` (H*W, 9 * sum of branch positions): each branch's resize, shifted per tap, zero-padded."""
        h, w = int(feats.x.shape[-2]), int(feats.x.shape[-1])
        shapes = tuple(tuple(p.shape[-2:]) for p in feats.branches)
        key = (shapes, h, w, feats.x.device, torch.float32)
        op = self._ops.get(key)
        if op is not None:
            self._ops.move_to_end(key)
            return op
        cols = []
        kind = feats.x.device.type  # float32 weights, as keyed, also when called under autocast
        plain = torch.autocast(kind, enabled=False) if kind in ("cpu", "cuda") else contextlib.nullcontext()
        with torch.no_grad(), plain:
            for up, (sh, sw) in zip(self._upsamples, shapes, strict=True):
                eye = torch.eye(sh * sw, device=feats.x.device).reshape(sh * sw, 1, sh, sw)
                padded = F.pad(up(eye, (h, w)), (1, 1, 1, 1))[:, 0]  # (S, h+2, w+2)
                for dy in range(3):
                    for dx in range(3):
                        cols.append(padded[:, dy : dy + h, dx : dx + w].reshape(sh * sw, h * w))
            op = torch.cat(cols).t().contiguous()
        self._ops[key] = op
        while len(self._ops) > _CACHE:
            self._ops.popitem(last=False)
        return op

    def forward(self, feats: Tensor | PyramidFeatures) -> Tensor:
        if isinstance(feats, Tensor):
            return self.conv(feats)
        if not self._worth_it(feats):
            return self.reference(feats)
        x = feats.x
        n, h, w, k = x.shape[0], x.shape[-2], x.shape[-1], self.out_channels
        out = self.conv(x, self.weight[:, : self.x_channels])
        # Q rows (branch, tap, position): the branch's channels mixed by each tap's weights at the pooled size
        qs, start = [], self.x_channels
        for p, c in zip(feats.branches, self.branch_channels, strict=True):
            wb = self.weight[:, start : start + c].transpose(0, 1).reshape(c, k * 9)  # (C_b, K*9): one copy
            q = torch.matmul(p.flatten(2).transpose(1, 2), wb)  # (N, S_b, K*9)
            s_b = p.shape[-2] * p.shape[-1]  # explicit sizes: an empty batch (the passes' trace) reshapes too
            qs.append(q.reshape(n, s_b, k, 9).permute(0, 3, 1, 2).reshape(n, 9 * s_b, k))
            start += c
        pyr = torch.matmul(self.operator(feats).to(qs[0].dtype), torch.cat(qs, dim=1))  # (N, H*W, K)
        return out.add_(pyr.reshape(n, h, w, k).permute(0, 3, 1, 2))  # pyr: channels_last memory

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size=3, padding=1: {self.x_channels} feature channels "
            f"convolved, branches {self.branch_channels} at their pooled size"
        )


def _not_foldable(model: nn.Module) -> str | None:
    """Why ``model``'s ``ppm`` + ``head.conv`` cannot take the pyramid path; None when it can."""
    ppm, head = getattr(model, "ppm", None), getattr(model, "head", None)
    if type(ppm) is not PyramidPooling or type(head) is not PSPHead:
        return "no PyramidPooling + PSPHead"
    conv = head.conv
    if type(conv) is not nn.Conv2d:
        return f"head.conv is {type(conv).__name__}"
    if (
        conv.kernel_size != (3, 3)
        or conv.stride != (1, 1)
        or conv.dilation != (1, 1)
        or conv.padding != (1, 1)
        or conv.groups != 1
        or conv.padding_mode != "zeros"
        or conv.in_channels != ppm.out_channels
    ):
        return "head.conv is not a plain 3x3 convolution over the concat"
    if any(type(getattr(ppm, n).upsample) is not Resize for n in ppm.names):
        return "a branch upsample is not a Resize"
    return None


def fold_pyramid_heads(model: nn.Module) -> list[str]:
    """Swap every PSPNet-style ``ppm`` + ``head.conv`` in ``model`` for the pyramid path (module docstring);
    returns the names of the head convolutions changed. Weights and state_dict keys are untouched."""
    done = []
    for name, mod in list(model.named_modules()):
        why = _not_foldable(mod)
        if why is not None:
            if type(getattr(mod, "ppm", None)) is PyramidPooling:
                log.debug("pyramid path not used for %s: %s", name or "the model", why)
            continue
        ppm: PyramidPooling = mod.ppm
        branches = [getattr(ppm, n) for n in ppm.names]
        x_channels = ppm.out_channels - sum(b.conv.out_channels for b in branches)
        head_conv = PyramidHeadConv(
            mod.head.conv, x_channels, [b.conv.out_channels for b in branches], [b.upsample for b in branches]
        )
        mod.ppm = PyramidBranches(ppm)
        mod.head.conv = head_conv
        done.append(f"{name}.head.conv" if name else "head.conv")
    return done

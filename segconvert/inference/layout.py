"""Memory-layout-aware stand-ins used by the inference form (:func:`segconvert.inference.prepare_model`).

PyTorch's CPU softmax along a non-innermost axis of a tensor that is not contiguous (a channels_last
activation, softmax over channels) first copies it to contiguous NCHW: for Fast-SCNN's 19 x 512 x 1024 scores
that copy alone takes ~100 ms at one thread, more than the rest of the net. :class:`LayoutSoftmax` runs the
softmax along the axis as it lies in memory (innermost: a plain last-axis softmax on a permuted view) and
returns the same layout. It subclasses ``nn.Softmax`` / ``nn.LogSoftmax`` (same ``dim``, no state), so the
model's structure, state_dict and ``isinstance`` checks are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from segconvert.reference_models.keras_ops import layout_softmax

__all__ = ["LayoutLogSoftmax", "LayoutSoftmax", "layout_aware"]


class LayoutSoftmax(nn.Softmax):
    """``nn.Softmax`` computed along ``dim`` as it lies in memory (channels_last: no copy to NCHW)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) if self.dim is None else layout_softmax(x, self.dim)


class LayoutLogSoftmax(nn.LogSoftmax):
    """``nn.LogSoftmax`` computed along ``dim`` as it lies in memory."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) if self.dim is None else layout_softmax(x, self.dim, log=True)


_SWAP: dict[type, type] = {nn.Softmax: LayoutSoftmax, nn.LogSoftmax: LayoutLogSoftmax}


def layout_aware(model: nn.Module) -> int:
    """Make every exact ``nn.Softmax`` / ``nn.LogSoftmax`` in ``model`` layout-aware in place, and the in-layer
    softmax activations of generic Keras nets (``softmax_in_layout``); returns the number of modules changed."""
    count = 0
    for module in model.modules():
        new = _SWAP.get(type(module))
        if new is not None:
            module.__class__ = new  # same attributes (dim), no parameters or buffers
            count += 1
        elif getattr(module, "softmax_in_layout", None) is False:
            module.softmax_in_layout = True
            count += 1
    return count

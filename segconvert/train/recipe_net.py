"""The named DeepLab-v2 model as a trainable net for :class:`~segconvert.train.engine.Trainer` (recipe runs).

:class:`DeepLabRecipeNet` has the interface of :class:`~segconvert.train.caffe_net.CaffeTrainNet`: ``model``,
``bn_blobs``, ``param_groups()`` and ``forward(batch) -> NetOutput``. Its losses are the released MSC train
net's four ``SoftmaxWithLoss`` (VALID, ignore 255): ``loss`` (fc_fusion), ``loss_res1``, ``loss_res075``
against ``label_shrink`` (Interp shrink 8) and ``loss_res05`` against ``label_shrink16`` (shrink 16); without
MSC only ``loss_res1``. Parameters: ASPP ``fc1_voc12_c*`` weights/biases take the head multipliers (10/20,
decay 1/0), every other learnable blob the backbone's (1/1); frozen BatchNorm/Scale are buffers, never updated.

:func:`load_init` fills the model from a converted DeepLab-v2 (or ResNet backbone) weights file; when the
classifier's class count differs it is re-initialised ``N(0, std)``, bias ``bias`` (reported).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from segconvert.errors import WeightsFileError
from segconvert.reference_models.deeplab_v2 import shrink_label

from .caffe_net import NetOutput
from .losses import softmax_with_loss

__all__ = ["DeepLabRecipeNet", "load_init", "reinit_classifier"]

_LOSS_INPUTS = (  # loss layer, score top, label shrink factor (train.prototxt)
    ("loss", "fc_fusion", 8),
    ("loss_res1", "fc1_voc12", 8),
    ("loss_res075", "fc1_voc12_res075_interp", 8),
    ("loss_res05", "fc1_voc12_res05", 16),
)


class DeepLabRecipeNet(nn.Module):
    """``model``: a :class:`~segconvert.reference_models.DeepLabV2`; ``mults``: ``{"backbone"|"head_weight"|
    "head_bias": (lr_mult, decay_mult)}``."""

    def __init__(self, model: nn.Module, mults: dict[str, tuple[float, float]], ignore_label: int = 255) -> None:
        super().__init__()
        self.model = model
        self.mults = dict(mults)
        self.ignore_label = int(ignore_label)
        self.bn_blobs: dict[str, list[Tensor]] = {}  # frozen BatchNorm: no accumulators
        self.input_names = ["data"]

    def param_groups(self) -> list[dict[str, Any]]:
        groups = []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            kind = "backbone"
            if name.startswith("aspp."):
                kind = "head_bias" if name.endswith(".bias") else "head_weight"
            lr_mult, decay_mult = self.mults[kind]
            if lr_mult == 0:
                p.requires_grad_(False)
                continue
            groups.append({"params": [p], "name": name, "lr_mult": float(lr_mult), "decay_mult": float(decay_mult)})
        return groups

    def forward(self, batch: dict[str, Tensor]) -> NetOutput:  # type: ignore[override]
        outputs = self.model(batch["data"])
        label = batch["label"]
        label = label[:, 0] if label.dim() == 4 else label
        shrunk: dict[int, Tensor] = {}
        terms: dict[str, Tensor] = OrderedDict()
        counts: dict[str, int] = {}
        for loss_name, top, factor in _LOSS_INPUTS:
            if top not in outputs:
                continue
            if factor not in shrunk:
                shrunk[factor] = shrink_label(label, factor)
            terms[loss_name], counts[loss_name] = softmax_with_loss(
                outputs[top], shrunk[factor], ignore_label=self.ignore_label, normalization="VALID"
            )
        total = sum(terms.values(), torch.zeros((), device=label.device))
        return NetOutput(total=total, losses=dict(terms), metrics={}, valid_counts=counts)


def reinit_classifier(model: nn.Module, std: float, bias: float, seed: int | None = None) -> None:
    """The classifier convs drawn N(0, std), bias constant; from a generator of its own when ``seed`` is given (the
    draw then does not depend on what consumed the global generator before)."""
    gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    with torch.no_grad():
        for conv in model.aspp.convs:
            conv.weight.copy_(torch.empty_like(conv.weight, device="cpu").normal_(0.0, std, generator=gen))
            conv.bias.fill_(bias)


def load_init(
    model: nn.Module, path: str | Path, std: float = 0.01, bias: float = 0.0, seed: int | None = None
) -> list[str]:
    """Copy a converted weights file into ``model``; returns notes (e.g. the classifier re-initialisation).

    Accepts a DeepLab-v2 file (same backbone) or a ResNet backbone file (its keys under ``backbone.``).
    Any other difference is a :class:`~segconvert.errors.WeightsFileError` naming the tensors.
    """
    from segconvert.weights.store import load_model

    path = Path(path)
    loaded = load_model(path)
    state, meta = loaded.state_dict(), loaded.segconvert_meta
    del loaded
    arch = str(meta.get("arch", ""))
    if arch == "resnet":
        state = {f"backbone.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    elif not arch.startswith("deeplabv2"):
        raise WeightsFileError(f"init weights are arch '{arch}'; the recipe needs DeepLab-v2 or a ResNet", file=path)
    own = model.state_dict()
    notes: list[str] = []
    head = [k for k in own if k.startswith("aspp.")]
    head_in = [k for k in state if k.startswith("aspp.")]
    fits = head_in and all(k in state and state[k].shape == own[k].shape for k in head)
    if not fits:
        init_classes = state[head_in[0]].shape[0] if head_in else None
        reinit_classifier(model, std, bias, seed)
        why = f"the init has {init_classes} classes" if init_classes is not None else "the init has no classifier"
        notes.append(
            f"classifier aspp.convs (fc1_voc12_c0..c{len(model.aspp.convs) - 1}) re-initialised N(0, {std}), "
            f"bias {bias}: {why}, the recipe {model.config['num_classes']}"
        )
        state = {k: v for k, v in state.items() if not k.startswith("aspp.")}
        own_needed = {k: v for k, v in own.items() if not k.startswith("aspp.")}
    else:
        own_needed = own
    missing = [k for k in own_needed if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own_needed if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{what} {names[:4]}"
            for what, names in (("missing", missing), ("unexpected", unexpected), ("shape differs", wrong))
            if names
        )
        depth = model.config.get("depth")
        raise WeightsFileError(f"init weights do not fit the recipe's {depth}-layer model: {detail}", file=path)
    model.load_state_dict(state, strict=False)
    return notes

"""The PSPNet model of a PSPNet preset, its init from a converted checkpoint, parameter groups and losses.

- :func:`psp_model_config`: the preset's ``model.*`` values on :func:`~.pspnet.pspnet_config`;
  the backbone's structure (stem, stride placement, padding, widths, BN eps) comes from the ``--init`` file's
  metadata when there is one (a converted PSPNet, or a ResNet backbone from slim2torch / caffe2torch).
- :func:`load_psp_init`: copies every tensor of the init file that fits by name and shape and reports what was
  initialised, what is new (the aux head; the pyramid and head from a backbone file) and what was re-initialised
  (a classifier with another class count), as semseg's ``--weight`` / TF ``init_fn`` do.
- :class:`PSPTrainNet`: forward + loss as the sources compute it: cross entropy (ignore label, mean over the
  valid pixels) on the main logits plus ``aux_weight`` x the aux logits' (on stage 3); logits resized to the crop
  (semseg: ``align_corners``; PSPNet-TF-Reproduce: half pixel) or labels shrunk to the logits by nearest
  (fast-semantic-segmentation).
- :func:`psp_param_groups`: semseg's ``modules_ori`` (the backbone) at ``backbone_lr_mult`` and ``modules_new``
  (pyramid, head, aux) at ``head_lr_mult``.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segconvert.errors import SegconvertError, WeightsFileError

__all__ = ["PSPTrainNet", "build_psp_model", "checkpoint_policy", "load_psp_init", "psp_model_config",
           "psp_param_groups", "snapshot_config", "snapshot_state"]  # fmt: skip

_BACKBONE_KEYS = ("depth", "stem", "stride_in", "padding", "stem_widths", "widths", "out_widths", "bn_eps")


def psp_model_config(values: dict[str, Any], init_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The PSPNet config of a resolved preset (``values``), on the backbone of ``init_meta`` when given."""
    from segconvert.reference_models.pspnet import pspnet_config

    d = int(values.get("model.width_divisor", 1))
    cfg: dict[str, Any] = {"depth": int(values["model.depth"]), "stem": "deep"}
    if d != 1:
        cfg.update(stem_widths=[64 // d, 64 // d, 128 // d], widths=[w // d for w in (64, 128, 256, 512)])
    if init_meta is not None:
        arch, src = str(init_meta.get("arch", "")), dict(init_meta.get("config", {}))
        if not (arch == "resnet" or arch.startswith("pspnet")):
            raise WeightsFileError(f"init weights are arch '{arch}'; a PSPNet preset needs a PSPNet or a ResNet")
        cfg = {k: src[k] for k in _BACKBONE_KEYS if k in src}
        if arch.startswith("pspnet"):
            cfg.update(ppm_width=src.get("ppm_width", 512), head_width=src.get("head_width", 512),
                       head_act=src.get("head_act", "relu"))  # fmt: skip
    width = 512 // d
    cfg.setdefault("ppm_width", width)
    cfg.setdefault("head_width", width)
    return pspnet_config(
        num_classes=int(values["model.num_classes"]),
        input_size=None,
        ppm_bins=list(values.get("model.ppm_bins", [1, 2, 3, 6])),
        ppm_mode=values["model.ppm_mode"],
        dropout=float(values.get("model.dropout", 0.1)),
        resize="align_corners" if values["model.resize"] == "align_corners" else "half_pixel",
        aux=True,
        aux_width=256 // d,
        output_stride=8,
        norm="bn",
        **cfg,
    )


def checkpoint_policy(value: Any) -> bool | str | list[str]:
    """``run.grad_checkpointing`` (``none``, ``light``, ``all``, a comma list of parts; true / false) as
    :meth:`PSPNet.set_grad_checkpointing` takes it; anything else is refused naming the key."""
    from segconvert.reference_models.pspnet import CHECKPOINT_PARTS, CHECKPOINT_POLICIES

    if value in ("none", "", None, False):
        return False
    if value is True:
        return "all"
    if isinstance(value, str) and value in CHECKPOINT_POLICIES:
        return value
    parts = value if isinstance(value, list) else str(value).split(",")
    parts = [str(p).strip() for p in parts]
    unknown = [p for p in parts if p not in CHECKPOINT_PARTS]
    if unknown or not parts:
        raise SegconvertError(
            f"run.grad_checkpointing={value!r}: expected none, {', '.join(CHECKPOINT_POLICIES)} or a comma list of "
            f"{', '.join(CHECKPOINT_PARTS)}",
            key="run.grad_checkpointing",
        )
    return parts


def build_psp_model(values: dict[str, Any], init_meta: dict[str, Any] | None = None) -> nn.Module:
    """The trainable PSPNet of a preset: BatchNorm trained (``model.bn_momentum``, ``model.bn_eps``) or frozen
    (``model.norm=frozen``), channel Dropout2d where the source uses it, the aux head of its kind."""
    from segconvert.reference_models.pspnet import PSPNet

    cfg = psp_model_config(values, init_meta)
    if values["model.norm"] == "frozen":
        cfg["norm"] = "frozen"
    model = PSPNet(**cfg)
    momentum = values.get("model.bn_momentum")
    eps = values.get("model.bn_eps")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            if momentum is not None:
                m.momentum = float(momentum)
            if eps is not None:
                m.eps = float(eps)
    if values.get("model.dropout_kind", "element") == "channel":  # semseg: nn.Dropout2d in cls and aux
        model.head.dropout = nn.Dropout2d(cfg["dropout"])
        model.aux.dropout = nn.Dropout2d(cfg["dropout"])
    if values.get("model.aux_head", "psp") == "conv1x1":  # fast-semantic-segmentation: a 1x1 conv on block 2
        aux = nn.Conv2d(cfg["out_widths"][2], cfg["num_classes"], 1)
        nn.init.kaiming_normal_(aux.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(aux.bias)
        model.aux = nn.Sequential(OrderedDict(classifier=aux))
    return model


def _classifier_keys(state: dict[str, Tensor]) -> list[str]:
    return [k for k in state if k.startswith(("head.classifier.", "aux.classifier."))]


def load_psp_init(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Copy the init file's tensors into ``model``; returns ``{"initialised", "new", "reinitialised", "unused"}``
    (state-dict names). A backbone tensor of the wrong shape is an error naming it."""
    from segconvert.weights.store import load_model

    path = Path(path)
    loaded = load_model(path)
    state, arch = loaded.state_dict(), str(loaded.segconvert_meta.get("arch", ""))
    del loaded
    if arch == "resnet":
        state = {f"backbone.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    own = model.state_dict()
    report: dict[str, list[str]] = {"initialised": [], "new": [], "reinitialised": [], "unused": []}
    copy: dict[str, Tensor] = {}
    for k, v in state.items():
        if k not in own:
            report["unused"].append(k)
        elif own[k].shape == v.shape:
            copy[k] = v
        elif k in _classifier_keys(own):
            report["reinitialised"].append(k)
        else:
            raise WeightsFileError(
                f"init tensor shape {tuple(v.shape)} does not fit the preset's {tuple(own[k].shape)}", file=path, key=k
            )
    model.load_state_dict(copy, strict=False)
    for k in own:
        if k.endswith("num_batches_tracked"):
            continue
        if k in copy:
            report["initialised"].append(k)
        elif k not in report["reinitialised"]:
            report["new"].append(k)
    return report


def psp_param_groups(model: nn.Module, backbone_mult: float, head_mult: float, base_lr: float) -> list[dict]:
    """semseg's ``params_list``: the backbone at ``base_lr * backbone_mult``, everything else at ``* head_mult``
    (each group keeps its multiplier in ``"lr_mult"`` for the schedule)."""
    backbone = [p for n, p in model.named_parameters() if n.startswith("backbone.") and p.requires_grad]
    new = [p for n, p in model.named_parameters() if not n.startswith("backbone.") and p.requires_grad]
    return [
        {"params": backbone, "lr": base_lr * backbone_mult, "lr_mult": backbone_mult, "name": "backbone"},
        {"params": new, "lr": base_lr * head_mult, "lr_mult": head_mult, "name": "heads"},
    ]


class PSPTrainNet(nn.Module):
    """``net(images, labels) -> (total, {"main", "aux"}, {"pixel_acc", "valid"})`` (what DDP wraps).

    ``label_mode="resize_logits"``: logits resized to the crop (the model's own upsampling); ``"shrink_labels"``:
    logits kept at 1/8 and the labels given at that size (fast-semantic-segmentation). Losses in float32.
    """

    def __init__(self, model: nn.Module, aux_weight: float, ignore_label: int = 255, label_mode: str = "resize_logits"):
        super().__init__()
        if label_mode not in ("resize_logits", "shrink_labels"):
            raise ValueError(f"label_mode must be resize_logits or shrink_labels, got {label_mode!r}")
        self.model, self.aux_weight, self.ignore_label = model, float(aux_weight), int(ignore_label)
        self.label_mode = label_mode
        model.train_upsample = label_mode == "resize_logits"

    def forward(self, images: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:  # type: ignore[override]
        out = self.model(images)
        logits = out["out"]
        if logits.shape[-2:] != labels.shape[-2:]:
            raise ValueError(f"logits {tuple(logits.shape[-2:])} and labels {tuple(labels.shape[-2:])} differ in size")
        losses = {"main": F.cross_entropy(logits.float(), labels, ignore_index=self.ignore_label)}
        total = losses["main"]
        if "aux" in out and self.aux_weight:
            losses["aux"] = F.cross_entropy(out["aux"].float(), labels, ignore_index=self.ignore_label)
            total = total + self.aux_weight * losses["aux"]
        with torch.no_grad():
            valid = labels != self.ignore_label
            correct = ((logits.max(1).indices == labels) & valid).sum()  # first maximum, as argmax
            metrics = {"correct": correct.float(), "valid": valid.sum().float()}
        return total, losses, metrics


def snapshot_config(model: nn.Module, crop: list[int]) -> dict[str, Any]:
    """The inference config of a trained model: frozen BN, no aux head (it is training-only), the crop as size."""
    cfg = dict(model.config)
    cfg.update(aux=False, norm="frozen", input_size=[int(c) for c in crop])
    return cfg


def snapshot_state(model: nn.Module) -> dict[str, Tensor]:
    """``model``'s tensors for a converted-weights file: no aux head, no BN batch counters."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if not k.startswith("aux.") and not k.endswith("num_batches_tracked")}  # fmt: skip

"""DeepLab-v2 (ResNet + ASPP, optional multi-scale MSC) reproducing the released Caffe test/train nets.

Module names and their Caffe counterparts (SPEC 3): ``backbone`` (``conv1`` .. ``res5c``), ``aspp.convs.{i}``
(``fc1_voc12_c{i}``), ``aspp`` (``fc1_voc12``), ``resize075``/``resize05`` (``data_res075``/``data_res05``),
``upsample075``/``upsample05`` (``fc1_voc12_res075_interp``/``fc1_voc12_res05_interp``), ``fuse``
(``fc_fusion``), ``upsample.interp`` (``fc1_interp``). With MSC the backbone and ASPP run three times per
forward, in the order 1x, 0.75x, 0.5x (forward-hook call indices 0, 1, 2).

``msc_resize`` picks how the scale copies are resized: ``caffe`` (the Interp layers above), ``isht7``
(isht7/pytorch-deeplab-resnet: inputs to ``int(0.75H)+1`` / ``int(0.5H)+1``, branch maps straight to the 1x map,
align_corners) or ``kazuto`` (kazuto1011/deeplab-pytorch: ``scale_factor`` 0.75 / 0.5 and branch maps to the 1x
map with ``align_corners=False``). ``resize`` is the final upsampling's convention (``half_pixel`` for kazuto).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import EltwiseMax, UpsampleToInput
from .ops import RESIZE_MODES, Interp, check_choice
from .resnet import BACKBONE_KEYS, ResNet, backbone_config

__all__ = ["DeepLabV2", "ASPP", "deeplab_msc_loss", "deeplabv2_config", "shrink_label", "MSC_RESIZE"]

MSC_RESIZE = ("caffe", "isht7", "kazuto")


class ASPP(nn.Module):
    """DeepLab-v2 ASPP: parallel dilated 3x3 convs with bias, summed (Caffe ``Eltwise`` SUM, in order)."""

    def __init__(self, in_channels: int, num_classes: int, rates: list[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r, bias=True) for r in rates
        )
        for c in self.convs:
            if c.weight.is_meta:
                continue
            nn.init.normal_(c.weight, std=0.01)
            nn.init.zeros_(c.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.convs[0](x)
        for conv in self.convs[1:]:
            out = out + conv(x)
        return out


def deeplabv2_config(
    num_classes: int = 21,
    depth: int = 101,
    msc: bool = True,
    aspp_rates: list[int] | None = None,
    input_size: list[int] | None = None,
    output_stride: int = 8,
    msc_resize: str = "caffe",
    resize: str = "align_corners",
    **backbone: Any,
) -> dict[str, Any]:
    """Complete DeepLab-v2 keyword arguments into a JSON-serialisable config.

    ``backbone``: the other :func:`~.resnet.resnet_config` keys (``stem`` "7x7", ``stride_in`` "1x1",
    ``widths``, ``dilations``, ``bn_eps``, ``norm``, ...).
    """
    bb = backbone_config(depth=depth, output_stride=output_stride, **backbone)
    check_choice("msc_resize", msc_resize, MSC_RESIZE)
    check_choice("resize", resize, RESIZE_MODES)
    return dict(
        num_classes=int(num_classes),
        msc=bool(msc),
        msc_resize=msc_resize,
        resize=resize,
        aspp_rates=[int(r) for r in (aspp_rates or [6, 12, 18, 24])],
        input_size=[int(s) for s in input_size] if input_size else None,
        **bb,
    )


class DeepLabV2(nn.Module):
    """DeepLab-v2 ResNet + ASPP.

    Eval ``forward(x)`` returns ``fc1_interp`` logits at input resolution: Caffe ``Interp(zoom 8)`` of the
    (fused) score map, cropped to HxW (exact for H = 8k+1; the Caffe protocol pads to 513 and crops).
    Training ``forward`` returns an ``OrderedDict`` of score maps at feature resolution, the bottoms of the
    released train prototxt's losses: with MSC ``fc_fusion``, ``fc1_voc12``, ``fc1_voc12_res075_interp``,
    ``fc1_voc12_res05``; without MSC only ``fc1_voc12``. Feed it to :func:`deeplab_msc_loss`.
    """

    arch_name = "deeplabv2_resnet101"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.config = cfg = deeplabv2_config(**kwargs)
        bb = {k: cfg[k] for k in BACKBONE_KEYS if k in cfg}
        self.backbone = ResNet(**bb)
        self.aspp = ASPP(self.backbone.out_channels, cfg["num_classes"], cfg["aspp_rates"])
        if cfg["msc"]:
            self.resize075 = Interp(shrink_factor=4, zoom_factor=3)
            self.resize05 = Interp(shrink_factor=2)
            self.upsample075 = Interp(zoom_factor=4, shrink_factor=3)
            self.upsample05 = Interp(zoom_factor=2)
            self.fuse = EltwiseMax()
        self.upsample = UpsampleToInput(cfg["output_stride"], cfg["resize"])

    @property
    def grad_checkpointing(self) -> bool:
        return self.backbone.grad_checkpointing

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint the backbone's stem and stages in training forwards (ASPP is cheap and kept)."""
        self.backbone.set_grad_checkpointing(enable)

    def score(self, x: Tensor) -> Tensor:
        """Single-scale score map (``fc1_voc12``) at feature resolution."""
        return self.aspp(self.backbone(x))

    def forward_scales(self, x: Tensor) -> dict[str, Tensor]:
        """All MSC score maps, keyed by their Caffe top names."""
        out: dict[str, Tensor] = OrderedDict()
        out["fc1_voc12"] = s1 = self.score(x)
        if not self.config["msc"]:
            return out
        size = s1.shape[-2:]
        style = self.config["msc_resize"]
        if style == "caffe":
            s075 = self.score(self.resize075(x))
            s05 = self.score(self.resize05(x))
            u075 = _match(self.upsample075(s075), size)
            u05 = _match(self.upsample05(s05), size)
        elif style == "isht7":
            h, w = x.shape[-2:]
            s075 = self.score(_align(x, (int(h * 0.75) + 1, int(w * 0.75) + 1)))
            s05 = self.score(_align(x, (int(h * 0.5) + 1, int(w * 0.5) + 1)))
            u075, u05 = _align(s075, size), _align(s05, size)
        else:  # kazuto: scale_factor resizes (source coordinates use the factor), half-pixel back to the 1x map
            s075 = self.score(F.interpolate(x, scale_factor=0.75, mode="bilinear", align_corners=False))
            s05 = self.score(F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False))
            u075 = F.interpolate(s075, size=tuple(size), mode="bilinear", align_corners=False)
            u05 = F.interpolate(s05, size=tuple(size), mode="bilinear", align_corners=False)
        out["fc1_voc12_res075"], out["fc1_voc12_res05"] = s075, s05
        out["fc1_voc12_res075_interp"], out["fc1_voc12_res05_interp"] = u075, u05
        out["fc_fusion"] = self.fuse(s1, u075, u05)
        return out

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor]:
        scores = self.forward_scales(x)
        if self.training:
            keys = ("fc_fusion", "fc1_voc12", "fc1_voc12_res075_interp", "fc1_voc12_res05")
            return OrderedDict((k, scores[k]) for k in keys if k in scores)
        final = scores["fc_fusion"] if self.config["msc"] else scores["fc1_voc12"]
        return self.upsample(final, x.shape[-2:])


def _align(x: Tensor, size) -> Tensor:
    """align_corners bilinear resize (a copy when the size is already right)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def _match(x: Tensor, size) -> Tensor:
    """Caffe's Interp sizes match the 1x branch for H = 8k+1; other sizes (where Caffe's Eltwise would fail)
    are resized to the 1x map."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def shrink_label(label: Tensor, factor: int) -> Tensor:
    """Caffe ``Interp(shrink_factor=factor)`` applied to an integer label map (N,H,W), truncated to int as
    ``SoftmaxWithLoss`` reads it. For (H-1) divisible by ``factor`` this is exactly ``label[:, ::f, ::f]``."""
    lab = label.unsqueeze(1).to(torch.float32)
    return Interp(shrink_factor=factor)(lab).squeeze(1).to(torch.int64)


def _softmax_loss(logits: Tensor, label: Tensor, ignore_index: int) -> Tensor:
    """Caffe ``SoftmaxWithLoss`` with ``normalization: VALID`` (mean over non-ignored pixels; 0 if none)."""
    if logits.shape[-2:] != label.shape[-2:]:
        raise ValueError(f"score map {tuple(logits.shape[-2:])} and label {tuple(label.shape[-2:])} differ")
    total = F.cross_entropy(logits, label, ignore_index=ignore_index, reduction="sum")
    count = (label != ignore_index).sum().clamp(min=1)
    return total / count


def deeplab_msc_loss(
    outputs: dict[str, Tensor], label: Tensor, ignore_index: int = 255
) -> tuple[Tensor, dict[str, Tensor]]:
    """Loss of the released DeepLab-v2 MSC train prototxt: four ``SoftmaxWithLoss`` (weight 1, ignore 255).

    ``fc_fusion``, ``fc1_voc12`` and ``fc1_voc12_res075_interp`` against ``label_shrink`` (shrink 8);
    ``fc1_voc12_res05`` against ``label_shrink16`` (shrink 16). ``label``: (N,H,W) integer map at the input
    resolution. Returns (total, per-term dict keyed by the Caffe loss layer names). Single-scale outputs
    (only ``fc1_voc12``) give the ``loss_res1`` term alone.
    """
    shrink8 = shrink_label(label, 8)
    terms: dict[str, Tensor] = OrderedDict()
    if "fc_fusion" in outputs:
        terms["loss"] = _softmax_loss(outputs["fc_fusion"], shrink8, ignore_index)
    terms["loss_res1"] = _softmax_loss(outputs["fc1_voc12"], shrink8, ignore_index)
    if "fc1_voc12_res075_interp" in outputs:
        terms["loss_res075"] = _softmax_loss(outputs["fc1_voc12_res075_interp"], shrink8, ignore_index)
    if "fc1_voc12_res05" in outputs:
        terms["loss_res05"] = _softmax_loss(outputs["fc1_voc12_res05"], shrink_label(label, 16), ignore_index)
    total = sum(terms.values())
    return total, terms

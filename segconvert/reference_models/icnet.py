"""ICNet (Zhao et al., ECCV 2018): image cascade of 1, 1/2 and 1/4 resolution branches with cascade feature fusion.

Reproduces hszhao/ICNet ``evaluation/prototxt/icnet_cityscapes.prototxt`` (BatchNorm merged into conv biases,
``batchnorm=False``) and ``icnet_cityscapes_bnnomerge.prototxt`` (``BN`` layers), and via config the TF ports:
hellochick/ICNet-tensorflow (the same graph under Caffe names) and oandrienko/fast-semantic-segmentation
(``backbone="slim"``: TF-Slim resnet_v1_50 stem and units, rates 1/1/4/16, 4-conv full-resolution branch, wider
fusion). Module names and their Caffe counterparts:

``input_scale`` (``data_sub1``, a per-channel Scale), ``resize_sub2`` (``data_sub2``, Interp shrink 2),
``backbone.stem.conv{1,2,3}`` (``conv1_{1,2,3}_3x3``), ``backbone.layer{S-1}.{k-1}.conv{1,2,3}`` /
``.downsample`` (``conv{S}_{k}_1x1_reduce``/``_3x3``/``_1x1_increase``/``_1x1_proj``), ``backbone.shrink``
(``conv3_1_sub4``), ``ppm.pool{b}`` (``conv5_3_pool{b}`` + ``_interp``), ``ppm`` (``conv5_3_sum``), ``ppm_conv``
(``conv5_4_k1``), ``cff24.{upsample,conv_low,conv_high,relu}`` (``conv5_4_interp``, ``conv_sub4``,
``conv3_1_sub2_proj``, ``sub24_sum``), ``sub1.conv{1,2,3}`` (``conv{1,2,3}_sub1``), ``cff12.*`` (``sub24_sum_interp``,
``conv_sub2``, ``conv3_sub1_proj``, ``sub12_sum``), ``upsample_cls`` (``sub12_sum_interp``), ``classifier``
(``conv6_cls``), ``upsample.interp`` (``conv6_interp``). Each ``*.conv{i}`` block is ``conv`` + ``bn`` (absent when
``batchnorm=False``: the conv has a bias) + ``relu``.

Training (cascade label guidance): ``forward`` returns ``{"out", "sub24", "sub4"}``: ``classifier`` at 1/4, and
``cff12.classifier`` / ``cff24.classifier`` on the upsampled inputs of the two fusions (1/8, 1/16); feed them to
:func:`icnet_loss` (weights 1, 0.4, 0.16 as in the paper).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Resize, UpsampleToInput
from .ops import CaffePool2d, Conv2dSame, Interp, TFSamePool2d, check_choice, conv2d_same, make_norm, resize

__all__ = ["ICNet", "icnet_config", "icnet_loss", "ICNET_CAFFE_POOLS", "BACKBONES"]

BACKBONES = ("psp", "slim")
POOL_MODES = ("fixed", "tf_valid", "adaptive")
# hszhao/ICNet icnet_cityscapes.prototxt at 1025x2049 (conv5_3 is 33x65): bin -> (kernel, stride), in sum order
ICNET_CAFFE_POOLS = {6: ([8, 15], [5, 10]), 3: ([13, 25], [10, 20]), 2: ([17, 33], [16, 32]), 1: ([33, 65], [33, 65])}


def icnet_config(
    num_classes: int = 19,
    backbone: str = "psp",
    input_size: list[int] | None = None,
    batchnorm: bool = True,
    padding: str = "caffe",
    stem_widths: list[int] | None = None,
    widths: list[int] | None = None,
    out_widths: list[int] | None = None,
    blocks: list[int] | None = None,
    dilations: list[int] | None = None,
    mid_downsample: bool = True,
    ppm_bins: list[int] | None = None,
    ppm_mode: str = "fixed",
    ppm_kernels: list[list[int]] | None = None,
    ppm_strides: list[list[int]] | None = None,
    ppm_width: int = 256,
    cff_width: int = 128,
    sub1_widths: list[int] | None = None,
    sub1_strides: list[int] | None = None,
    input_scale: bool = False,
    head_act: str = "relu",
    aux: bool = False,
    bn_eps: float = 1e-5,
    norm: str = "frozen",
) -> dict[str, Any]:
    """Complete ICNet keyword arguments into a JSON-serialisable config (defaults: the Caffe Cityscapes release)."""
    check_choice("backbone", backbone, BACKBONES)
    check_choice("padding", padding, ("caffe", "tf_same"))
    check_choice("ppm_mode", ppm_mode, POOL_MODES)
    check_choice("head_act", head_act, ("relu", "relu6"))
    slim = backbone == "slim"
    bins = [int(b) for b in (ppm_bins or ([1, 2, 3, 4] if slim else [6, 3, 2, 1]))]
    if ppm_mode == "fixed":
        if ppm_kernels is None and all(b in ICNET_CAFFE_POOLS for b in bins):
            ppm_kernels = [ICNET_CAFFE_POOLS[b][0] for b in bins]
            ppm_strides = [ICNET_CAFFE_POOLS[b][1] for b in bins]
            input_size = input_size or [1025, 2049]
        if ppm_kernels is None or ppm_strides is None or len(ppm_kernels) != len(bins):
            raise ValueError("ppm_mode='fixed' needs ppm_kernels and ppm_strides, one [h, w] per bin")
    if slim and (padding != "tf_same" or not batchnorm):
        raise ValueError("backbone='slim' (TF-Slim resnet_v1) has TF SAME padding and BatchNorm")
    base = [32, 64, 128, 256] if not slim else [64, 128, 256, 512]
    widths = [int(w) for w in (widths or base)]
    return dict(
        num_classes=int(num_classes),
        backbone=backbone,
        input_size=[int(s) for s in input_size] if input_size else None,
        batchnorm=bool(batchnorm),
        padding=padding,
        stem_widths=[int(w) for w in (stem_widths or ([64] if slim else [32, 32, 64]))],
        widths=widths,
        out_widths=[int(w) for w in (out_widths or [4 * w for w in widths])],
        blocks=[int(b) for b in (blocks or [3, 4, 6, 3])],
        dilations=[int(d) for d in (dilations or ([1, 1, 4, 16] if slim else [1, 1, 2, 4]))],
        mid_downsample=bool(mid_downsample),
        ppm_bins=bins,
        ppm_mode=ppm_mode,
        ppm_kernels=[[int(v) for v in k] for k in ppm_kernels] if ppm_mode == "fixed" else None,
        ppm_strides=[[int(v) for v in s] for s in ppm_strides] if ppm_mode == "fixed" else None,
        ppm_width=int(ppm_width),
        cff_width=int(cff_width),
        sub1_widths=[int(w) for w in (sub1_widths or ([64, 64, 128, 256] if slim else [32, 32, 64]))],
        sub1_strides=[int(s) for s in (sub1_strides or ([2, 2, 2, 1] if slim else [2, 2, 2]))],
        input_scale=bool(input_scale),
        head_act=head_act,
        aux=bool(aux),
        bn_eps=float(bn_eps),
        norm=norm,
    )


class ConvBN(nn.Module):
    """``conv`` (bias only without BatchNorm) -> ``bn`` (when ``batchnorm``) -> ``relu`` (``relu``: True, False or
    ``"relu6"``).

    ``same``: ``caffe`` symmetric pad, ``tf`` TF ``padding='SAME'`` per input (asymmetric for even sizes at stride
    2), ``slim`` ``resnet_utils.conv2d_same`` (explicit symmetric pads for stride 2).
    """

    def __init__(
        self, cin: int, cout: int, k: int, cfg: dict, *, stride: int = 1, dilation: int = 1, relu: bool | str = True,
        same: str = "caffe",
    ) -> None:  # fmt: skip
        super().__init__()
        bias = not cfg["batchnorm"]
        if same == "tf" and cfg["padding"] == "tf_same":
            self.conv: nn.Module = Conv2dSame(cin, cout, k, stride, dilation=dilation, bias=bias)
        elif same == "slim":
            self.conv = conv2d_same(cin, cout, k, stride, dilation, bias=bias)
        else:
            pad = dilation * (k - 1) // 2
            self.conv = nn.Conv2d(cin, cout, k, stride, padding=pad, dilation=dilation, bias=bias)
        if cfg["batchnorm"]:
            self.bn = make_norm(cfg["norm"], cout, cfg["bn_eps"])
        if relu:
            self.relu = nn.ReLU6(inplace=True) if relu == "relu6" else nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if hasattr(self, "bn"):
            x = self.bn(x)
        return self.relu(x) if hasattr(self, "relu") else x


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (dilated) -> 1x1 + shortcut, ReLU. ``psp``: stride on the 1x1 of the first unit with a projection;
    ``slim``: stride on the 3x3 of the last unit, projection only where the width changes, else a subsampled
    identity."""

    def __init__(self, cin: int, width: int, cout: int, cfg: dict, *, stride: int, dilation: int):
        super().__init__()
        slim = cfg["backbone"] == "slim"
        s1, s2 = (1, stride) if slim else (stride, 1)
        self.conv1 = ConvBN(cin, width, 1, cfg, stride=s1)
        self.conv2 = ConvBN(width, width, 3, cfg, stride=s2, dilation=dilation, same="slim" if slim else "caffe")
        self.conv3 = ConvBN(width, cout, 1, cfg, relu=False)
        self.downsample: nn.Module | None = None
        if cin != cout:
            self.downsample = ConvBN(cin, cout, 1, cfg, stride=stride, relu=False)
        elif stride > 1:
            self.downsample = nn.MaxPool2d(1, stride)  # slim's resnet_utils.subsample
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        short = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + short)


class Backbone(nn.Module):
    """The shared ResNet-50 of the 1/2 and 1/4 branches; ``forward`` returns (1/16 feature, 1/32 feature)."""

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        slim = cfg["backbone"] == "slim"
        self.stem = nn.Module()
        cin = 3
        for i, w in enumerate(cfg["stem_widths"], 1):
            k, s = (7, 2) if slim else (3, 2 if i == 1 else 1)
            self.stem.add_module(f"conv{i}", ConvBN(cin, w, k, cfg, stride=s, same="slim" if slim else "tf"))
            cin = w
        # hellochick pads 1 and max-pools VALID: the Caffe pooling for odd sizes; slim: TF SAME
        pool = TFSamePool2d("max", 3, 2) if slim else CaffePool2d("max", 3, 2, 1)
        self.stem.add_module("pool", pool)
        for si, n in enumerate(cfg["blocks"]):
            units = []
            for u in range(n):
                if slim:
                    stride = 2 if si == 0 and u == n - 1 else 1  # only block1 keeps its stride (output stride 8)
                else:
                    stride = 2 if si == 1 and u == 0 else 1
                units.append(
                    Bottleneck(
                        cin, cfg["widths"][si], cfg["out_widths"][si], cfg, stride=stride, dilation=cfg["dilations"][si]
                    )
                )
                cin = cfg["out_widths"][si]
            self.add_module(f"layer{si + 1}", nn.Sequential(*units))
        self.out_channels = cin
        self.half_channels = cfg["out_widths"][0 if slim else 1]
        self.slim = slim
        self.shrink = Interp(shrink_factor=2) if (cfg["mid_downsample"] or not slim) else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        for i in range(1, len(self.stem._modules)):
            x = getattr(self.stem, f"conv{i}")(x)
        x = self.layer1(self.stem.pool(x))
        if self.slim:
            half = x
            x = self.layer2(self.shrink(x) if self.shrink is not None else x)
        else:
            half = x = self.layer2[0](x)
            x = self.layer2[1:](self.shrink(x))
        return half, self.layer4(self.layer3(x))


class PoolBranch(nn.Module):
    """Average pooling of one bin, resized back (align_corners) to the feature size."""

    def __init__(self, bin_size: int, mode: str, kernel=None, stride=None) -> None:
        super().__init__()
        self.bin_size, self.mode = int(bin_size), mode
        self.pool = CaffePool2d("ave", kernel, stride) if mode == "fixed" else None
        self.upsample = Resize("align_corners")

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if self.mode == "fixed":
            y = self.pool(x)
        elif self.mode == "adaptive":
            y = F.adaptive_avg_pool2d(x, self.bin_size)
        else:  # TF avg_pool VALID, kernel = stride = int(feature / bin)
            k = (max(1, int(h / self.bin_size)), max(1, int(w / self.bin_size)))
            y = F.avg_pool2d(x, k, k)
        return self.upsample(y, (h, w))


class PyramidSum(nn.Module):
    """ICNet's pyramid pooling: ``x + pool_b1 + pool_b2 + ...`` (sum in ``bins`` order, no convs)."""

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.names = [f"pool{b}" for b in cfg["ppm_bins"]]
        for i, b in enumerate(cfg["ppm_bins"]):
            k = cfg["ppm_kernels"][i] if cfg["ppm_mode"] == "fixed" else None
            s = cfg["ppm_strides"][i] if cfg["ppm_mode"] == "fixed" else None
            self.add_module(f"pool{b}", PoolBranch(b, cfg["ppm_mode"], k, s))

    def forward(self, x: Tensor) -> Tensor:
        out = x
        for name in self.names:
            out = out + getattr(self, name)(x)
        return out


class CascadeFeatureFusion(nn.Module):
    """CFF: ``upsample`` the low-resolution input (zoom 2), dilated 3x3 ``conv_low`` + 1x1 ``conv_high`` on the
    higher-resolution input, sum, ``relu``. ``classifier`` (training) scores the upsampled input."""

    def __init__(self, c_low: int, c_high: int, width: int, cfg: dict) -> None:
        super().__init__()
        self.upsample = Interp(zoom_factor=2)
        self.conv_low = ConvBN(c_low, width, 3, cfg, dilation=2, relu=False)
        self.conv_high = ConvBN(c_high, width, 1, cfg, relu=False)
        self.relu = nn.ReLU(inplace=True)
        self.classifier = nn.Conv2d(c_low, cfg["num_classes"], 1) if cfg["aux"] else None

    def forward(self, low: Tensor, high: Tensor) -> tuple[Tensor, Tensor]:
        up = self.upsample(low)
        y = self.conv_low(up)
        if y.shape[-2:] != high.shape[-2:]:  # the TF ports resize here (TF1 resize_bilinear; Caffe would fail)
            y = resize(y, high.shape[-2:], "tf1_legacy")
        return self.relu(self.conv_high(high) + y), up


class ICNet(nn.Module):
    """ICNet; eval ``forward(x)`` gives ``conv6_interp`` logits at the input size (Interp zoom 4, cropped)."""

    arch_name = "icnet"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.config = cfg = icnet_config(**kwargs)
        if cfg["input_scale"]:
            self.input_scale = nn.Parameter(torch.ones(3))
        self.resize_sub2 = Interp(shrink_factor=2)
        self.backbone = Backbone(cfg)
        self.ppm = PyramidSum(cfg)
        act = "relu6" if cfg["head_act"] == "relu6" else True  # fast-semantic-segmentation's arg_scope: ReLU6
        self.ppm_conv = ConvBN(self.backbone.out_channels, cfg["ppm_width"], 1, cfg, relu=act)
        self.cff24 = CascadeFeatureFusion(cfg["ppm_width"], self.backbone.half_channels, cfg["cff_width"], cfg)
        self.sub1 = nn.Sequential()
        cin = 3
        for i, (w, s) in enumerate(zip(cfg["sub1_widths"], cfg["sub1_strides"], strict=True), 1):
            self.sub1.add_module(f"conv{i}", ConvBN(cin, w, 3, cfg, stride=s, same="tf", relu=act))
            cin = w
        self.cff12 = CascadeFeatureFusion(cfg["cff_width"], cin, cfg["cff_width"], cfg)
        self.upsample_cls = Interp(zoom_factor=2)
        self.classifier = nn.Conv2d(cfg["cff_width"], cfg["num_classes"], 1)
        self.upsample = UpsampleToInput(4, "align_corners")
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and not m.weight.is_meta:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor]:
        size = x.shape[-2:]
        if self.config["input_scale"]:
            x = x * self.input_scale.reshape(1, -1, 1, 1)
        half, quarter = self.backbone(self.resize_sub2(x))
        q = self.ppm_conv(self.ppm(quarter))
        f24, up4 = self.cff24(q, half)
        f12, up24 = self.cff12(f24, self.sub1(x))
        logits = self.classifier(self.upsample_cls(f12))
        if not self.training:
            return self.upsample(logits, size)
        out: dict[str, Tensor] = OrderedDict(out=logits)
        if self.config["aux"]:
            out["sub24"] = self.cff12.classifier(up24)
            out["sub4"] = self.cff24.classifier(up4)
        return out


def _shrink_label(label: Tensor, size) -> Tensor:
    """Nearest label at the align_corners sample positions of a (h, w) map (exact subsampling for 2^k(h-1)+1)."""
    h, w = label.shape[-2:]
    ys = torch.round(torch.linspace(0, h - 1, size[0], device=label.device)).long()
    xs = torch.round(torch.linspace(0, w - 1, size[1], device=label.device)).long()
    return label[:, ys][:, :, xs]


def icnet_loss(
    outputs: dict[str, Tensor], label: Tensor, ignore_index: int = 255, weights=(1.0, 0.4, 0.16)
) -> tuple[Tensor, dict[str, Tensor]]:
    """Cascade label guidance: softmax cross-entropy of ``out`` / ``sub24`` / ``sub4`` against the label shrunk to
    each score map (mean over valid pixels), weighted 1, 0.4, 0.16. Returns (total, per-term dict)."""
    terms: dict[str, Tensor] = OrderedDict()
    for key, wt in zip(("out", "sub24", "sub4"), weights, strict=True):
        if key not in outputs:
            continue
        logits = outputs[key]
        target = _shrink_label(label, logits.shape[-2:])
        total = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
        terms[key] = wt * total / (target != ignore_index).sum().clamp(min=1)
    return sum(terms.values()), terms

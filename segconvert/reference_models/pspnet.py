"""PSPNet (hszhao/PSPNet Caffe release; also the TF-Slim / Keras port variants via config).

Module names and their Caffe counterparts (SPEC 4.2): ``backbone.stem.conv{1,2,3}`` (``conv1_{1,2,3}_3x3``),
``backbone.layer{S-1}.{k-1}.conv{1,2,3}`` (``conv{S}_{k}_1x1_reduce``/``_3x3``/``_1x1_increase``),
``backbone.layer{S-1}.0.downsample`` (``conv{S}_1_1x1_proj``), ``ppm.pool{n}.{pool,conv,bn,relu,upsample}``
(``conv5_3_pool{n}``, ``_conv``, ``_conv/bn``, ``_conv/relu``, ``_interp``), ``ppm`` (``conv5_3_concat``),
``head.{conv,bn,relu,dropout,classifier}`` (``conv5_4``, ``/bn``, ``/relu``, ``/dropout``, ``conv6``),
``upsample.interp`` (``conv6_interp``). ``aux`` (training only) has no Caffe counterpart.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import ConvBNReLU, Resize, UpsampleToInput
from .ops import RESIZE_MODES, CaffePool2d, TFSamePool2d, check_choice, make_norm
from .resnet import (
    BACKBONE_KEYS,
    STAGES,
    ResNet,
    backbone_config,
    checkpoint_module,
    checkpoint_selection,
    init_weights,
)

__all__ = [
    "PSPNet",
    "PyramidPooling",
    "PPMPool",
    "pspnet_config",
    "PPM_MODES",
    "HEAD_ACTS",
    "CHECKPOINT_PARTS",
    "CHECKPOINT_POLICIES",
]

PPM_MODES = ("fixed", "adaptive", "tf_same", "tf_valid")
HEAD_ACTS = ("relu", "relu6")  # activation of the pyramid-pooling convs and the 3x3 head conv
CHECKPOINT_PARTS = (*STAGES, "ppm", "head")
# "all": least memory; "light": the parts with the most activations per FLOP (the stem and layer1 at 1/2 and 1/4
# resolution, layer2 and layer3 at 1/8), leaving layer4 and the 4096->512 head conv, most of the compute, alone
CHECKPOINT_POLICIES = {"all": CHECKPOINT_PARTS, "light": ("stem", "layer1", "layer2", "layer3")}


def _act(kind: str) -> nn.Module:
    check_choice("head_act", kind, HEAD_ACTS)
    return nn.ReLU6(inplace=True) if kind == "relu6" else nn.ReLU(inplace=True)


class PPMPool(nn.Module):
    """Average pooling of one pyramid level.

    ``fixed``: Caffe AVE pooling with kernel = stride = feature//bin fixed at build time from ``input_size``
    (60/30/20/10 at 473, 90/45/30/15 at 713); other feature sizes raise (the released nets are only valid at
    their crop size: pad the input). ``adaptive``: ``adaptive_avg_pool2d(bin)``. ``tf_same``: TF ``avg_pool``
    with kernel = stride = feature//bin and SAME padding, computed per input (PSPNet-TF-Reproduce).
    ``tf_valid``: TF ``avg_pool`` with kernel = stride = feature//bin and VALID padding (windows that do not
    fit are dropped, so e.g. 21 // (21 // 6) = 7 cells), computed per input (fast-semantic-segmentation).
    """

    def __init__(self, bin_size: int, mode: str, feature_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.bin_size, self.mode = int(bin_size), mode
        self.feature_size = tuple(feature_size) if feature_size is not None else None
        self.pool: nn.Module | None = None
        if mode == "fixed":
            if self.feature_size is None:
                raise ValueError("ppm_mode='fixed' needs input_size (the crop the pooling kernels are made for)")
            kernel = tuple(max(1, f // self.bin_size) for f in self.feature_size)
            self.pool = CaffePool2d("ave", kernel, kernel)
        check_choice("ppm_mode", mode, PPM_MODES)

    def forward(self, x: Tensor) -> Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])  # Python ints: an ONNX export gets this size's exact kernels
        if self.mode == "fixed":
            if (h, w) != self.feature_size:
                raise ValueError(
                    f"PSPNet with fixed pyramid-pooling kernels expects a {self.feature_size} feature map "
                    f"(its crop size), got {(h, w)}: pad the input to the crop or use ppm_mode='adaptive'"
                )
            return self.pool(x)
        if self.mode == "adaptive":
            return F.adaptive_avg_pool2d(x, self.bin_size)
        k = (max(1, h // self.bin_size), max(1, w // self.bin_size))
        if self.mode == "tf_valid":
            return F.avg_pool2d(x, k, k)
        return TFSamePool2d("avg", k, k)(x)

    def extra_repr(self) -> str:
        return f"bin={self.bin_size}, mode={self.mode}"


class PPMBranch(nn.Module):
    """``pool`` -> 1x1 ``conv`` -> ``bn`` -> ``relu`` (ReLU or ReLU6) -> ``upsample`` back to the feature size."""

    def __init__(
        self, pool: PPMPool, cin: int, cout: int, norm: str, eps: float, resize: str, act: str = "relu"
    ) -> None:
        super().__init__()
        self.pool = pool
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = make_norm(norm, cout, eps)
        self.relu = _act(act)
        self.upsample = Resize(resize)

    def pooled(self, x: Tensor) -> Tensor:
        """The branch before its ``upsample`` (at the pooled size)."""
        return self.relu(self.bn(self.conv(self.pool(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.upsample(self.pooled(x), x.shape[-2:])


class PyramidPooling(nn.Module):
    """Pyramid pooling module; output = concat([x] + branches in ``bins`` order) (Caffe: x, 6, 3, 2, 1)."""

    def __init__(
        self,
        in_channels: int,
        width: int,
        bins: list[int],
        mode: str,
        feature_size: tuple[int, int] | None,
        norm: str,
        eps: float,
        resize: str,
        act: str = "relu",
    ) -> None:
        super().__init__()
        if len(set(bins)) != len(bins):
            raise ValueError(f"ppm_bins must be distinct, got {bins}")
        self.names = [f"pool{b}" for b in bins]
        for name, b in zip(self.names, bins, strict=True):
            branch = PPMBranch(PPMPool(b, mode, feature_size), in_channels, width, norm, eps, resize, act)
            self.add_module(name, branch)
        self.out_channels = in_channels + width * len(bins)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, *(getattr(self, name)(x) for name in self.names)], dim=1)


class PSPHead(nn.Module):
    """``conv`` 3x3 -> ``bn`` -> ``relu`` (ReLU or ReLU6) -> ``dropout`` -> ``classifier`` 1x1 (with bias)."""

    def __init__(
        self, cin: int, width: int, num_classes: int, dropout: float, norm: str, eps: float, act: str = "relu"
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, width, 3, padding=1, bias=False)
        self.bn = make_norm(norm, width, eps)
        self.relu = _act(act)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.relu(self.bn(self.conv(x)))))


def pspnet_config(
    num_classes: int = 150,
    depth: int = 50,
    input_size: list[int] | None = None,
    ppm_bins: list[int] | None = None,
    ppm_mode: str = "fixed",
    ppm_width: int = 512,
    head_width: int = 512,
    dropout: float = 0.1,
    resize: str = "align_corners",
    aux: bool = False,
    aux_width: int = 256,
    head_act: str = "relu",
    stem: str = "deep",
    output_stride: int = 8,
    **backbone: Any,
) -> dict[str, Any]:
    """Complete PSPNet keyword arguments into a JSON-serialisable config.

    ``backbone``: the other :func:`~.resnet.resnet_config` keys (``stride_in``, ``widths``, ``dilations``,
    ``bn_eps``, ``norm``, ...).
    """
    bb = backbone_config(depth=depth, stem=stem, output_stride=output_stride, **backbone)
    check_choice("ppm_mode", ppm_mode, PPM_MODES)
    check_choice("resize", resize, RESIZE_MODES)
    check_choice("head_act", head_act, HEAD_ACTS)
    if input_size is not None:
        input_size = [int(s) for s in ([input_size] * 2 if isinstance(input_size, int) else input_size)]
    if ppm_mode == "fixed" and input_size is None:
        raise ValueError("ppm_mode='fixed' needs input_size (e.g. [473, 473]); or use ppm_mode='adaptive'")
    return dict(
        num_classes=int(num_classes),
        input_size=input_size,
        ppm_bins=[int(b) for b in (ppm_bins or [6, 3, 2, 1])],
        ppm_mode=ppm_mode,
        ppm_width=int(ppm_width),
        head_width=int(head_width),
        dropout=float(dropout),
        resize=resize,
        aux=bool(aux),
        aux_width=int(aux_width),
        head_act=head_act,
        **bb,
    )


class PSPNet(nn.Module):
    """PSPNet: dilated ResNet (output stride 8) + pyramid pooling + 3x3 head + 1x1 classifier.

    Eval ``forward(x)`` returns ``conv6_interp`` logits at input resolution as a tensor (Caffe: Interp zoom 8,
    exact for 473/713; cropped to HxW otherwise). Training ``forward`` returns ``{"out": logits}`` plus
    ``"aux"`` (upsampled stage-4 auxiliary logits) when ``aux=True``.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.config = cfg = pspnet_config(**kwargs)
        self.backbone = ResNet(**{k: cfg[k] for k in BACKBONE_KEYS if k in cfg})
        feat = None
        if cfg["input_size"] is not None:
            feat = self.backbone.feature_size(*cfg["input_size"])
        self.ppm = PyramidPooling(
            self.backbone.out_channels,
            cfg["ppm_width"],
            cfg["ppm_bins"],
            cfg["ppm_mode"],
            feat,
            cfg["norm"],
            cfg["bn_eps"],
            cfg["resize"],
            cfg["head_act"],
        )
        self.head = PSPHead(
            self.ppm.out_channels,
            cfg["head_width"],
            cfg["num_classes"],
            cfg["dropout"],
            cfg["norm"],
            cfg["bn_eps"],
            cfg["head_act"],
        )
        self.upsample = UpsampleToInput(cfg["output_stride"], cfg["resize"])
        self.aux: nn.Module | None = None
        if cfg["aux"]:
            self.aux = nn.Sequential(
                OrderedDict(
                    block=ConvBNReLU(cfg["out_widths"][2], cfg["aux_width"], 3, cfg["norm"], cfg["bn_eps"]),
                    dropout=nn.Dropout(cfg["dropout"]),
                    classifier=nn.Conv2d(cfg["aux_width"], cfg["num_classes"], 1),
                )
            )
        for m in (self.ppm, self.head, self.aux):
            if m is not None:
                init_weights(m)
        self.grad_checkpointing = False
        self.checkpointed: frozenset[str] = frozenset()
        self.train_upsample = True  # False: training logits stay at 1/8 (labels shrunk instead; not in config)

    def set_grad_checkpointing(self, enable: bool | str | Iterable[str] = True) -> None:
        """Checkpoint parts in training forwards: True / ``"all"`` (the backbone stages, the pyramid pooling and
        the head), a policy of :data:`CHECKPOINT_POLICIES`, names among ``stem``, ``layer1``..``layer4``,
        ``ppm``, ``head``, or False."""
        if isinstance(enable, str):
            if enable not in CHECKPOINT_POLICIES:
                raise ValueError(f"unknown checkpointing policy {enable!r} (known: {', '.join(CHECKPOINT_POLICIES)})")
            enable = CHECKPOINT_POLICIES[enable]
        self.checkpointed = checkpoint_selection(enable, CHECKPOINT_PARTS, "PSPNet part")
        self.grad_checkpointing = bool(self.checkpointed)
        self.backbone.set_grad_checkpointing(self.checkpointed & set(STAGES))

    @property
    def arch_name(self) -> str:
        return f"pspnet{self.config['depth']}"

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor]:
        size = x.shape[-2:]
        bb = self.backbone
        c3 = bb.run_stage("layer3", bb.run_stage("layer2", bb.run_stage("layer1", bb.run_stage("stem", x))))
        c4 = bb.run_stage("layer4", c3)
        aux_in = c3 if self.training and self.aux is not None else None
        del c3  # each activation dropped once read: in eval PSPNet50 at 473 peaks ~100 MB lower
        ppm = checkpoint_module(self.ppm, c4) if "ppm" in self.checkpointed else self.ppm(c4)
        del c4
        low = checkpoint_module(self.head, ppm) if "head" in self.checkpointed else self.head(ppm)
        del ppm
        if not self.training:
            return self.upsample(low, size)
        up = self.train_upsample
        result: dict[str, Tensor] = OrderedDict(out=self.upsample(low, size) if up else low)
        if self.aux is not None:
            aux = self.aux(aux_in)
            result["aux"] = self.upsample(aux, size) if up else aux
        return result

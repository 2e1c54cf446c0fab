"""Bottleneck ResNet backbones as used by DeepLab-v2 (MSRA Caffe), PSPNet (deep stem) and TF-Slim resnet_v1.

State-dict keys follow torchvision: ``stem.conv1.weight``, ``stem.bn1.running_mean``,
``layer{1-4}.{i}.conv{1,2,3}.weight``, ``layer{1-4}.{i}.bn{1,2,3}.*``, ``layer{S}.0.downsample.{0,1}.*``.
Every ReLU is its own module (``relu1``, ``relu2``, ``relu``) so forward hooks see each activation once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .ops import (
    NORM_KINDS,
    CaffePool2d,
    Conv2dSame,
    TFSamePool2d,
    caffe_pool_out,
    check_choice,
    conv2d_same,
    make_norm,
)

__all__ = [
    "BACKBONE_KEYS",
    "ResNet",
    "Bottleneck",
    "Stem",
    "STAGE_BLOCKS",
    "backbone_config",
    "STAGES",
    "checkpoint_module",
    "checkpoint_selection",
    "resolve_strides",
    "resnet_config",
]

STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
STEMS = ("7x7", "deep")
STRIDE_IN = ("1x1", "3x3", "3x3_last")
PADDINGS = ("caffe", "tf_same")


def resolve_strides(stride_in: str, output_stride: int) -> tuple[list[int], list[int]]:
    """Per-stage (strides, dilations) for a given output stride.

    Caffe style (``1x1``/``3x3``: stride in the first unit, nominal strides 1,2,2,2): once the output stride is
    reached, a stage keeps stride 1 and all its units use the accumulated dilation (DeepLab: 1,1,2,4).
    Slim style (``3x3_last``: stride in the last unit, nominal 2,2,2,1): as ``stack_blocks_dense`` -- the
    rate grows only after the unit whose stride was removed, so OS8 gives dilations 1,1,2,4 and OS16 1,1,1,2.
    """
    if output_stride not in (4, 8, 16, 32):
        raise ValueError(f"output_stride must be 4, 8, 16 or 32, got {output_stride}")
    slim = stride_in == "3x3_last"
    nominal = [2, 2, 2, 1] if slim else [1, 2, 2, 2]
    current, rate = 4, 1
    strides, dilations = [], []
    for s in nominal:
        if current >= output_stride:
            if slim:
                dilations.append(rate)
                rate *= s
            else:
                rate *= s
                dilations.append(rate)
            strides.append(1)
        else:
            current *= s
            strides.append(s)
            dilations.append(rate)
    return strides, dilations


BACKBONE_KEYS = (
    "depth",
    "stem",
    "stride_in",
    "padding",
    "stem_widths",
    "widths",
    "out_widths",
    "output_stride",
    "strides",
    "dilations",
    "bn_eps",
    "norm",
    "in_channels",
)


def backbone_config(**kwargs: Any) -> dict[str, Any]:
    """:func:`resnet_config` for a segmentation model's backbone: the same keys without ``in_channels`` (RGB/BGR)."""
    if "in_channels" in kwargs:
        raise TypeError("a segmentation backbone takes 3-channel images; in_channels is not an option")
    cfg = resnet_config(**kwargs)
    cfg.pop("in_channels")
    return cfg


def resnet_config(
    depth: int = 50,
    stem: str = "7x7",
    stride_in: str = "1x1",
    padding: str = "caffe",
    stem_widths: list[int] | None = None,
    widths: list[int] | None = None,
    out_widths: list[int] | None = None,
    output_stride: int = 32,
    strides: list[int] | None = None,
    dilations: list[int] | None = None,
    bn_eps: float = 1e-5,
    norm: str = "frozen",
    in_channels: int = 3,
) -> dict[str, Any]:
    """Validate and complete backbone keyword arguments into a JSON-serialisable dict."""
    check_choice("depth", depth, sorted(STAGE_BLOCKS))
    check_choice("stem", stem, STEMS)
    check_choice("stride_in", stride_in, STRIDE_IN)
    check_choice("padding", padding, PADDINGS)
    check_choice("norm", norm, NORM_KINDS)
    if stem_widths is None:
        stem_widths = [64] if stem == "7x7" else [64, 64, 128]
    stem_widths = [int(w) for w in stem_widths]
    if len(stem_widths) != (1 if stem == "7x7" else 3):
        raise ValueError(f"stem {stem!r} needs {1 if stem == '7x7' else 3} stem_widths, got {stem_widths}")
    widths = [int(w) for w in (widths or [64, 128, 256, 512])]
    out_widths = [int(w) for w in (out_widths or [4 * w for w in widths])]
    if len(widths) != 4 or len(out_widths) != 4:
        raise ValueError("widths and out_widths need 4 values (one per stage)")
    d_strides, d_dilations = resolve_strides(stride_in, int(output_stride))
    strides = [int(s) for s in (strides if strides is not None else d_strides)]
    dilations = [int(d) for d in (dilations if dilations is not None else d_dilations)]
    if len(strides) != 4 or len(dilations) != 4:
        raise ValueError("strides and dilations need 4 values (one per stage)")
    os_ = 4
    for s in strides:
        os_ *= s
    return dict(
        depth=int(depth),
        stem=stem,
        stride_in=stride_in,
        padding=padding,
        stem_widths=stem_widths,
        widths=widths,
        out_widths=out_widths,
        output_stride=os_,
        strides=strides,
        dilations=dilations,
        bn_eps=float(bn_eps),
        norm=norm,
        in_channels=int(in_channels),
    )


class Stem(nn.Module):
    """``7x7``: conv1 7x7/2 + BN + ReLU; ``deep``: three 3x3 convs (first /2) each + BN + ReLU; then max-pool
    3x3/2 (Caffe ceil with pad 1, or TF SAME)."""

    def __init__(self, kind: str, widths: list[int], padding: str, norm: str, eps: float, in_channels: int = 3):
        super().__init__()
        self.kind = kind
        if kind == "7x7":
            specs = [(in_channels, widths[0], 7, 2)]
        else:
            specs = [(in_channels, widths[0], 3, 2), (widths[0], widths[1], 3, 1), (widths[1], widths[2], 3, 1)]
        for i, (cin, cout, k, s) in enumerate(specs, 1):
            if padding == "caffe":
                conv: nn.Module = nn.Conv2d(cin, cout, k, s, padding=k // 2, bias=False)
            elif kind == "7x7":  # TF-Slim conv2d_same (explicit symmetric pads)
                conv = conv2d_same(cin, cout, k, s)
            else:  # Keras padding='same'
                conv = Conv2dSame(cin, cout, k, s, bias=False)
            self.add_module(f"conv{i}", conv)
            self.add_module(f"bn{i}", make_norm(norm, cout, eps))
            self.add_module(f"relu{i}", nn.ReLU(inplace=True))
        self.num_convs = len(specs)
        self.out_channels = specs[-1][1]
        self.pool = CaffePool2d("max", 3, 2, 1) if padding == "caffe" else TFSamePool2d("max", 3, 2)

    def forward(self, x: Tensor) -> Tensor:
        for i in range(1, self.num_convs + 1):
            x = getattr(self, f"relu{i}")(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
        return self.pool(x)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 -> 1x1 expand, each + BN (ReLU on the first two); residual add; ReLU.

    ``stride_at`` puts the stride on ``conv1`` (MSRA/DeepLab/PSPNet50) or ``conv2`` (PSPNet101/torchvision/
    slim). ``shortcut`` is ``"proj"`` (1x1 conv + BN, strided), ``"identity"`` or ``"subsample"``
    (slim: ``x[:, :, ::s, ::s]`` as a 1x1 max-pool).
    """

    def __init__(
        self,
        in_channels: int,
        width: int,
        out_channels: int,
        *,
        stride: int = 1,
        stride_at: str = "1x1",
        dilation: int = 1,
        shortcut: str = "proj",
        padding: str = "caffe",
        norm: str = "frozen",
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        s1, s2 = (stride, 1) if stride_at == "1x1" else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, width, 1, s1, bias=False)
        self.bn1 = make_norm(norm, width, eps)
        self.relu1 = nn.ReLU(inplace=True)
        if padding == "caffe":
            self.conv2 = nn.Conv2d(width, width, 3, s2, padding=dilation, dilation=dilation, bias=False)
        else:
            self.conv2 = conv2d_same(width, width, 3, s2, dilation)
        self.bn2 = make_norm(norm, width, eps)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = make_norm(norm, out_channels, eps)
        if shortcut == "proj":
            self.downsample: nn.Module | None = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), make_norm(norm, out_channels, eps)
            )
        elif shortcut == "subsample":
            self.downsample = nn.MaxPool2d(1, stride) if stride > 1 else None
        elif shortcut == "identity":
            if stride != 1 or in_channels != out_channels:
                raise ValueError("identity shortcut needs stride 1 and equal channels")
            self.downsample = None
        else:
            raise ValueError(f"unknown shortcut {shortcut!r}")
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


@contextmanager
def _keep_bn_stats(module: nn.Module) -> Iterator[None]:
    """Restore every BN running statistic of ``module`` on exit (the recompute must not update them again)."""
    saved = [
        (m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, mean, var, count in saved:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


def _contexts(module: nn.Module) -> tuple[Any, Any]:
    return nullcontext(), _keep_bn_stats(module)


def checkpoint_module(module: nn.Module, *args: Tensor) -> Tensor:
    """``module(*args)`` with activation checkpointing (non-reentrant) when gradients are recorded.

    The backward recompute runs ``module`` again; BN layers in training mode would then count the batch twice
    in their running statistics, so those are restored after the recompute (frozen BN has none to update).
    Under ``torch.compile`` the region is marked for the compiler's own recompute, which keeps the statistics'
    update in the forward graph only.
    """
    if not torch.is_grad_enabled() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return module(*args)
    if torch.compiler.is_compiling():  # the compiled graph updates the statistics once; it recomputes the rest
        return checkpoint(module, *args, use_reentrant=False)
    return checkpoint(module, *args, use_reentrant=False, context_fn=partial(_contexts, module))


STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")


def checkpoint_selection(enable: bool | Iterable[str], known: Sequence[str], what: str) -> frozenset[str]:
    """``enable`` (True: all of ``known``, False: none, or names) as a set, refusing names not in ``known``."""
    if isinstance(enable, bool):
        return frozenset(known) if enable else frozenset()
    names = frozenset(enable)
    unknown = sorted(names - set(known))
    if unknown:
        raise ValueError(f"unknown {what} to checkpoint: {', '.join(unknown)} (known: {', '.join(known)})")
    return names


def init_weights(module: nn.Module) -> None:
    """He-normal (fan_out) convolutions, zero biases, unit BN scale (torchvision's defaults)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and not m.weight.is_meta:
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ResNet(nn.Module):
    """Bottleneck ResNet backbone (no classifier unless ``num_classes > 0``).

    ``forward`` returns the ``layer4`` feature map (or global-pooled 1x1-conv logits with ``num_classes``),
    ``forward_features`` all stage outputs. See :func:`resnet_config` for the keyword arguments.
    """

    arch_name = "resnet"

    def __init__(self, num_classes: int = 0, **kwargs: Any) -> None:
        super().__init__()
        cfg = resnet_config(**kwargs)
        self.config = {**cfg, "num_classes": int(num_classes)}
        self.stem = Stem(
            cfg["stem"], cfg["stem_widths"], cfg["padding"], cfg["norm"], cfg["bn_eps"], cfg["in_channels"]
        )
        in_ch = self.stem.out_channels
        blocks = STAGE_BLOCKS[cfg["depth"]]
        last_stride = cfg["stride_in"] == "3x3_last"
        for si in range(4):
            stride, dil = cfg["strides"][si], cfg["dilations"][si]
            width, out_ch = cfg["widths"][si], cfg["out_widths"][si]
            units = []
            for u in range(blocks[si]):
                if last_stride:
                    s = stride if u == blocks[si] - 1 else 1
                    shortcut = "proj" if in_ch != out_ch else ("subsample" if s > 1 else "identity")
                    stride_at = "3x3"
                else:
                    s = stride if u == 0 else 1
                    shortcut = "proj" if u == 0 else "identity"
                    stride_at = "1x1" if cfg["stride_in"] == "1x1" else "3x3"
                units.append(
                    Bottleneck(
                        in_ch,
                        width,
                        out_ch,
                        stride=s,
                        stride_at=stride_at,
                        dilation=dil,
                        shortcut=shortcut,
                        padding=cfg["padding"],
                        norm=cfg["norm"],
                        eps=cfg["bn_eps"],
                    )
                )
                in_ch = out_ch
            self.add_module(f"layer{si + 1}", nn.Sequential(*units))
        self.out_channels = in_ch
        self.fc = nn.Conv2d(in_ch, num_classes, 1) if num_classes > 0 else None
        self.grad_checkpointing = False
        self.checkpointed: frozenset[str] = frozenset()
        init_weights(self)

    def set_grad_checkpointing(self, enable: bool | Iterable[str] = True) -> None:
        """Checkpoint stages in training forwards (activations recomputed in backward): True for the stem and
        every stage, False for none, or the names among ``stem``, ``layer1``..``layer4``."""
        self.checkpointed = checkpoint_selection(enable, STAGES, "backbone stage")
        self.grad_checkpointing = bool(self.checkpointed)

    def run_stage(self, name: str, x: Tensor) -> Tensor:
        """``stem`` or ``layer{1-4}`` on ``x``, checkpointed when the stage is selected."""
        module = getattr(self, name)
        return checkpoint_module(module, x) if name in self.checkpointed else module(x)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """Outputs of ``stem`` (after the max-pool) and ``layer1``..``layer4``."""
        feats: dict[str, Tensor] = OrderedDict()
        x = feats["stem"] = self.run_stage("stem", x)
        for i in range(1, 5):
            x = feats[f"layer{i}"] = self.run_stage(f"layer{i}", x)
        return feats

    def forward(self, x: Tensor) -> Tensor:
        for name in ("stem", "layer1", "layer2", "layer3", "layer4"):
            x = self.run_stage(name, x)
        if self.fc is not None:
            x = self.fc(x.mean((2, 3), keepdim=True))
        return x

    def feature_size(self, h: int, w: int, stage: int = 4) -> tuple[int, int]:
        """Spatial size of ``layer{stage}`` (0 = stem) for an HxW input."""

        def one(n: int) -> int:
            n = (n - 1) // 2 + 1  # first stem conv, stride 2 (Caffe and TF give the same size)
            n = caffe_pool_out(n, 3, 2, 1) if self.config["padding"] == "caffe" else -(-n // 2)
            for s in self.config["strides"][:stage]:
                n = (n - 1) // s + 1
            return n

        return one(h), one(w)

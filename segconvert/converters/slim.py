"""TF-Slim resnet_v1_{50,101,152} checkpoints (and the PSPNet-TF-Reproduce head) -> reference models.

Backbone (SPEC 5.1): ``<scope>/conv1`` -> ``stem.conv1``/``stem.bn1``; ``<scope>/block{b}/unit_{u}/
bottleneck_v1/{conv1,conv2,conv3,shortcut}`` -> ``layer{b}.{u-1}.{conv1..3,bn1..3,downsample.0/1}``. The model
is built with ``stem="7x7"``, ``stride_in="3x3_last"`` (stride in the 3x3 of the last unit, identity
shortcut subsampled), ``padding="tf_same"`` (slim's ``conv2d_same`` explicit pads, SAME max-pool) and slim's
output-stride rule (atrous rates as ``stack_blocks_dense``). Kernels HWIO -> OIHW; BN eps is not stored in a
checkpoint: slim's ``resnet_arg_scope`` uses 1e-5 (override with ``bn_eps``). Input: RGB minus
(123.68, 116.78, 103.94), no std.

PSPNet-TF-Reproduce (holyseven) head: ``<scope>/psp/pool{6,3,2,1}`` -> ``ppm.pool{r}.conv/bn`` (TF SAME
average pooling, TF1 legacy resize), ``<scope>/block4/unit_4`` -> ``head.conv/bn``, ``<scope>/logits`` ->
``head.classifier``; its training-only aux branch is dropped.

An ImageNet checkpoint converts into the ``resnet`` backbone; ``logits``, ``global_step``, ``mean_rgb`` and
optimizer slots are reported as dropped.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Mapping

import numpy as np

from segconvert.errors import ConversionError
from segconvert.formats.tf_checkpoint import TFCheckpoint, open_checkpoint
from segconvert.reference_models.registry import get_config
from segconvert.reference_models.resnet import STAGE_BLOCKS

from ._tf_common import OPTIMIZER_SLOT_SUFFIXES, Filler, TFConversion

__all__ = ["convert_slim", "slim_tap_map", "SLIM_PREPROCESSING", "SLIM_ARCHS"]

SLIM_PREPROCESSING = {"channel_order": "RGB", "mean": [123.68, 116.78, 103.94], "std": None, "scale": 1.0}
SLIM_ARCHS = ("auto", "resnet", "pspnet50", "pspnet101")
PSP_BINS = [6, 3, 2, 1]  # holyseven's order, also the concat order
_BN = ("gamma", "beta", "moving_mean", "moving_variance")
_UNIT = re.compile(r"^(?P<scope>.+)/block(?P<b>[1-4])/unit_(?P<u>\d+)/bottleneck_v1/")


def _detect_scope(names: list[str], scope: str | None) -> str:
    if scope is not None:
        if f"{scope}/conv1/weights" not in names:
            raise ConversionError(f"no '{scope}/conv1/weights' in the checkpoint", key=scope)
        return scope
    found = sorted({m.group("scope") for n in names if (m := _UNIT.match(n))})
    found = [s for s in found if f"{s}/conv1/weights" in names]
    if not found:
        raise ConversionError("no TF-Slim resnet_v1 variables (<scope>/block1/unit_1/bottleneck_v1/...) found")
    if len(found) > 1:
        raise ConversionError(f"several resnet scopes {found}: choose one with scope=")
    return found[0]


def _units(names: list[str], scope: str) -> tuple[int, ...]:
    top: dict[int, int] = defaultdict(int)
    for n in names:
        m = _UNIT.match(n)
        if m and m.group("scope") == scope:
            top[int(m.group("b"))] = max(top[int(m.group("b"))], int(m.group("u")))
    return tuple(top[b] for b in range(1, 5))


def slim_tap_map(scope: str, units: tuple[int, ...], prefix: str = "", psp: bool = False) -> dict[str, str]:
    """TF end-point names (as in the fixtures' outputs.npz) -> reference-model module paths."""
    taps = {f"{scope}/conv1": f"{prefix}stem.relu1", f"{scope}/pool1": f"{prefix}stem.pool"}
    for b, n in enumerate(units, 1):
        for u in range(1, n + 1):
            unit, mod = f"{scope}/block{b}/unit_{u}/bottleneck_v1", f"{prefix}layer{b}.{u - 1}"
            taps[unit] = mod
            taps[f"{unit}/conv1"] = f"{mod}.relu1"
            taps[f"{unit}/conv2"] = f"{mod}.relu2"
            taps[f"{unit}/conv3"] = f"{mod}.bn3"
            taps[f"{unit}/shortcut"] = f"{mod}.downsample"
        taps[f"{scope}/block{b}"] = f"{prefix}layer{b}"
    taps["net"] = f"{prefix}layer4"
    if psp:
        for r in PSP_BINS:
            taps[f"{scope}/psp/pool{r}/avg_pool"] = f"ppm.pool{r}.pool"
            taps[f"{scope}/psp/pool{r}"] = f"ppm.pool{r}.relu"
            taps[f"{scope}/psp/pool{r}/resize"] = f"ppm.pool{r}.upsample"
        taps[f"{scope}/psp/concat"] = "ppm"
        taps[f"{scope}/block4/unit_4"] = "head.relu"
        taps[f"{scope}/logits"] = "head.classifier"
        taps[f"{scope}/up_sample"] = ""
    return taps


def _is_checkpoint(obj: object) -> bool:
    """A TFCheckpoint, or any mapping name -> array that also offers ``shape(name)``."""
    return isinstance(obj, TFCheckpoint) or (hasattr(obj, "keys") and hasattr(obj, "shape"))


def convert_slim(
    checkpoint: TFCheckpoint | Mapping[str, np.ndarray] | str | os.PathLike,
    *,
    arch: str = "auto",
    output_stride: int | None = None,
    bn_eps: float = 1e-5,
    scope: str | None = None,
    classifier: bool = False,
) -> TFConversion:
    """Map a TF-Slim checkpoint onto ``resnet`` (backbone) or ``pspnet50/101`` (holyseven head).

    ``arch="auto"`` picks ``pspnet{depth}`` when ``<scope>/psp`` exists, else ``resnet``. ``output_stride``
    defaults to 8 for PSPNet and 32 (the ImageNet geometry) for the backbone. ``classifier=True`` keeps an
    ImageNet ``logits`` layer as ``fc`` instead of dropping it.
    """
    if arch not in SLIM_ARCHS:
        raise ConversionError(f"arch must be one of {SLIM_ARCHS} for a TF-Slim checkpoint, got {arch!r}")
    ckpt = checkpoint if _is_checkpoint(checkpoint) else open_checkpoint(checkpoint)
    file = getattr(ckpt, "files", ["<checkpoint>"])[0]
    names = list(ckpt.keys())
    scope = _detect_scope(names, scope)
    units = _units(names, scope)
    depth = next((d for d, u in STAGE_BLOCKS.items() if u == units), None)
    if depth is None:
        raise ConversionError(f"units per block {units} match no resnet_v1 depth", file=file, key=scope)

    def shape(name: str) -> tuple[int, ...]:
        if name not in ckpt:
            raise ConversionError("expected tensor is missing", file=file, key=name)
        return ckpt.shape(name)

    def get(name: str) -> np.ndarray:
        shape(name)
        return ckpt[name]

    stem_w = shape(f"{scope}/conv1/weights")
    widths = [shape(f"{scope}/block{b}/unit_1/bottleneck_v1/conv1/weights")[3] for b in range(1, 5)]
    out_widths = [shape(f"{scope}/block{b}/unit_1/bottleneck_v1/conv3/weights")[3] for b in range(1, 5)]
    has_psp = any(n.startswith(f"{scope}/psp/") for n in names)
    requested = arch
    if arch == "auto":
        arch = f"pspnet{depth}" if has_psp else "resnet"
    if arch.startswith("pspnet"):
        if not has_psp:
            raise ConversionError(f"{arch} needs the <scope>/psp head; this checkpoint has none", file=file)
        if arch != f"pspnet{depth}":
            raise ConversionError(f"checkpoint is resnet_v1_{depth}, not {arch}", file=file)
    backbone = dict(
        depth=depth,
        stem="7x7",
        stride_in="3x3_last",
        padding="tf_same",
        stem_widths=[stem_w[3]],
        widths=widths,
        out_widths=out_widths,
        bn_eps=float(bn_eps),
    )
    logits = f"{scope}/logits/weights"
    if arch == "resnet":
        num_classes = shape(logits)[3] if classifier and logits in names else 0
        if classifier and logits not in names:
            raise ConversionError("classifier=True but the checkpoint has no logits", file=file)
        config = get_config(
            "resnet", **backbone, in_channels=stem_w[2], output_stride=output_stride or 32, num_classes=num_classes
        )
        prefix = ""
    else:
        config = get_config(
            arch,
            **backbone,
            output_stride=output_stride or 8,
            num_classes=shape(logits)[3],
            input_size=None,
            ppm_bins=PSP_BINS,
            ppm_mode="tf_same",
            ppm_width=shape(f"{scope}/psp/pool{PSP_BINS[0]}/weights")[3],
            head_width=shape(f"{scope}/block4/unit_4/weights")[3],
            resize="tf1_legacy",
        )
        prefix = "backbone."

    f = Filler(arch, config, file)

    def conv_bn(src: str, conv: str, bn: str) -> None:
        f.conv(conv, get(f"{src}/weights"), f"{src}/weights")
        f.bn(
            bn,
            {k: (f"{src}/BatchNorm/{k}", ckpt[f"{src}/BatchNorm/{k}"]) for k in _BN if f"{src}/BatchNorm/{k}" in ckpt},
        )

    conv_bn(f"{scope}/conv1", f"{prefix}stem.conv1", f"{prefix}stem.bn1")
    for b, n in enumerate(units, 1):
        for u in range(1, n + 1):
            src, dst = f"{scope}/block{b}/unit_{u}/bottleneck_v1", f"{prefix}layer{b}.{u - 1}"
            for k in (1, 2, 3):
                conv_bn(f"{src}/conv{k}", f"{dst}.conv{k}", f"{dst}.bn{k}")
            if f"{src}/shortcut/weights" in ckpt:
                conv_bn(f"{src}/shortcut", f"{dst}.downsample.0", f"{dst}.downsample.1")
    if arch == "resnet" and num_classes:
        f.conv("fc", get(logits), logits, get(f"{scope}/logits/biases"), f"{scope}/logits/biases")
    if arch.startswith("pspnet"):
        for r in PSP_BINS:
            conv_bn(f"{scope}/psp/pool{r}", f"ppm.pool{r}.conv", f"ppm.pool{r}.bn")
        conv_bn(f"{scope}/block4/unit_4", "head.conv", "head.bn")
        f.conv("head.classifier", get(logits), logits, get(f"{scope}/logits/biases"), f"{scope}/logits/biases")
    state = f.finish()

    dropped, unknown = [], []
    aux_unit = f"{scope}/block3/unit_{units[2] + 1}/"
    for n in names:
        if n in f.used:
            continue
        if n == "global_step" or n.endswith("/global_step"):
            dropped.append((n, "training step counter"))
        elif n == f"{scope}/mean_rgb":
            dropped.append((n, "mean pixel, recorded as preprocessing"))
        elif n.endswith(OPTIMIZER_SLOT_SUFFIXES) or n in ("beta1_power", "beta2_power"):
            dropped.append((n, "optimizer state"))
        elif n.startswith((aux_unit, f"{scope}/aux_logits/")):
            dropped.append((n, "training-only auxiliary branch"))
        elif arch == "resnet" and n.startswith(f"{scope}/logits/"):
            dropped.append((n, "classifier, not part of the backbone"))
        elif requested == "resnet":
            dropped.append((n, "not part of the backbone"))
        else:
            unknown.append(n)
    if unknown:
        hint = " (arch='resnet' converts the backbone alone)"
        raise ConversionError(
            f"{len(unknown)} checkpoint tensors have no place in {arch}: {unknown[:8]}{hint}", file=file
        )
    notes = f.notes + [f"BN eps {bn_eps:g} (TF-Slim resnet_arg_scope default; not stored in checkpoints)"]
    if "mean_rgb" in " ".join(n for n, _ in dropped):
        mean = np.asarray(ckpt[f"{scope}/mean_rgb"], dtype=np.float64).round(4).tolist()
        notes.append(f"checkpoint mean_rgb {mean}")
    return TFConversion(
        arch=arch,
        config=config,
        state_dict=state,
        sources=f.sources,
        dropped=dropped,
        tap_map=slim_tap_map(scope, units, prefix, psp=arch.startswith("pspnet")),
        preprocessing=dict(SLIM_PREPROCESSING),
        source_format=f"tf-{getattr(ckpt, 'format', '?')}",
        notes=notes,
    )

"""TF-Slim resnet_v1_{50,101,152} checkpoints and the PSPNet heads trained on them -> reference models.

Backbone (SPEC 5.1): ``<scope>/conv1`` -> ``stem.conv1``/``stem.bn1``; ``<scope>/block{b}/unit_{u}/
bottleneck_v1/{conv1,conv2,conv3,shortcut}`` -> ``layer{b}.{u-1}.{conv1..3,bn1..3,downsample.0/1}``. The model
is built with ``stem="7x7"``, ``padding="tf_same"`` (slim's ``conv2d_same`` explicit pads, SAME max-pool) and,
by default, slim's ``stride_in="3x3_last"`` (stride in the 3x3 of the last unit, identity shortcut
subsampled) with slim's output-stride rule (atrous rates as ``stack_blocks_dense``). Kernels HWIO -> OIHW; BN
eps is not stored in a checkpoint: slim's ``resnet_arg_scope`` uses 1e-5 (override with ``bn_eps``). Input: RGB
minus (123.68, 116.78, 103.94), no std.

PSPNet heads, detected from the variable names (``head`` in the result):

* ``psp`` -- holyseven/PSPNet-TF-Reproduce ``model/pspnet_mg.py``: ``<scope>/psp/pool{6,3,2,1}`` ->
  ``ppm.pool{r}.conv/bn`` (TF SAME average pooling with k = feature // bin, conv, BN, ReLU, TF1 legacy resize),
  ``<scope>/block4/unit_4`` -> ``head.conv/bn``, ``<scope>/logits`` -> ``head.classifier``; its training-only
  aux branch (``block3/unit_{n+1}``, ``aux_logits``) is dropped. That project strides the **first** unit of
  block2 (3x3 conv and projection shortcut, rates 1/1/2/4), so this head defaults to ``stride_in="3x3"``; the
  fixture ``pspnet_slim_psp_head`` puts the same head on slim's own backbone (``stride_in="3x3_last"``). The
  variable names cannot tell the two apart.
* ``pspmodule`` -- oandrienko/fast-semantic-segmentation ``architectures/pspnet_architecture.py`` with
  ``extractors/dilated_resnet_v1.py``: backbone ``SharedFeatureExtractor/resnet_v1_50`` (slim placement,
  output stride 8 with rates 4 and 16 in blocks 3 and 4: the unit rate times the block's ``overide_rate``),
  ``PSPModule/Conv, Conv_1, Conv_2, Conv_3`` = bins 1, 2, 3, 6 in that (concat) order with TF VALID average
  pooling of k = feature // bin, BN and **ReLU6**, ``align_corners`` resize; ``PSPModule/Conv_4`` 3x3 + BN +
  ReLU6 -> ``head``; ``Predictions/Conv`` -> ``head.classifier``; the training-only ``AuxPredictions`` are
  dropped. Its evaluation upsamples the logits by Interp zoom 8 (``align_corners``).

An ImageNet checkpoint converts into the ``resnet`` backbone; ``logits``, ``global_step``, ``mean_rgb`` and
optimizer slots are reported as dropped. ``arch="resnet"`` also takes the backbone out of a PSPNet checkpoint.
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

__all__ = ["convert_slim", "slim_tap_map", "detect_head", "SLIM_PREPROCESSING", "SLIM_ARCHS", "HEADS"]

SLIM_PREPROCESSING = {"channel_order": "RGB", "mean": [123.68, 116.78, 103.94], "std": None, "scale": 1.0}
# oandrienko's extractor subtracts [123.68, 116.779, 103.939] (RGB)
PSPMODULE_PREPROCESSING = {"channel_order": "RGB", "mean": [123.68, 116.779, 103.939], "std": None, "scale": 1.0}
SLIM_ARCHS = ("auto", "resnet", "pspnet50", "pspnet101")
HEADS = ("none", "psp", "pspmodule")
PSP_BINS = [6, 3, 2, 1]  # holyseven's order, also the concat order
PSPMODULE_BINS = [1, 2, 3, 6]  # oandrienko's PSPModule/Conv, Conv_1, Conv_2, Conv_3 and concat order
PSPMODULE_DILATIONS = [1, 1, 4, 16]  # rate x overide_rate of dilated_resnet_v1_50 at output stride 8
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


def _pspmodule_root(scope: str) -> str:
    """oandrienko's heads sit next to ``SharedFeatureExtractor``: the prefix of the extractor scope."""
    outer = scope.rsplit("/", 2)
    return outer[0] + "/" if len(outer) == 3 else ""


def detect_head(names: list[str] | set[str], scope: str) -> str:
    """``"psp"`` (PSPNet-TF-Reproduce), ``"pspmodule"`` (fast-semantic-segmentation) or ``"none"``."""
    names = set(names)
    if f"{scope}/psp/pool{PSP_BINS[0]}/weights" in names:
        return "psp"
    if f"{_pspmodule_root(scope)}PSPModule/Conv/weights" in names:
        return "pspmodule"
    return "none"


def slim_tap_map(scope: str, units: tuple[int, ...], prefix: str = "", psp: bool | str = False) -> dict[str, str]:
    """TF end-point / tensor names -> reference-model module paths (``""`` = the model output).

    ``psp``: ``True`` or ``"psp"`` adds the PSPNet-TF-Reproduce head names (as in the fixture's outputs.npz),
    ``"pspmodule"`` the fast-semantic-segmentation ones (``PSPModule/Conv`` = the ReLU6 output of bin 1, ...,
    ``PSPModule/concat``, ``PSPModule/Conv_4``, ``Predictions/Conv``, ``Predictions/Interp``).
    """
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
    if psp is True or psp == "psp":
        for r in PSP_BINS:
            taps[f"{scope}/psp/pool{r}/avg_pool"] = f"ppm.pool{r}.pool"
            taps[f"{scope}/psp/pool{r}"] = f"ppm.pool{r}.relu"
            taps[f"{scope}/psp/pool{r}/resize"] = f"ppm.pool{r}.upsample"
        taps[f"{scope}/psp/concat"] = "ppm"
        taps[f"{scope}/block4/unit_4"] = "head.relu"
        taps[f"{scope}/logits"] = "head.classifier"
        taps[f"{scope}/up_sample"] = ""
    elif psp == "pspmodule":
        root = _pspmodule_root(scope)
        for i, r in enumerate(PSPMODULE_BINS):
            conv = f"{root}PSPModule/{_slim_conv_name(i)}"
            taps[f"{conv}/avg_pool"] = f"ppm.pool{r}.pool"
            taps[conv] = f"ppm.pool{r}.relu"
            taps[f"{conv}/resize"] = f"ppm.pool{r}.upsample"
        taps[f"{root}PSPModule/concat"] = "ppm"
        taps[f"{root}PSPModule/{_slim_conv_name(len(PSPMODULE_BINS))}"] = "head.relu"
        taps[f"{root}Predictions/Conv"] = "head.classifier"
        taps[f"{root}Predictions/Interp"] = ""
    return taps


def _slim_conv_name(i: int) -> str:
    """slim's automatic scope of the i-th unnamed conv2d in a scope: Conv, Conv_1, Conv_2, ..."""
    return "Conv" if i == 0 else f"Conv_{i}"


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
    stride_in: str | None = None,
) -> TFConversion:
    """Map a TF-Slim checkpoint onto ``resnet`` (backbone) or ``pspnet50/101`` (with its detected head).

    ``arch="auto"`` picks ``pspnet{depth}`` when a PSPNet head exists, else ``resnet``. ``output_stride``
    defaults to 8 for PSPNet and 32 (the ImageNet geometry) for the backbone. ``classifier=True`` keeps an
    ImageNet ``logits`` layer as ``fc`` instead of dropping it. ``stride_in`` (``"3x3_last"``: slim, stride in
    the last unit; ``"3x3"``: first unit, 3x3 conv and shortcut) defaults to ``"3x3"`` for a
    PSPNet-TF-Reproduce head and to slim's placement otherwise.
    """
    if arch not in SLIM_ARCHS:
        raise ConversionError(f"arch must be one of {SLIM_ARCHS} for a TF-Slim checkpoint, got {arch!r}")
    if stride_in is not None and stride_in not in ("3x3_last", "3x3"):
        raise ConversionError(f"stride_in must be '3x3_last' (slim) or '3x3' (first unit), got {stride_in!r}")
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

    head = detect_head(names, scope)
    root = _pspmodule_root(scope)
    stem_w = shape(f"{scope}/conv1/weights")
    widths = [shape(f"{scope}/block{b}/unit_1/bottleneck_v1/conv1/weights")[3] for b in range(1, 5)]
    out_widths = [shape(f"{scope}/block{b}/unit_1/bottleneck_v1/conv3/weights")[3] for b in range(1, 5)]
    requested = arch
    if head == "none" and f"{root}PSPModule/Conv1x1/weights" in names and arch != "resnet":
        raise ConversionError(
            "an ICNet checkpoint of fast-semantic-segmentation's early layout (PSPModule/Conv1x1) has no mapping "
            "(its released FastPSPModule / CascadeFeatureFusion ICNet converts onto icnet); arch='resnet' converts "
            "its backbone",
            file=file,
        )
    if arch == "auto":
        arch = f"pspnet{depth}" if head != "none" else "resnet"
    if arch.startswith("pspnet"):
        if head == "none":
            raise ConversionError(
                f"{arch} needs a PSPNet head (<scope>/psp/... or PSPModule/...); this checkpoint has none", file=file
            )
        if arch != f"pspnet{depth}":
            raise ConversionError(f"checkpoint is resnet_v1_{depth}, not {arch}", file=file)
    notes: list[str] = []
    if stride_in is None:
        stride_in = "3x3" if head == "psp" else "3x3_last"
        why = (
            "PSPNet-TF-Reproduce strides the first unit of block2; stride_in='3x3_last' for slim's placement"
            if head == "psp"
            else "TF-Slim resnet_v1: stride in the 3x3 of the last unit of blocks 1-3"
        )
        notes.append(f"stride_in {stride_in!r} ({why})")
    backbone = dict(
        depth=depth,
        stem="7x7",
        stride_in=stride_in,
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
    elif head == "psp":
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
    else:
        if output_stride not in (None, 8):
            raise ConversionError("fast-semantic-segmentation's PSPNet has output stride 8 only", file=file)
        if stride_in != "3x3_last":
            raise ConversionError("fast-semantic-segmentation's backbone is slim's (stride_in='3x3_last')", file=file)
        config = get_config(
            arch,
            **backbone,
            output_stride=8,
            dilations=PSPMODULE_DILATIONS,
            num_classes=shape(f"{root}Predictions/Conv/weights")[3],
            input_size=None,
            ppm_bins=PSPMODULE_BINS,
            ppm_mode="tf_valid",
            ppm_width=shape(f"{root}PSPModule/Conv/weights")[3],
            head_width=shape(f"{root}PSPModule/{_slim_conv_name(len(PSPMODULE_BINS))}/weights")[3],
            resize="align_corners",
            head_act="relu6",
        )
        notes.append("fast-semantic-segmentation PSPNet: rates 4/16 in blocks 3/4, PPM and head with ReLU6")
        prefix = "backbone."

    f = Filler(arch, config, file)

    def conv_bn(src: str, conv: str, bn: str) -> None:
        f.conv(conv, get(f"{src}/weights"), f"{src}/weights")
        f.bn(
            bn,
            {k: (f"{src}/BatchNorm/{k}", ckpt[f"{src}/BatchNorm/{k}"]) for k in _BN if f"{src}/BatchNorm/{k}" in ckpt},
        )

    def conv_bias(src: str, dst: str) -> None:
        f.conv(dst, get(f"{src}/weights"), f"{src}/weights", get(f"{src}/biases"), f"{src}/biases")

    conv_bn(f"{scope}/conv1", f"{prefix}stem.conv1", f"{prefix}stem.bn1")
    for b, n in enumerate(units, 1):
        for u in range(1, n + 1):
            src, dst = f"{scope}/block{b}/unit_{u}/bottleneck_v1", f"{prefix}layer{b}.{u - 1}"
            for k in (1, 2, 3):
                conv_bn(f"{src}/conv{k}", f"{dst}.conv{k}", f"{dst}.bn{k}")
            if f"{src}/shortcut/weights" in ckpt:
                conv_bn(f"{src}/shortcut", f"{dst}.downsample.0", f"{dst}.downsample.1")
    if arch == "resnet" and num_classes:
        conv_bias(f"{scope}/logits", "fc")
    if arch.startswith("pspnet") and head == "psp":
        for r in PSP_BINS:
            conv_bn(f"{scope}/psp/pool{r}", f"ppm.pool{r}.conv", f"ppm.pool{r}.bn")
        conv_bn(f"{scope}/block4/unit_4", "head.conv", "head.bn")
        conv_bias(f"{scope}/logits", "head.classifier")
    elif arch.startswith("pspnet"):
        for i, r in enumerate(PSPMODULE_BINS):
            conv_bn(f"{root}PSPModule/{_slim_conv_name(i)}", f"ppm.pool{r}.conv", f"ppm.pool{r}.bn")
        conv_bn(f"{root}PSPModule/{_slim_conv_name(len(PSPMODULE_BINS))}", "head.conv", "head.bn")
        conv_bias(f"{root}Predictions/Conv", "head.classifier")
    state = f.finish()

    dropped, unknown = [], []
    aux = (f"{scope}/block3/unit_{units[2] + 1}/", f"{scope}/aux_logits/", f"{root}AuxPredictions/")
    for n in names:
        if n in f.used:
            continue
        if n == "global_step" or n.endswith("/global_step"):
            dropped.append((n, "training step counter"))
        elif n == f"{scope}/mean_rgb":
            dropped.append((n, "mean pixel, recorded as preprocessing"))
        elif n.endswith(OPTIMIZER_SLOT_SUFFIXES) or n in ("beta1_power", "beta2_power"):
            dropped.append((n, "optimizer state"))
        elif n.startswith(aux):
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
    notes = f.notes + notes + [f"BN eps {bn_eps:g} (TF-Slim resnet_arg_scope default; not stored in checkpoints)"]
    if "mean_rgb" in " ".join(n for n, _ in dropped):
        mean = np.asarray(ckpt[f"{scope}/mean_rgb"], dtype=np.float64).round(4).tolist()
        notes.append(f"checkpoint mean_rgb {mean}")
    pre = PSPMODULE_PREPROCESSING if head == "pspmodule" else SLIM_PREPROCESSING
    return TFConversion(
        arch=arch,
        config=config,
        state_dict=state,
        sources=f.sources,
        dropped=dropped,
        tap_map=slim_tap_map(scope, units, prefix, psp=head if arch.startswith("pspnet") else False),
        preprocessing=dict(pre),
        source_format=f"tf-{getattr(ckpt, 'format', '?')}",
        notes=notes,
    )

"""The TF ICNet checkpoints onto the ``icnet`` reference model: hellochick/ICNet-tensorflow and
oandrienko/fast-semantic-segmentation (``slim2torch`` routes them here).

* ``hellochick`` -- ``model.py`` ``ICNet`` (BN merged, every conv ``<layer>/weights`` + ``/biases``) and ``ICNet_BN``
  (``<layer>/weights`` + ``<layer>_bn/{gamma,beta,moving_mean,moving_variance}``, eps 1e-5): the Caffe layer names,
  Interp by align_corners resizes, ``padding='SAME'`` for the strided 3x3 convs (symmetric, as Caffe, for odd
  sizes), pad 1 + VALID max-pool. Pyramid: ``ICNet`` at the Cityscapes 1025x2049 eval uses the Caffe kernels
  (``fixed``), otherwise VALID pools of k = int(f / b) for b = 1, 2, 3, 6; ``ICNet_BN`` always b = 1, 2, 3, 4
  (its ``conv5_3_pool6`` pools by 4). Training heads ``sub4_out`` / ``sub24_out`` -> ``cff24/cff12.classifier``.
* ``fast_semantic_segmentation`` -- ``architectures/icnet_architecture.py`` + ``third_party/dilated_resnet_v1.py``:
  ``SharedFeatureExtractor/resnet_v1_50`` (slim units, rates 1/1/4/16, the 0.5 ``downsample_block`` after block1,
  1/2 branch = block1), ``FastPSPModule`` (sum of VALID pools for factors 1, 2, 3, 4, conv + BN + ReLU6),
  full-resolution ``Conv``..``Conv_3`` (SAME, BN, ReLU6), ``CascadeFeatureFusion{,_1}/{DilatedConv,Conv}``,
  ``Predictions/Conv``; training-only ``AuxOutput{,_1}``. Input RGB minus (123.68, 116.779, 103.939).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from segconvert.errors import ConversionError
from segconvert.reference_models.registry import get_config

from ._tf_common import OPTIMIZER_SLOT_SUFFIXES, Filler, TFConversion

__all__ = ["icnet_tf_layout", "convert_icnet_tf", "HELLOCHICK_PREP", "FSS_PREP"]

HELLOCHICK_PREP = {"channel_order": "BGR", "mean": [103.939, 116.779, 123.68], "std": None, "scale": 1.0}
FSS_PREP = {"channel_order": "RGB", "mean": [123.68, 116.779, 103.939], "std": None, "scale": 1.0}
_BN = ("gamma", "beta", "moving_mean", "moving_variance")
_FSS_SCOPE = "SharedFeatureExtractor/resnet_v1_50"


def icnet_tf_layout(names) -> str | None:
    """``"hellochick"``, ``"fast_semantic_segmentation"`` or None (not a TF ICNet checkpoint)."""
    names = set(names)
    if "conv_sub4/weights" in names and "conv1_sub1/weights" in names:
        return "hellochick"
    if "FastPSPModule/Conv/weights" in names and "CascadeFeatureFusion/DilatedConv/weights" in names:
        return "fast_semantic_segmentation"
    return None


def _hellochick_layers(blocks: list[int]) -> list[tuple[str, str]]:
    """(TF layer, model module) in graph order."""
    out = [(n, f"backbone.stem.conv{i}") for i, n in enumerate(("conv1_1_3x3_s2", "conv1_2_3x3", "conv1_3_3x3"), 1)]
    for si, n in enumerate(blocks):
        for k in range(1, n + 1):
            unit, base = f"backbone.layer{si + 1}.{k - 1}", f"conv{si + 2}_{k}"
            out += [(f"{base}_1x1_reduce", f"{unit}.conv1"), (f"{base}_3x3", f"{unit}.conv2")]
            out += [(f"{base}_1x1_increase", f"{unit}.conv3")]
            if k == 1:
                out.append((f"{base}_1x1_proj", f"{unit}.downsample"))
    out += [("conv5_4_k1", "ppm_conv"), ("conv_sub4", "cff24.conv_low"), ("conv3_1_sub2_proj", "cff24.conv_high")]
    out += [("conv_sub2", "cff12.conv_low")] + [(f"conv{i}_sub1", f"sub1.conv{i}") for i in (1, 2, 3)]
    return out + [("conv3_sub1_proj", "cff12.conv_high")]


def _fss_layers(blocks: list[int], n_sub1: int) -> list[tuple[str, str]]:
    out = [(f"{_FSS_SCOPE}/conv1", "backbone.stem.conv1")]
    for b, n in enumerate(blocks, 1):
        for u in range(1, n + 1):
            src, dst = f"{_FSS_SCOPE}/block{b}/unit_{u}/bottleneck_v1", f"backbone.layer{b}.{u - 1}"
            out += [(f"{src}/conv{i}", f"{dst}.conv{i}") for i in (1, 2, 3)]
            out.append((f"{src}/shortcut", f"{dst}.downsample"))  # only where it exists
    out.append(("FastPSPModule/Conv", "ppm_conv"))
    out += [("Conv" if i == 0 else f"Conv_{i}", f"sub1.conv{i + 1}") for i in range(n_sub1)]
    for scope, dst in (("CascadeFeatureFusion", "cff24"), ("CascadeFeatureFusion_1", "cff12")):
        out += [(f"{scope}/DilatedConv", f"{dst}.conv_low"), (f"{scope}/Conv", f"{dst}.conv_high")]
    return out


def convert_icnet_tf(
    checkpoint: Mapping[str, np.ndarray], *, file: str = "<checkpoint>", bn_eps: float = 1e-5
) -> TFConversion:
    """Map a hellochick or fast-semantic-segmentation ICNet checkpoint (``name -> array``) onto ``icnet``."""
    names = list(checkpoint.keys())
    layout = icnet_tf_layout(names)
    if layout is None:
        raise ConversionError("not a TF ICNet checkpoint (hellochick or fast-semantic-segmentation)", file=file)

    def get(name: str) -> np.ndarray:
        if name not in checkpoint:
            raise ConversionError("expected tensor is missing", file=file, key=name)
        return np.asarray(checkpoint[name])

    def out_ch(layer: str) -> int:
        return int(get(f"{layer}/weights").shape[3])

    notes: list[str] = []
    if layout == "hellochick":
        units: dict[int, int] = {}
        for n in names:
            if m := re.match(r"^conv([2-5])_(\d+)_1x1_reduce/weights$", n):
                units[int(m.group(1))] = max(units.get(int(m.group(1)), 0), int(m.group(2)))
        blocks = [units.get(s, 0) for s in (2, 3, 4, 5)]
        bn = "conv1_1_3x3_s2_bn/moving_mean" in names
        num_classes = out_ch("conv6_cls")
        fixed = not bn and num_classes == 19
        config = dict(
            backbone="psp",
            padding="tf_same",
            batchnorm=bn,
            blocks=blocks,
            stem_widths=[out_ch(n) for n in ("conv1_1_3x3_s2", "conv1_2_3x3", "conv1_3_3x3")],
            widths=[out_ch(f"conv{s}_1_1x1_reduce") for s in (2, 3, 4, 5)],
            out_widths=[out_ch(f"conv{s}_1_1x1_increase") for s in (2, 3, 4, 5)],
            ppm_bins=[4, 3, 2, 1] if bn else [6, 3, 2, 1],
            ppm_mode="fixed" if fixed else "tf_valid",
            ppm_width=out_ch("conv5_4_k1"),
            cff_width=out_ch("conv_sub4"),
            sub1_widths=[out_ch(f"conv{i}_sub1") for i in (1, 2, 3)],
            aux="sub4_out/weights" in names,
        )
        layers = _hellochick_layers(blocks)
        heads = [("conv6_cls", "classifier"), ("sub4_out", "cff24.classifier"), ("sub24_out", "cff12.classifier")]
        prep = HELLOCHICK_PREP
        bn_name = lambda layer: f"{layer}_bn"  # noqa: E731
        notes.append(
            "hellochick ICNet" + ("_BN: pyramid pools by 1, 2, 3, 4 (VALID)" if bn else " (BN merged into biases)")
            + (": Cityscapes eval pyramid kernels of the Caffe release (1025x2049 only; its inference.py pools "
               "VALID by int(f/b): ppm_mode='tf_valid')" if fixed else "")
        )  # fmt: skip
        notes.append("SAME strided convs and pad-1 VALID max-pool equal Caffe's for odd sizes (e.g. 1025x2049)")
    else:
        units = {}
        for n in names:
            if m := re.match(rf"^{_FSS_SCOPE}/block([1-4])/unit_(\d+)/bottleneck_v1/conv1/weights$", n):
                units[int(m.group(1))] = max(units.get(int(m.group(1)), 0), int(m.group(2)))
        blocks = [units.get(b, 0) for b in (1, 2, 3, 4)]
        n_sub1 = sum(1 for i in range(8) if ("Conv" if i == 0 else f"Conv_{i}") + "/weights" in names)
        unit1 = f"{_FSS_SCOPE}/block{{b}}/unit_1/bottleneck_v1"
        config = dict(
            backbone="slim",
            padding="tf_same",
            blocks=blocks,
            stem_widths=[out_ch(f"{_FSS_SCOPE}/conv1")],
            widths=[out_ch(f"{unit1.format(b=b)}/conv1") for b in (1, 2, 3, 4)],
            out_widths=[out_ch(f"{unit1.format(b=b)}/conv3") for b in (1, 2, 3, 4)],
            mid_downsample=True,
            ppm_bins=[1, 2, 3, 4],
            ppm_mode="tf_valid",
            ppm_width=out_ch("FastPSPModule/Conv"),
            cff_width=out_ch("CascadeFeatureFusion/DilatedConv"),
            sub1_widths=[out_ch("Conv" if i == 0 else f"Conv_{i}") for i in range(n_sub1)],
            sub1_strides=[2, 2, 2, 1][:n_sub1],
            head_act="relu6",
            aux="AuxOutput/weights" in names,
        )
        layers = _fss_layers(blocks, n_sub1)
        heads = [("Predictions/Conv", "classifier"), ("AuxOutput", "cff24.classifier")]
        heads.append(("AuxOutput_1", "cff12.classifier"))
        num_classes = out_ch("Predictions/Conv")
        prep = FSS_PREP
        bn_name = lambda layer: f"{layer}/BatchNorm"  # noqa: E731
        notes.append(
            "fast-semantic-segmentation ICNet: pooling factors 1, 2, 3, 4 (its configs' pooling_factors), "
            "ReLU6 in FastPSPModule and the full-resolution branch; two-stage model (the extractor's 0.5 "
            "downsample block after block1)"
        )
    try:
        config = get_config("icnet", num_classes=num_classes, bn_eps=bn_eps, **config)
    except (TypeError, ValueError) as exc:
        raise ConversionError(f"invalid config for icnet: {exc}", file=file) from None
    f = Filler("icnet", config, file)
    for src, dst in layers:
        if f"{src}/weights" not in checkpoint and dst.endswith("downsample"):
            continue
        w = get(f"{src}/weights")
        if config["batchnorm"]:
            f.conv(f"{dst}.conv", w, f"{src}/weights")
            b = bn_name(src)
            f.bn(f"{dst}.bn", {k: (f"{b}/{k}", get(f"{b}/{k}")) for k in _BN if f"{b}/{k}" in checkpoint})
        else:
            f.conv(f"{dst}.conv", w, f"{src}/weights", get(f"{src}/biases"), f"{src}/biases")
    for src, dst in heads:
        if dst == "classifier" or config["aux"]:
            f.conv(dst, get(f"{src}/weights"), f"{src}/weights", get(f"{src}/biases"), f"{src}/biases")
    state = f.finish()
    dropped, unknown = [], []
    for n in names:
        if n in f.used:
            continue
        if n == "global_step" or n.endswith("/global_step"):
            dropped.append((n, "training step counter"))
        elif n.endswith(OPTIMIZER_SLOT_SUFFIXES) or n in ("beta1_power", "beta2_power"):
            dropped.append((n, "optimizer state"))
        else:
            unknown.append(n)
    if unknown:
        raise ConversionError(f"{len(unknown)} checkpoint tensors have no place in icnet: {unknown[:8]}", file=file)
    if config["batchnorm"]:
        notes.append(f"BN eps {bn_eps:g} (not stored in checkpoints)")
    taps = {"conv5_3_sum": "ppm", "sub24_sum/relu": "cff24.relu", "sub12_sum/relu": "cff12.relu"}
    taps.update({"conv6_cls": "classifier", "Predictions/Conv": "classifier"})
    return TFConversion(
        arch="icnet",
        config=config,
        state_dict=state,
        sources=f.sources,
        dropped=dropped,
        tap_map=taps,
        preprocessing=dict(prep),
        source_format=layout,
        notes=f.notes + notes,
    )

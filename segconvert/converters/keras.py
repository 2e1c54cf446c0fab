"""PSPNet-Keras (Vladkryvoruchko/PSPNet-Keras-tensorflow ``layers_builder.py``) weights -> ``pspnet50/101``.

Layer names are Caffe's with ``_bn`` for the BatchNorms (SPEC 5.4): ``conv1_{1,2,3}_3x3[_s2]`` ->
``backbone.stem.conv{1,2,3}``, ``conv{S}_{k}_1x1_reduce/_3x3/_1x1_increase`` -> ``backbone.layer{S-1}.{k-1}.
conv{1,2,3}``, ``conv{S}_1_1x1_proj`` -> ``downsample.0``, ``conv5_3_pool{n}_conv`` -> ``ppm.pool{n}.conv``,
``conv5_4`` -> ``head.conv``, ``conv6`` -> ``head.classifier``. The model: deep stem with Keras ``'same'``
(TF SAME) convs and SAME max-pool, stride on ``conv3_1_1x1_reduce`` (``stride_in="1x1"``, both depths in this
port), dilation = explicit zero padding 2/4 in stages 4/5, PPM average pooling with kernels fixed for the
crop (473 or 713), ``align_corners`` resize, concat [x, 6, 3, 2, 1]. Keras applies the unit ReLU at the start of
the next unit; the reference model applies it after the add, which gives identical values.

Input: BGR, minus (103.939, 116.779, 123.68) in BGR order, no std. The model returns logits; the Keras model's
last layer is a softmax over them. BN epsilon comes from the model config when the file has one (full-model
files), else the port's 1e-5 (Keras's own default would be 1e-3).

hellochick/PSPNet-tensorflow checkpoints (``model.py`` / ``network.py``) are the same network with the same
layer names, as TF variables: ``<layer>/weights``, ``conv6/biases`` and ``<layer>_bn/{gamma, beta,
moving_mean, moving_variance}`` (``tf.layers.batch_normalization``, eps 1e-5; older versions of the port
name them ``scale, offset, mean, variance``). Its PSPNet101 also strides ``conv3_1_1x1_reduce`` (not the
3x3 of Caffe's PSPNet101), its convs are TF SAME / explicit zero padding and its PPM uses fixed VALID
average pools, so the same model config applies: :func:`convert_hellochick`.
"""

from __future__ import annotations

import os
import re
from typing import Any

from segconvert.errors import ConversionError
from segconvert.formats.keras_h5 import KerasWeights, open_keras_weights
from segconvert.formats.tf_checkpoint import TFCheckpoint, open_checkpoint
from segconvert.reference_models.registry import get_config
from segconvert.reference_models.resnet import STAGE_BLOCKS

from ._tf_common import OPTIMIZER_SLOT_SUFFIXES, Filler, TFConversion

__all__ = [
    "convert_keras_pspnet",
    "convert_hellochick",
    "is_caffe_named_checkpoint",
    "keras_tap_map",
    "KERAS_PSP_PREPROCESSING",
    "KERAS_ARCHS",
]

KERAS_PSP_PREPROCESSING = {"channel_order": "BGR", "mean": [103.939, 116.779, 123.68], "std": None, "scale": 1.0}
KERAS_ARCHS = ("auto", "pspnet50", "pspnet101")
PSP_BINS = [6, 3, 2, 1]
_STEM = ("conv1_1_3x3_s2", "conv1_2_3x3", "conv1_3_3x3")
_UNIT = re.compile(r"^conv(?P<s>[2-5])_(?P<k>\d+)_1x1_reduce$")
_BN_KEYS = ("gamma", "beta", "moving_mean", "moving_variance")
# TF variable name in a hellochick checkpoint -> Keras weight name (both BN spellings of that port)
_TF_VARS = {
    "weights": "kernel",
    "biases": "bias",
    "gamma": "gamma",
    "beta": "beta",
    "moving_mean": "moving_mean",
    "moving_variance": "moving_variance",
    "scale": "gamma",
    "offset": "beta",
    "mean": "moving_mean",
    "variance": "moving_variance",
}


def keras_tap_map(units: tuple[int, ...]) -> dict[str, str]:
    """Keras layer names -> reference-model module paths (every conv and BN output, the PPM and the head)."""
    taps = {}
    for i, name in enumerate(_STEM, 1):
        taps[name] = f"backbone.stem.conv{i}"
        taps[f"{name}_bn"] = f"backbone.stem.bn{i}"
    for s, n in enumerate(units, 2):
        for k in range(1, n + 1):
            mod = f"backbone.layer{s - 1}.{k - 1}"
            for part, j in (("1x1_reduce", 1), ("3x3", 2), ("1x1_increase", 3)):
                taps[f"conv{s}_{k}_{part}"] = f"{mod}.conv{j}"
                taps[f"conv{s}_{k}_{part}_bn"] = f"{mod}.bn{j}"
        taps[f"conv{s}_1_1x1_proj"] = f"backbone.layer{s - 1}.0.downsample.0"
        taps[f"conv{s}_1_1x1_proj_bn"] = f"backbone.layer{s - 1}.0.downsample.1"
    for r in PSP_BINS:
        taps[f"conv5_3_pool{r}_conv"] = f"ppm.pool{r}.conv"
        taps[f"conv5_3_pool{r}_conv_bn"] = f"ppm.pool{r}.bn"
    taps.update({"conv5_4": "head.conv", "conv5_4_bn": "head.bn", "conv6": "head.classifier"})
    return taps


def _config_eps(kw: KerasWeights) -> float | None:
    layers = (kw.model_config or {}).get("config", {}).get("layers", [])
    eps = {float(x["config"]["epsilon"]) for x in layers if x.get("class_name") == "BatchNormalization"}
    if len(eps) > 1:
        raise ConversionError(f"BatchNorm layers use different epsilons {sorted(eps)}", file=kw.path)
    return eps.pop() if eps else None


def convert_keras_pspnet(
    weights: KerasWeights | str | os.PathLike,
    *,
    arch: str = "auto",
    input_size: int | list[int] = 473,
    bn_eps: float | None = None,
    stride_in: str = "1x1",
) -> TFConversion:
    """Map PSPNet-Keras weights (legacy ``.h5``, full-model ``.h5`` or Keras 3 ``.weights.h5``) onto PSPNet.

    ``input_size`` is the crop the pyramid-pooling kernels are made for (473 for ADE20K/VOC, 713 for
    Cityscapes in the port).
    """
    kw = weights if isinstance(weights, KerasWeights) else open_keras_weights(weights)
    layers = {name: dict(ws) for name, ws in kw.layers.items()}
    eps = bn_eps if bn_eps is not None else _config_eps(kw)
    if eps is None:
        note = "BN eps 1e-5 (PSPNet-Keras layers_builder BN(epsilon=1e-5); the file stores no config)"
    else:
        note = f"BN eps {eps:g} ({'given' if bn_eps is not None else 'from the model config'})"
    return _convert_caffe_named(
        layers,
        file=kw.path,
        source_format=kw.format,
        arch=arch,
        input_size=input_size,
        bn_eps=1e-5 if eps is None else eps,
        stride_in=stride_in,
        notes=[note],
        sources={f"{n}/{w}": f"{n}/{w}" for n, ws in layers.items() for w in ws},
        dropped=[],
    )


def is_caffe_named_checkpoint(names) -> bool:
    """True for a TF checkpoint with PSPNet-Keras / hellochick layer names (``conv1_1_3x3_s2/weights``)."""
    return "conv1_1_3x3_s2/weights" in set(names)


def convert_hellochick(
    checkpoint: TFCheckpoint | str | os.PathLike,
    *,
    arch: str = "auto",
    input_size: int | list[int] = 473,
    bn_eps: float = 1e-5,
    stride_in: str = "1x1",
) -> TFConversion:
    """Map a hellochick/PSPNet-tensorflow TF checkpoint (Caffe layer names) onto PSPNet.

    ``input_size``: the crop its fixed pyramid-pooling kernels are made for (473: kernels 60/30/20/10, the
    ADE20K PSPNet50; 713: 90/45/30/15, the Cityscapes PSPNet101).
    """
    ckpt = checkpoint if isinstance(checkpoint, TFCheckpoint) else open_checkpoint(checkpoint)
    file = ckpt.files[0]
    layers: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}
    dropped: list[tuple[str, str]] = []
    unknown = []
    for name in ckpt.keys():
        layer, _, var = name.rpartition("/")
        if name == "global_step" or name.endswith("/global_step"):
            dropped.append((name, "training step counter"))
        elif name.endswith(OPTIMIZER_SLOT_SUFFIXES):
            dropped.append((name, "optimizer state"))
        elif layer and "/" not in layer and var in _TF_VARS:
            key = _TF_VARS[var]
            if key in layers.setdefault(layer, {}):
                raise ConversionError(f"layer has two {key} variables", file=file, key=name)
            layers[layer][key] = ckpt[name]
            sources[f"{layer}/{key}"] = name
        else:
            unknown.append(name)
    if unknown:
        raise ConversionError(f"{len(unknown)} variables are not <layer>/<weight>: {unknown[:8]}", file=file)
    return _convert_caffe_named(
        layers,
        file=file,
        source_format=f"tf-{ckpt.format}",
        arch=arch,
        input_size=input_size,
        bn_eps=bn_eps,
        stride_in=stride_in,
        notes=[f"hellochick/PSPNet-tensorflow layout; BN eps {bn_eps:g} (its batch_normalization layers)"],
        sources=sources,
        dropped=dropped,
    )


def _convert_caffe_named(
    layers: dict[str, dict[str, Any]],
    *,
    file,
    source_format: str,
    arch: str,
    input_size: int | list[int],
    bn_eps: float,
    stride_in: str,
    notes: list[str],
    sources: dict[str, str],
    dropped: list[tuple[str, str]],
) -> TFConversion:
    """Caffe-named layers ``{layer: {kernel|bias|gamma|beta|moving_mean|moving_variance: array}}`` -> PSPNet."""
    if arch not in KERAS_ARCHS:
        raise ConversionError(f"arch must be one of {KERAS_ARCHS} for PSPNet-Keras weights, got {arch!r}")
    top: dict[int, int] = {}
    for name in layers:
        if m := _UNIT.match(name):
            top[int(m.group("s"))] = max(top.get(int(m.group("s")), 0), int(m.group("k")))
    units = tuple(top.get(s, 0) for s in range(2, 6))
    depth = next((d for d, u in STAGE_BLOCKS.items() if u == units), None)
    if depth is None or any(n not in layers for n in _STEM):
        raise ConversionError(
            f"not PSPNet-Keras weights (stem {list(_STEM)} and conv2..5 units 3/4/6|23/3 expected, found {units})",
            file=file,
        )
    if arch == "auto":
        arch = f"pspnet{depth}"
    elif arch != f"pspnet{depth}":
        raise ConversionError(f"weights are PSPNet ResNet-{depth}, not {arch}", file=file)

    def kernel(name: str) -> Any:
        if name not in layers or "kernel" not in layers[name]:
            raise ConversionError("expected conv layer is missing", file=file, key=name)
        return layers[name]["kernel"]

    size = [int(input_size)] * 2 if isinstance(input_size, int) else [int(s) for s in input_size]
    config = get_config(
        arch,
        depth=depth,
        num_classes=kernel("conv6").shape[3],
        input_size=size,
        ppm_bins=PSP_BINS,
        ppm_mode="fixed",
        ppm_width=kernel(f"conv5_3_pool{PSP_BINS[0]}_conv").shape[3],
        head_width=kernel("conv5_4").shape[3],
        resize="align_corners",
        stem="deep",
        stride_in=stride_in,
        padding="tf_same",
        stem_widths=[kernel(n).shape[3] for n in _STEM],
        widths=[kernel(f"conv{s}_1_1x1_reduce").shape[3] for s in range(2, 6)],
        out_widths=[kernel(f"conv{s}_1_1x1_increase").shape[3] for s in range(2, 6)],
        output_stride=8,
        bn_eps=float(bn_eps),
    )
    f = Filler(arch, config, file)
    taps = keras_tap_map(units)
    for name, module in taps.items():
        if name not in layers:
            raise ConversionError("expected layer is missing", file=file, key=name)
        ws = layers[name]
        src = {k: sources.get(f"{name}/{k}", f"{name}/{k}") for k in ws}
        if name.endswith("_bn"):
            f.bn(module, {k: (src[k], ws[k]) for k in _BN_KEYS if k in ws})
        else:
            f.conv(module, kernel(name), src["kernel"], ws.get("bias"), src.get("bias"))
    state = f.finish()
    unknown = [sources.get(f"{n}/{w}", f"{n}/{w}") for n, ws in layers.items() for w in ws]
    unknown = [u for u in unknown if u not in f.used]
    if unknown:
        raise ConversionError(f"{len(unknown)} weights have no place in {arch}: {unknown[:8]}", file=file)
    return TFConversion(
        arch=arch,
        config=config,
        state_dict=state,
        sources=f.sources,
        dropped=dropped,
        tap_map=taps,
        preprocessing=dict(KERAS_PSP_PREPROCESSING),
        source_format=source_format,
        notes=f.notes + notes,
    )

"""The PyTorch ports' checkpoints -> reference models: isht7, kazuto1011 (DeepLab-v2 MSC) and hszhao/semseg (PSPNet).

Layouts, detected from the state-dict keys (read from each project's model code):

* ``isht7`` -- isht7/pytorch-deeplab-resnet ``deeplab_resnet.py``: ``MS_Deeplab.Scale`` is one ResNet-101 shared by
  the three scales: ``Scale.conv1``/``bn1``, ``Scale.layer{1-4}.{b}.conv{1,2,3}``/``bn{1,2,3}``/``downsample.{0,1}``
  (stride on the 1x1), ``Scale.layer5.conv2d_list.{i}`` = ASPP (rates 6/12/18/24, not stored). Its MSC resizes the
  input to ``int(0.75H)+1`` / ``int(0.5H)+1`` and the branch maps to the 1x map (all align_corners): onto
  :class:`DeepLabV2` with ``msc_resize="isht7"``; equal to Caffe's Interp sizes only for H = 8k+1.
* ``kazuto1011`` -- kazuto1011/deeplab-pytorch ``libs/models/{msc,deeplabv2,resnet}.py``: ``base.layer1.conv1.
  {conv,bn}`` (stem), ``base.layer{2-5}.block{k}.{reduce,conv3x3,increase,shortcut}.{conv,bn}``, ``base.aspp.c{i}``.
  MSC with ``scale_factor`` 0.5 / 0.75 (floor sizes, ``align_corners=False``), max with the 1x map, final
  upsampling ``align_corners=False``: ``msc_resize="kazuto"``, ``resize="half_pixel"``.
* ``semseg`` -- hszhao/semseg ``model/{pspnet,resnet}.py``: ``layer0.{0,3,6}``/``{1,4,7}`` (deep stem),
  ``layer{1-4}`` (stride on the 3x3, dilated 2/4), ``ppm.features.{i}.{1,2}`` (bins 1, 2, 3, 6, adaptive pooling,
  concat ``[x, 1, 2, 3, 6]``), ``cls.{0,1,4}``, ``aux.{0,1,4}``; RGB input with ImageNet mean/std x 255.

``.pth`` files are always read with ``torch.load(weights_only=True)``; ``module.`` prefixes (DDP) are stripped, a
``{"state_dict": ...}`` wrapper (semseg ``train_epoch_*.pth``) is unwrapped, and every source tensor is used once
or reported (``num_batches_tracked`` and the wrapper's other entries are dropped with a reason).
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from segconvert.errors import CheckpointError, ConversionError
from segconvert.reference_models.registry import get_config
from segconvert.reference_models.resnet import STAGE_BLOCKS

from ._tf_common import Filler, TFConversion

__all__ = [
    "LAYOUTS",
    "TorchCheckpoint",
    "TorchConversion",
    "load_torch_checkpoint",
    "detect_torch_layout",
    "convert_torch_checkpoint",
]

LAYOUTS = ("isht7", "kazuto1011", "semseg")
DEEPLAB_PREP = {"channel_order": "BGR", "mean": [104.008, 116.669, 122.675], "std": None, "scale": 1.0}
SEMSEG_PREP = {"channel_order": "RGB", "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375], "scale": 1.0}
_RATES = [6, 12, 18, 24]  # both DeepLab ports hard-code the Caffe release's ASPP rates
_SEMSEG_BINS = [1, 2, 3, 6]  # semseg's default bins, also its concat order
# classes -> (dataset, semseg protocol base size, crop) as in semseg's config/<dataset>/*.yaml
_SEMSEG_DATASETS = {150: ("ade20k", 512, 473), 21: ("voc", 512, 473), 19: ("cityscapes", 2048, 713)}
_KAZUTO_DATASETS = {21: "voc", 182: "cocostuff"}


@dataclass
class TorchCheckpoint:
    """A checkpoint's tensors (``module.`` stripped) and the wrapper entries that are not weights."""

    file: str
    tensors: dict[str, torch.Tensor]
    dropped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class TorchConversion(TFConversion):
    """:class:`TFConversion` plus the port ``layout``, its ``dataset`` and default evaluation ``protocol``."""

    layout: str = ""
    dataset: str | None = None
    protocol: dict[str, Any] | None = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def load_torch_checkpoint(path: str | os.PathLike[str]) -> TorchCheckpoint:
    """Read a ``.pth`` with ``torch.load(weights_only=True)``: the state dict, unwrapped and ``module.``-stripped."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("no such checkpoint file", file=path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refused by torch.load(weights_only=True): the file holds code or objects other than tensors "
            f"({_first_line(exc)})",
            file=path,
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"not a readable PyTorch checkpoint ({_first_line(exc)})", file=path) from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a state dict (a mapping of tensors), found {type(obj).__name__}", file=path)
    ckpt = TorchCheckpoint(str(path), {})
    for wrapper in ("state_dict", "model", "model_state_dict"):
        inner = obj.get(wrapper)
        if isinstance(inner, Mapping) and not isinstance(obj.get(next(iter(obj))), torch.Tensor):
            ckpt.dropped += [(str(k), "checkpoint entry beside the weights") for k in obj if k != wrapper]
            ckpt.notes.append(f"weights read from the checkpoint's '{wrapper}' entry")
            obj = inner
            break
    stripped = 0
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"state dict entry is a {type(value).__name__}, not a tensor", file=path, key=key)
        name = str(key)
        if name.startswith("module."):
            name, stripped = name[len("module.") :], stripped + 1
        if name in ckpt.tensors:
            raise CheckpointError("key appears with and without the 'module.' prefix", file=path, key=name)
        ckpt.tensors[name] = value
    if stripped:
        ckpt.notes.append(f"'module.' prefix (DistributedDataParallel) stripped from {stripped} keys")
    if not ckpt.tensors:
        raise CheckpointError("the checkpoint holds no tensors", file=path)
    return ckpt


def detect_torch_layout(keys: set[str] | list[str]) -> str:
    """``isht7``, ``kazuto1011`` or ``semseg`` from the (``module.``-stripped) state-dict keys."""
    keys = set(keys)
    if "Scale.conv1.weight" in keys and any(k.startswith("Scale.layer5.conv2d_list.") for k in keys):
        return "isht7"
    if {"base.layer1.conv1.conv.weight", "layer1.conv1.conv.weight"} & keys and any(
        ".aspp.c0." in f".{k}" for k in keys
    ):
        return "kazuto1011"
    if {"layer0.0.weight", "ppm.features.0.1.weight", "cls.0.weight"} <= keys:
        return "semseg"
    sample = sorted(keys)[:4]
    raise ConversionError(f"the keys match no known port layout {LAYOUTS} (first keys: {sample})")


def _units(keys: set[str], pattern: str) -> tuple[int, ...]:
    """Units per stage from keys matching ``pattern`` (groups: stage 1-4, unit index 0-based)."""
    top = {s: -1 for s in range(1, 5)}
    for k in keys:
        m = re.match(pattern, k)
        if m:
            top[int(m.group(1))] = max(top[int(m.group(1))], int(m.group(2)))
    return tuple(top[s] + 1 for s in range(1, 5))


def _depth(units: tuple[int, ...], file: str) -> int:
    depth = next((d for d, u in STAGE_BLOCKS.items() if u == units), None)
    if depth is None:
        raise ConversionError(f"residual units per stage {units} match no ResNet depth", file=file)
    return depth


_BN = ("weight", "bias", "running_mean", "running_var")


def _deeplab_rules(ckpt: TorchCheckpoint, layout: str) -> tuple[dict[str, Any], list[tuple[str, str]], list[str]]:
    keys = set(ckpt.tensors)
    notes: list[str] = []
    rules: list[tuple[str, str]] = []  # (target, source)
    if layout == "isht7":
        units = _units(keys, r"^Scale\.layer([1-4])\.(\d+)\.conv1\.weight$")
        src_stem, src_stem_bn = "Scale.conv1", "Scale.bn1"

        def unit(s: int, u: int) -> dict[str, str]:
            p = f"Scale.layer{s}.{u}"
            return (
                {f"conv{i}": f"{p}.conv{i}" for i in (1, 2, 3)}
                | {f"bn{i}": f"{p}.bn{i}" for i in (1, 2, 3)}
                | {
                    "downsample.0": f"{p}.downsample.0",
                    "downsample.1": f"{p}.downsample.1",
                }
            )

        aspp = "Scale.layer5.conv2d_list.{i}"
        msc, style, resize = True, "isht7", "align_corners"
        notes.append(
            "isht7 MSC sizes: input resized to int(0.75H)+1 and int(0.5H)+1, branch maps straight to the 1x map "
            "(align_corners); Caffe: 3((H-1)//4)+1 and (H-1)//2+1 via Interp zoom/shrink, equal only for "
            "H = 8k+1 (321, 513); kept as msc_resize='isht7' (isht7 assumes square inputs)"
        )
    else:
        base = "base." if "base.layer1.conv1.conv.weight" in keys else ""
        units = _kazuto_units(keys, base)
        src_stem, src_stem_bn = f"{base}layer1.conv1.conv", f"{base}layer1.conv1.bn"

        def unit(s: int, u: int) -> dict[str, str]:
            p = f"{base}layer{s + 1}.block{u + 1}"
            out = {}
            for i, part in enumerate(("reduce", "conv3x3", "increase"), 1):
                out[f"conv{i}"], out[f"bn{i}"] = f"{p}.{part}.conv", f"{p}.{part}.bn"
            out["downsample.0"], out["downsample.1"] = f"{p}.shortcut.conv", f"{p}.shortcut.bn"
            return out

        aspp = f"{base}aspp.c{{i}}"
        msc, style, resize = bool(base), "kazuto", "half_pixel"
        notes.append(
            "kazuto1011 MSC: inputs resized with scale_factor 0.75 / 0.5 (floor sizes, align_corners=False), "
            "branch maps back to the 1x map and the final logits to the image with align_corners=False; Caffe "
            "uses align_corners Interp sizes 3((H-1)//4)+1 / (H-1)//2+1: kept as msc_resize='kazuto', "
            "resize='half_pixel'"
        )
        if not base:
            notes.append("no 'base.' prefix (a bare DeepLabV2, not wrapped in MSC): converted single-scale")
    depth = _depth(units, ckpt.file)
    n_aspp = sum(1 for i in range(16) if f"{aspp.format(i=i)}.weight" in keys)
    if n_aspp != len(_RATES):
        raise ConversionError(f"expected {len(_RATES)} ASPP convs, found {n_aspp}", file=ckpt.file, key=aspp)
    shape = _shape_fn(ckpt)
    rules += [("backbone.stem.conv1.weight", f"{src_stem}.weight")]
    rules += [(f"backbone.stem.bn1.{n}", f"{src_stem_bn}.{n}") for n in _BN]
    for s in range(1, 5):
        for u in range(units[s - 1]):
            for dst, src in unit(s, u).items():
                if u > 0 and dst.startswith("downsample"):
                    continue
                names = ("weight",) if dst.startswith("conv") or dst == "downsample.0" else _BN
                rules += [(f"backbone.layer{s}.{u}.{dst}.{n}", f"{src}.{n}") for n in names]
    for i in range(n_aspp):
        rules += [(f"aspp.convs.{i}.{n}", f"{aspp.format(i=i)}.{n}") for n in ("weight", "bias")]
    config = dict(
        depth=depth,
        num_classes=shape(f"{aspp.format(i=0)}.weight")[0],
        msc=msc,
        msc_resize=style,
        resize=resize,
        aspp_rates=list(_RATES),
        input_size=[513, 513],
        stride_in="1x1",
        stem_widths=[shape(f"{src_stem}.weight")[0]],
        widths=[shape(f"{unit(s, 0)['conv1']}.weight")[0] for s in range(1, 5)],
        out_widths=[shape(f"{unit(s, 0)['conv3']}.weight")[0] for s in range(1, 5)],
    )
    return config, rules, notes


def _kazuto_units(keys: set[str], base: str) -> tuple[int, ...]:
    """Units per stage: kazuto's ``layer{2-5}.block{1..n}``."""
    top = {s: 0 for s in range(1, 5)}
    pat = re.compile(rf"^{re.escape(base)}layer([2-5])\.block(\d+)\.reduce\.conv\.weight$")
    for k in keys:
        m = pat.match(k)
        if m:
            top[int(m.group(1)) - 1] = max(top[int(m.group(1)) - 1], int(m.group(2)))
    return tuple(top[s] for s in range(1, 5))


def _shape_fn(ckpt: TorchCheckpoint):
    def shape(name: str) -> tuple[int, ...]:
        if name not in ckpt.tensors:
            raise ConversionError("expected tensor is missing", file=ckpt.file, key=name)
        return tuple(ckpt.tensors[name].shape)

    return shape


def _semseg_rules(ckpt: TorchCheckpoint) -> tuple[dict[str, Any], list[tuple[str, str]], list[str]]:
    keys = set(ckpt.tensors)
    shape = _shape_fn(ckpt)
    units = _units(keys, r"^layer([1-4])\.(\d+)\.conv1\.weight$")
    depth = _depth(units, ckpt.file)
    n_bins = sum(1 for i in range(16) if f"ppm.features.{i}.1.weight" in keys)
    if n_bins != len(_SEMSEG_BINS):
        raise ConversionError(
            f"expected {len(_SEMSEG_BINS)} PPM branches (bins 1,2,3,6), found {n_bins}", file=ckpt.file
        )
    rules: list[tuple[str, str]] = []
    for i, (conv, bn) in enumerate(((0, 1), (3, 4), (6, 7)), 1):
        rules.append((f"backbone.stem.conv{i}.weight", f"layer0.{conv}.weight"))
        rules += [(f"backbone.stem.bn{i}.{n}", f"layer0.{bn}.{n}") for n in _BN]
    for s in range(1, 5):
        for u in range(units[s - 1]):
            p = f"layer{s}.{u}"
            for i in (1, 2, 3):
                rules.append((f"backbone.{p}.conv{i}.weight", f"{p}.conv{i}.weight"))
                rules += [(f"backbone.{p}.bn{i}.{n}", f"{p}.bn{i}.{n}") for n in _BN]
            if u == 0:
                rules.append((f"backbone.{p}.downsample.0.weight", f"{p}.downsample.0.weight"))
                rules += [(f"backbone.{p}.downsample.1.{n}", f"{p}.downsample.1.{n}") for n in _BN]
    for i, b in enumerate(_SEMSEG_BINS):
        rules.append((f"ppm.pool{b}.conv.weight", f"ppm.features.{i}.1.weight"))
        rules += [(f"ppm.pool{b}.bn.{n}", f"ppm.features.{i}.2.{n}") for n in _BN]
    heads = [("head", "cls", "conv", "bn", "classifier")]
    aux = "aux.0.weight" in keys
    if aux:
        heads.append(("aux", "aux", "block.conv", "block.bn", "classifier"))
    for dst, src, conv, bn, cls in heads:
        rules.append((f"{dst}.{conv}.weight", f"{src}.0.weight"))
        rules += [(f"{dst}.{bn}.{n}", f"{src}.1.{n}") for n in _BN]
        rules += [(f"{dst}.{cls}.{n}", f"{src}.4.{n}") for n in ("weight", "bias")]
    num_classes = shape("cls.4.weight")[0]
    crop = _SEMSEG_DATASETS.get(num_classes, (None, None, None))[2]
    config = dict(
        depth=depth,
        num_classes=num_classes,
        input_size=[crop, crop] if crop else None,
        ppm_bins=list(_SEMSEG_BINS),
        ppm_mode="adaptive",
        ppm_width=shape("ppm.features.0.1.weight")[0],
        head_width=shape("cls.0.weight")[0],
        resize="align_corners",
        aux=aux,
        aux_width=shape("aux.0.weight")[0] if aux else 256,
        stem="deep",
        stride_in="3x3",
        padding="caffe",
        stem_widths=[shape(f"layer0.{i}.weight")[0] for i in (0, 3, 6)],
        widths=[shape(f"layer{s}.0.conv1.weight")[0] for s in range(1, 5)],
        out_widths=[shape(f"layer{s}.0.conv3.weight")[0] for s in range(1, 5)],
    )
    notes = [
        "semseg PSPNet: stride on the 3x3, adaptive pyramid pooling (bins 1,2,3,6, concat [x,1,2,3,6]), "
        "align_corners upsampling to 8(h-1)+1; its floor-mode max-pool equals the model's Caffe ceil-mode one "
        "for the H = 8k+1 inputs semseg accepts",
        "expects RGB input, ImageNet mean/std x 255 (semseg's own protocol is the default)",
    ]
    return config, rules, notes


def convert_torch_checkpoint(
    checkpoint: TorchCheckpoint | str | os.PathLike[str], layout: str | None = None
) -> TorchConversion:
    """Map a port's checkpoint onto ``deeplabv2_resnet101`` (isht7, kazuto1011) or ``pspnet50/101`` (semseg).

    ``layout``: one of :data:`LAYOUTS`, or ``None`` / ``"auto"`` to detect it from the keys (a given layout must
    agree with the keys' own).
    """
    ckpt = checkpoint if isinstance(checkpoint, TorchCheckpoint) else load_torch_checkpoint(checkpoint)
    detected = detect_torch_layout(ckpt.tensors.keys())
    if layout not in (None, "auto") and layout != detected:
        if layout not in LAYOUTS:
            raise ConversionError(f"layout must be one of {LAYOUTS}, got {layout!r}", file=ckpt.file)
        raise ConversionError(f"--layout {layout} but the keys are the {detected} layout", file=ckpt.file)
    if detected == "semseg":
        config, rules, notes = _semseg_rules(ckpt)
        arch, prep = f"pspnet{config['depth']}", SEMSEG_PREP
        dataset, base, crop = _SEMSEG_DATASETS.get(config["num_classes"], (None, None, None))
        protocol = {"name": "semseg", "base_size": base, "crop": crop} if crop else {"name": "semseg"}
    else:
        config, rules, notes = _deeplab_rules(ckpt, detected)
        arch, prep = "deeplabv2_resnet101", DEEPLAB_PREP
        if detected == "isht7":
            dataset, protocol = ("voc" if config["num_classes"] == 21 else None), {"name": "deeplab-msc", "crop": 513}
        else:
            dataset, protocol = _KAZUTO_DATASETS.get(config["num_classes"]), None
            notes.append("kazuto1011's own evaluation (whole image, align_corners=False) has no segconvert protocol")
    try:
        config = get_config(arch, **config)
    except (TypeError, ValueError) as exc:
        raise ConversionError(f"invalid config for {arch}: {exc}", file=ckpt.file) from None
    f = Filler(arch, config, ckpt.file)
    for dst, src in rules:
        if src not in ckpt.tensors:
            raise f.fail(f"expected tensor for '{dst}' is missing", src)
        f.fill(dst, ckpt.tensors[src].detach().to(torch.float32).numpy(), src)
    state = f.finish()
    dropped = list(ckpt.dropped)
    unknown = []
    for name in ckpt.tensors:
        if name in f.used:
            continue
        if name.endswith(".num_batches_tracked"):
            dropped.append((name, "BatchNorm batch counter"))
        else:
            unknown.append(name)
    if unknown:
        raise ConversionError(
            f"{len(unknown)} checkpoint tensors have no place in {arch} ({detected} layout): {unknown[:8]}",
            file=ckpt.file,
        )
    return TorchConversion(
        arch=arch,
        config=config,
        state_dict=state,
        sources=f.sources,
        dropped=dropped,
        tap_map={},
        preprocessing=dict(prep),
        source_format="pytorch",
        notes=ckpt.notes + notes,
        layout=detected,
        dataset=dataset,
        protocol=protocol,
    )

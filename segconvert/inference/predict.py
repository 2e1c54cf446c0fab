"""``predict``: label maps of images from a converted model, with the preprocessing and protocol eval uses.

The protocol is one of :mod:`segconvert.eval.protocols` (the same code ``segconvert eval`` runs):

- the families' own test procedure when the metadata names one (``pspnet*`` -> the MATLAB ``pspnet``
  protocol, ``deeplab*`` -> ``deeplab-msc``), with the dataset's preset and the weights' crop size;
- a net with a fixed input size (``input_size``, a Caffe ``input_dim``): the image at its own resolution,
  padded with the mean to the input size, and overlapping windows of that size for larger images
  (the ``semseg`` sliding window with its base size set to the image's long side, so nothing is resized);
- any other net: the ``whole`` image in one forward.

``scales`` / ``flip`` are eval's ``--scales`` / ``--flip``. Label maps are class indices (uint8, or int32
above 256 classes); :func:`write_prediction` writes the index PNG, the palette PNG and an overlay.

:func:`predict_files` runs many files with eval's throughput machinery: images decoded by DataLoader workers
(:func:`segconvert.eval.loader.decoded`, results in input order) and sliding-window crops batched to a memory
budget (:class:`~segconvert.eval.protocols.Runtime` ``batch_memory``); neither changes a label.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image
from torch import nn

from segconvert.errors import WeightsFileError
from segconvert.eval import palettes
from segconvert.eval.labels import ADE20K_CLASSES, CITYSCAPES_CLASSES, VOC_CLASSES
from segconvert.eval.protocols import Preprocessing, Protocol, Runtime, get_protocol

__all__ = [
    "DATASET_LOOKS",
    "default_protocol_name",
    "crop_from_meta",
    "image_input_check",
    "recorded_preprocessing",
    "guess_dataset",
    "model_protocol",
    "predict",
    "predict_scores",
    "predict_files",
    "ImageFiles",
    "ProtocolOptionsError",
    "legend",
    "palette_for",
    "class_names_for",
    "load_image",
    "write_prediction",
]

# dataset -> (class names, palette); the palettes are those of segconvert.eval.palettes
DATASET_LOOKS: dict[str, tuple[tuple[str, ...], Any]] = {
    "voc": (VOC_CLASSES, palettes.voc_palette),
    "cityscapes": (CITYSCAPES_CLASSES, palettes.cityscapes_palette),
    "ade20k": (ADE20K_CLASSES, palettes.ade20k_palette),
}
_BY_CLASSES = {21: "voc", 19: "cityscapes", 150: "ade20k"}


def default_protocol_name(meta: Mapping[str, Any]) -> str:
    """The source's own protocol for the known families; ``whole`` (no assumption) otherwise."""
    arch = str(meta.get("arch", ""))
    if arch.startswith("deeplab"):
        return "deeplab-msc"
    if arch.startswith("pspnet"):
        fmt = str((meta.get("source") or {}).get("format", ""))
        return "semseg" if fmt in ("pytorch", "pth", "semseg") else "pspnet"
    return "whole"


def crop_from_meta(meta: Mapping[str, Any]) -> int | None:
    """The (square) crop the weights were made for: the first of ``input_size``."""
    size = meta.get("input_size")
    if isinstance(size, (list, tuple)) and size and size[0]:
        return int(size[0])
    if isinstance(size, int):
        return size
    return None


def guess_dataset(meta: Mapping[str, Any]) -> str | None:
    """``meta["dataset"]`` when recorded, else by class count (21 VOC, 19 Cityscapes, 150 ADE20K), else None."""
    name = str(meta.get("dataset") or "").lower().replace("voc2012", "voc").replace("voc12", "voc")
    if name in DATASET_LOOKS:
        return name
    k = meta.get("num_classes") or (meta.get("config") or {}).get("num_classes")
    return _BY_CLASSES.get(int(k)) if isinstance(k, int) else None


def _fixed_size(meta: Mapping[str, Any]) -> tuple[int, int] | None:
    from segconvert.weights.inputs import input_specs

    specs = input_specs(meta)
    if len(specs) == 1 and len(specs[0].shape) == 4 and all(d > 0 for d in specs[0].shape[2:]):
        return int(specs[0].shape[2]), int(specs[0].shape[3])
    return None


def image_input_check(meta: Mapping[str, Any], source: Any = None) -> None:
    """Raise one line unless the net takes one 3-channel image (what an image file can be given to)."""
    from segconvert.weights.inputs import input_specs

    specs = input_specs(meta)
    if len(specs) != 1 or not specs[0].is_image or specs[0].channels not in (3, None):
        have = ", ".join(s.describe() for s in specs)
        raise WeightsFileError(
            f"predict runs nets whose input is one 3-channel image; this net takes {have}", file=source
        )


def model_protocol(
    meta: Mapping[str, Any],
    image_hw: tuple[int, int],
    name: str | None = None,
    *,
    dataset: str | None = None,
    scales: tuple[float, ...] | None = None,
    flip: bool | None = None,
    crop: int | None = None,
) -> Protocol:
    """The protocol ``predict`` runs on an image of ``image_hw`` (see the module docstring)."""
    dataset = dataset or guess_dataset(meta) or "voc"
    fixed = _fixed_size(meta)
    name = name or default_protocol_name(meta)
    overrides: dict[str, Any] = {}
    if name == "whole" and fixed is not None and name == default_protocol_name(meta):
        name = "semseg"  # a fixed-size net: pad / slide at the image's own resolution
        overrides = {"base_size": max(image_hw), "crop": crop or max(fixed)}
        flip = bool(flip)
    elif name in ("pspnet", "semseg", "deeplab-msc"):
        overrides["crop"] = crop or crop_from_meta(meta)
    elif name == "mmseg-slide" and crop:
        overrides["crop"] = crop
    proto = get_protocol(name, dataset if dataset in DATASET_LOOKS else "voc", scales=scales, flip=flip, **overrides)
    proto.plan(*image_hw)  # option combinations (deeplab-msc takes no scales / flip) fail here
    return proto


def load_image(source: str | os.PathLike[str] | np.ndarray | Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a path, a PIL image or an array (grey is replicated to three channels)."""
    if isinstance(source, np.ndarray):
        arr = source
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"an image array must be (H, W, 3) uint8 RGB, got {arr.shape} {arr.dtype}")
        return arr
    if isinstance(source, Image.Image):
        return np.asarray(source.convert("RGB"))
    from segconvert.eval.datasets import read_image

    return read_image(Path(source))


def recorded_preprocessing(meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The normalisation the weights record: ``meta["preprocessing"]``, else that of their one declared input."""
    pre = meta.get("preprocessing")
    if not pre and meta:
        from segconvert.weights.inputs import input_specs

        specs = input_specs(meta)
        pre = specs[0].preprocessing if len(specs) == 1 else None
    return dict(pre) if pre else None


@dataclass
class _Setup:
    prep: Preprocessing
    rt: Runtime


def _setup(
    model: nn.Module,
    preprocessing: Preprocessing | None,
    device: str | torch.device | None,
    amp: bool | None,
    channels_last: bool | None,
    batch_size: int | None,
    batch_memory: float | None = None,
) -> _Setup:
    from segconvert.eval.runner import resolve_device

    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    dev = resolve_device(device)
    if preprocessing is None:
        meta = getattr(model, "segconvert_meta", None) or {}
        preprocessing = Preprocessing.from_meta(recorded_preprocessing(meta) or None)
    rt = Runtime.for_model(model, dev, batch_size, amp, channels_last, batch_memory=batch_memory)
    return _Setup(preprocessing, rt)


def predict_scores(
    model: nn.Module,
    image: Any,
    *,
    protocol: str | Protocol | None = None,
    dataset: str | None = None,
    scales: tuple[float, ...] | None = None,
    flip: bool | None = None,
    preprocessing: Preprocessing | None = None,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    channels_last: bool | None = None,
    batch_size: int | None = None,
    batch_memory: float | None = None,
) -> torch.Tensor:
    """(K, H, W) scores of the protocol (argmax over K is the prediction); arguments as :func:`predict`."""
    img = load_image(image)
    meta = getattr(model, "segconvert_meta", None) or {}
    if meta:
        image_input_check(meta)
    s = _setup(model, preprocessing, device, amp, channels_last, batch_size, batch_memory)
    proto = (
        protocol
        if isinstance(protocol, Protocol)
        else model_protocol(meta, img.shape[:2], protocol, dataset=dataset, scales=scales, flip=flip)
    )
    model = model.eval().to(s.rt.device, memory_format=s.rt.memory_format)
    return proto.predict(model, img, s.prep, s.rt)


def predict(model: nn.Module, image: Any, **options: Any) -> np.ndarray:
    """The (H, W) label map (class indices) of ``image`` (a path, PIL image or (H, W, 3) uint8 RGB array).

    ``options``: ``protocol`` (a preset name or a :class:`Protocol`; default see the module docstring),
    ``dataset`` (its preset sizes and palette; default from the metadata), ``scales``, ``flip``,
    ``preprocessing`` (default: the weights' metadata), ``device`` (default: the model's), ``amp``,
    ``channels_last``, ``batch_size`` (crops per forward), ``batch_memory`` (MiB: crops per forward from
    that budget), as in ``segconvert eval``.
    """
    return _labels(predict_scores(model, image, **options))


def _labels(scores: torch.Tensor) -> np.ndarray:
    dtype = np.uint8 if scores.shape[0] <= 256 else np.int32
    return scores.argmax(0).cpu().numpy().astype(dtype)


class ImageFiles:
    """Image files in the form :func:`segconvert.eval.loader.decoded` reads (``load_image``; no ground truth)."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]]) -> None:
        self.paths = [Path(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def load_image(self, i: int) -> np.ndarray:
        return load_image(self.paths[i])

    def load_target(self, i: int) -> None:
        return None


@dataclass(frozen=True)
class _LoaderResize:
    """The loader's share of a prediction: the image resized to the scales of the protocol it gets."""

    meta: Mapping[str, Any]
    protocol: str | Protocol | None
    dataset: str | None
    scales: tuple[float, ...] | None
    flip: bool | None

    def __call__(self, image: np.ndarray) -> dict[tuple[int, int], torch.Tensor] | None:
        try:
            proto = _protocol_for(self.meta, image, self.protocol, self.dataset, self.scales, self.flip)
        except ProtocolOptionsError:
            return None  # raised again, as one line, where the image is predicted
        return proto.resized_images(image)


def _protocol_for(
    meta: Mapping[str, Any],
    image: np.ndarray,
    protocol: str | Protocol | None,
    dataset: str | None,
    scales: tuple[float, ...] | None,
    flip: bool | None,
) -> Protocol:
    if isinstance(protocol, Protocol):
        return protocol
    try:
        return model_protocol(meta, image.shape[:2], protocol, dataset=dataset, scales=scales, flip=flip)
    except ValueError as exc:
        raise ProtocolOptionsError(str(exc)) from exc


class ProtocolOptionsError(ValueError):
    """The protocol options do not fit an image (e.g. scales given to ``deeplab-msc``)."""


def predict_files(
    model: nn.Module,
    paths: Sequence[str | os.PathLike[str]],
    *,
    protocol: str | Protocol | None = None,
    dataset: str | None = None,
    scales: tuple[float, ...] | None = None,
    flip: bool | None = None,
    preprocessing: Preprocessing | None = None,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    channels_last: bool | None = None,
    batch_size: int | None = None,
    batch_memory: float | None = None,
    workers: int = 0,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(index, image, label map) of every file of ``paths``, in that order; options as :func:`predict`.

    ``workers`` > 0: the files are decoded, and resized to the protocol's scales, by that many DataLoader
    worker processes (eval's loader); a file that cannot be read raises its one-line error here. One
    :class:`Runtime` serves all images, so a ``batch_memory`` budget is measured once per crop size. The
    labels depend on neither option.
    """
    from segconvert.eval.datasets import SegDataset
    from segconvert.eval.loader import decoded

    meta = getattr(model, "segconvert_meta", None) or {}
    if meta:
        image_input_check(meta)
    s = _setup(model, preprocessing, device, amp, channels_last, batch_size, batch_memory)
    model = model.eval().to(s.rt.device, memory_format=s.rt.memory_format)
    resize = _LoaderResize(dict(meta), protocol, dataset, scales, flip)
    items = decoded(cast(SegDataset, ImageFiles(paths)), range(len(paths)), max(0, int(workers)), resize)
    try:
        for item in items:
            if item.error is not None:
                raise item.error
            assert item.image is not None
            proto = _protocol_for(meta, item.image, protocol, dataset, scales, flip)
            scores = proto.predict(model, item.image, s.prep, s.rt, item.prepared)
            yield item.index, item.image, _labels(scores)
    finally:
        items.close()  # stops the workers when the caller stops early


def palette_for(meta: Mapping[str, Any], dataset: str | None = None) -> np.ndarray:
    """The dataset's palette (``dataset`` or the metadata's guess); the VOC colour map otherwise."""
    name = dataset or guess_dataset(meta)
    return DATASET_LOOKS[name][1]() if name in DATASET_LOOKS else palettes.voc_palette()


def class_names_for(meta: Mapping[str, Any], dataset: str | None = None) -> tuple[str, ...] | None:
    names = meta.get("classes")
    if isinstance(names, (list, tuple)) and names:
        return tuple(str(n) for n in names)
    name = dataset or guess_dataset(meta)
    return DATASET_LOOKS[name][0] if name in DATASET_LOOKS else None


def legend(pred: np.ndarray, names: tuple[str, ...] | None = None) -> list[tuple[int, str, float]]:
    """(class id, name, share of the pixels) of the classes present, largest share first."""
    ids, counts = np.unique(pred, return_counts=True)
    total = float(pred.size)
    rows = [
        (int(i), names[int(i)] if names and int(i) < len(names) else f"class {int(i)}", float(c) / total)
        for i, c in zip(ids, counts, strict=True)
    ]
    return sorted(rows, key=lambda r: (-r[2], r[0]))


def write_prediction(
    pred: np.ndarray, image: np.ndarray, out_dir: str | os.PathLike[str], stem: str, palette: np.ndarray
) -> dict[str, Path]:
    """``labels/<stem>.png`` (class indices, 8-bit grey; 16-bit above 256 classes), ``color/<stem>.png``
    (palette PNG), ``overlay/<stem>.png`` (the colours blended over the image), each written atomically."""
    out = Path(out_dir)
    if pred.max(initial=0) > 255:
        labels = Image.fromarray(pred.astype(np.uint16))
    else:
        labels = Image.fromarray(pred.astype(np.uint8), mode="L")
    small = np.minimum(pred, 255).astype(np.uint8)
    files = {
        "labels": palettes.atomic_save_png(labels, out / "labels" / f"{stem}.png"),
        "color": palettes.atomic_save_png(palettes.palette_image(small, palette), out / "color" / f"{stem}.png"),
        "overlay": palettes.atomic_save_png(
            Image.fromarray(palettes.overlay(image, small, palette)), out / "overlay" / f"{stem}.png"
        ),
    }
    return files

"""Inputs for checks (``verify``, ``export-onnx``): a deterministic synthetic image or a user image, preprocessed
as the converted model expects (metadata ``preprocessing``: channel order, mean, std, scale)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segconvert.errors import SegconvertError

__all__ = ["synthetic_image", "load_image", "preprocess", "model_input", "default_input_size"]


def synthetic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB uint8 image (H, W, 3): a few seeded low-frequency waves and a gradient, plus mild noise.

    Natural-image-like statistics keep deep nets well conditioned (white noise is not what they were built for).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    img = np.empty((height, width, 3), np.float64)
    for c in range(3):
        v = 0.5 + 0.25 * (rng.uniform(-1, 1) * yy + rng.uniform(-1, 1) * xx)
        for _ in range(4):
            fy, fx, ph = rng.uniform(0.5, 6), rng.uniform(0.5, 6), rng.uniform(0, 2 * np.pi)
            v += 0.12 * np.sin(2 * np.pi * (fy * yy + fx * xx) + ph)
        img[..., c] = v
    img += rng.normal(0, 0.02, img.shape)
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """An image file as RGB uint8 (H, W, 3)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise SegconvertError(f"cannot read image: {exc}", file=path) from None


def preprocess(
    rgb: np.ndarray, preprocessing: Mapping[str, Any], input_size: Sequence[int] | None = None
) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> float32 NCHW (1, 3, H', W') for the model.

    With ``input_size`` the image is scaled down (bilinear, aspect kept) if it is larger, then padded
    bottom/right with the mean pixel (zero after mean subtraction), as the Caffe test protocols do.
    Channel order, mean (in that order), std (or none) and scale (pixel range multiplier) come from metadata.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise SegconvertError(f"expected an RGB image (H, W, 3), got shape {list(rgb.shape)}")
    img = rgb
    if input_size is not None:
        th, tw = int(input_size[0]), int(input_size[1])
        h, w = img.shape[:2]
        if h > th or w > tw:
            from PIL import Image

            f = min(th / h, tw / w)
            size = (max(1, round(w * f)), max(1, round(h * f)))
            img = np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR))
    x = img.astype(np.float32) * np.float32(preprocessing.get("scale", 1.0) or 1.0)
    if str(preprocessing.get("channel_order", "RGB")).upper() == "BGR":
        x = x[..., ::-1]
    mean = np.asarray(preprocessing.get("mean") or [0.0, 0.0, 0.0], np.float32)
    x = x - mean
    std = preprocessing.get("std")
    if std:
        x = x / np.asarray(std, np.float32)
    if input_size is not None:
        th, tw = int(input_size[0]), int(input_size[1])
        pad = np.zeros((th, tw, 3), np.float32)  # the mean pixel after subtraction
        pad[: x.shape[0], : x.shape[1]] = x
        x = pad
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def default_input_size(meta: Mapping[str, Any]) -> list[int] | None:
    """The model's input size [H, W]: metadata ``input_size``, else a generic Caffe net's declared input."""
    if meta.get("input_size"):
        return [int(v) for v in meta["input_size"]]
    inputs = (meta.get("config") or {}).get("inputs") or []
    if len(inputs) == 1 and inputs[0].get("shape") and len(inputs[0]["shape"]) == 4:
        return [int(v) for v in inputs[0]["shape"][2:]]
    return None


def model_input(
    meta: Mapping[str, Any],
    image: str | os.PathLike[str] | None = None,
    size: Sequence[int] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """The check input for a converted model: ``image`` (path) or a seeded synthetic image, preprocessed.

    Size: ``size``, else :func:`default_input_size`, else the image's own size (synthetic: 321x321).
    Without preprocessing metadata (generic Caffe nets) the input is the RGB pixel values 0-255.
    """
    pre = meta.get("preprocessing") or {"channel_order": "RGB", "mean": [0, 0, 0], "std": None, "scale": 1.0}
    size = size or default_input_size(meta)
    if image is not None:
        rgb = load_image(Path(image))
    else:
        h, w = (int(size[0]), int(size[1])) if size else (321, 321)
        rgb = synthetic_image(h, w, seed)
    return preprocess(rgb, pre, size)

"""Colour palettes and writers for label, colourised and overlay PNGs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from segconvert.eval.labels import CITYSCAPES_TRAIN_LABELS
from segconvert.fileio import open_mode


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map ((n, 3) uint8): bits of the index spread over R, G, B from the MSB down."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def cityscapes_palette() -> np.ndarray:
    """Cityscapes colours indexed by trainId (0..18); 255 and unused entries black."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    for lab in CITYSCAPES_TRAIN_LABELS:
        pal[lab.train_id] = lab.color
    return pal


def ade20k_palette() -> np.ndarray:
    """A deterministic 150-colour palette for ADE20K class indices 0..149 (255 black).

    Visualisation only: it is the VOC bit-spread map shifted by one (so class 0 is not black), not the
    colour150 table of the SceneParsing toolkit.
    """
    pal = np.zeros((256, 3), dtype=np.uint8)
    pal[:150] = voc_palette(151)[1:]
    return pal


def atomic_save_png(image: Image.Image, path: str | Path) -> Path:
    """Write a PNG via a temporary file in the same folder and ``os.replace`` (no partial files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        open_mode(tmp)
        with os.fdopen(fd, "wb") as fh:
            image.save(fh, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def palette_image(index: np.ndarray, palette: np.ndarray) -> Image.Image:
    """A palette ("P") PNG image of uint8 indices with the given (256, 3) palette."""
    img = Image.fromarray(np.ascontiguousarray(index, dtype=np.uint8), mode="P")
    pal = np.zeros((256, 3), dtype=np.uint8)
    pal[: len(palette)] = palette[:256]
    img.putpalette(pal.reshape(-1).tolist())
    return img


def colorize(index: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB colours of an index map."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    pal[: len(palette)] = palette[:256]
    return pal[np.asarray(index, dtype=np.uint8)]


def overlay(image_rgb: np.ndarray, index: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the colourised prediction over the image (uint8 RGB)."""
    color = colorize(index, palette).astype(np.float32)
    out = (1.0 - alpha) * image_rgb.astype(np.float32) + alpha * color
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)

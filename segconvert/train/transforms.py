"""Training augmentations of the three PSPNet recipes, each with its source's exact semantics (numpy + OpenCV).

Every transform is ``t(image, label, rng) -> (image, label)`` on an HxWx3 float32 RGB image and an HxW uint8
label; ``rng`` is a :class:`random.Random` (one per sample: :func:`sample_rng`), so an augmented sample depends
only on (seed, epoch, index) -- never on the process or rank that loads it.

- semseg (hszhao/semseg ``util/transform.py``, order of ``tool/train.py``): :class:`RandScale` (one factor for
  both axes, image ``INTER_LINEAR``, label ``INTER_NEAREST``), :class:`RandRotate` (p 0.5, about ``(w/2, h/2)``,
  image fill = mean, label fill = ignore), :class:`RandomGaussianBlur` (p 0.5, 5x5, sigma from the size),
  :class:`RandomHorizontalFlip` (p 0.5), :class:`Crop` (``rand``; padding *centred*: ``pad // 2`` before).
- PSPNet-TF-Reproduce (``database/reader_segmentation.py``): :class:`TFColorJitter`, mirror, :class:`TFScale`
  (``int(h * s)``), :class:`TFRotateNearest`, :class:`Crop` with centred padding.
- fast-semantic-segmentation: scale, random crop (its label padding value is 0, a defect kept behind
  ``label_pad``), mirror; labels resized to 1/8 by nearest (:func:`shrink_label_nearest`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

__all__ = [
    "Compose",
    "RandScale",
    "RandRotate",
    "RandomGaussianBlur",
    "RandomHorizontalFlip",
    "Crop",
    "TFColorJitter",
    "TFScale",
    "TFRotateNearest",
    "Normalize",
    "sample_rng",
    "shrink_label_nearest",
    "build_transforms",
]


def sample_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The generator of one sample's augmentation (independent of rank and loader process)."""
    return random.Random((int(seed) * 1_000_003 + int(epoch)) * 10_000_019 + int(index))


class Compose:
    def __init__(self, transforms: Sequence[Any]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
        for t in self.transforms:
            image, label = t(image, label, rng)
        return image, label

    @property
    def names(self) -> list[str]:
        return [type(t).__name__ for t in self.transforms]


class RandScale:
    """semseg ``RandScale``: ``s = lo + (hi - lo) * random()``, ``cv2.resize(fx=s, fy=s)``."""

    def __init__(self, scale: Sequence[float]) -> None:
        self.lo, self.hi = float(scale[0]), float(scale[1])

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
        s = self.lo + (self.hi - self.lo) * rng.random()
        image = cv2.resize(image, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, None, fx=s, fy=s, interpolation=cv2.INTER_NEAREST)
        return image, label


class RandRotate:
    """semseg ``RandRotate``: with probability ``p`` an angle in [lo, hi] degrees about ``(w/2, h/2)``."""

    def __init__(self, rotate: Sequence[float], padding: Sequence[float], ignore_label: int = 255, p: float = 0.5):
        self.lo, self.hi = float(rotate[0]), float(rotate[1])
        self.padding = [float(v) for v in padding]
        self.ignore_label, self.p = int(ignore_label), float(p)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
        if rng.random() < self.p:
            angle = self.lo + (self.hi - self.lo) * rng.random()
            h, w = label.shape
            m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1)
            image = cv2.warpAffine(
                image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=self.padding
            )
            label = cv2.warpAffine(
                label, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=self.ignore_label
            )
        return image, label


class RandomGaussianBlur:
    """semseg ``RandomGaussianBlur``: with probability 0.5, ``cv2.GaussianBlur(radius x radius, sigma 0)``."""

    def __init__(self, radius: int = 5, p: float = 0.5) -> None:
        self.radius, self.p = int(radius), float(p)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
        if rng.random() < self.p:
            image = cv2.GaussianBlur(image, (self.radius, self.radius), 0)
        return image, label


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5) -> None:
        self.p = float(p)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
        if rng.random() < self.p:
            image = np.ascontiguousarray(image[:, ::-1])
            label = np.ascontiguousarray(label[:, ::-1])
        return image, label


class Crop:
    """Pad to at least the crop (image with ``padding``, label with ``label_pad``), then crop.

    ``pad="centre"`` (semseg, PSPNet-TF-Reproduce): ``pad // 2`` before, the rest after; ``pad="bottom_right"``
    (Caffe ImageSegData, fast-semantic-segmentation's ``pad_to_bounding_box`` at offset 0). ``crop_type``:
    ``rand`` (semseg: ``randint(0, h - crop_h)``, rows first) or ``center`` (``(h - crop_h) // 2``).
    """

    def __init__(
        self,
        size: Sequence[int],
        padding: Sequence[float],
        label_pad: int = 255,
        crop_type: str = "rand",
        pad: str = "centre",
    ) -> None:
        if crop_type not in ("rand", "center") or pad not in ("centre", "bottom_right"):
            raise ValueError(f"crop_type rand|center and pad centre|bottom_right, got {crop_type!r}, {pad!r}")
        self.crop_h, self.crop_w = int(size[0]), int(size[1])
        self.padding = [float(v) for v in padding]
        self.label_pad, self.crop_type, self.pad = int(label_pad), crop_type, pad

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
        h, w = label.shape
        pad_h, pad_w = max(self.crop_h - h, 0), max(self.crop_w - w, 0)
        if pad_h or pad_w:
            top, left = (pad_h // 2, pad_w // 2) if self.pad == "centre" else (0, 0)
            border = (top, pad_h - top, left, pad_w - left)
            image = cv2.copyMakeBorder(image, *border, cv2.BORDER_CONSTANT, value=self.padding)
            label = cv2.copyMakeBorder(label, *border, cv2.BORDER_CONSTANT, value=self.label_pad)
        h, w = label.shape
        if self.crop_type == "rand":
            y, x = rng.randint(0, h - self.crop_h), rng.randint(0, w - self.crop_w)
        else:
            y, x = (h - self.crop_h) // 2, (w - self.crop_w) // 2
        return (
            np.ascontiguousarray(image[y : y + self.crop_h, x : x + self.crop_w]),
            np.ascontiguousarray(label[y : y + self.crop_h, x : x + self.crop_w]),
        )


class Normalize:
    """``(image - mean) / std`` per channel (std None: mean subtraction only, as PSPNet-TF-Reproduce)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float] | None = None) -> None:
        self.mean = np.asarray(mean, np.float32)
        self.std = None if std is None else np.asarray(std, np.float32)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
        image = image.astype(np.float32) - self.mean
        return (image if self.std is None else image / self.std), label


class TFColorJitter:
    """PSPNet-TF-Reproduce ``random_blur``: tf ``random_brightness(63/255)``, ``random_saturation(0.5, 1.5)``,
    ``random_contrast(0.2, 1.8)`` in that order, on 0..255 floats without clipping (as it does)."""

    def __init__(self, brightness: float = 63.0 / 255.0, saturation: Sequence[float] = (0.5, 1.5),
                 contrast: Sequence[float] = (0.2, 1.8)) -> None:  # fmt: skip
        self.brightness, self.saturation, self.contrast = float(brightness), tuple(saturation), tuple(contrast)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
        img = image.astype(np.float32) + np.float32(rng.uniform(-self.brightness, self.brightness))
        gray = (img @ np.asarray([0.2989, 0.587, 0.114], np.float32))[..., None]  # tf grayscale weights
        img = gray + (img - gray) * np.float32(rng.uniform(*self.saturation))
        mean = img.mean(axis=(0, 1), keepdims=True)
        img = mean + (img - mean) * np.float32(rng.uniform(*self.contrast))
        return img.astype(np.float32), label


class TFScale:
    """``tf.image.resize_images`` to ``int(h * s), int(w * s)`` (bilinear, half-pixel off), label nearest."""

    def __init__(self, scale: Sequence[float]) -> None:
        self.lo, self.hi = float(scale[0]), float(scale[1])

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
        s = rng.uniform(self.lo, self.hi)
        h, w = label.shape
        size = (max(1, int(w * s)), max(1, int(h * s)))
        return (cv2.resize(image, size, interpolation=cv2.INTER_LINEAR),
                cv2.resize(label, size, interpolation=cv2.INTER_NEAREST))  # fmt: skip


class TFRotateNearest:
    """``rotate_image_tensor``: nearest-neighbour rotation by ``U(lo, hi)`` degrees about ``(floor(h/2),
    floor(w/2))``; outside pixels get ``fill`` (image: 0 after mean subtraction) / ``ignore`` (label)."""

    def __init__(self, rotate: Sequence[float] = (-10.0, 10.0), fill: float = 0.0, ignore_label: int = 255) -> None:
        self.lo, self.hi, self.fill, self.ignore = float(rotate[0]), float(rotate[1]), float(fill), int(ignore_label)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
        angle = rng.uniform(self.lo, self.hi) / 180.0 * math.pi
        h, w = label.shape
        cy, cx = h // 2, w // 2
        yy, xx = np.meshgrid(np.arange(h) - cy, np.arange(w) - cx, indexing="ij")
        c, s = math.cos(angle), math.sin(angle)
        oy = np.rint(c * yy + s * xx + cy).astype(np.int64)
        ox = np.rint(-s * yy + c * xx + cx).astype(np.int64)
        inside = (oy >= 0) & (oy < h) & (ox >= 0) & (ox < w)
        out_img = np.full_like(image, self.fill)
        out_lab = np.full_like(label, self.ignore)
        out_img[inside] = image[oy[inside], ox[inside]]
        out_lab[inside] = label[oy[inside], ox[inside]]
        return out_img, out_lab


def shrink_label_nearest(label: np.ndarray, factor: int = 8) -> np.ndarray:
    """fast-semantic-segmentation: labels resized to the logits' size ``ceil(h / factor)`` by nearest."""
    h, w = label.shape[-2:]
    size = (-(-w // factor), -(-h // factor))
    return cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)


def build_transforms(values: dict[str, Any]) -> Compose:
    """The training transforms of a resolved PSPNet preset (``data.*`` values, ``data.pipeline`` names the kind)."""
    v = values
    crop = v["data.crop_size"]
    ignore = int(v["data.ignore_label"])
    kind = v["data.pipeline"]
    if kind == "semseg":
        mean = v["data.mean"]
        ts: list[Any] = [
            RandScale(v["data.scale_range"]),
            RandRotate(v["data.rotate_range"], mean, ignore, v["data.rotate_p"]),
            RandomGaussianBlur(v["data.blur_radius"], v["data.blur_p"]),
            RandomHorizontalFlip(v["data.flip_p"]),
            Crop(crop, mean, ignore, "rand", v["data.pad"]),
            Normalize(mean, v["data.std"]),
        ]
    elif kind == "l2sp":
        ts = [TFColorJitter()] if v["data.color_jitter"] else []
        ts += [Normalize(v["data.mean"]), RandomHorizontalFlip(v["data.flip_p"]), TFScale(v["data.scale_range"])]
        if v["data.random_rotate"]:
            ts.append(TFRotateNearest(v["data.rotate_range"], 0.0, ignore))
        ts.append(Crop(crop, [0.0, 0.0, 0.0], ignore, "rand", v["data.pad"]))
    elif kind == "fss":
        ts = [
            TFScale(v["data.scale_range"]),
            Crop(crop, [0.0, 0.0, 0.0], int(v["data.label_pad"]), "rand", v["data.pad"]),
            RandomHorizontalFlip(v["data.flip_p"]),
            Normalize(v["data.mean"], v["data.std"]),
        ]
    else:
        raise ValueError(f"unknown data.pipeline {kind!r}")
    return Compose(ts)

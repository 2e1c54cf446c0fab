"""Inference protocols as presets, each reproducing its source's test procedure.

A model is any ``nn.Module`` whose eval forward maps a preprocessed (N, 3, h, w) float tensor to logits
(N, K, h, w) at input resolution. Images enter as (H, W, 3) uint8 RGB; :class:`Preprocessing` (from the
weights' metadata) orders the channels and subtracts the mean / divides by the std. Padding "with the mean"
is padding the preprocessed tensor with 0. Every protocol returns (K, H, W) scores whose argmax over K is the
prediction; :meth:`Protocol.plan` exposes the resized size, padding and window grid of every scale. Crops run
in batches (:class:`Runtime`: channels_last + float16 autocast on CUDA).

Presets (``get_protocol``):

``pspnet``
    hszhao/PSPNet ``evaluation/{eval_sub,scale_process,caffe_process,pre_img}.m``. Per scale s: long side =
    base*s + 1, short side = MATLAB round (half away from zero, single precision ratio); MATLAB bilinear
    ``imresize`` of the uint8 image (antialiased when shrinking, uint8 result). Pad bottom/right with the mean
    up to the crop. If the long side <= crop: one crop; else stride = ceil(crop * 2/3), ceil((padded - crop) /
    stride) + 1 windows per axis, the last one aligned to the border. Per crop: logits(x) + flip(logits(flip(x)))
    then softmax; probabilities summed (single precision) and divided by the overlap count; cropped to the
    resized image; MATLAB ``imresize`` to the original size and renormalised to sum 1 over classes; scales
    averaged.
``semseg``
    hszhao/semseg ``tool/test.py``: long side = round(s*base) (Python round, half to even), no +1; cv2
    ``INTER_LINEAR`` resize of the float32 image; centred padding with the mean (top = pad // 2); same window
    grid; per crop softmax(logits(x)) and softmax of the flipped pass averaged ("ss" includes flip); summed
    in float64 and averaged by count; un-pad; cv2 linear resize to the original size; scales averaged.
``mmseg-slide``
    open-mmlab/mmsegmentation ``EncoderDecoder.slide_inference``: keep-ratio rescale (cv2 linear, uint8) to the
    config scale (``mmcv.rescale_size``: factor min(long_max/long, short_max/short), size int(x*f + 0.5));
    windows ``max(H - crop + stride - 1, 0) // stride + 1`` per axis, clipped to the image (no padding, a
    smaller border patch); logits summed and divided by the count; bilinear (align_corners=False) resize of the
    logits to the original size. With several scales or flip: mmseg TTA, softmax of every augmentation
    averaged (scales multiply the config scale, the 0.x ``--aug-test`` convention).
``deeplab-msc``
    DeepLab-v2 Caffe test (talent518/deeplab-public-ver2 ``test.prototxt`` + MATLAB scoring): pad bottom/right
    with the mean to 513 (larger images: to the next 8k+1), one forward of the fused MSC net (the MAX fusion is
    inside the model), crop back to the image. No flip, no scales, no CRF.
``whole``
    The whole image in one forward; with scales / flip the softmax of every augmentation is averaged.

Exactness, what is and is not reproduced:

- MATLAB ``imresize`` is emulated term by term (weights, tap order, double accumulation, each pass rounded to
  the input's class: uint8 for the image, single for the score maps). The out-of-range taps are mirrored
  (``matlab_boundary="symmetric"``, newer MATLAB) or clamped (``"replicate"``, R2013-era MATLAB): the
  authors' MATLAB release is not published; the two differ only when a dimension shrinks below ~0.37
  (large ADE20K images).
- The MATLAB softmax is ``exp(s) ./ sum(exp(s))`` in single precision; ``torch.softmax`` subtracts the max
  first: equal up to float32 rounding (the MATLAB form overflows above logit 88, ours does not).
- cv2 ``resize`` (semseg, mmseg) is OpenCV itself when it is installed (bit-exact, including its 11-bit
  fixed-point uint8 path); without OpenCV it is emulated in float (uint8: about 13 % of the pixels differ by
  one grey level). ``describe()`` records the backend.
- Images are decoded by PIL (libjpeg-turbo); OpenCV decodes the same files bit-identically (checked on the
  VOC sample); MATLAB's ``imread`` decoder could not be checked here.
- mmseg 1.x TTA multiplies the original image size by the ratios, 0.x the config scale: ours follows 0.x.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from segconvert.eval.crops import Runtime, ScalePlan, Window, forward_batch, mmseg_starts, slide, sliding_starts
from segconvert.eval.preprocessing import Preprocessing
from segconvert.eval.resize import BOUNDARIES, bilinear, cv2_backend, cv2_linear, matlab_imresize, round_half_away

MS_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)

# ------------------------------------------------------------------------------------------- protocols helpers


def _image_tensor(image: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float64 on device (float32 on MPS)."""
    t = torch.from_numpy(np.require(image, requirements=["W", "C"])) if isinstance(image, np.ndarray) else image
    dtype = torch.float32 if device.type == "mps" else torch.float64
    return t.to(device).permute(2, 0, 1).to(dtype)


Resized = Mapping[tuple[int, int], torch.Tensor]  # (rows, cols) -> the (3, rows, cols) image at that size


class _Images:
    """The image at each size a plan runs: the loader's resized copy moved to the device, else resized here."""

    def __init__(self, proto: Protocol, image: np.ndarray, device: torch.device, resized: Resized | None) -> None:
        self.proto, self.image, self.device, self.resized = proto, image, device, resized or {}
        self.full: torch.Tensor | None = None

    def __call__(self, size: tuple[int, int]) -> torch.Tensor:
        done = self.resized.get(size)
        if done is not None:
            return done.to(self.device)
        if self.full is None:
            self.full = _image_tensor(self.image, self.device)
        return self.proto.resize_image(self.full, size)


def _average_augmentations(plans: list[ScalePlan], run: Callable[[ScalePlan], torch.Tensor]) -> torch.Tensor:
    """One plan: its logits. Several (scales / flip): the mean of their softmaxes (mmseg TTA)."""
    if len(plans) == 1:
        return run(plans[0])
    total: torch.Tensor | None = None
    for p in plans:
        prob = torch.softmax(run(p), dim=0)
        total = prob if total is None else total + prob
    assert total is not None
    return total / len(plans)


# ------------------------------------------------------------------------------------------- protocols


@dataclass(frozen=True)
class Protocol:
    """Base: ``plan(h, w)`` and ``predict(model, image, prep, rt) -> (K, H, W) scores``."""

    name: str = ""
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    uses_opencv: ClassVar[bool] = False  # resizes like cv2.resize (recorded in describe())
    image_uint8: ClassVar[bool] = False  # resize_image gives integer values: the loader carries them as uint8

    def plan(self, h: int, w: int) -> list[ScalePlan]:
        raise NotImplementedError

    def predict(
        self, model: nn.Module, image: np.ndarray, prep: Preprocessing, rt: Runtime, resized: Resized | None = None
    ) -> torch.Tensor:
        """(K, H, W) scores; ``resized``: :meth:`resized_images` of ``image``, done ahead (by the loader)."""
        raise NotImplementedError

    def resize_image(self, img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The (3, H, W) float64 image at ``size``, as the network input is made from it (before normalising)."""
        raise NotImplementedError

    def resizes(self, plan: ScalePlan, h: int, w: int) -> bool:
        """Whether ``plan`` runs a resized copy of the (h, w) image rather than the image itself."""
        return plan.resized != (h, w)

    def resized_images(self, image: np.ndarray) -> dict[tuple[int, int], torch.Tensor]:
        """The (H, W, 3) uint8 ``image`` at every size its plans run, resized on the CPU: the part of
        :meth:`predict` the eval loader does in its workers (passed back as ``predict(..., resized=)``, which
        gives the same scores as resizing there). {} when no plan resizes."""
        h, w = image.shape[:2]
        sizes = list(dict.fromkeys(p.resized for p in self.plan(h, w) if self.resizes(p, h, w)))
        if not sizes:
            return {}
        full = _image_tensor(image, torch.device("cpu"))
        out = {}
        for size in sizes:
            r = self.resize_image(full, size)
            out[size] = r.to(torch.uint8) if self.image_uint8 else r
        return out

    def describe(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items()}
        d["scales"] = list(self.scales)
        if self.uses_opencv:
            d["resize_backend"] = cv2_backend()
        return d

    def with_options(self, scales: tuple[float, ...] | None = None, flip: bool | None = None) -> Protocol:
        changes: dict[str, Any] = {}
        if scales is not None:
            changes["scales"] = tuple(float(s) for s in scales)
        if flip is not None:
            changes["flip"] = bool(flip)
        return replace(self, **changes) if changes else self


@dataclass(frozen=True)
class SlidingWindow(Protocol):
    """The PSPNet / semseg procedure: per scale resize, pad to the crop, overlapping crops, resize back, average.

    Subclasses give the scale rule (``resized_size``), where the padding goes (``pad_split``), the two
    resizes, the flip fusion and the dtype the crop scores are summed in.
    """

    base_size: int = 512
    crop: int = 473
    flip: bool = True
    stride_rate: float = 2 / 3
    flip_fusion: ClassVar[str] = "psp"
    acc_dtype: ClassVar[torch.dtype] = torch.float32

    @property
    def stride(self) -> int:
        return int(math.ceil(self.crop * self.stride_rate))

    def resized_size(self, h: int, w: int, scale: float) -> tuple[int, int]:
        raise NotImplementedError

    def pad_split(self, pad: int) -> tuple[int, int]:
        """(before, after) of ``pad`` rows or columns."""
        raise NotImplementedError

    def resizes(self, plan: ScalePlan, h: int, w: int) -> bool:
        return True  # resize_image also makes the input's dtype at the image's own size

    def resize_scores(self, score: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError

    def plan(self, h: int, w: int) -> list[ScalePlan]:
        plans = []
        for s in self.scales:
            nh, nw = self.resized_size(h, w, s)
            ph, pw = max(nh, self.crop), max(nw, self.crop)
            (top, bottom), (left, right) = self.pad_split(ph - nh), self.pad_split(pw - nw)
            ys, xs = sliding_starts(ph, self.crop, self.stride), sliding_starts(pw, self.crop, self.stride)
            wins = tuple(Window(y, y + self.crop, x, x + self.crop) for y in ys for x in xs)
            plans.append(ScalePlan(s, (nh, nw), (ph, pw), (top, bottom, left, right), wins))
        return plans

    def predict(
        self, model: nn.Module, image: np.ndarray, prep: Preprocessing, rt: Runtime, resized: Resized | None = None
    ) -> torch.Tensor:
        h, w = image.shape[:2]
        images = _Images(self, image, rt.device, resized)
        total: torch.Tensor | None = None
        for p in self.plan(h, w):
            top, bottom, left, right = p.pad
            x = F.pad(prep.normalize(images(p.resized)), (left, right, top, bottom))
            fuse = self.flip_fusion if self.flip else "softmax"
            score = slide(model, x, p.windows, rt, fuse, self.flip, self.acc_dtype)
            score = self.resize_scores(score[:, top : top + p.resized[0], left : left + p.resized[1]], (h, w))
            total = score if total is None else total + score
        assert total is not None
        return total / len(self.scales)


@dataclass(frozen=True)
class PSPNetMatlab(SlidingWindow):
    name: str = "pspnet"
    image_uint8: ClassVar[bool] = True
    matlab_boundary: str = "symmetric"  # imresize's out-of-range taps: "symmetric" (newer MATLAB) | "replicate"

    def __post_init__(self) -> None:
        if self.matlab_boundary not in BOUNDARIES:
            raise ValueError(f"matlab_boundary must be one of {', '.join(BOUNDARIES)}")

    def resized_size(self, h: int, w: int, scale: float) -> tuple[int, int]:
        long = self.base_size * scale + 1
        long_i = int(math.ceil(long))  # imresize takes ceil of a non-integer size
        # MATLAB: round(long_size / single(ori) * other) evaluated in single precision
        r = float(np.float32(np.float32(long) / np.float32(max(h, w))) * np.float32(min(h, w)))
        short = round_half_away(r)
        return (long_i, short) if h > w else (short, long_i)

    def pad_split(self, pad: int) -> tuple[int, int]:
        return 0, pad  # padarray(..., 'post')

    def resize_image(self, img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return matlab_imresize(img, size, uint8=True, boundary=self.matlab_boundary)

    def resize_scores(self, score: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        score = matlab_imresize(score, size, boundary=self.matlab_boundary)
        return score / score.sum(0, keepdim=True)


@dataclass(frozen=True)
class Semseg(SlidingWindow):
    name: str = "semseg"
    flip_fusion: ClassVar[str] = "semseg"
    acc_dtype: ClassVar[torch.dtype] = torch.float64  # numpy float64 buffers in tool/test.py
    uses_opencv: ClassVar[bool] = True

    def resized_size(self, h: int, w: int, scale: float) -> tuple[int, int]:
        long = round(scale * self.base_size)
        if h > w:
            return long, round(long / float(h) * w)
        return round(long / float(w) * h), long

    def pad_split(self, pad: int) -> tuple[int, int]:
        return int(pad / 2), pad - int(pad / 2)  # cv2.copyMakeBorder, centred

    def resize_image(self, img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return cv2_linear(img.float(), size)  # the dataset's float32 RGB image

    def resize_scores(self, score: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return cv2_linear(score, size)


def mmcv_rescale_size(h: int, w: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv keep-ratio rescale: factor = min(long_max / long, short_max / short); size int(x * f + 0.5)."""
    long_max, short_max = max(scale), min(scale)
    f = min(long_max / max(h, w), short_max / min(h, w))
    return int(h * f + 0.5), int(w * f + 0.5)


@dataclass(frozen=True)
class MMSegSlide(Protocol):
    name: str = "mmseg-slide"
    crop: int = 769
    stride: int = 513
    resize_scale: tuple[int, int] | None = (2048, 1024)
    flip: bool = False
    uses_opencv: ClassVar[bool] = True
    image_uint8: ClassVar[bool] = True

    def plan(self, h: int, w: int) -> list[ScalePlan]:
        plans = []
        for s in self.scales:
            if self.resize_scale is None:
                nh, nw = (h, w) if s == 1 else (int(h * s + 0.5), int(w * s + 0.5))
            else:
                nh, nw = mmcv_rescale_size(h, w, (self.resize_scale[0] * s, self.resize_scale[1] * s))
            ys, xs = mmseg_starts(nh, self.crop, self.stride), mmseg_starts(nw, self.crop, self.stride)
            wins = tuple(Window(y0, y1, x0, x1) for y0, y1 in ys for x0, x1 in xs)
            for f in (False, True) if self.flip else (False,):
                plans.append(ScalePlan(s, (nh, nw), (nh, nw), (0, 0, 0, 0), wins, f))
        return plans

    def resize_image(self, img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return cv2_linear(img, size, uint8=True).float()  # mmcv.imrescale of the uint8 image

    def predict(
        self, model: nn.Module, image: np.ndarray, prep: Preprocessing, rt: Runtime, resized: Resized | None = None
    ) -> torch.Tensor:
        h, w = image.shape[:2]
        images = _Images(self, image, rt.device, resized)

        def run(p: ScalePlan) -> torch.Tensor:
            im = images(p.resized).float()
            im = im.flip(-1) if p.flip else im
            logits = slide(model, prep.normalize(im), p.windows, rt, "logits", False)
            return bilinear(logits.flip(-1) if p.flip else logits, (h, w))

        return _average_augmentations(self.plan(h, w), run)


@dataclass(frozen=True)
class DeepLabMSC(Protocol):
    name: str = "deeplab-msc"
    crop: int = 513

    def plan(self, h: int, w: int) -> list[ScalePlan]:
        if self.scales != (1.0,) or self.flip:
            raise ValueError("deeplab-msc is one forward of the fused MSC net: no extra scales and no flip")

        def size(n: int) -> int:
            return self.crop if n <= self.crop else ((n - 1 + 7) // 8) * 8 + 1

        ph, pw = size(h), size(w)
        return [ScalePlan(1.0, (h, w), (ph, pw), (0, ph - h, 0, pw - w), (Window(0, ph, 0, pw),))]

    def predict(
        self, model: nn.Module, image: np.ndarray, prep: Preprocessing, rt: Runtime, resized: Resized | None = None
    ) -> torch.Tensor:
        h, w = image.shape[:2]
        (p,) = self.plan(h, w)
        x = F.pad(prep.normalize(_image_tensor(image, rt.device)), (0, p.pad[3], 0, p.pad[1]))
        return forward_batch(model, x[None], rt)[0, :, :h, :w]


@dataclass(frozen=True)
class Whole(Protocol):
    name: str = "whole"

    def plan(self, h: int, w: int) -> list[ScalePlan]:
        plans = []
        for s in self.scales:
            nh, nw = (h, w) if s == 1 else (int(h * s + 0.5), int(w * s + 0.5))
            for f in (False, True) if self.flip else (False,):
                plans.append(ScalePlan(s, (nh, nw), (nh, nw), (0, 0, 0, 0), (Window(0, nh, 0, nw),), f))
        return plans

    def resize_image(self, img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return bilinear(img.float(), size)

    def predict(
        self, model: nn.Module, image: np.ndarray, prep: Preprocessing, rt: Runtime, resized: Resized | None = None
    ) -> torch.Tensor:
        h, w = image.shape[:2]
        images = _Images(self, image, rt.device, resized)

        def run(p: ScalePlan) -> torch.Tensor:
            x = prep.normalize(images(p.resized))
            x = x.flip(-1) if p.flip else x
            logits = forward_batch(model, x[None], rt)[0]
            return bilinear(logits.flip(-1) if p.flip else logits, (h, w))

        return _average_augmentations(self.plan(h, w), run)


# ---------------------------------------------------------------------------------------------- presets

# (protocol, dataset) -> keyword arguments; the numbers are the sources' test settings.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "pspnet": {
        "voc": {"base_size": 512, "crop": 473},
        "ade20k": {"base_size": 512, "crop": 473},
        "cityscapes": {"base_size": 2048, "crop": 713},
    },
    "semseg": {
        "voc": {"base_size": 512, "crop": 473},
        "ade20k": {"base_size": 512, "crop": 473},
        "cityscapes": {"base_size": 2048, "crop": 713},
    },
    "mmseg-slide": {
        "voc": {"crop": 512, "stride": 341, "resize_scale": (2048, 512)},
        "ade20k": {"crop": 512, "stride": 341, "resize_scale": (2048, 512)},
        "cityscapes": {"crop": 769, "stride": 513, "resize_scale": (2048, 1024)},
    },
    "deeplab-msc": {"voc": {"crop": 513}, "ade20k": {"crop": 513}, "cityscapes": {"crop": 513}},
    "whole": {"voc": {}, "ade20k": {}, "cityscapes": {}},
}
_CLASSES: dict[str, type[Protocol]] = {
    "pspnet": PSPNetMatlab,
    "semseg": Semseg,
    "mmseg-slide": MMSegSlide,
    "deeplab-msc": DeepLabMSC,
    "whole": Whole,
}
PROTOCOLS = tuple(_CLASSES)


def get_protocol(
    name: str,
    dataset: str = "voc",
    *,
    scales: tuple[float, ...] | None = None,
    flip: bool | None = None,
    **overrides: Any,
) -> Protocol:
    """A preset for ``dataset`` with optional scales / flip / field overrides (e.g. ``crop=473``)."""
    key = name.lower().replace("_", "-")
    if key in ("pspnet-matlab", "psp"):
        key = "pspnet"
    if key not in _CLASSES:
        raise ValueError(f"unknown protocol '{name}' (choose from {', '.join(PROTOCOLS)})")
    kwargs = dict(PRESETS[key].get(dataset, {}))
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    proto = _CLASSES[key](**kwargs)
    return proto.with_options(scales, flip)


def parse_scales(text: str | None) -> tuple[float, ...] | None:
    """'ss' -> (1,), 'ms' -> (0.5 .. 1.75), '0.5,1,1.5' -> floats; None stays None."""
    if text is None:
        return None
    t = text.strip().lower()
    if t == "ss":
        return (1.0,)
    if t == "ms":
        return MS_SCALES
    try:
        vals = tuple(float(v) for v in t.replace(" ", ",").split(",") if v)
    except ValueError as exc:
        raise ValueError(f"scales must be 'ss', 'ms' or comma-separated numbers, got {text!r}") from exc
    if not vals or any(v <= 0 for v in vals):
        raise ValueError(f"scales must be positive numbers, got {text!r}")
    return vals

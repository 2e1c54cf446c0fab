"""DeepLab's ``ImageSegData`` layer: image + label list, scale / pad / crop / mirror, seeded and deterministic.

Semantics of DeepLab-v2's ``ImageSegDataLayer`` + ``DataTransformer::TransformImgAndSeg`` (TRAIN phase):

1. the image is read as 8-bit BGR, the label as 8-bit class indices (list line ``<image> <label>``, each path
   appended to ``root_folder`` as a plain string, as Caffe does);
2. ``mirror`` is drawn (p = 1/2), then one of ``scale_factors`` uniformly from the list; for a factor != 1 the
   image is resized to ``int(float32(H) * factor)`` x ``int(float32(W) * factor)`` with OpenCV's 8-bit bilinear
   ``cv::resize(INTER_LINEAR)`` (reproduced bit for bit here, no OpenCV needed) and the label by OpenCV's
   nearest neighbour;
3. image and label are padded at the bottom/right up to the crop: the image with the mean pixel (so padded
   pixels are exactly 0 after mean subtraction), the label with ``ignore_label``;
4. a random crop window (``h_off`` in 0..H-crop, then ``w_off``) in TRAIN, the centre in TEST;
5. ``(pixel - mean[c]) * scale`` in float32, and the horizontal flip of image and label.

Determinism: the data is a *stream*. Item ``k`` of the stream is a pure function of ``(seed, k)``: the epoch
``k // n`` picks the shuffled order (``SeedSequence([seed, epoch])``), the augmentation draws come from
``SeedSequence([seed, 1, k])``. So the batches do not depend on the number of loader workers, and resuming
needs only the stream position.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from segconvert.errors import DatasetError

__all__ = [
    "ImageSegTransform",
    "ImageSegData",
    "ImageSegStream",
    "resize_bilinear_u8",
    "resize_nearest",
    "read_seg_list",
]

_COEF_BITS = 11  # OpenCV INTER_RESIZE_COEF_BITS
_COEF_ONE = np.float32(1 << _COEF_BITS)


def _linear_taps(src: int, dst: int, clamp_weight: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's source taps and fixed-point weights for one axis (half-pixel centres, float32 fractions)."""
    scale = 1.0 / (dst / src)
    f = ((np.arange(dst) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s.astype(np.float32)).astype(np.float32)
    if clamp_weight:  # horizontal: OpenCV clamps tap and weight at the borders
        low, high = s < 0, s >= src - 1
        f[low | high] = 0
        s[low] = 0
        s[high] = src - 1
    w1 = np.rint(f * _COEF_ONE).astype(np.int64)
    w0 = np.rint((np.float32(1) - f) * _COEF_ONE).astype(np.int64)
    return np.clip(s, 0, src - 1), np.clip(s + 1, 0, src - 1), w0, w1


def resize_bilinear_u8(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """``cv::resize(img, (width, height), INTER_LINEAR)`` for uint8 (H, W[, C]) images, bit for bit."""
    if img.dtype != np.uint8:
        raise TypeError("resize_bilinear_u8 takes uint8 images")
    squeeze = img.ndim == 2
    x = (img[..., None] if squeeze else img).astype(np.int64)
    xs0, xs1, a0, a1 = _linear_taps(x.shape[1], width, True)
    ys0, ys1, b0, b1 = _linear_taps(x.shape[0], height, False)
    hor = x[:, xs0] * a0[None, :, None] + x[:, xs1] * a1[None, :, None]
    s0, s1 = hor[ys0] >> 4, hor[ys1] >> 4
    out = (((b0[:, None, None] * s0) >> 16) + ((b1[:, None, None] * s1) >> 16) + 2) >> 2
    out = np.clip(out, 0, 255).astype(np.uint8)
    return out[..., 0] if squeeze else out


def resize_nearest(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """``cv::resize(img, (width, height), INTER_NEAREST)``: source index ``floor(dst * src/dst)``."""
    src_h, src_w = img.shape[:2]
    yi = np.minimum(np.floor(np.arange(height) * (1.0 / (height / src_h))).astype(np.int64), src_h - 1)
    xi = np.minimum(np.floor(np.arange(width) * (1.0 / (width / src_w))).astype(np.int64), src_w - 1)
    return img[yi][:, xi]


@dataclass(frozen=True)
class Draw:
    """The random choices made for one image (for tests and logs)."""

    mirror: bool
    scale: float
    h_off: int
    w_off: int


@dataclass(frozen=True)
class ImageSegTransform:
    """``transform_param`` of ImageSegData. ``mean_value`` is in the image's channel order (BGR for Caffe)."""

    crop_size: tuple[int, int] | None = None  # (height, width)
    mean_value: tuple[float, ...] = ()
    scale_factors: tuple[float, ...] = ()
    mirror: bool = False
    scale: float = 1.0
    ignore_label: int = 255
    train: bool = True

    def __post_init__(self) -> None:
        if self.mean_value and len(self.mean_value) not in (1, 3):
            raise ValueError("mean_value needs 1 or 3 values")
        if any(f <= 0 for f in self.scale_factors):
            raise ValueError("scale_factors must be positive")

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, Draw]:
        """uint8 (H, W, C) image and (H, W) label -> float32 (C, h, w) data, float32 (1, h, w) label, draws."""
        if image.shape[:2] != label.shape[:2]:
            raise ValueError(f"image {image.shape[:2]} and label {label.shape[:2]} differ in size")
        channels = image.shape[2]
        mirror = bool(self.mirror and rng.integers(2))
        factor = 1.0
        if self.scale_factors:
            factor = float(self.scale_factors[int(rng.integers(len(self.scale_factors)))])
        h, w = image.shape[:2]
        if factor != 1:
            h, w = int(np.float32(h) * np.float32(factor)), int(np.float32(w) * np.float32(factor))
            if h < 1 or w < 1:
                raise ValueError(f"scale factor {factor} shrinks a {image.shape[:2]} image to nothing")
            image, label = resize_bilinear_u8(image, h, w), resize_nearest(label, h, w)
        mean = np.zeros(channels, np.float32)
        if self.mean_value:
            mean = np.broadcast_to(np.asarray(self.mean_value, np.float32), (channels,)).copy()
        h_off = w_off = 0
        img = image.astype(np.float64)
        if self.crop_size is not None:
            ch, cw = self.crop_size
            ph, pw = max(ch - h, 0), max(cw - w, 0)
            if ph or pw:
                img = np.pad(img, ((0, ph), (0, pw), (0, 0)))
                img[h:, :, :] = mean
                img[:, w:, :] = mean
                label = np.pad(label, ((0, ph), (0, pw)), constant_values=self.ignore_label)
                h, w = h + ph, w + pw
            if self.train:
                h_off, w_off = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
            else:
                h_off, w_off = (h - ch) // 2, (w - cw) // 2
            img = img[h_off : h_off + ch, w_off : w_off + cw]
            label = label[h_off : h_off + ch, w_off : w_off + cw]
        data = (img.astype(np.float32) - mean) * np.float32(self.scale)
        lab = label.astype(np.float32)
        if mirror:
            data, lab = data[:, ::-1], lab[:, ::-1]
        data = np.ascontiguousarray(data.transpose(2, 0, 1))
        return data, np.ascontiguousarray(lab[None]), Draw(mirror, factor, h_off, w_off)


def read_seg_list(source: str | Path, root_folder: str = "") -> list[tuple[Path, Path]]:
    """``<image> <label>`` lines; ``root_folder + path`` (plain concatenation, as Caffe)."""
    source = Path(source)
    try:
        lines = source.read_text().splitlines()
    except OSError as exc:
        raise DatasetError(f"cannot read ImageSegData list: {exc.strerror or exc}", file=source) from None
    items = []
    for no, line in enumerate(lines, 1):
        toks = line.split()
        if not toks:
            continue
        if len(toks) < 2:
            raise DatasetError("expected '<image> <label>' (label_type PIXEL)", file=source, line=no)
        items.append((Path(root_folder + toks[0]), Path(root_folder + toks[1])))
    if not items:
        raise DatasetError("ImageSegData list is empty", file=source)
    return items


def _read_pair(image: Path, label: Path) -> tuple[np.ndarray, np.ndarray]:
    from segconvert.eval.datasets import read_image, read_index_png

    for p, what in ((image, "image"), (label, "label")):
        if not p.is_file():
            raise DatasetError(f"ImageSegData {what} not found", file=p)
    rgb = read_image(image)
    lab, _mode = read_index_png(label, "ImageSegData label")
    if lab.ndim != 2:
        raise DatasetError("label PNG must be single-channel", file=label)
    return np.ascontiguousarray(rgb[..., ::-1]), lab.astype(np.uint8)


@dataclass
class ImageSegData(Dataset):
    """Stream-indexed ImageSegData: ``data[k]`` is the k-th (data, label) the layer delivers.

    ``load(i)`` returns image ``i`` as (uint8 BGR (H, W, 3), uint8 (H, W) label); ``size`` images in all.
    """

    load: Callable[[int], tuple[np.ndarray, np.ndarray]]
    size: int
    transform: ImageSegTransform
    seed: int = 0
    shuffle: bool = True
    _orders: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def from_list(cls, source: str | Path, root_folder: str, transform: ImageSegTransform, **kw: Any) -> ImageSegData:
        items = read_seg_list(source, root_folder)
        _read_pair(*items[0])  # a wrong root fails here, before any training
        return cls(lambda i: _read_pair(*items[i]), len(items), transform, **kw)

    @classmethod
    def from_dataset(cls, dataset: Any, transform: ImageSegTransform, **kw: Any) -> ImageSegData:
        """From a :class:`segconvert.eval.datasets.SegDataset` (its RGB images become BGR, as Caffe reads them)."""

        def load(i: int) -> tuple[np.ndarray, np.ndarray]:
            return np.ascontiguousarray(dataset.load_image(i)[..., ::-1]), dataset.load_target(i).label

        return cls(load, len(dataset), transform, **kw)

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.size)
        if epoch not in self._orders:
            if len(self._orders) > 4:
                self._orders.clear()
            self._orders[epoch] = np.random.default_rng([self.seed, 0, epoch]).permutation(self.size)
        return self._orders[epoch]

    def image_index(self, k: int) -> int:
        epoch, pos = divmod(int(k), self.size)
        return int(self.order(epoch)[pos])

    def sample(self, k: int) -> tuple[np.ndarray, np.ndarray, Draw]:
        image, label = self.load(self.image_index(k))
        return self.transform(image, label, np.random.default_rng([self.seed, 1, int(k)]))

    def __len__(self) -> int:  # a stream: DataLoader only needs the sampler below
        return self.size

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        data, label, _ = self.sample(k)
        return torch.from_numpy(data), torch.from_numpy(label)


class _StreamSampler(Sampler[int]):
    def __init__(self, start: int, stop: int | None) -> None:
        self.start, self.stop = start, stop

    def __iter__(self) -> Iterator[int]:
        k = self.start
        while self.stop is None or k < self.stop:
            yield k
            k += 1


class ImageSegStream:
    """Batches of ``batch_size`` consecutive stream items, optionally from ``num_workers`` loader processes.

    ``position`` counts the items handed out; ``state_dict()`` / ``load_state_dict()`` carry it for resume
    (prefetched, not yet consumed items are simply recomputed).
    """

    def __init__(self, data: ImageSegData, batch_size: int = 1, num_workers: int = 0, position: int = 0) -> None:
        self.data, self.batch_size, self.num_workers = data, int(batch_size), int(num_workers)
        self.position = int(position)
        self._it: Iterator[Any] | None = None

    def _loader(self) -> Iterator[Any]:
        loader = DataLoader(
            self.data,
            batch_size=self.batch_size,
            sampler=_StreamSampler(self.position, None),
            num_workers=self.num_workers,
            persistent_workers=False,
            prefetch_factor=2 if self.num_workers else None,
        )
        return iter(loader)

    def next_batch(self) -> dict[str, torch.Tensor]:
        if self._it is None:
            self._it = self._loader()
        data, label = next(self._it)
        self.position += self.batch_size
        return {"data": data, "label": label}

    __next__ = next_batch

    def __iter__(self) -> ImageSegStream:
        return self

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position, "seed": self.data.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state.get("seed", self.data.seed)) != self.data.seed:
            raise ValueError(f"data seed {state['seed']} in the checkpoint != {self.data.seed}")
        self.position = int(state["position"])
        self._it = None


def transform_from_params(
    crop_size: int | Sequence[int] | None,
    mean_value: Sequence[float],
    scale_factors: Sequence[float] = (),
    mirror: bool = False,
    ignore_label: int = 255,
    scale: float = 1.0,
) -> ImageSegTransform:
    """Build the transform from prototxt-style values (``crop_size`` 0 / None: no crop)."""
    crop: tuple[int, int] | None = None
    if isinstance(crop_size, int):
        crop = (crop_size, crop_size) if crop_size > 0 else None
    elif crop_size:
        crop = (int(crop_size[0]), int(crop_size[1]))
    return ImageSegTransform(
        crop, tuple(float(m) for m in mean_value), tuple(float(f) for f in scale_factors), bool(mirror), scale,
        int(ignore_label),
    )  # fmt: skip


def _imageseg_layer(layer: Any, *, prototxt: Path | None, seed: int) -> _TopsStream:
    """``data_source_for`` factory for an ``ImageSegData`` layer (TRAIN phase): its list, root folder and
    ``transform_param``, paths resolved as Caffe does (working directory), then relative to the prototxt."""
    from .caffe_net import layer_line
    from .data_hdf5 import resolve_data_path

    p, t = layer.param.image_data_param, layer.param.transform_param
    where = {"file": prototxt, "line": layer_line(prototxt, layer.name), "layer": layer.name}
    base = prototxt.parent if prototxt is not None else None
    source = resolve_data_path(p.source, base)
    if source is None:
        raise DatasetError(f"ImageSegData source list {p.source!r} not found", **where)
    if t.mean_file:
        raise DatasetError("ImageSegData does not support mean_file (Caffe: 'does not support mean file')", **where)
    items = read_seg_list(source, p.root_folder)
    root = p.root_folder
    if not items[0][0].exists() and base is not None and not Path(p.root_folder).is_absolute():
        root = str(base) + "/" + p.root_folder if p.root_folder else str(base) + "/"
        items = read_seg_list(source, root)
    ignore = int(p.ignore_label) if p.HasField("ignore_label") else 255
    transform = transform_from_params(int(t.crop_size), list(t.mean_value), list(t.scale_factors), bool(t.mirror),
                                      ignore, float(t.scale))  # fmt: skip
    data = ImageSegData.from_list(source, root, transform, seed=seed, shuffle=bool(p.shuffle))
    return _TopsStream(ImageSegStream(data, batch_size=int(p.batch_size)), list(layer.tops), source)


class _TopsStream:
    """An :class:`ImageSegStream` whose batches are keyed by the layer's top names (data, label)."""

    def __init__(self, stream: ImageSegStream, tops: list[str], list_path: Path) -> None:
        self.stream, self.tops, self.list_path = stream, tops, list_path

    def next_batch(self) -> dict[str, torch.Tensor]:
        b = self.stream.next_batch()
        out = {self.tops[0]: b["data"]}
        if len(self.tops) > 1:
            out[self.tops[1]] = b["label"]
        return out

    def state_dict(self) -> dict[str, int]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.stream.load_state_dict(state)


def _register() -> None:
    from .data import register_data_layer

    register_data_layer("ImageSegData", _imageseg_layer)


_register()

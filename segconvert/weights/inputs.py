"""The inputs a converted net takes: name, shape, kind and preprocessing, from its metadata.

Converters record ``meta["inputs"]`` (a list of ``{"name", "shape", "kind", "preprocessing"}``) at conversion
time: the Caffe net's ``Input`` / ``input_dim`` / ``input_shape`` declarations (all inputs, in order), the TF/Keras
model's input layer, or ``--input-shape NAME:N,C,H,W`` given by the user. Files written before that record
fall back to the old assumption: one 3-channel image of the recorded input size.

Shapes are in the layout the PyTorch module takes (N first; NCHW for images, NCL for 1-D signals); ``-1`` marks
a free axis. ``kind`` is ``"image"`` for a 2-D input with 1 or 3 channels, else ``"tensor"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segconvert.errors import SegconvertError

__all__ = [
    "InputSpec",
    "InputShapeError",
    "input_specs",
    "specs_to_meta",
    "caffe_input_specs",
    "conversion_inputs",
    "parse_input_shape",
    "apply_input_shapes",
    "check_declared",
    "input_kind",
    "concrete_shape",
    "synthetic_inputs",
    "image_input",
    "DEFAULT_SIZE",
    "LEGACY_INPUT_NAME",
]

DEFAULT_SIZE = 321  # a free spatial axis without a size given (the old synthetic check image's size)
LEGACY_INPUT_NAME = "input"  # the ONNX input name of files written before inputs were recorded


class InputShapeError(SegconvertError):
    """An input shape that cannot be used (bad ``--input-shape`` text, unknown input name, wrong rank)."""


@dataclass(frozen=True)
class InputSpec:
    """One net input. ``shape``: N first, as the PyTorch module takes it; ``-1`` for a free axis."""

    name: str
    shape: tuple[int, ...]
    kind: str = "tensor"
    preprocessing: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def is_image(self) -> bool:
        return self.kind == "image"

    @property
    def channels(self) -> int | None:
        return self.shape[1] if len(self.shape) >= 2 and self.shape[1] > 0 else None

    def describe(self) -> str:
        dims = "x".join("?" if d < 0 else str(d) for d in self.shape)
        return f"{self.name} {dims} ({self.kind})"

    def to_meta(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "kind": self.kind, "preprocessing": self.preprocessing}


def input_kind(shape: Sequence[int]) -> str:
    """``"image"`` for (N, 1 or 3, H, W), else ``"tensor"``."""
    return "image" if len(shape) == 4 and shape[1] in (1, 3) else "tensor"


def _spec(name: str, shape: Sequence[int] | None, preprocessing: Mapping[str, Any] | None, kind: str | None = None):
    dims = tuple(int(d) for d in shape) if shape else (-1, 3, -1, -1)
    pre = {k: v for k, v in dict(preprocessing or {}).items() if v is not None}
    return InputSpec(str(name), dims, kind or input_kind(dims), pre)


def input_specs(meta: Mapping[str, Any]) -> list[InputSpec]:
    """The net's inputs from a converted file's metadata (see the module docstring for the fallback)."""
    recorded = meta.get("inputs")
    if recorded:
        return [_spec(i["name"], i.get("shape"), i.get("preprocessing"), i.get("kind")) for i in recorded]
    pre = meta.get("preprocessing") or {}
    config = meta.get("config") or {}
    declared = config.get("inputs") if isinstance(config.get("inputs"), list) else None
    if declared:  # a generic Caffe conversion written before meta["inputs"]
        return [_spec(i["name"], i.get("shape"), pre) for i in declared]
    size = meta.get("input_size") or config.get("input_size")
    if isinstance(size, int):
        size = [size, size]
    hw = [int(v) for v in size] if size else [-1, -1]
    return [_spec(LEGACY_INPUT_NAME, (1, 3, *hw), pre)]


def caffe_input_specs(
    config: Mapping[str, Any], declared: Mapping[str, Sequence[int] | None], preprocessing: Mapping[str, Any] | None
) -> list[InputSpec]:
    """A Caffe conversion's inputs: every declared input in order (generic path: ``config["inputs"]``, which also
    holds ``Input``-layer tops), else the named model's one image input (the prototxt's input name, else ``data``)."""
    if isinstance(config.get("inputs"), list):
        return [_spec(i["name"], i.get("shape"), preprocessing) for i in config["inputs"]]
    size = config.get("input_size") or [-1, -1]
    name = next(iter(declared), "data")
    batch = (declared.get(name) or [1])[0]
    return [_spec(name, (int(batch), 3, *size), preprocessing)]


def conversion_inputs(conv: Any, name: str = LEGACY_INPUT_NAME) -> list[dict[str, Any]]:
    """``meta["inputs"]`` of a TF / Keras conversion: its own ``inputs`` (InputSpecs or dicts) when it has them,
    else one 3-channel image of ``config["input_size"]`` (free size when none) with its preprocessing."""
    own = getattr(conv, "inputs", None)
    if own:
        return [i.to_meta() if isinstance(i, InputSpec) else dict(i) for i in own]
    meta = {"config": {}, "input_size": conv.config.get("input_size"), "preprocessing": conv.preprocessing}
    return [InputSpec(name, s.shape, s.kind, s.preprocessing).to_meta() for s in input_specs(meta)]


def specs_to_meta(specs: Sequence[InputSpec]) -> list[dict[str, Any]]:
    """``meta["inputs"]`` for ``specs`` (what converters record)."""
    return [s.to_meta() for s in specs]


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``"data:1,3,224,224"`` -> ``("data", (1, 3, 224, 224))``; ``-1`` marks a free axis. The name is what
    comes before the last ``:`` (so it may hold one)."""
    name, _, dims_text = (text or "").rpartition(":")
    name = name.strip()
    try:
        dims = tuple(int(v) for v in dims_text.split(","))
    except ValueError:
        dims = ()
    if not name or not dims:
        raise InputShapeError(f"--input-shape must be NAME:N,C,H,W (e.g. data:1,3,224,224), got {text!r}")
    if len(dims) < 2 or any(d == 0 or d < -1 for d in dims):
        raise InputShapeError(
            f"--input-shape {text!r}: give at least N and C, each a positive size or -1 (free), got {list(dims)}"
        )
    return name, dims


def apply_input_shapes(
    specs: Sequence[InputSpec], given: Mapping[str, Sequence[int]] | Sequence[str], source: str = "the net"
) -> list[InputSpec]:
    """``specs`` with the user's ``--input-shape`` values (texts or name -> shape) in place of the declared ones.

    An unknown name, or a rank/channel count that contradicts a declared shape, raises :class:`InputShapeError`.
    """
    if not isinstance(given, Mapping):
        parsed = [parse_input_shape(t) for t in given]
        given = dict(parsed)
        if len(given) != len(parsed):
            raise InputShapeError("--input-shape names the same input twice")
    names = [s.name for s in specs]
    out = []
    for spec in specs:
        if spec.name not in given:
            out.append(spec)
            continue
        dims = tuple(int(d) for d in given[spec.name])
        declared = spec.shape
        if len(declared) == len(dims):
            for axis, (a, b) in enumerate(zip(declared, dims, strict=True)):
                if axis and a > 0 and b > 0 and a != b:
                    raise InputShapeError(
                        f"--input-shape {spec.name}:{','.join(map(str, dims))}: axis {axis} is {a} in {source} "
                        f"(declared {list(declared)})"
                    )
        out.append(InputSpec(spec.name, dims, input_kind(dims), dict(spec.preprocessing)))
    unknown = [n for n in given if n not in names]
    if unknown:
        raise InputShapeError(f"--input-shape names unknown input(s) {unknown}; {source} has inputs {names}")
    return out


def check_declared(
    declared: Mapping[str, Sequence[int] | None], given: Mapping[str, Sequence[int]], source: str = "the net"
) -> None:
    """Refuse ``given`` shapes that contradict the ``declared`` ones (names not declared are not checked here)."""
    specs = [InputSpec(n, tuple(s or ())) for n, s in declared.items() if n in given]
    apply_input_shapes(specs, {n: given[n] for n in declared if n in given}, source=source)


def concrete_shape(spec: InputSpec, size: Sequence[int] | None = None, batch: int | None = None) -> tuple[int, ...]:
    """``spec.shape`` with free axes filled: N -> ``batch`` or 1, the axes after C -> ``size`` where it has as
    many values ((H, W) for images, (L,) for 1-D signals), other free axes -> :data:`DEFAULT_SIZE`."""
    dims = list(spec.shape)
    if size is not None:
        size = [int(s) for s in size]
        if len(size) == len(dims) - 2:  # (H, W) for a 2-D input, (L,) for a 1-D one; other ranks keep theirs
            dims[2:] = size
    if batch is not None:
        dims[0] = int(batch)
    if len(dims) >= 2 and dims[1] < 0:
        raise InputShapeError(
            f"input {spec.name!r} has no declared channel count: give --input-shape {spec.name}:N,C,..."
        )
    for i, d in enumerate(dims):
        if d < 0:
            dims[i] = 1 if i == 0 else DEFAULT_SIZE
    return tuple(dims)


def _image_pixels(rgb: np.ndarray, channels: int) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> (H, W, channels) float32 0-255: grey (ITU-R 601 luma) for 1 channel."""
    x = rgb.astype(np.float32)
    if channels == 1:
        return (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    return x


def image_input(rgb: np.ndarray, spec: InputSpec, size: Sequence[int] | None = None) -> np.ndarray:
    """An RGB uint8 image as the float32 (1, C, H, W) input ``spec`` takes, with its preprocessing.

    Only image inputs (1 or 3 channels) accept an image; others raise :class:`InputShapeError`. The image
    is scaled down / padded to the input's size when one is declared (or given as ``size``).
    """
    from segconvert.parity.inputs import preprocess

    if not spec.is_image:
        raise InputShapeError(
            f"input {spec.name!r} is a {spec.describe().split(' ', 1)[1]} tensor, not a 1- or 3-channel image: "
            "an image file cannot be given for it"
        )
    hw = concrete_shape(spec, size)[2:] if (size or all(d > 0 for d in spec.shape[2:])) else None
    pre = dict(spec.preprocessing)
    if spec.channels == 3:
        return preprocess(rgb, pre, hw)
    grey = _image_pixels(rgb, 1)
    three = np.repeat(np.clip(np.rint(grey), 0, 255).astype(np.uint8), 3, axis=2)
    pre1 = {**pre, "channel_order": "RGB"}
    for key in ("mean", "std"):
        v = pre1.get(key)
        if v is not None and len(v) == 1:
            pre1[key] = [float(v[0])] * 3
    return np.ascontiguousarray(preprocess(three, pre1, hw)[:, :1])


def synthetic_inputs(
    specs: Sequence[InputSpec], size: Sequence[int] | None = None, seed: int = 0, batch: int | None = None
) -> list[Any]:
    """Seeded check inputs (float32 torch tensors) of the specs' shapes, free axes filled by :func:`concrete_shape`.

    Image inputs get a smooth synthetic picture with the input's preprocessing (no preprocessing: pixel values
    0-255), which for one 3-channel input equals the old single-image check input. Other 4-D inputs get the same
    kind of smooth picture per channel, scaled to about [-1, 1]; other ranks get seeded standard normal values.
    """
    import torch

    from segconvert.parity.inputs import synthetic_image

    out = []
    for i, spec in enumerate(specs):
        shape = concrete_shape(spec, size, batch)
        s = seed + 101 * i
        if len(shape) == 4:
            n, c, h, w = shape
            if spec.is_image:
                x = np.concatenate([image_input(synthetic_image(h, w, s + j), spec, (h, w)) for j in range(n)])
            else:
                groups = -(-c // 3)  # 3 channels per synthetic picture
                pics = [[synthetic_image(h, w, s + 7 * j + k) for k in range(groups)] for j in range(n)]
                arr = np.stack([np.concatenate(p, axis=2).transpose(2, 0, 1)[:c] for p in pics])
                x = arr.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
        else:
            x = np.random.default_rng(s).standard_normal(shape).astype(np.float32)
        out.append(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    return out

"""Shared steps of the parity suites: load the user's net once, convert it, build the model."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np


@functools.cache
def load_caffe(prototxt: Path, caffemodel: Path | None) -> Any:
    from segconvert.graph import load_net

    return load_net(prototxt, caffemodel)


@functools.cache
def convert(prototxt: Path, caffemodel: Path, arch: str | None) -> Any:
    """What ``caffe2torch`` does: the named architecture when detected (or ``arch`` given), else generic."""
    from segconvert.converters import convert_caffe_generic, convert_caffe_net, detect_caffe_arch
    from segconvert.errors import ConversionError

    net = load_caffe(prototxt, caffemodel)
    if arch == "caffe_generic":
        return convert_caffe_generic(net)
    if arch is None:
        try:
            detect_caffe_arch(net)
        except ConversionError:
            return convert_caffe_generic(net)
    return convert_caffe_net(net, arch=arch)


def load_dump(folder: Path, net: Any) -> tuple[np.ndarray, Any, dict[str, Any]]:
    """``input.npy``, ``outputs.npz`` and ``meta.json`` (made from the net's layer list when absent)."""
    inp = np.load(folder / "input.npy")
    outputs = np.load(folder / "outputs.npz")
    meta_file = folder / "meta.json"
    if meta_file.exists():
        meta = json.loads(meta_file.read_text())
    else:
        meta = {"layers": [{"name": layer.name, "type": layer.type, "tops": layer.tops} for layer in net.layers]}
    return inp, outputs, meta

"""Shared steps of the parity suites: load the user's net once, convert it, build the model."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any


@functools.cache
def load_caffe(prototxt: Path, caffemodel: Path | None) -> Any:
    from segconvert.graph import load_net

    return load_net(prototxt, caffemodel)


@functools.cache
def convert(prototxt: Path, caffemodel: Path, arch: str | None) -> Any:
    """What ``caffe2torch`` does: the named architecture when detected (or ``arch`` given), else generic."""
    from segconvert.converters.caffe_auto import convert_caffe_auto

    generic = "--caffe-arch caffe_generic" if arch == "caffe_generic" else None
    return convert_caffe_auto(load_caffe(prototxt, caffemodel), None if generic else arch, generic)[0]

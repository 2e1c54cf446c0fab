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


def source_files(prototxt: Path | None, caffemodel: Path | None, tf_checkpoint: Path | None, keras_h5: Path | None):
    """``(format, files)`` of the sources given on the command line (a TF prefix expands to its files), or
    ``(None, [])``; more than one format given is an error."""
    given = {
        "caffe": [p for p in (prototxt, caffemodel) if p is not None],
        "tf": [tf_checkpoint] if tf_checkpoint is not None else [],
        "keras": [keras_h5] if keras_h5 is not None else [],
    }
    kinds = [k for k, v in given.items() if v]
    if len(kinds) > 1:
        raise ValueError(f"give the sources of one format, not {' and '.join(kinds)}")
    if not kinds:
        return None, []
    if kinds[0] == "tf":
        from segconvert.formats.tf_checkpoint import open_checkpoint

        with open_checkpoint(tf_checkpoint) as ckpt:
            return "tf", [Path(f) for f in ckpt.files]
    return kinds[0], given[kinds[0]]


def reconvert(kind: str, meta: dict[str, Any], files: list[Path], arch: str | None = None) -> dict[str, Any]:
    """The state_dict a fresh conversion of ``files`` gives with the options ``meta`` records."""
    cfg = meta.get("config", {})
    if kind == "caffe":
        prototxt, caffemodel = files  # source_files' order; both are needed to convert
        return dict(convert(prototxt, caffemodel, arch or meta["arch"]).state_dict)
    if kind == "tf":
        from segconvert.parity.verify_tf import _tf_conversion

        return dict(_tf_conversion(meta, files[0]).state_dict)
    from segconvert.converters.keras import convert_keras_pspnet
    from segconvert.formats.keras_h5 import open_keras_weights

    if meta["arch"] == "keras_generic":  # the graph comes from the file itself (full-model .h5 / .keras)
        from segconvert.converters.keras_generic import convert_keras_generic

        nhwc = bool(meta.get("keras", {}).get("nhwc", False))
        return dict(convert_keras_generic(files[0], nhwc=nhwc).state_dict)
    if not str(meta["arch"]).startswith("pspnet"):
        raise ValueError(f"no Keras re-conversion for arch {meta['arch']!r}")
    conv = convert_keras_pspnet(
        open_keras_weights(files[0]),
        arch=meta["arch"],
        input_size=cfg.get("input_size") or 473,
        bn_eps=cfg.get("bn_eps"),
    )
    return dict(conv.state_dict)

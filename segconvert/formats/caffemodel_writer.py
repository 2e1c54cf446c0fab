"""Write ``.caffemodel`` files in the layout Caffe's ``Net::ToProto`` produces (V2 ``layer`` records).

Used to build test and benchmark inputs and the demo's embedded default model. Blob data are written
as one packed float32 record per blob, streamed from the arrays (no whole-file buffer); the output is
written to a temporary file and renamed, so a failed write leaves nothing behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from segconvert.fileio import open_mode
from segconvert.formats.protowire import encode_varint


def _ld_header(number: int, length: int) -> bytes:
    return encode_varint((number << 3) | 2) + encode_varint(length)


def _blob_bytes_header(arr: np.ndarray) -> tuple[bytes, int]:
    """BlobProto header (shape + data tag/length) and its total encoded length including the data."""
    dims = b"".join(encode_varint(int(d)) for d in arr.shape)
    shape = _ld_header(1, len(dims)) + dims
    head = _ld_header(7, len(shape)) + shape + _ld_header(5, arr.size * 4)
    return head, len(head) + arr.size * 4


def write_caffemodel(path: str | os.PathLike[str], layers: Iterable[tuple[Any, list[np.ndarray]]]) -> Path:
    """Write ``(LayerParameter, blobs)`` pairs; each LayerParameter is written without its blobs."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        open_mode(tmp)
        with os.fdopen(fd, "wb") as fh:
            for param, blobs in layers:
                head = param.SerializeToString()
                arrays = [np.ascontiguousarray(b, dtype="<f4") for b in blobs]
                encoded = [_blob_bytes_header(a) for a in arrays]
                body_len = len(head) + sum(len(_ld_header(7, n)) + n for _, n in encoded)
                fh.write(_ld_header(100, body_len))
                fh.write(head)
                for arr, (blob_head, n) in zip(arrays, encoded, strict=True):
                    fh.write(_ld_header(7, n))
                    fh.write(blob_head)
                    fh.write(memoryview(arr).cast("B"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def random_weights_for(net: Any, seed: int = 0) -> list[tuple[Any, list[np.ndarray]]]:
    """Random weights in the real layout for every layer of a :class:`~segconvert.graph.Net` that needs them.

    Shapes come from Caffe's shape inference on the prototxt; BN/BatchNorm statistics are kept positive.
    MSC copies that share their owner's parameters by name get the owner's values, as Caffe saves them.
    """
    rng = np.random.default_rng(seed)
    out = []
    by_name: dict[str, list[np.ndarray]] = {}
    owners: dict[str, str] = {}  # param name -> first layer declaring it (Caffe's sharing rule)
    for layer in net.layers:
        shapes = layer.expected_blob_shapes or []
        if not shapes:
            continue
        named = [n for n in layer.param_names if n]
        owner = owners.get(named[0]) if named and all(n in owners for n in named) else layer.shared_from
        for n in named:
            owners.setdefault(n, layer.name)
        if owner and owner in by_name and owner != layer.name:
            blobs = by_name[owner]
        else:
            blobs = []
            for i, shape in enumerate(shapes):
                if layer.type == "BatchNorm":
                    blobs.append(
                        np.full(shape, 1.0, "f4") if i == 2 else (np.abs(rng.standard_normal(shape)) + 0.5).astype("f4")
                    )
                elif layer.type == "BN" and i == 3:
                    blobs.append(rng.uniform(0.5, 1.5, shape).astype("f4"))
                else:
                    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
                    blobs.append(
                        rng.standard_normal(shape, dtype=np.float32) * np.float32((2.0 / max(fan_in, 1)) ** 0.5)
                    )
        by_name[layer.name] = blobs
        param = type(layer.param)()
        param.CopyFrom(layer.param)
        out.append((param, blobs))
    return out

"""Streaming ``.caffemodel`` reader: walks the protobuf wire format of a memory-mapped file.

Every blob's values are a read-only numpy array viewing the memory map (no Python floats, no second
copy, no 2 GB protobuf ceiling). Only the small non-blob part of each layer goes through protobuf.
Both ``layer`` (V2, field 100) and legacy ``layers`` (V1, field 2) are read; V1 layers are upgraded.
NVCaffe's ``raw_data`` blobs (``raw_data_type`` FLOAT16 / FLOAT / DOUBLE) are read too: FLOAT views the map,
FLOAT16 is widened to float32 (exact), DOUBLE stays float64 like ``double_data``; a note says so.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from segconvert.errors import CaffeFormatError
from segconvert.formats import protowire as pw
from segconvert.formats.caffe_schema import (
    ALT_FORK_NUMBERS,
    BVLC_INPUT_PARAM,
    INPUT_PARAM_PRIVATE,
    message_class,
)
from segconvert.formats.caffe_schema_forks import NVCAFFE_PRIVATE, NVCAFFE_VARINT_FIELDS
from segconvert.formats.caffe_upgrade import upgrade_v1_layer

# NetParameter fields
_NET_LAYER, _NET_LAYERS_V1 = 100, 2
# LayerParameter / V1LayerParameter
_V2_NAME, _V2_TYPE, _V2_BLOBS = 1, 2, 7
_V1_NAME, _V1_TYPE, _V1_BLOBS = 4, 5, 6
# BlobProto
_B_NUM, _B_CHANNELS, _B_HEIGHT, _B_WIDTH = 1, 2, 3, 4
_B_DATA, _B_DIFF, _B_SHAPE, _B_DOUBLE, _B_DOUBLE_DIFF = 5, 6, 7, 8, 9
_B_RAW_TYPE, _B_RAW_DIFF_TYPE, _B_RAW, _B_RAW_DIFF = 10, 11, 12, 13  # NVCaffe
# NVCaffe ``Type`` -> (name, little-endian dtype); DOUBLE (0) is the proto default.
_RAW_TYPES = {0: ("DOUBLE", "<f8"), 1: ("FLOAT", "<f4"), 2: ("FLOAT16", "<f2")}
_RAW_OTHER = {3: "INT", 4: "UINT", 5: "BOOL"}

_MAGIC = {
    b"\x89HDF": "an HDF5 file (Keras weights?)",
    b"PK\x03\x04": "a zip archive (a PyTorch .pth?)",
    b"\x80\x02": "a Python pickle",
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
}


@dataclass
class CaffeModelLayer:
    """One layer of a caffemodel: its parameters (V2 message, without blobs) and its blobs."""

    name: str
    type: str
    blobs: list[np.ndarray]
    param: Any
    offset: int  # byte offset of the layer record in the file
    blob_offsets: list[int] = field(default_factory=list)
    v1: bool = False


@dataclass
class CaffeModel:
    path: Path
    name: str
    layers: list[CaffeModelLayer]
    net_param: Any  # NetParameter with the non-layer fields (name, input, input_dim, ...)
    format: str  # "V2", "V1" or "V1+V2"
    size: int
    warnings: list[str] = field(default_factory=list)

    def layer(self, name: str) -> CaffeModelLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    @property
    def num_blobs(self) -> int:
        return sum(len(layer.blobs) for layer in self.layers)

    @property
    def num_params(self) -> int:
        return sum(int(b.size) for layer in self.layers for b in layer.blobs)


def _touch_strings(msg: Any) -> None:
    """Decode every string field now: protobuf checks UTF-8 lazily, at first access."""
    for fd, value in msg.ListFields():
        repeated = _is_repeated(fd)
        if fd.message_type is not None:
            for sub in value if repeated else (value,):
                _touch_strings(sub)
        elif fd.type == fd.TYPE_STRING:
            list(value) if repeated else str(value)


def _is_repeated(fd: Any) -> bool:
    flag = getattr(fd, "is_repeated", None)  # protobuf >= 5.28; ``label`` is gone in 7
    return bool(flag) if flag is not None else fd.label == fd.LABEL_REPEATED


def read_caffemodel(path: str | os.PathLike[str]) -> CaffeModel:
    """Read a binary ``.caffemodel``; raises :class:`CaffeFormatError` for anything malformed."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise CaffeFormatError(f"cannot open: {exc.strerror}", file=path) from None
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise CaffeFormatError("empty file, not a caffemodel", file=path, offset=0)
        buf = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    return _Reader(path, buf, size).read()


class _Reader:
    def __init__(self, path: Path, buf: mmap.mmap, size: int) -> None:
        self.path = path
        self.buf = buf
        self.size = size
        self.warnings: list[str] = []
        self.raw_counts: dict[str, int] = {}  # NVCaffe raw_data type name -> blobs read
        self.raw_layers: list[str] = []

    def fail(self, message: str, offset: int | None, layer: str | None = None) -> CaffeFormatError:
        return CaffeFormatError(message, file=self.path, offset=offset, layer=layer)

    def read(self) -> CaffeModel:
        head = bytes(self.buf[:8])
        for magic, what in _MAGIC.items():
            if head.startswith(magic):
                raise self.fail(f"this is {what}, not a caffemodel", 0)
        layers: list[CaffeModelLayer] = []
        other: list[bytes] = []
        seen_v1 = seen_v2 = False
        known = 0
        try:
            for fld in pw.iter_fields(self.buf, 0, self.size):
                if fld.number == _NET_LAYER and fld.wire_type == pw.LEN:
                    layers.append(self.read_layer(fld, v1=False))
                    seen_v2 = True
                elif fld.number == _NET_LAYERS_V1 and fld.wire_type == pw.LEN:
                    layers.append(self.read_layer(fld, v1=True))
                    seen_v1 = True
                else:
                    other.append(bytes(self.buf[fld.tag_start : fld.end]))
                    if fld.number in (1, 3, 4, 5, 6, 7, 8):
                        known += 1
        except pw.WireError as exc:
            raise self.fail(self._describe(exc), exc.offset, self._peek_layer_name(exc.offset)) from None
        if not layers and not known:
            raise self.fail("no Caffe NetParameter fields found: not a caffemodel", 0)
        net_param = message_class("NetParameter")()
        try:
            net_param.ParseFromString(b"".join(other))
            _touch_strings(net_param)
        except (DecodeError, UnicodeDecodeError) as exc:
            raise self.fail(f"cannot decode the net header: {exc}", 0) from None
        fmt = "V1+V2" if seen_v1 and seen_v2 else ("V1" if seen_v1 else "V2")
        if self.raw_counts:
            self.warnings.append(self._raw_note())
        return CaffeModel(
            path=self.path,
            name=net_param.name,
            layers=layers,
            net_param=net_param,
            format=fmt,
            size=self.size,
            warnings=self.warnings,
        )

    def _raw_note(self) -> str:
        kinds = ", ".join(f"{n} {name}" for name, n in sorted(self.raw_counts.items()))
        what = {
            "FLOAT16": "FLOAT16 widened to float32 (exact)",
            "DOUBLE": "DOUBLE read as float64 (converted weights are float32, as for double_data)",
        }
        how = "; ".join(what[k] for k in sorted(self.raw_counts) if k in what)
        layers = ", ".join(self.raw_layers[:5]) + (
            f" and {len(self.raw_layers) - 5} more" if len(self.raw_layers) > 5 else ""
        )
        return f"NVCaffe raw_data blobs ({kinds}) in layer(s) {layers}" + (f": {how}" if how else "")

    def _peek_layer_name(self, offset: int) -> str | None:
        """Name of a layer record starting at ``offset`` whose length runs past the end (truncated file)."""
        try:
            tag, pos = pw.read_varint(self.buf, offset, self.size)
            if tag >> 3 not in (_NET_LAYER, _NET_LAYERS_V1) or tag & 7 != pw.LEN:
                return None
            _, pos = pw.read_varint(self.buf, pos, self.size)
            name_no = _V2_NAME if tag >> 3 == _NET_LAYER else _V1_NAME
            for fld in pw.iter_fields(self.buf, pos, self.size):
                if fld.number == name_no and fld.wire_type == pw.LEN:
                    return self._text(fld)
        except (pw.WireError, CaffeFormatError):
            return None
        return None

    def _describe(self, exc: pw.WireError) -> str:
        msg = exc.message
        if "runs past the end" in msg or "truncated" in msg:
            msg = "truncated or corrupt file: " + msg
        if exc.offset < 16:
            msg += " (the file does not start like a binary caffemodel; a prototxt or another format?)"
        return msg

    def read_layer(self, rec: pw.Field, *, v1: bool) -> CaffeModelLayer:
        name_no, type_no, blobs_no = (_V1_NAME, _V1_TYPE, _V1_BLOBS) if v1 else (_V2_NAME, _V2_TYPE, _V2_BLOBS)
        fields = list(pw.iter_fields(self.buf, rec.start, rec.end))
        name = ""
        ltype: str | int = ""
        for fld in fields:
            if fld.number == name_no and fld.wire_type == pw.LEN:
                name = self._text(fld)
            elif fld.number == type_no:
                ltype = fld.value if v1 else self._text(fld)
        blobs: list[np.ndarray] = []
        offsets: list[int] = []
        rest: list[bytes] = []
        raw_before = sum(self.raw_counts.values())
        for fld in fields:
            if fld.number == blobs_no and fld.wire_type == pw.LEN:
                try:
                    blobs.append(self.read_blob(fld))
                except pw.WireError as exc:
                    raise self.fail(f"blob {len(blobs)}: {exc.message}", exc.offset, name or None) from None
                offsets.append(fld.tag_start)
            elif not v1 and isinstance(ltype, str) and fld.wire_type == pw.LEN:
                rest.append(self._fork_field(ltype, fld))
            elif not v1 and fld.wire_type == pw.VARINT and fld.number in NVCAFFE_VARINT_FIELDS:
                rest.append(pw.retag(self.buf, fld, NVCAFFE_PRIVATE + fld.number))
            else:
                rest.append(bytes(self.buf[fld.tag_start : fld.end]))
        if sum(self.raw_counts.values()) > raw_before:
            self.raw_layers.append(name)
        param = self._parse_param(b"".join(rest), v1, name, rec.tag_start)
        try:
            _touch_strings(param)
            if v1:
                param = upgrade_v1_layer(param)
            _touch_strings(param)
        except UnicodeDecodeError:
            raise self.fail("a text field of the layer is not valid UTF-8", rec.tag_start) from None
        return CaffeModelLayer(
            name=param.name,
            type=param.type,
            blobs=blobs,
            param=param,
            offset=rec.tag_start,
            blob_offsets=offsets,
            v1=v1,
        )

    def _fork_field(self, ltype: str, fld: pw.Field) -> bytes:
        """Decode field #143 (and older fork numbers) by layer type, as the forks disagree with BVLC."""
        if ltype == "Input" and fld.number == BVLC_INPUT_PARAM:
            return pw.retag(self.buf, fld, INPUT_PARAM_PRIVATE)
        alt = ALT_FORK_NUMBERS.get(ltype, {})
        if fld.number in alt:
            return pw.retag(self.buf, fld, alt[fld.number])
        return bytes(self.buf[fld.tag_start : fld.end])

    def _text(self, fld: pw.Field) -> str:
        try:
            return bytes(self.buf[fld.start : fld.end]).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("layer name/type is not UTF-8 text", fld.tag_start) from None

    def _parse_param(self, data: bytes, v1: bool, name: str, offset: int) -> Any:
        cls = message_class("V1LayerParameter" if v1 else "LayerParameter")
        msg = cls()
        try:
            msg.ParseFromString(data)
            return msg
        except DecodeError:
            pass
        # A fork field at a number our schema gives another message: keep what decodes, say what did not.
        msg = cls()
        dropped = []
        for fld in pw.iter_fields(data, 0, len(data)):
            part = cls()
            try:
                part.ParseFromString(data[fld.tag_start : fld.end])
            except DecodeError:
                dropped.append(fld.number)
                continue
            msg.MergeFrom(part)
        self.warnings.append(f"layer '{name}' (byte offset {offset}): ignored undecodable parameter field(s) {dropped}")
        return msg

    def read_blob(self, rec: pw.Field) -> np.ndarray:
        buf = self.buf
        legacy = [None, None, None, None]
        dims: list[int] | None = None
        data: list[np.ndarray] = []
        doubles: list[np.ndarray] = []
        raw: pw.Field | None = None
        raw_type = 0
        for fld in pw.iter_fields(buf, rec.start, rec.end):
            n, wt = fld.number, fld.wire_type
            if n == _B_DATA:
                data.append(self._values(fld, pw.I32, "<f4"))
            elif n == _B_DOUBLE:
                doubles.append(self._values(fld, pw.I64, "<f8"))
            elif n == _B_SHAPE and wt == pw.LEN:
                dims = (dims or []) + self._shape(fld)
            elif n in (_B_NUM, _B_CHANNELS, _B_HEIGHT, _B_WIDTH) and wt == pw.VARINT:
                legacy[n - 1] = pw.as_int32(fld.value)
            elif n in (_B_DIFF, _B_DOUBLE_DIFF):
                continue
            elif n == _B_RAW and wt == pw.LEN:
                raw = fld
            elif n == _B_RAW_TYPE and wt == pw.VARINT:
                raw_type = pw.as_int32(fld.value)
        if any(v is not None for v in legacy):
            shape = tuple(int(v or 0) for v in legacy)
        else:
            shape = tuple(dims or ())
        if any(d < 0 for d in shape):
            raise pw.WireError(f"negative blob dimension in shape {shape}", rec.tag_start)
        values = doubles if any(len(d) for d in doubles) else data
        if raw is not None:
            if any(len(v) for v in values):
                raise pw.WireError("blob has both data and NVCaffe raw_data", rec.tag_start)
            values = [self._raw_values(raw, raw_type)]
        arr = values[0] if len(values) == 1 else np.concatenate(values) if values else np.empty(0, "<f4")
        count = 1
        for d in shape:
            count *= d
        if count != arr.size:
            raise pw.WireError(
                f"blob data length {arr.size} disagrees with its shape {list(shape)} ({count} values)",
                rec.tag_start,
            )
        return arr.reshape(shape)

    def _raw_values(self, fld: pw.Field, raw_type: int) -> np.ndarray:
        """NVCaffe ``raw_data`` of ``raw_data_type``: FLOAT viewed, FLOAT16 widened to float32, DOUBLE as is."""
        if raw_type not in _RAW_TYPES:
            what = _RAW_OTHER.get(raw_type, f"value {raw_type}")
            raise pw.WireError(f"NVCaffe raw_data_type {what} is not a floating-point type", fld.tag_start)
        type_name, dtype = _RAW_TYPES[raw_type]
        itemsize = int(dtype[-1])
        nbytes = fld.end - fld.start
        if nbytes % itemsize:
            raise pw.WireError(
                f"NVCaffe raw_data of {nbytes} bytes is not a multiple of {itemsize} ({type_name})", fld.tag_start
            )
        arr = np.frombuffer(self.buf, dtype=dtype, count=nbytes // itemsize, offset=fld.start)
        self.raw_counts[type_name] = self.raw_counts.get(type_name, 0) + 1
        return arr.astype(np.float32) if type_name == "FLOAT16" else arr

    def _values(self, fld: pw.Field, fixed_type: int, dtype: str) -> np.ndarray:
        itemsize = 4 if dtype == "<f4" else 8
        if fld.wire_type == pw.LEN:  # packed: one record of N little-endian values
            nbytes = fld.end - fld.start
            if nbytes % itemsize:
                raise pw.WireError(f"packed data of {nbytes} bytes is not a multiple of {itemsize}", fld.tag_start)
            return np.frombuffer(self.buf, dtype=dtype, count=nbytes // itemsize, offset=fld.start)
        if fld.wire_type == fixed_type:  # unpacked: one tag per value
            return np.frombuffer(self.buf, dtype=dtype, count=1, offset=fld.start)
        raise pw.WireError(f"blob values with wire type {fld.wire_type}", fld.tag_start)

    def _shape(self, rec: pw.Field) -> list[int]:
        dims: list[int] = []
        for fld in pw.iter_fields(self.buf, rec.start, rec.end):
            if fld.number != 1:
                continue
            if fld.wire_type == pw.LEN:  # packed int64
                pos = fld.start
                while pos < fld.end:
                    value, pos = pw.read_varint(self.buf, pos, fld.end)
                    dims.append(pw.as_int32(value))
            elif fld.wire_type == pw.VARINT:
                dims.append(pw.as_int32(fld.value))
        return dims

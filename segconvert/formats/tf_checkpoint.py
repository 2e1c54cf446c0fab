"""TensorFlow checkpoint reader that needs no TensorFlow.

Reads both formats ``tf.compat.v1.train.Saver`` writes:

* **V2 bundle** (TF >= 0.12 default): ``<prefix>.index`` is an SSTable mapping each tensor name to a
  ``BundleEntryProto`` (dtype, shape, shard, offset, size, masked CRC32C, slices); the tensor bytes live in
  ``<prefix>.data-NNNNN-of-MMMMM`` shards, which are memory-mapped so that arrays are zero-copy views.
* **V1 single file** (the 2016 TF-Slim releases, e.g. ``resnet_v1_50.ckpt``): one SSTable whose first
  entry is a ``SavedTensorSlices`` with the metadata of every tensor, followed by one ``SavedTensorSlices``
  per slice holding a ``TensorProto`` (packed ``float_val`` etc., viewed in place where the layout allows).

Partitioned (sliced) variables are reassembled. Checksums are verified lazily, on first read of each tensor
(V2) or table block (V1); ``verify=False`` skips them. Corrupt or truncated input raises
:class:`~segconvert.errors.CheckpointError` naming the file, tensor key and byte offset.

>>> ckpt = open_checkpoint("resnet_v1_50.ckpt")          # or "model.ckpt" / "model.ckpt.index"
>>> ckpt["resnet_v1_50/conv1/weights"].shape
(7, 7, 3, 64)
"""

from __future__ import annotations

import glob
import mmap
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segconvert.errors import CheckpointError
from segconvert.formats._tf_table import (
    Corrupt,
    Fields,
    Table,
    crc32c,
    decode_slice_key,
    decode_varints,
    mask_crc,
    parse_message,
    read_varint,
    to_int64,
    unmask_crc,
)

__all__ = ["TFCheckpoint", "open_checkpoint", "describe", "DTYPES"]

# TF DataType enum -> (name, numpy dtype or None when there is no direct numpy equivalent)
DTYPES: dict[int, tuple[str, np.dtype | None]] = {
    1: ("float32", np.dtype("<f4")),
    2: ("float64", np.dtype("<f8")),
    3: ("int32", np.dtype("<i4")),
    4: ("uint8", np.dtype("u1")),
    5: ("int16", np.dtype("<i2")),
    6: ("int8", np.dtype("i1")),
    7: ("string", None),
    8: ("complex64", np.dtype("<c8")),
    9: ("int64", np.dtype("<i8")),
    10: ("bool", np.dtype("?")),
    11: ("qint8", np.dtype("i1")),
    12: ("quint8", np.dtype("u1")),
    13: ("qint32", np.dtype("<i4")),
    14: ("bfloat16", None),
    15: ("qint16", np.dtype("<i2")),
    16: ("quint16", np.dtype("<u2")),
    17: ("uint16", np.dtype("<u2")),
    18: ("complex128", np.dtype("<c16")),
    19: ("float16", np.dtype("<f2")),
    20: ("resource", None),
    21: ("variant", None),
    22: ("uint32", np.dtype("<u4")),
    23: ("uint64", np.dtype("<u8")),
    24: ("float8_e5m2", None),
    25: ("float8_e4m3fn", None),
}
_ITEMSIZE = {"bfloat16": 2, "float8_e5m2": 1, "float8_e4m3fn": 1}
_STRING, _BFLOAT16 = 7, 14

Extents = tuple[tuple[int, int], ...]  # (start, length) per dimension, always explicit


def _dtype_name(code: int) -> str:
    return DTYPES.get(code, (f"dtype_{code}", None))[0]


def _itemsize(code: int) -> int | None:
    name, npd = DTYPES.get(code, ("", None))
    return npd.itemsize if npd is not None else _ITEMSIZE.get(name)


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@dataclass
class _Tensor:
    """What the reader knows about one tensor (values are located lazily)."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    nbytes: int
    # V2: (shard, offset, size, masked crc) for an unsliced tensor; slices -> list of (extents, _Tensor)
    shard: int = 0
    offset: int = 0
    size: int = 0
    crc: int | None = None
    slices: list[tuple[Extents, object]] = field(default_factory=list)


class TFCheckpoint(Mapping):
    """Mapping tensor name -> ``np.ndarray`` over a TF checkpoint (V1 or V2), read lazily.

    Arrays are read-only views of the memory-mapped files where the layout allows (V2 always, V1 for
    float/double tensors stored in one slice); otherwise fresh arrays. ``bfloat16`` tensors are returned
    widened to ``float32`` (exact); ``dtype(name)`` still reports ``"bfloat16"``. String tensors come back as
    ``object`` arrays of ``bytes``.
    """

    format: str

    def __init__(self, files: list[Path], *, verify: bool = True) -> None:
        self.files = files
        self.verify = verify
        self._tensors: dict[str, _Tensor] = {}
        self._maps: list[mmap.mmap] = []
        self._fhs: list = []
        self._verified: set[tuple] = set()

    # -- mapping protocol ------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> np.ndarray:
        t = self._tensors.get(name)
        if t is None:
            raise KeyError(name)
        return self._read(t)

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def __repr__(self) -> str:
        return f"<TFCheckpoint {self.format} {str(self.files[0])!r}: {len(self)} tensors>"

    # -- metadata --------------------------------------------------------------------------------------
    def shape(self, name: str) -> tuple[int, ...]:
        return self._get(name).shape

    def dtype(self, name: str) -> str:
        """TF dtype name: ``float32``, ``int64``, ``bfloat16``, ``string``, ..."""
        return _dtype_name(self._get(name).dtype)

    def nbytes(self, name: str) -> int:
        return self._get(name).nbytes

    def entries(self) -> list[tuple[str, tuple[int, ...], str, int]]:
        """``(name, shape, dtype, nbytes)`` for every tensor, in key order."""
        return [(t.name, t.shape, _dtype_name(t.dtype), t.nbytes) for t in self._tensors.values()]

    def verify_all(self) -> None:
        """Read every tensor with checksum verification (raises CheckpointError on the first mismatch)."""
        saved = self.verify
        self.verify = True
        try:
            for name in self._tensors:
                self[name]
        finally:
            self.verify = saved

    def _get(self, name: str) -> _Tensor:
        t = self._tensors.get(name)
        if t is None:
            raise KeyError(name)
        return t

    # -- lifetime --------------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the files. Arrays still referencing a map keep it alive until they are dropped."""
        for m in self._maps:
            try:
                m.close()
            except BufferError:  # views still exported: the map is freed with the last of them
                pass
        for fh in self._fhs:
            fh.close()
        self._maps, self._fhs = [], []

    def __enter__(self) -> TFCheckpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _map(self, path: Path, populate: bool = False) -> mmap.mmap | bytes:
        """Memory-map ``path`` read-only; ``populate`` pre-faults it (when every byte will be read anyway)."""
        try:
            fh = open(path, "rb")
        except OSError as exc:
            raise CheckpointError(f"cannot open: {exc.strerror}", file=path) from None
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            fh.close()
            return b""
        if populate and hasattr(mmap, "MAP_POPULATE"):  # Linux
            m = mmap.mmap(fh.fileno(), 0, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=mmap.PROT_READ)
        else:
            m = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self._fhs.append(fh)
        self._maps.append(m)
        return m

    def _read(self, t: _Tensor) -> np.ndarray:
        raise NotImplementedError

    def _assemble(self, t: _Tensor, parts: list[tuple[Extents, np.ndarray]], file: Path) -> np.ndarray:
        """Copy slices into a full tensor after checking that they tile it."""
        total = _prod(t.shape)
        covered = 0
        for ext, arr in parts:
            if len(ext) != len(t.shape) or any(
                s < 0 or ln < 0 or s + ln > d for (s, ln), d in zip(ext, t.shape, strict=True)
            ):
                raise CheckpointError(f"slice {list(ext)} outside shape {list(t.shape)}", file=file, key=t.name)
            if arr.size != _prod(tuple(ln for _, ln in ext)):
                raise CheckpointError(f"slice {list(ext)} holds {arr.size} values", file=file, key=t.name)
            covered += arr.size
        if covered != total:
            raise CheckpointError(
                f"slices cover {covered} of {total} elements of shape {list(t.shape)}", file=file, key=t.name
            )
        out = np.zeros(t.shape, dtype=parts[0][1].dtype)
        for ext, arr in parts:
            out[tuple(slice(s, s + ln) for s, ln in ext)] = arr.reshape(tuple(ln for _, ln in ext))
        return out


def _shape_proto(buf, s: int, e: int) -> tuple[int, ...]:
    f = parse_message(buf, s, e)
    dims = []
    for _, (ds, de) in f.get(2, []):
        d = parse_message(buf, ds, de)
        size = to_int64(d.get(1, [(0, 0)])[-1][1])
        if size < 0:
            raise Corrupt(f"tensor dimension {size} (unknown or negative)", ds)
        dims.append(size)
    if f.get(3, [(0, 0)])[-1][1]:
        raise Corrupt("tensor shape has unknown rank", s)
    return tuple(dims)


def _slice_proto(buf, s: int, e: int, shape: tuple[int, ...]) -> Extents:
    """TensorSliceProto -> explicit extents (a missing length means the full dimension)."""
    f = parse_message(buf, s, e)
    ext = []
    for _, (xs, xe) in f.get(1, []):
        x = parse_message(buf, xs, xe)
        start = to_int64(x.get(1, [(0, 0)])[-1][1])
        ext.append((start, x[2][-1][1] if 2 in x else -1))
    return _normalise(tuple(ext), shape)


def _normalise(ext: Extents, shape: tuple[int, ...]) -> Extents:
    if not ext and shape:  # an empty slice spec means "everything"
        ext = tuple((0, -1) for _ in shape)
    if len(ext) != len(shape):
        raise Corrupt(f"slice rank {len(ext)} differs from tensor rank {len(shape)}")
    return tuple((0, d) if ln == -1 else (s, to_int64(ln)) for (s, ln), d in zip(ext, shape, strict=True))


def _full_as_minus1(ext: Extents, shape: tuple[int, ...]) -> Extents:
    """The other spelling of a full extent in slice keys: (0, -1) instead of (0, dim)."""
    return tuple((s, -1 if (s, ln) == (0, d) else ln) for (s, ln), d in zip(ext, shape, strict=True))


def _last(f: Fields, num: int, default: int = 0) -> int:
    return f[num][-1][1] if num in f else default


# ------------------------------------------------------------------------------------------------------
# V2 bundle
# ------------------------------------------------------------------------------------------------------


class _V2Checkpoint(TFCheckpoint):
    format = "V2"

    def __init__(self, prefix: str, *, verify: bool = True) -> None:
        index = Path(prefix + ".index")
        super().__init__([index], verify=verify)
        self.prefix = prefix
        buf = self._map(index)
        try:
            table = Table(buf, verify=True)
            entries = list(table.entries())
        except Corrupt as exc:
            raise CheckpointError(exc.message, file=index, offset=exc.offset) from None
        if not entries or entries[0].key != b"":
            raise CheckpointError("index has no header entry (not a V2 checkpoint index)", file=index)
        try:
            values = [table.value(e) for e in entries]  # index blocks are small: all verified here
            hbuf, hs, he = values[0]
            hdr = parse_message(hbuf, hs, he)
        except Corrupt as exc:
            raise CheckpointError(f"bad bundle header: {exc.message}", file=index, offset=exc.offset) from None
        self.num_shards = _last(hdr, 1, 1)
        if not 1 <= self.num_shards <= 100000:
            raise CheckpointError(f"bundle header claims {self.num_shards} shards", file=index, offset=hs)
        self.big_endian = _last(hdr, 2) == 1
        self._shards: list[mmap.mmap | bytes | None] = [None] * self.num_shards
        self.shard_paths = [Path(f"{prefix}.data-{i:05d}-of-{self.num_shards:05d}") for i in range(self.num_shards)]
        for p in self.shard_paths:
            if not p.is_file():
                raise CheckpointError(f"data shard {p.name} is missing", file=index)
        self.files = [index, *self.shard_paths]
        slice_entries: dict[tuple[str, Extents], tuple] = {}
        for e, (vbuf, vs, ve) in zip(entries[1:], values[1:], strict=True):
            key = e.key
            if key[:1] == b"\x00":
                try:
                    name, ext = decode_slice_key(key)
                except Corrupt as exc:
                    raise CheckpointError(f"bad slice key: {exc.message}", file=index, offset=e.start) from None
                slice_entries[(name, ext)] = (vbuf, vs, ve)
                continue
            name = key.decode("utf-8", "replace")
            try:
                self._tensors[name] = self._entry(vbuf, vs, ve, name)
            except Corrupt as exc:
                raise CheckpointError(exc.message, file=index, key=name, offset=exc.offset or vs) from None
        for t in self._tensors.values():
            if not t.slices:
                continue
            resolved = []
            for ext, _ in t.slices:
                loc = slice_entries.get((t.name, ext)) or slice_entries.get((t.name, _full_as_minus1(ext, t.shape)))
                if loc is None:
                    raise CheckpointError(f"slice {list(ext)} has no index entry", file=index, key=t.name)
                try:
                    sub = self._entry(*loc, t.name, tuple(ln for _, ln in ext))
                except Corrupt as exc:
                    raise CheckpointError(exc.message, file=index, key=t.name, offset=exc.offset) from None
                resolved.append((ext, sub))
            t.slices = resolved

    def _entry(self, buf, s: int, e: int, name: str, shape: tuple[int, ...] | None = None) -> _Tensor:
        f = parse_message(buf, s, e)
        dtype = _last(f, 1)
        if 2 in f:
            shape = _shape_proto(buf, *f[2][-1][1])
        shape = shape or ()
        t = _Tensor(name, dtype, shape, 0)
        t.shard, t.offset, t.size = _last(f, 3), to_int64(_last(f, 4)), to_int64(_last(f, 5))
        t.crc = _last(f, 6) if 6 in f else None
        for _, (ss, se) in f.get(7, []):
            t.slices.append((_slice_proto(buf, ss, se, shape), None))
        item = _itemsize(dtype)
        t.nbytes = _prod(shape) * item if item is not None else t.size
        if t.slices and dtype == _STRING:
            t.nbytes = 0
        return t

    def _shard(self, i: int, t: _Tensor):
        if not 0 <= i < self.num_shards:
            raise CheckpointError(f"entry names shard {i} of {self.num_shards}", file=self.files[0], key=t.name)
        if self._shards[i] is None:
            self._shards[i] = self._map(self.shard_paths[i], populate=self.verify)
        return self._shards[i]

    def _read(self, t: _Tensor) -> np.ndarray:
        if t.slices:
            parts = [(ext, self._read_one(sub, ext)) for ext, sub in t.slices]
            return self._assemble(t, parts, self.files[0])
        return self._read_one(t, None)

    def _read_one(self, t: _Tensor, ext: Extents | None) -> np.ndarray:
        shard = self._shard(t.shard, t)
        path = self.shard_paths[t.shard]
        if t.offset < 0 or t.size < 0 or t.offset + t.size > len(shard):
            raise CheckpointError(
                f"tensor bytes [{t.offset}, +{t.size}) lie outside {path.name} ({len(shard)} bytes)",
                file=path,
                key=t.name,
                offset=t.offset,
            )
        tag = (t.name, ext)
        if t.dtype == _STRING:
            return self._strings(shard, t, _prod(t.shape), path)
        if self.verify and t.crc is not None and tag not in self._verified:
            if crc32c(np.frombuffer(shard, np.uint8, t.size, t.offset)) != unmask_crc(t.crc):
                raise CheckpointError("checksum mismatch (file corrupt)", file=path, key=t.name, offset=t.offset)
            self._verified.add(tag)
        n = _prod(t.shape)
        item = _itemsize(t.dtype)
        name, npd = DTYPES.get(t.dtype, (_dtype_name(t.dtype), None))
        if item is None or (npd is None and t.dtype != _BFLOAT16):
            raise CheckpointError(f"unsupported dtype {name}", file=path, key=t.name)
        if n * item != t.size:
            raise CheckpointError(
                f"{name} tensor of shape {list(t.shape)} needs {n * item} bytes, entry says {t.size}",
                file=path,
                key=t.name,
                offset=t.offset,
            )
        if t.dtype == _BFLOAT16:
            raw = np.frombuffer(shard, ">u2" if self.big_endian else "<u2", n, t.offset)
            return _bf16_to_f32(raw).reshape(t.shape)
        if self.big_endian:
            npd = npd.newbyteorder(">")
        return np.frombuffer(shard, npd, n, t.offset).reshape(t.shape)

    def _strings(self, shard, t: _Tensor, n: int, path: Path) -> np.ndarray:
        """``[varint64 len]*n [masked crc of the lengths] [bytes]*n``; the entry CRC covers the lengths
        (as uint32, or uint64 above 4 GiB), the length checksum and the string bytes."""
        pos, end = t.offset, t.offset + t.size
        lens = []
        crc = 0
        try:
            if n > t.size:  # every element takes at least one length byte
                raise Corrupt(f"{n} strings cannot fit in {t.size} bytes", pos)
            for _ in range(n):
                ln, pos = read_varint(shard, pos, end)
                lens.append(ln)
                if self.verify:
                    crc = crc32c(ln.to_bytes(4 if ln <= 0xFFFFFFFF else 8, "little"), crc)
            if pos + 4 > end:
                raise Corrupt("truncated string tensor (no length checksum)", pos)
            stored = shard[pos : pos + 4]
            if self.verify and int.from_bytes(stored, "little") != mask_crc(crc):
                raise Corrupt("string length checksum mismatch (file corrupt)", pos)
            pos += 4
            if sum(lens) != end - pos:
                raise Corrupt(f"string lengths sum to {sum(lens)}, {end - pos} bytes present", pos)
            if self.verify and t.crc is not None:
                crc = crc32c(np.frombuffer(shard, np.uint8, end - pos, pos), crc32c(stored, crc))
                if crc != unmask_crc(t.crc):
                    raise Corrupt("checksum mismatch (file corrupt)", t.offset)
        except Corrupt as exc:
            raise CheckpointError(exc.message, file=path, key=t.name, offset=exc.offset) from None
        out = np.empty(n, dtype=object)
        for i, ln in enumerate(lens):
            out[i] = bytes(shard[pos : pos + ln])
            pos += ln
        return out.reshape(t.shape)


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


# ------------------------------------------------------------------------------------------------------
# V1 (TensorSliceWriter) format
# ------------------------------------------------------------------------------------------------------

# TensorProto field holding the values of each dtype (tensor_slice_writer / saved_tensor_slice_util):
# float_val 5, double_val 6, int_val 7, string_val 8, scomplex_val 9, int64_val 10, bool_val 11,
# dcomplex_val 12, half_val 13 (float16 and bfloat16 bits), uint32_val 16, uint64_val 17
_FLOAT_VAL, _DOUBLE_VAL, _STRING_VAL, _SCOMPLEX_VAL, _DCOMPLEX_VAL = 5, 6, 8, 9, 12
_V1_FIELD = {1: 5, 2: 6, 3: 7, 4: 7, 5: 7, 6: 7, 7: 8, 8: 9, 9: 10, 10: 11, 11: 7, 12: 7, 13: 7, 14: 13}
_V1_FIELD.update({15: 7, 16: 7, 17: 7, 18: 12, 19: 13, 22: 16, 23: 17})


class _V1Checkpoint(TFCheckpoint):
    format = "V1"

    def __init__(self, paths: list[Path], *, verify: bool = True) -> None:
        super().__init__(paths, verify=verify)
        self._tables: list[tuple[Path, Table]] = []
        locations: dict[tuple[str, Extents], tuple[int, object]] = {}
        metas: list[tuple[int, bytes | mmap.mmap, int, int]] = []
        for ti, path in enumerate(paths):
            buf = self._map(path, populate=verify)
            try:
                table = Table(buf, verify=verify)
                entries = list(table.entries())
            except Corrupt as exc:
                raise CheckpointError(exc.message, file=path, offset=exc.offset) from None
            self._tables.append((path, table))
            if not entries or entries[0].key != b"":
                raise CheckpointError("table has no metadata entry (not a V1 checkpoint)", file=path)
            try:
                mbuf, ms, me = table.value(entries[0])
            except Corrupt as exc:
                raise CheckpointError(exc.message, file=path, offset=exc.offset) from None
            metas.append((ti, mbuf, ms, me))
            for e in entries[1:]:
                try:
                    name, ext = decode_slice_key(e.key)
                except Corrupt as exc:
                    raise CheckpointError(f"bad slice key: {exc.message}", file=path, offset=e.start) from None
                locations[(name, ext)] = (ti, e)
        for ti, mbuf, ms, me in metas:
            path = paths[ti]
            try:
                sts = parse_message(mbuf, ms, me)
                if 1 not in sts:
                    raise Corrupt("metadata entry has no SavedTensorSliceMeta", ms)
                meta = parse_message(mbuf, *sts[1][-1][1])
                for _, (ts, te) in meta.get(1, []):
                    self._add_meta(mbuf, ts, te, ti, locations)
            except Corrupt as exc:
                raise CheckpointError(f"bad metadata: {exc.message}", file=path, offset=exc.offset) from None
        self._tensors = dict(sorted(self._tensors.items(), key=lambda kv: kv[0].encode()))

    def _add_meta(self, buf, s: int, e: int, ti: int, locations) -> None:
        m = parse_message(buf, s, e)
        name = bytes(buf[slice(*m[1][-1][1])]).decode("utf-8", "replace") if 1 in m else ""
        shape = _shape_proto(buf, *m[2][-1][1]) if 2 in m else ()
        dtype = _last(m, 3)
        if dtype > 100:  # reference types
            dtype -= 100
        t = self._tensors.get(name)
        if t is None:
            item = _itemsize(dtype)
            t = self._tensors[name] = _Tensor(name, dtype, shape, _prod(shape) * (item or 0))
        for _, (xs, xe) in m.get(4, []):
            ext = _slice_proto(buf, xs, xe, shape)
            loc = locations.get((name, ext)) or locations.get((name, _full_as_minus1(ext, shape)))
            if loc is None:
                raise Corrupt(f"tensor {name!r}: slice {list(ext)} has no data entry", xs)
            t.slices.append((ext, loc))

    def _read(self, t: _Tensor) -> np.ndarray:
        path = self.files[0]
        parts = []
        for ext, (ti, entry) in t.slices:
            path, table = self._tables[ti]
            try:
                buf, s, e = table.value(entry)
                parts.append((ext, self._slice_values(buf, s, e, t, ext)))
            except Corrupt as exc:
                raise CheckpointError(exc.message, file=path, key=t.name, offset=exc.offset) from None
        if not parts:
            raise CheckpointError("tensor has no slices", file=path, key=t.name)
        if len(parts) == 1 and parts[0][0] == tuple((0, d) for d in t.shape):
            arr = parts[0][1]
            if arr.size != _prod(t.shape):
                raise CheckpointError(f"{arr.size} values stored for shape {list(t.shape)}", file=path, key=t.name)
            return arr.reshape(t.shape)
        return self._assemble(t, parts, path)

    def _slice_values(self, buf, s: int, e: int, t: _Tensor, ext: Extents) -> np.ndarray:
        sts = parse_message(buf, s, e)
        if 2 not in sts:
            raise Corrupt("slice entry has no SavedSlice data", s)
        ss = parse_message(buf, *sts[2][-1][1])
        if 3 not in ss:  # an empty TensorProto is omitted entirely
            return self._decode_values(buf, {}, t, 0)
        ps, pe = ss[3][-1][1]
        n = _prod(tuple(ln for _, ln in ext))
        return self._decode_values(buf, parse_message(buf, ps, pe), t, n, ps)

    def _decode_values(self, buf, tp: Fields, t: _Tensor, n: int, at: int = 0) -> np.ndarray:
        name, npd = DTYPES.get(t.dtype, (_dtype_name(t.dtype), None))
        if 4 in tp and tp[4][-1][1][1] > tp[4][-1][1][0]:  # tensor_content: raw little-endian bytes
            cs, ce = tp[4][-1][1]
            if t.dtype == _BFLOAT16:
                return _bf16_to_f32(_view(buf, "<u2", cs, ce))
            if npd is None:
                raise Corrupt(f"unsupported dtype {name}", cs)
            return _view(buf, npd, cs, ce)
        fnum = _V1_FIELD.get(t.dtype)
        if fnum is None:
            raise Corrupt(f"unsupported dtype {name}", at)
        occ = tp.get(fnum, [])
        if fnum == _STRING_VAL:
            out = np.empty(len(occ), dtype=object)
            for i, (wire, v) in enumerate(occ):
                if wire != 2:
                    raise Corrupt("string_val with wrong wire type", at)
                out[i] = bytes(buf[v[0] : v[1]])
            return out
        if fnum in (_FLOAT_VAL, _DOUBLE_VAL, _SCOMPLEX_VAL, _DCOMPLEX_VAL):
            width = 4 if fnum in (_FLOAT_VAL, _SCOMPLEX_VAL) else 8
            scalar = np.dtype("<f4") if width == 4 else np.dtype("<f8")
            vals = _fixed_values(buf, occ, width, scalar, at)
            if fnum in (_SCOMPLEX_VAL, _DCOMPLEX_VAL):
                if vals.size % 2:
                    raise Corrupt("odd number of complex components", at)
                vals = vals.view(npd) if vals.flags.c_contiguous else vals.copy().view(npd)
            return vals
        ints = _varint_values(buf, occ, at)
        if t.dtype == _BFLOAT16:
            return _bf16_to_f32(ints.astype(np.uint16))
        if t.dtype == 19:  # float16 bits in half_val
            return ints.astype(np.uint16).view(np.float16)
        if t.dtype == 10:
            return ints != 0
        return ints.astype(npd.newbyteorder("="), casting="unsafe")


def _view(buf, dtype, s: int, e: int) -> np.ndarray:
    dtype = np.dtype(dtype)
    if (e - s) % dtype.itemsize:
        raise Corrupt(f"{e - s} bytes is not a whole number of {dtype} values", s)
    return np.frombuffer(buf, dtype, (e - s) // dtype.itemsize, s)


def _fixed_values(buf, occ: list, width: int, dtype: np.dtype, at: int) -> np.ndarray:
    """Packed (one view, zero-copy) or unpacked repeated fixed32/fixed64 values."""
    if len(occ) == 1 and occ[0][0] == 2:
        return _view(buf, dtype, *occ[0][1])
    parts = []
    for wire, v in occ:
        if wire == 2:
            parts.append(_view(buf, dtype, *v))
        elif wire == (5 if width == 4 else 1):
            parts.append(np.array([v], dtype=np.uint32 if width == 4 else np.uint64).view(dtype))
        else:
            raise Corrupt(f"value field with wire type {wire}", at)
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def _varint_values(buf, occ: list, at: int) -> np.ndarray:
    parts = []
    for wire, v in occ:
        if wire == 2:
            parts.append(decode_varints(np.frombuffer(buf, np.uint8, v[1] - v[0], v[0]), v[0]))
        elif wire == 0:
            parts.append(np.array([v], dtype=np.uint64))
        else:
            raise Corrupt(f"integer value field with wire type {wire}", at)
    return np.concatenate(parts) if parts else np.zeros(0, np.uint64)


# ------------------------------------------------------------------------------------------------------
# opening
# ------------------------------------------------------------------------------------------------------

_SHARD_RE = re.compile(r"^(.*)-(\d{5})-of-(\d{5})$")
_V2_DATA_RE = re.compile(r"^(.*)\.data-\d{5}-of-\d{5}$")


def _state_file_prefix(d: Path) -> str | None:
    state = d / "checkpoint"
    if not state.is_file():
        return None
    m = re.search(r'^model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', state.read_text(errors="replace"), re.M)
    if not m:
        return None
    p = Path(m.group(1).encode().decode("unicode_escape"))
    return str(p if p.is_absolute() else d / p)


def resolve_checkpoint(path: str | os.PathLike) -> tuple[str, object]:
    """Work out what ``path`` names: ``("V2", prefix)`` or ``("V1", [files])``."""
    p = Path(path)
    s = str(path)
    if p.is_dir():
        prefix = _state_file_prefix(p)
        if prefix is None:
            idx = sorted(p.glob("*.index"))
            if len(idx) == 1:
                prefix = str(idx[0])[: -len(".index")]
            else:
                v1 = sorted(x for x in p.glob("*.ckpt") if x.is_file())
                if len(v1) == 1:
                    return "V1", [v1[0]]
                raise CheckpointError("directory holds no 'checkpoint' state file and no single checkpoint", file=p)
        return resolve_checkpoint(prefix)
    if s.endswith(".index") and p.is_file():
        return "V2", s[: -len(".index")]
    if s.endswith(".meta") and not p.with_suffix("").exists():
        s = s[: -len(".meta")]
        p = Path(s)
    m = _V2_DATA_RE.match(s)
    if m and Path(m.group(1) + ".index").is_file():
        return "V2", m.group(1)
    if Path(s + ".index").is_file():
        return "V2", s
    if any(c in s for c in "*?["):
        files = sorted(Path(f) for f in glob.glob(s))
        if files:
            return "V1", files
        raise CheckpointError("no files match the pattern", file=s)
    m = _SHARD_RE.match(s)
    if m and p.is_file():
        files = sorted(Path(f) for f in glob.glob(glob.escape(m.group(1)) + f"-?????-of-{m.group(3)}"))
        return "V1", files
    if p.is_file():
        return "V1", [p]
    raise CheckpointError("no TF checkpoint found (tried the V2 prefix, .index and a V1 file)", file=s)


def open_checkpoint(path: str | os.PathLike, *, verify: bool = True) -> TFCheckpoint:
    """Open a TF checkpoint: a V2 prefix (``model.ckpt``), its ``.index``, a V1 file, or a directory.

    ``verify`` checks each tensor's CRC32C (V2) or table-block checksum (V1) on first read.
    """
    kind, what = resolve_checkpoint(path)
    if kind == "V2":
        return _V2Checkpoint(str(what), verify=verify)
    return _V1Checkpoint(list(what), verify=verify)  # type: ignore[arg-type]


def describe(path: str | os.PathLike) -> list[dict]:
    """``[{name, shape, dtype, nbytes}]`` of every tensor (for ``segconvert inspect``)."""
    with open_checkpoint(path, verify=False) as ckpt:
        return [{"name": n, "shape": list(shape), "dtype": dt, "nbytes": nb} for n, shape, dt, nb in ckpt.entries()]

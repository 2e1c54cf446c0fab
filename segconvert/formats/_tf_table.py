"""Low-level pieces of TensorFlow's on-disk formats in pure Python + numpy (no TensorFlow needed).

* CRC32C (Castagnoli) with TF's masking, vectorised with numpy for large buffers;
* snappy block decompression;
* protobuf wire-format decoding (hand-rolled; the messages involved are tiny);
* OrderedCode decoding of tensor-slice keys (``tensorflow/core/lib/strings/ordered_code``);
* the LevelDB-style SSTable used by ``.index`` files and by V1 checkpoints
  (``tensorflow/core/lib/io/{table,block,format}``).

Every parser is bounds-checked against its buffer and raises :class:`Corrupt` (a message plus the absolute
byte offset) on malformed input; callers turn it into a ``CheckpointError`` naming the file and key.
No length field is trusted for an allocation: sizes are checked against the bytes actually present first.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


class Corrupt(Exception):
    """Malformed input at absolute byte ``offset`` (``None`` when unknown)."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


# --------------------------------------------------------------------------------------------------------
# CRC32C
# --------------------------------------------------------------------------------------------------------
# Reflected polynomial 0x82F63B78, init/xorout 0xFFFFFFFF. ``raw`` below is the zero-init, no-xorout
# register, which is linear over GF(2): raw(A || B) = shift_{|B|}(raw(A)) ^ raw(B), where shift_n runs n
# zero bytes through the register. Large buffers are cut into 16-byte chunks whose raw CRC is the XOR of
# eight 16-bit table lookups (one table per position, "slicing by 8 units"); chunk CRCs are then folded 64
# at a time with per-position byte tables until one value is left. Everything runs as numpy array ops.

_POLY = 0x82F63B78
_MASK_DELTA = 0xA282EAD8
_SMALL = 256  # below this a plain Python loop is faster than the numpy machinery
_BLOCK = 1 << 19  # bytes per numpy work block (bounds temporary memory to a few MB)
_CHUNK = 16  # bytes per level-A chunk (8 positions of 16-bit units)
_FOLD = 64  # chunk CRCs folded per level-B step


def _byte_table() -> np.ndarray:
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ np.uint32(_POLY), t >> 1).astype(np.uint32)
    return t


_T8 = _byte_table()
_T8_LIST: list[int] = _T8.tolist()


def _raw_py(data: bytes | memoryview, reg: int) -> int:
    t = _T8_LIST
    for b in data:
        reg = t[(reg ^ b) & 0xFF] ^ (reg >> 8)
    return reg


def _shift_arr(v: np.ndarray, nbytes: int) -> np.ndarray:
    for _ in range(nbytes):
        v = _T8[v & 0xFF] ^ (v >> 8)
    return v


def _mat_apply(cols: tuple[int, ...], v: int) -> int:
    r = 0
    i = 0
    while v:
        if v & 1:
            r ^= cols[i]
        v >>= 1
        i += 1
    return r


@functools.lru_cache(maxsize=1)
def _pow2_shift_mats() -> tuple[tuple[int, ...], ...]:
    """Matrices (32 column ints) of shift by 2**k zero bytes, k = 0..47."""
    one = tuple(int(x) for x in _shift_arr(np.array([1 << i for i in range(32)], np.uint32), 1))
    mats = [one]
    for _ in range(47):
        m = mats[-1]
        mats.append(tuple(_mat_apply(m, c) for c in m))
    return tuple(mats)


def _shift_int(v: int, nbytes: int) -> int:
    mats = _pow2_shift_mats()
    k = 0
    while nbytes and v:
        if nbytes & 1:
            v = _mat_apply(mats[k], v)
        nbytes >>= 1
        k += 1
    return v


@functools.lru_cache(maxsize=1)
def _level_a_table() -> np.ndarray:
    """table[q * 65536 + u] = raw CRC of 16-bit unit u at unit position q of a 16-byte chunk."""
    u = np.arange(65536, dtype=np.uint32)
    c = _T8[u & 0xFF]
    c = _T8[(c ^ (u >> 8)) & 0xFF] ^ (c >> 8)
    npos = _CHUNK // 2
    tabs = np.empty((npos, 65536), np.uint32)
    for q in range(npos - 1, -1, -1):
        tabs[q] = c
        c = _shift_arr(c, 2)
    return tabs.reshape(-1)


@functools.lru_cache(maxsize=8)
def _level_b_table(span: int) -> np.ndarray:
    """table[(j*4 + k) * 256 + b] = shift_{(FOLD-1-j)*span}(b << 8k): folds FOLD CRCs of span bytes each."""
    step_cols = np.array([_shift_int(1 << i, span) for i in range(32)], np.uint32)
    step = np.zeros((4, 256), np.uint32)
    b = np.arange(256)
    for k in range(4):
        for bit in range(8):
            step[k][(b >> bit) & 1 == 1] ^= step_cols[8 * k + bit]
    v = (np.arange(256, dtype=np.uint32)[None, :] << (8 * np.arange(4, dtype=np.uint32))[:, None]).reshape(-1)
    tabs = np.empty((_FOLD, 1024), np.uint32)
    for j in range(_FOLD - 1, -1, -1):
        tabs[j] = v
        v = step[0][v & 0xFF] ^ step[1][(v >> 8) & 0xFF] ^ step[2][(v >> 16) & 0xFF] ^ step[3][v >> 24]
    return tabs.reshape(-1)


_OFF_A = (np.arange(_CHUNK // 2, dtype=np.intp) * 65536)[:, None]
_OFF_B = np.arange(_FOLD * 4, dtype=np.intp) * 256
_tls = threading.local()


def _raw_block(a: np.ndarray) -> int:
    """Raw CRC of ``a`` (uint8, length a multiple of 16, at most _BLOCK bytes)."""
    n = a.size // _CHUNK
    bufs = getattr(_tls, "bufs", None)
    if bufs is None:
        m = _BLOCK // _CHUNK
        bufs = _tls.bufs = (np.empty((8, m), np.intp), np.empty((8, m), np.uint32), np.empty(m, np.uint32))
    idx, r, c = bufs[0][:, :n], bufs[1][:, :n], bufs[2][:n]
    np.add(a.view("<u2").reshape(n, 8).T, _OFF_A, out=idx)
    np.take(_level_a_table(), idx, out=r, mode="clip")
    np.bitwise_xor(r[0], r[1], out=c)
    for q in range(2, 8):
        c ^= r[q]
    span = _CHUNK
    while c.size > 1:
        pad = (-c.size) % _FOLD
        if pad:  # leading zero CRCs contribute nothing
            c = np.concatenate([np.zeros(pad, np.uint32), c])
        rows = c.view(np.uint8).reshape(-1, _FOLD * 4)
        lut = _level_b_table(span).take(np.add(rows, _OFF_B), mode="clip")
        c = np.bitwise_xor.reduce(lut, axis=1)
        span *= _FOLD
    return int(c[0]) if c.size else 0


@functools.lru_cache(maxsize=1)
def _workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


@functools.lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=_workers(), thread_name_prefix="segconvert-crc32c")


def crc32c(data: bytes | bytearray | memoryview | np.ndarray, crc: int = 0) -> int:
    """CRC32C of ``data``; pass a previous result as ``crc`` to extend it (like ``zlib.crc32``)."""
    a = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    n = a.size
    reg = crc ^ 0xFFFFFFFF
    if n < _SMALL:
        return _raw_py(a.tobytes(), reg) ^ 0xFFFFFFFF
    main = n - n % _CHUNK
    spans = [(s, min(s + _BLOCK, main)) for s in range(0, main, _BLOCK)]
    if len(spans) > 1 and _workers() > 1:  # numpy's table lookups release the GIL
        parts = list(_pool().map(lambda se: _raw_block(a[se[0] : se[1]]), spans))
    else:
        parts = [_raw_block(a[s:e]) for s, e in spans]
    raw = 0
    for (s, e), part in zip(spans, parts, strict=True):
        raw = _shift_int(raw, e - s) ^ part
    raw = _raw_py(a[main:].tobytes(), raw)
    return raw ^ _shift_int(reg, n) ^ 0xFFFFFFFF


def mask_crc(crc: int) -> int:
    """TF/LevelDB masked CRC (rotate right by 15, add a constant)."""
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def unmask_crc(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# --------------------------------------------------------------------------------------------------------
# varints and protobuf wire format
# --------------------------------------------------------------------------------------------------------


def read_varint(buf: bytes | memoryview, pos: int, end: int, base: int = 0) -> tuple[int, int]:
    """Decode a base-128 varint at ``buf[pos]`` (at most 10 bytes, not past ``end``) -> (value, new pos)."""
    result = 0
    shift = 0
    start = pos
    while True:
        if pos >= end:
            raise Corrupt("truncated varint", base + start)
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
        if shift >= 70:
            raise Corrupt("varint longer than 10 bytes", base + start)


def to_int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


# A parsed message: field number -> list of values. Varints and fixed ints are Python ints;
# length-delimited fields are (start, end) positions in the parsed buffer.
Fields = dict[int, list]


def parse_message(buf: bytes | memoryview, pos: int, end: int, base: int = 0) -> Fields:
    """Split one protobuf message ``buf[pos:end]`` into its fields (no schema needed)."""
    out: Fields = {}
    while pos < end:
        tag_at = pos
        tag, pos = read_varint(buf, pos, end, base)
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise Corrupt("protobuf field number 0", base + tag_at)
        if wire == 0:
            val, pos = read_varint(buf, pos, end, base)
        elif wire == 1:
            if pos + 8 > end:
                raise Corrupt("truncated fixed64 field", base + pos)
            val = int.from_bytes(buf[pos : pos + 8], "little")
            pos += 8
        elif wire == 2:
            ln, pos = read_varint(buf, pos, end, base)
            if ln > end - pos:
                raise Corrupt(f"length-delimited field {field} runs past its message ({ln} bytes)", base + pos)
            val = (pos, pos + ln)
            pos += ln
        elif wire == 5:
            if pos + 4 > end:
                raise Corrupt("truncated fixed32 field", base + pos)
            val = int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        else:
            raise Corrupt(f"unsupported protobuf wire type {wire} (field {field})", base + tag_at)
        out.setdefault(field, []).append((wire, val))
    return out


def decode_varints(raw: np.ndarray, base: int = 0) -> np.ndarray:
    """Vectorised decode of concatenated varints (uint8 array) -> uint64 array."""
    if raw.size == 0:
        return np.zeros(0, np.uint64)
    ends = np.flatnonzero(raw < 0x80)
    if ends.size == 0 or ends[-1] != raw.size - 1:
        raise Corrupt("truncated packed varint array", base + raw.size)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if lengths.max() > 10:
        raise Corrupt("varint longer than 10 bytes in packed array", base + int(starts[lengths.argmax()]))
    out = np.zeros(ends.size, np.uint64)
    payload = (raw & 0x7F).astype(np.uint64)
    for i in range(int(lengths.max())):
        sel = lengths > i
        out[sel] |= payload[starts[sel] + i] << np.uint64(7 * i)
    return out


# --------------------------------------------------------------------------------------------------------
# OrderedCode (tensor-slice keys)
# --------------------------------------------------------------------------------------------------------

_LEN_TO_MASK = (0, 0x80, 0xC000, 0xE00000, 0xF0000000, 0xF800000000, 0xFC0000000000, 0xFE000000000000)
_LEN_TO_MASK += (0xFF00000000000000, 0x8000000000000000, 0)
_M64 = 0xFFFFFFFFFFFFFFFF


def _oc_num_increasing(b: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(b):
        raise Corrupt("truncated ordered-code number")
    n = b[pos]
    if n > 8 or pos + 1 + n > len(b):
        raise Corrupt("bad ordered-code number")
    return int.from_bytes(b[pos + 1 : pos + 1 + n], "big"), pos + 1 + n


def _oc_string(b: bytes, pos: int) -> tuple[bytes, int]:
    out = bytearray()
    while pos + 1 < len(b):
        c = b[pos]
        if c == 0x00:
            nxt = b[pos + 1]
            if nxt == 0x01:
                return bytes(out), pos + 2
            if nxt != 0xFF:
                raise Corrupt("bad ordered-code string escape")
            out.append(0x00)
            pos += 2
        elif c == 0xFF:
            if b[pos + 1] != 0x00:
                raise Corrupt("bad ordered-code string escape")
            out.append(0xFF)
            pos += 2
        else:
            out.append(c)
            pos += 1
    raise Corrupt("unterminated ordered-code string")


def _oc_signed(b: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(b):
        raise Corrupt("truncated ordered-code signed number")
    xor = 0 if b[pos] & 0x80 else 0xFF
    first = b[pos] ^ xor
    if first != 0xFF:
        ln = 8 - (first ^ 0xFF).bit_length()
        if pos + ln > len(b):
            raise Corrupt("truncated ordered-code signed number")
        x = _M64 if xor else 0
        for i in range(ln):
            x = ((x << 8) | b[pos + i]) & _M64
    else:
        ln = 8
        if pos + ln > len(b):
            raise Corrupt("truncated ordered-code signed number")
        second = b[pos + 1] ^ xor
        if second >= 0x80:
            if second < 0xC0:
                ln = 9
            elif second == 0xC0 and (b[pos + 2] ^ xor) < 0x80:
                ln = 10
            else:
                raise Corrupt("bad ordered-code signed number")
            if pos + ln > len(b):
                raise Corrupt("truncated ordered-code signed number")
        x = int.from_bytes(b[pos + ln - 8 : pos + ln], "big")
    return to_int64(x ^ _LEN_TO_MASK[ln]), pos + ln


def decode_slice_key(key: bytes) -> tuple[str, tuple[tuple[int, int], ...]]:
    """``EncodeTensorNameSlice`` inverse: (tensor name, ((start, length), ...)); length -1 = full extent."""
    zero, pos = _oc_num_increasing(key, 0)
    if zero != 0:
        raise Corrupt("tensor-slice key does not start with 0")
    name, pos = _oc_string(key, pos)
    rank, pos = _oc_num_increasing(key, pos)
    if rank > 64:
        raise Corrupt(f"tensor-slice key with rank {rank}")
    ext = []
    for _ in range(rank):
        start, pos = _oc_signed(key, pos)
        length, pos = _oc_signed(key, pos)
        ext.append((start, length))
    if pos != len(key):
        raise Corrupt("trailing bytes in tensor-slice key")
    return name.decode("utf-8", "replace"), tuple(ext)


# --------------------------------------------------------------------------------------------------------
# snappy
# --------------------------------------------------------------------------------------------------------


def snappy_decompress(src: bytes | memoryview, base: int = 0) -> bytes:
    """Decompress one raw snappy block (the format TF's table writer uses when compression is on)."""
    n = len(src)
    ulen, pos = read_varint(src, 0, n, base)
    if ulen > 32 + 22 * n:  # no snappy stream expands more than ~21x
        raise Corrupt(f"snappy header claims {ulen} bytes from a {n}-byte block", base)
    out = bytearray()
    while pos < n:
        tag = src[pos]
        tag_at = pos
        pos += 1
        kind = tag & 3
        if kind == 0:
            ln = tag >> 2
            if ln >= 60:
                nb = ln - 59
                if pos + nb > n:
                    raise Corrupt("truncated snappy literal length", base + tag_at)
                ln = int.from_bytes(src[pos : pos + nb], "little")
                pos += nb
            ln += 1
            if pos + ln > n:
                raise Corrupt("snappy literal runs past the block", base + tag_at)
            out += src[pos : pos + ln]
            pos += ln
        else:
            if kind == 1:
                if pos + 1 > n:
                    raise Corrupt("truncated snappy copy", base + tag_at)
                ln = 4 + ((tag >> 2) & 7)
                off = ((tag >> 5) << 8) | src[pos]
                pos += 1
            else:
                nb = 2 if kind == 2 else 4
                if pos + nb > n:
                    raise Corrupt("truncated snappy copy", base + tag_at)
                ln = (tag >> 2) + 1
                off = int.from_bytes(src[pos : pos + nb], "little")
                pos += nb
            if off == 0 or off > len(out):
                raise Corrupt(f"snappy copy offset {off} outside the output", base + tag_at)
            if off >= ln:
                out += out[len(out) - off : len(out) - off + ln]
            else:
                pattern = bytes(out[len(out) - off :])
                out += (pattern * (ln // off + 1))[:ln]
        if len(out) > ulen:
            raise Corrupt("snappy output longer than its header says", base + tag_at)
    if len(out) != ulen:
        raise Corrupt(f"snappy output has {len(out)} bytes, header says {ulen}", base + n)
    return bytes(out)


# --------------------------------------------------------------------------------------------------------
# SSTable
# --------------------------------------------------------------------------------------------------------

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
BLOCK_TRAILER = 5


@dataclass
class Block:
    """One data block: where its contents live, and whether its checksum has been verified."""

    offset: int  # absolute offset of the block contents in the file
    size: int  # stored (possibly compressed) size
    compression: int
    verified: bool = False
    data: bytes | None = None  # decompressed contents (compressed blocks only)


@dataclass
class Entry:
    """A key/value pair; the value is ``buf[start:end]`` of the file (or of a decompressed block)."""

    key: bytes
    block: int
    start: int
    end: int


class Table:
    """A read-only SSTable over ``buf`` (bytes or mmap). Block checksums are verified lazily per block."""

    def __init__(self, buf, *, verify: bool = True) -> None:
        self.buf = buf
        self.size = len(buf)
        self.verify = verify
        if self.size < FOOTER_SIZE:
            raise Corrupt(f"file too short for a table footer ({self.size} bytes)", 0)
        foot = self.size - FOOTER_SIZE
        magic = int.from_bytes(buf[self.size - 8 : self.size], "little")
        if magic != TABLE_MAGIC:
            raise Corrupt("bad table magic number (not a TensorFlow table / checkpoint)", self.size - 8)
        footer = bytes(buf[foot : self.size - 8])
        _, pos = read_varint(footer, 0, 40, foot)  # metaindex offset
        _, pos = read_varint(footer, pos, 40, foot)  # metaindex size
        idx_off, pos = read_varint(footer, pos, 40, foot)
        idx_size, pos = read_varint(footer, pos, 40, foot)
        self.blocks: list[Block] = []
        index = self._block_handle(idx_off, idx_size, foot)
        self._check_block(index)  # the index is small: always verify it
        icontent = index.data if index.data is not None else buf[index.offset : index.offset + index.size]
        handles = []
        for key, vs, ve in _block_entries(icontent, index.offset if index.data is None else None):
            hv = bytes(icontent[vs:ve])
            boff, p = read_varint(hv, 0, len(hv), index.offset + vs)
            bsize, _ = read_varint(hv, p, len(hv), index.offset + vs)
            handles.append((key, boff, bsize))
        for _, boff, bsize in handles:
            self.blocks.append(self._block_handle(boff, bsize, foot))

    def _block_handle(self, off: int, size: int, limit: int) -> Block:
        if off + size + BLOCK_TRAILER > limit:
            raise Corrupt(f"block [{off}, +{size}) runs past the end of the data ({limit} bytes)", off)
        ctype = self.buf[off + size]
        if ctype not in (0, 1):
            raise Corrupt(f"unknown block compression type {ctype}", off + size)
        return Block(off, size, ctype)

    def _check_block(self, blk: Block) -> None:
        """Verify (if enabled) and decompress a block once."""
        if blk.verified:
            return
        if self.verify:
            body = np.frombuffer(self.buf, np.uint8, blk.size + 1, blk.offset)
            stored = int.from_bytes(self.buf[blk.offset + blk.size + 1 : blk.offset + blk.size + 5], "little")
            if crc32c(body) != unmask_crc(stored):
                raise Corrupt("block checksum mismatch (file corrupt)", blk.offset)
        if blk.compression == 1 and blk.data is None:
            blk.data = snappy_decompress(memoryview(self.buf)[blk.offset : blk.offset + blk.size], blk.offset)
        blk.verified = True

    def block_buffer(self, i: int) -> tuple[object, int]:
        """(buffer, absolute base) holding block ``i``'s contents, verifying it first."""
        blk = self.blocks[i]
        self._check_block(blk)
        if blk.data is not None:
            return blk.data, 0
        return self.buf, blk.offset

    def entries(self) -> Iterator[Entry]:
        """All key/value entries in key order (values not read; compressed blocks are decompressed)."""
        for i, blk in enumerate(self.blocks):
            if blk.compression:
                self._check_block(blk)
                for key, vs, ve in _block_entries(blk.data, None):
                    yield Entry(key, i, vs, ve)
            else:
                content = memoryview(self.buf)[blk.offset : blk.offset + blk.size]
                for key, vs, ve in _block_entries(content, blk.offset):
                    yield Entry(key, i, blk.offset + vs, blk.offset + ve)

    def value(self, e: Entry) -> tuple[object, int, int]:
        """(buffer, start, end) of an entry's value, its block verified."""
        buf, _ = self.block_buffer(e.block)
        return buf, e.start, e.end


def _block_entries(content, base: int | None) -> Iterator[tuple[bytes, int, int]]:
    """Yield (key, value_start, value_end) of one block; positions are relative to ``content``."""
    b0 = base or 0
    n = len(content)
    if n < 4:
        raise Corrupt("block too short for its restart count", b0)
    num_restarts = int.from_bytes(content[n - 4 : n], "little")
    if num_restarts > (n - 4) // 4:
        raise Corrupt(f"block restart count {num_restarts} too large", b0 + n - 4)
    limit = n - 4 - 4 * num_restarts
    pos = 0
    key = b""
    while pos < limit:
        at = pos
        shared, pos = read_varint(content, pos, limit, b0)
        non_shared, pos = read_varint(content, pos, limit, b0)
        vlen, pos = read_varint(content, pos, limit, b0)
        if shared > len(key):
            raise Corrupt("block entry shares more key bytes than the previous key has", b0 + at)
        if non_shared > limit - pos or vlen > limit - pos - non_shared:
            raise Corrupt("block entry runs past the block", b0 + at)
        key = key[:shared] + bytes(content[pos : pos + non_shared])
        pos += non_shared
        yield key, pos, pos + vlen
        pos += vlen

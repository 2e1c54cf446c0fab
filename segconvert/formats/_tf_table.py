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
from typing import Any

import numpy as np

from segconvert.formats import protowire


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
# register. It is linear over GF(2): raw(A ^ B) = raw(A) ^ raw(B) for equal lengths, leading zero bytes
# leave it unchanged, and raw(A || B) = shift_{|B|}(raw(A)) ^ raw(B), where shift_n runs n zero bytes
# through the register (a 32x32 bit matrix, stored as four 256-entry byte tables). So the CRC of a buffer
# is the XOR over its 16-bit units of "unit value at this distance from the end" table entries, which numpy
# evaluates as gathers (``np.take``) and XORs on whole arrays:
#
# * big buffers run in blocks of _BLOCK bytes, each seen as _ROWS contiguous rows of m units. Column i
#   collects one unit from every row; with one 65536-entry table per row (the unit shifted by the distance
#   between its row and the last row), XORing the row lookups gives a value c_i per column, and the block
#   is the fold of the c_i, each a piece of span 2 bytes. Rows are contiguous, so every gather streams.
# * folding k values of span s (``_fold``) combines 64 at a time with per-(position, byte) tables, which
#   yields k/64 values of span 64*s, until one value is left.
# * a buffer that is not a whole number of blocks starts with a partial block, whose missing leading rows
#   count as zeros (leading zero bytes leave the raw CRC unchanged), so it just skips their lookups.
# * the head shorter than one row, and small buffers, use 64-byte chunks with one byte table per chunk
#   position. The initial register is folded in by XORing it into the first four bytes (which is what a
#   non-zero start register amounts to), as a correction of the first chunk or column value.
# * a second thread takes half the blocks, or half the rows of a lone block (numpy's gathers release the
#   GIL). About 1 ns per byte and core; TF verifies every byte of a checkpoint too (bundle entries' CRC on
#   every read, SSTable blocks' CRC always), so the reader does the same.

_POLY = 0x82F63B78
_MASK_DELTA = 0xA282EAD8
_SMALL = 192  # below this a plain Python loop is faster than the numpy machinery
_ROWS = 16  # rows per big block: 16 tables of 65536 entries (4 MiB)
_MIN_ROWS = 6  # fewest rows worth a partial big block
_BLOCK = 1 << 20  # bytes per big block
_COLS = _BLOCK // 2 // _ROWS  # columns (units per row) of a big block
_CHUNK = 64  # bytes per small-path chunk: 64 byte tables of 256 entries
_PIECE = 1 << 14  # small-path bytes per numpy step (index / lookup buffers of 192 KiB)
_FOLD = 64  # values combined per fold step
_FOLD_SLICE = 128  # rows of the first fold step of a big block handled at once


def _byte_table() -> np.ndarray:
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ np.uint32(_POLY), t >> 1).astype(np.uint32)
    return t


_T8 = _byte_table()
_T8_LIST: list[int] = _T8.tolist()
_BASIS = np.left_shift(np.uint32(1), np.arange(32, dtype=np.uint32))


def _raw_py(data: bytes | memoryview, reg: int) -> int:
    t = _T8_LIST
    for b in data:
        reg = t[(reg ^ b) & 0xFF] ^ (reg >> 8)
    return reg


def _shift_arr(v: np.ndarray, nbytes: int) -> np.ndarray:
    """Run ``nbytes`` zero bytes through every register in ``v`` (small ``nbytes`` only)."""
    for _ in range(nbytes):
        v = _T8[v & 0xFF] ^ (v >> 8)
    return v


def _apply(tab: np.ndarray, v):
    """Apply the linear map given as byte tables ``tab`` (4 x 256) to ``v`` (array or int)."""
    return tab[0][v & 0xFF] ^ tab[1][(v >> 8) & 0xFF] ^ tab[2][(v >> 16) & 0xFF] ^ tab[3][v >> 24]


def _byte_tables(cols: np.ndarray) -> np.ndarray:
    """Byte tables (4 x 256) of the linear map whose images of the 32 basis bits are ``cols``."""
    tab = np.zeros((4, 256), np.uint32)
    v = np.arange(256)
    for b in range(4):
        for bit in range(8):
            tab[b][(v >> bit) & 1 == 1] ^= cols[8 * b + bit]
    return tab


@functools.lru_cache(maxsize=64)
def _pow2_shift(k: int) -> np.ndarray:
    """Byte tables of shift by 2**k zero bytes."""
    if k == 0:
        return _byte_tables(_shift_arr(_BASIS, 1))
    prev = _pow2_shift(k - 1)
    return _byte_tables(_apply(prev, _apply(prev, _BASIS)))


def _shift_table(nbytes: int) -> np.ndarray:
    """Byte tables of shift by ``nbytes`` zero bytes."""
    cols, k = _BASIS, 0
    while nbytes:
        if nbytes & 1:
            cols = _apply(_pow2_shift(k), cols)
        nbytes >>= 1
        k += 1
    return _byte_tables(cols)


def _shift_int(v: int, nbytes: int) -> int:
    k = 0
    while nbytes and v:
        if nbytes & 1:
            v = int(_apply(_pow2_shift(k), v))
        nbytes >>= 1
        k += 1
    return v


@functools.lru_cache(maxsize=16)
def _fold_table(span: int) -> np.ndarray:
    """``[(j * 4 + b) * 256 + x] = shift_{(FOLD-1-j) * span}(x << 8b)``: folds FOLD values of span bytes."""
    tabs = np.empty((_FOLD, 1024), np.uint32)
    tabs[-1] = np.left_shift(
        np.arange(256, dtype=np.uint32)[None, :], 8 * np.arange(4, dtype=np.uint32)[:, None]
    ).ravel()
    done, k = 1, 0  # rows FOLD-done.. are filled; shift them by (done * span) bytes to fill the next ones
    while done < _FOLD:
        n = min(done, _FOLD - done)
        tabs[_FOLD - done - n : _FOLD - done] = _apply(_shift_table(span << k), tabs[_FOLD - n :])
        done += n
        k += 1
    return tabs.reshape(-1)


_OFF_FOLD = np.arange(_FOLD * 4, dtype=np.intp) * 256


def _fold(c: np.ndarray, span: int) -> int:
    """Raw CRC of consecutive pieces of ``span`` bytes each whose raw CRCs are ``c`` (uint32)."""
    while c.size > _FOLD:
        pad = -c.size % _FOLD
        if pad:  # leading zero pieces change nothing
            c = np.concatenate([np.zeros(pad, np.uint32), c])
        idx = np.add(c.view(np.uint8).reshape(-1, _FOLD * 4), _OFF_FOLD)
        c = np.bitwise_xor.reduce(_fold_table(span).take(idx, mode="wrap"), axis=1)
        span *= _FOLD
    if c.size == 0:
        return 0
    idx = np.add(c.view(np.uint8), _OFF_FOLD[_OFF_FOLD.size - 4 * c.size :])
    return int(np.bitwise_xor.reduce(_fold_table(span).take(idx, mode="wrap")))


@functools.lru_cache(maxsize=1)
def _chunk_tables() -> np.ndarray:
    """``[p * 256 + x]`` = raw CRC of byte x at position p of a 64-byte chunk (flat, 64 KiB)."""
    tabs = np.empty((_CHUNK, 256), np.uint32)
    v = _T8
    for p in range(_CHUNK - 1, -1, -1):
        tabs[p] = v
        v = _shift_arr(v, 1)
    return tabs.reshape(-1)


_OFF_CHUNK = np.arange(_CHUNK, dtype=np.intp) * 256


def _first_bytes(tabs: np.ndarray, first: int) -> int:
    """Raw CRC of a chunk whose first four bytes are ``first`` (little-endian) and the rest zero."""
    return int(
        tabs[first & 0xFF]
        ^ tabs[256 + ((first >> 8) & 0xFF)]
        ^ tabs[512 + ((first >> 16) & 0xFF)]
        ^ tabs[768 + (first >> 24)]
    )


def _raw_small(a: np.ndarray, first: int) -> int:
    """Raw CRC of ``a`` (uint8, a multiple of 64 bytes) with ``first`` XORed into its first four bytes."""
    tabs = _chunk_tables()
    rows = a.reshape(-1, _CHUNK)
    n = rows.shape[0]
    c = np.empty(n, np.uint32)
    step = _PIECE // _CHUNK
    idx, lut = _small_buffers()
    for s in range(0, n, step):
        k = min(step, n - s)
        np.add(rows[s : s + k], _OFF_CHUNK, out=idx[:k])
        np.take(tabs, idx[:k], out=lut[:k], mode="wrap")
        np.bitwise_xor.reduce(lut[:k], axis=1, out=c[s : s + k])
    if first:
        c[0] ^= _first_bytes(tabs, first)
    return _fold(c, _CHUNK)


@functools.lru_cache(maxsize=1)
def _row_tables() -> np.ndarray:
    """``[q, u]`` = raw CRC of unit u followed by the zero units up to the end of a big block, for a unit in
    the last column of row q (so every row shifts by (ROWS-1-q) rows of COLS units)."""
    # linear in u: each table is lo[u & 0xFF] ^ hi[u >> 8], so only 512 values per row are shifted
    step = _shift_table(2 * _COLS)
    tabs = np.empty((_ROWS, 256, 256), np.uint32)
    byte = np.arange(256, dtype=np.uint32)
    v = _shift_arr(np.concatenate([byte, byte << 8]), 2)
    for q in range(_ROWS - 1, -1, -1):
        np.bitwise_xor(v[256:, None], v[None, :256], out=tabs[q])
        v = _apply(step, v)
    return tabs.reshape(_ROWS, 65536)


_tls = threading.local()


def _work_buffers() -> tuple[np.ndarray, ...]:
    """Per-thread buffers of the big-block path (~1.2 MB), kept so that repeated calls do not page-fault."""
    bufs = getattr(_tls, "bufs", None)
    if bufs is None:
        bufs = _tls.bufs = (
            np.empty(_COLS, np.uint32),  # column values
            np.empty(_COLS, np.uint32),  # one row's lookups
            np.empty(_COLS, np.intp),  # one row's indices
            np.empty(_COLS // _FOLD, np.uint32),  # after the first fold step
            # the first fold step runs in slices: its index temporaries would evict the tables
            np.empty((_FOLD_SLICE, _FOLD * 4), np.intp),
            np.empty((_FOLD_SLICE, _FOLD * 4), np.uint32),
        )
    return bufs


def _small_buffers() -> tuple[np.ndarray, np.ndarray]:
    """Per-thread index / lookup buffers of the small path (one _PIECE at a time)."""
    bufs = getattr(_tls, "small", None)
    if bufs is None:
        shape = (_PIECE // _CHUNK, _CHUNK)
        bufs = _tls.small = (np.empty(shape, np.intp), np.empty(shape, np.uint32))
    return bufs


def _columns(a: np.ndarray, lead: int, first: int, i: int, q_lo: int, q_hi: int) -> np.ndarray:
    """Column values of big block ``i`` over its rows ``q_lo..q_hi`` (a per-thread buffer). ``a`` is seen
    behind ``lead`` zero rows (leading zeros change nothing, so block 0 just skips those rows); ``first`` is
    XORed into the first four data bytes."""
    tabs = _row_tables()
    c, tmp, index = _work_buffers()[:3]
    row_bytes = 2 * _COLS
    q0 = max(q_lo, lead if i == 0 else 0)
    start = (i * _ROWS + q0 - lead) * row_bytes
    rows = a[start : start + (q_hi - q0) * row_bytes].view("<u2").reshape(q_hi - q0, _COLS)
    np.copyto(index, rows[0], casting="unsafe")  # take() would allocate this intp copy on every call
    np.take(tabs[q0], index, out=c, mode="wrap")
    for q in range(q0 + 1, q_hi):
        np.copyto(index, rows[q - q0], casting="unsafe")
        np.take(tabs[q], index, out=tmp, mode="wrap")
        np.bitwise_xor(c, tmp, out=c)
    if i == 0 and first and q0 == lead:  # the first two units sit in columns 0 and 1 of the first data row
        c[0] ^= tabs[q0][first & 0xFFFF]
        c[1] ^= tabs[q0][first >> 16]
    return c


def _fold_columns(c: np.ndarray) -> int:
    """Raw CRC of a big block from its column values (pieces of span 2)."""
    fold = _fold_table(2)
    groups, idx, lut = _work_buffers()[3:]
    cb = c.view(np.uint8).reshape(-1, _FOLD * 4)
    for s in range(0, cb.shape[0], _FOLD_SLICE):
        np.add(cb[s : s + _FOLD_SLICE], _OFF_FOLD, out=idx)
        np.take(fold, idx, out=lut, mode="wrap")
        np.bitwise_xor.reduce(lut, axis=1, out=groups[s : s + _FOLD_SLICE])
    return _fold(groups, 2 * _FOLD)


def _raw_blocks(a: np.ndarray, lead: int, first: int, i0: int, i1: int, out: np.ndarray) -> None:
    """Raw CRC of big blocks ``i0..i1`` (see :func:`_columns`) into ``out[i]``."""
    for i in range(i0, i1):
        out[i] = _fold_columns(_columns(a, lead, first, i, 0, _ROWS))


_POOL: dict[int, ThreadPoolExecutor] = {}


def _pool() -> ThreadPoolExecutor:
    """The helper thread of this process (a forked child gets its own: the parent's thread is not there)."""
    pid = os.getpid()
    if pid not in _POOL:
        _POOL.clear()
        _POOL[pid] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segconvert-crc32c")
    return _POOL[pid]


def _parallel() -> bool:
    return (os.cpu_count() or 1) > 1


def crc32c(data: bytes | bytearray | memoryview | np.ndarray, crc: int = 0) -> int:
    """CRC32C of ``data``; pass a previous result as ``crc`` to extend it (like ``zlib.crc32``).

    Uses google-crc32c's hardware (SSE4.2 / ARMv8 CRC) implementation when it is installed with its C
    extension (a dependency; ~5 GB/s here, fed 1 MiB at a time), else :func:`crc32c_numpy`.
    """
    if _HW is None:
        return crc32c_numpy(data, crc)
    if isinstance(data, bytes):
        return _HW.extend(crc, data)
    # google-crc32c takes only immutable bytes: copy 1 MiB pieces (bounded memory, the copy is cache-hot)
    view = memoryview(data.reshape(-1).view(np.uint8) if isinstance(data, np.ndarray) else data).cast("B")
    for i in range(0, view.nbytes, _HW_PIECE):
        crc = _HW.extend(crc, view[i : i + _HW_PIECE].tobytes())
    return crc


def _hw_crc32c() -> Any:
    try:
        import google_crc32c
    except ImportError:
        return None
    return google_crc32c if getattr(google_crc32c, "implementation", "") == "c" else None


_HW = _hw_crc32c()
_HW_PIECE = 1 << 20


def crc32c_numpy(data: bytes | bytearray | memoryview | np.ndarray, crc: int = 0) -> int:
    """Pure-numpy CRC32C (table-driven, two threads for large inputs): the fallback of :func:`crc32c`."""
    a = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
    n = a.size
    reg = crc ^ 0xFFFFFFFF
    if n < _SMALL:
        return _raw_py(a.tobytes(), reg) ^ 0xFFFFFFFF
    main = n - n % _CHUNK
    row_bytes = 2 * _COLS
    nrows = main // row_bytes  # whole rows go through the row tables, in blocks of _ROWS rows
    if nrows % _ROWS < _MIN_ROWS:  # a partial block of few rows costs more (its fold) than the small path
        nrows -= nrows % _ROWS
    head = main - nrows * row_bytes  # the rest goes through the small path, first
    raw = _raw_small(a[:head], reg) if head else 0
    if nrows:
        lead = -nrows % _ROWS  # the first block is partial: its missing leading rows count as zeros
        nblocks = (nrows + lead) // _ROWS
        body = a[head:main]
        vals = np.empty(nblocks, np.uint32)
        first = 0 if head else reg
        # a second thread takes half the blocks, or half the rows of a single block (numpy's gathers and
        # ufuncs release the GIL)
        if nblocks >= 2 and _parallel():
            half = nblocks // 2
            job = _pool().submit(_raw_blocks, body, lead, 0, half, nblocks, vals)
            _raw_blocks(body, lead, first, 0, half, vals)
            job.result()
        elif nrows >= 2 * _MIN_ROWS and _parallel():
            split = lead + (_ROWS - lead) // 2
            job = _pool().submit(_columns, body, lead, 0, 0, split, _ROWS)
            c = _columns(body, lead, first, 0, 0, split)
            np.bitwise_xor(c, job.result(), out=c)
            vals[0] = _fold_columns(c)
        else:
            _raw_blocks(body, lead, first, 0, nblocks, vals)
        raw = _shift_int(raw, main - head) ^ _fold(vals, _BLOCK)
    raw = _raw_py(a[main:].tobytes(), raw)
    return raw ^ 0xFFFFFFFF


def _build_tables() -> None:
    """Build the lookup tables (about 5 MiB, ~20 ms) once, at import, as a C library has its tables static."""
    _row_tables()
    _chunk_tables()
    for span in (2, 2 * _FOLD, _CHUNK, _CHUNK * _FOLD, _BLOCK):
        _fold_table(span)


if _HW is None:  # only the numpy fallback needs them
    _build_tables()


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
    """Decode a base-128 varint at ``buf[pos]`` (at most 10 bytes, not past ``end``) -> (value, new pos).

    :func:`segconvert.formats.protowire.read_varint`, with offsets reported relative to ``base``.
    """
    try:
        value, pos = protowire.read_varint(buf, pos, end)
    except protowire.WireError as exc:
        raise Corrupt(exc.message, base + exc.offset) from None
    return value & 0xFFFFFFFFFFFFFFFF, pos


def to_int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


# A parsed message: field number -> list of values. Varints and fixed ints are Python ints;
# length-delimited fields are (start, end) positions in the parsed buffer.
Fields = dict[int, list]


def parse_message(buf: bytes | memoryview, pos: int, end: int, base: int = 0) -> Fields:
    """Split one protobuf message ``buf[pos:end]`` into its fields (no schema needed).

    The fields come from :func:`segconvert.formats.protowire.iter_fields`; offsets are reported relative to
    ``base``.
    """
    out: Fields = {}
    try:
        for f in protowire.iter_fields(buf, pos, end):
            if f.wire_type == protowire.VARINT:
                val: Any = f.value & 0xFFFFFFFFFFFFFFFF
            elif f.wire_type == protowire.LEN:
                val = (f.start, f.end)
            else:  # I64 / I32
                val = int.from_bytes(buf[f.start : f.end], "little")
            out.setdefault(f.number, []).append((f.wire_type, val))
    except protowire.WireError as exc:
        raise Corrupt(exc.message, base + exc.offset) from None
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

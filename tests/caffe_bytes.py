"""A tiny, independent protobuf encoder for hand-built caffemodels in tests (not segconvert code)."""

from __future__ import annotations

import struct


def varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint((number << 3) | wire_type)


def ld(number: int, payload: bytes) -> bytes:
    """Length-delimited field."""
    return tag(number, 2) + varint(len(payload)) + payload


def vi(number: int, value: int) -> bytes:
    return tag(number, 0) + varint(value)


def text(number: int, s: str) -> bytes:
    return ld(number, s.encode())


def blob(
    values: list[float] | None = None,
    shape: list[int] | None = None,
    legacy: tuple[int, int, int, int] | None = None,
    double: bool = False,
    packed: bool = True,
) -> bytes:
    out = b""
    if shape is not None:
        out += ld(7, ld(1, b"".join(varint(d) for d in shape)))
    if legacy is not None:
        out += b"".join(vi(i + 1, d) for i, d in enumerate(legacy))
    values = values or []
    fmt, number, wt = ("<d", 8, 1) if double else ("<f", 5, 5)
    if packed:
        out += ld(number, b"".join(struct.pack(fmt, v) for v in values))
    else:
        out += b"".join(tag(number, wt) + struct.pack(fmt, v) for v in values)
    return out


def layer(name: str, ltype: str, blobs: list[bytes] = (), bottoms=(), tops=(), extra: bytes = b"") -> bytes:
    body = text(1, name) + text(2, ltype)
    body += b"".join(text(3, b) for b in bottoms) + b"".join(text(4, t) for t in tops)
    body += b"".join(ld(7, b) for b in blobs) + extra
    return ld(100, body)


def v1_layer(name: str, type_enum: int, blobs: list[bytes] = ()) -> bytes:
    body = text(4, name) + vi(5, type_enum) + b"".join(ld(6, b) for b in blobs)
    return ld(2, body)

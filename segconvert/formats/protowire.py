"""Minimal protobuf wire-format walking over a buffer (an mmap), with 64-bit offsets and bounds checks.

Nothing here allocates according to a length field: every length is checked against the end of the
enclosing record before it is used.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5


class WireError(Exception):
    """Malformed wire data at ``offset`` (absolute byte position in the file)."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


class Field(NamedTuple):
    number: int
    wire_type: int
    tag_start: int  # absolute offset of the tag
    start: int  # payload start (for LEN: after the length prefix)
    end: int  # payload end (exclusive)
    value: int  # decoded VARINT value; 0 for the other wire types


def read_varint(buf: bytes | memoryview, pos: int, end: int) -> tuple[int, int]:
    """Decode one varint at ``pos``; returns (value, new position)."""
    result = 0
    shift = 0
    start = pos
    while True:
        if pos >= end:
            raise WireError("truncated varint (record ends inside it)", start)
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError("varint longer than 10 bytes", start)


def iter_fields(buf: bytes | memoryview, start: int, end: int) -> Iterator[Field]:
    """Yield the fields of the message occupying ``buf[start:end]``."""
    pos = start
    while pos < end:
        tag_start = pos
        tag, pos = read_varint(buf, pos, end)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise WireError("field number 0 (not protobuf data)", tag_start)
        if wire_type == VARINT:
            value, npos = read_varint(buf, pos, end)
            yield Field(number, wire_type, tag_start, pos, npos, value)
            pos = npos
        elif wire_type == LEN:
            length, pos = read_varint(buf, pos, end)
            if length > end - pos:
                raise WireError(
                    f"field {number}: length {length} runs past the end of its record ({end - pos} bytes left)",
                    tag_start,
                )
            yield Field(number, wire_type, tag_start, pos, pos + length, 0)
            pos += length
        elif wire_type == I32 or wire_type == I64:
            size = 4 if wire_type == I32 else 8
            if size > end - pos:
                raise WireError(f"field {number}: truncated fixed-width value", tag_start)
            yield Field(number, wire_type, tag_start, pos, pos + size, 0)
            pos += size
        elif wire_type in (SGROUP, EGROUP):
            raise WireError(
                f"field {number}: protobuf groups (deprecated, unused by Caffe and TF) are not supported", tag_start
            )
        else:
            raise WireError(f"field {number}: invalid wire type {wire_type}", tag_start)


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def retag(buf: bytes | memoryview, field: Field, new_number: int) -> bytes:
    """The bytes of ``field`` with its number replaced (payload unchanged)."""
    tag = encode_varint((new_number << 3) | field.wire_type)
    if field.wire_type == LEN:
        return tag + encode_varint(field.end - field.start) + bytes(buf[field.start : field.end])
    return tag + bytes(buf[field.start : field.end])


def as_int32(value: int) -> int:
    """A varint-encoded int32/int64 as a signed Python int."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value

"""Find the fields of a prototxt that the schema does not know, before protobuf's text parser sees the file.

Protobuf's text parser stops at the first unknown field. :func:`scan_unknown_fields` walks the text against
the message descriptors instead, records every unknown field (line, column, dotted path, enclosing layer) and
returns the text with those fields blanked out (same length, newlines kept, so later errors keep their line
and column). Anything it cannot follow (a syntax error) ends the scan; protobuf then reports that error.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["UnknownField", "scan_unknown_fields"]

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<word>[A-Za-z0-9_.+\-]+)
  | (?P<punct>[{}<>:\[\],;])
    """,
    re.X,
)
_CLOSE = {"{": "}", "<": ">"}


@dataclass(frozen=True)
class UnknownField:
    """A field the schema does not define: where it is and in which layer."""

    line: int
    column: int
    path: str  # dotted from the layer (``memory_data_param.source_class``) or the net
    layer: str | None
    layer_type: str | None


class _ScanError(Exception):
    pass


@dataclass
class _Tok:
    kind: str
    text: str
    start: int
    end: int


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = self._tokenize(text)
        self.i = 0
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.found: list[tuple[int, int, str, dict[str, str]]] = []  # start, end, path, enclosing layer info

    @staticmethod
    def _tokenize(text: str) -> list[_Tok]:
        toks, pos = [], 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                toks.append(_Tok("bad", text[pos], pos, pos + 1))
                break
            kind = m.lastgroup or "bad"
            if kind not in ("space", "comment"):
                toks.append(_Tok(kind, m.group(), m.start(), m.end()))
            pos = m.end()
        return toks

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> _Tok:
        tok = self.peek()
        if tok is None or tok.kind == "bad":
            raise _ScanError
        self.i += 1
        return tok

    def where(self, offset: int) -> tuple[int, int]:
        line = bisect.bisect_right(self.line_starts, offset)
        return line, offset - self.line_starts[line - 1] + 1

    def message(self, desc: Any, close: str | None, prefix: str, layer: dict[str, str] | None) -> dict[str, str]:
        """Walk one message body up to ``close`` (None: end of text); returns its string name/type fields."""
        seen: dict[str, str] = {}
        while True:
            tok = self.peek()
            if tok is None:
                if close is None:
                    return seen
                raise _ScanError
            if tok.kind == "punct" and tok.text == close:
                self.i += 1
                return seen
            name = self.take()
            if name.kind != "word":
                raise _ScanError
            field = desc.fields_by_name.get(name.text)
            nxt = self.take()
            if nxt.kind == "punct" and nxt.text == ":":
                nxt = self.take()
            path = f"{prefix}{name.text}"
            if field is None:
                self.skip_value(nxt)
                end = self.toks[self.i - 1].end
                self.found.append((name.start, end, path, layer if layer is not None else {}))
            elif nxt.kind == "punct" and nxt.text in _CLOSE and field.message_type is not None:
                is_layer = layer is None and name.text in ("layer", "layers") and prefix == ""
                info: dict[str, str] = {} if is_layer else layer  # type: ignore[assignment]
                sub_prefix = "" if is_layer else f"{path}."
                got = self.message(field.message_type, _CLOSE[nxt.text], sub_prefix, info)
                if is_layer:
                    info.update(got)
            elif nxt.kind == "punct" and nxt.text == "[" and field.message_type is not None:
                self.message_list(field.message_type, f"{path}.", layer)
            else:
                self.skip_value(nxt)
                if name.text in ("name", "type") and name.text not in seen and nxt.kind in ("string", "word"):
                    seen[name.text] = nxt.text[1:-1] if nxt.kind == "string" else nxt.text  # V1: type enum
            tok = self.peek()
            if tok is not None and tok.kind == "punct" and tok.text in ",;":
                self.i += 1

    def message_list(self, desc: Any, prefix: str, layer: dict[str, str] | None) -> None:
        while True:
            tok = self.take()
            if tok.kind == "punct" and tok.text == "]":
                return
            if tok.kind == "punct" and tok.text == ",":
                continue
            if tok.kind == "punct" and tok.text in _CLOSE:
                self.message(desc, _CLOSE[tok.text], prefix, layer)
            else:
                raise _ScanError

    def skip_value(self, tok: _Tok) -> None:
        """Skip a value that starts with ``tok`` (already taken): scalar, string run, list or block."""
        if tok.kind == "punct" and tok.text in _CLOSE or tok.text == "[":
            depth = 1
            while depth:
                t = self.take()
                if t.kind == "punct" and t.text in "{<[":
                    depth += 1
                elif t.kind == "punct" and t.text in "}>]":
                    depth -= 1
            return
        if tok.kind == "string":
            while (t := self.peek()) is not None and t.kind == "string":
                self.i += 1
            return
        if tok.kind != "word":
            raise _ScanError


def scan_unknown_fields(text: str, net_descriptor: Any) -> tuple[str, list[UnknownField]]:
    """The text with unknown fields blanked, and those fields in file order (see the module docstring)."""
    scanner = _Scanner(text)
    try:
        scanner.message(net_descriptor, None, "", None)
    except (_ScanError, RecursionError):  # protobuf's parser reports the syntax error
        pass
    if not scanner.found:
        return text, []
    chars = list(text)
    unknown = []
    for start, end, path, layer in scanner.found:
        for k in range(start, end):
            if chars[k] != "\n":
                chars[k] = " "
        line, column = scanner.where(start)
        unknown.append(UnknownField(line, column, path, layer.get("name"), layer.get("type")))
    return "".join(chars), unknown

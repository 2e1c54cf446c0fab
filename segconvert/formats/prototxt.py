"""``.prototxt`` (protobuf text format) reading with the built-in Caffe schema."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from segconvert.errors import CaffeFormatError
from segconvert.formats.caffe_schema import message_class

_LOC = re.compile(r"^\s*(\d+):(\d+)\s*:\s*")


def parse_prototxt(text: str, path: str | os.PathLike[str] = "<string>") -> Any:
    """Parse prototxt text into a NetParameter; errors name the file, line and column."""
    net = message_class("NetParameter")()
    try:
        text_format.Parse(text, net, allow_unknown_extension=False)
    except text_format.ParseError as exc:
        line, column = exc.GetLine(), exc.GetColumn()
        message = str(exc)
        m = _LOC.match(message)
        if m:
            line, column = int(m.group(1)), int(m.group(2))
            message = message[m.end() :]
        message = message.replace("segconvert.caffe.", "")
        layer = _enclosing_layer(text, line)
        raise CaffeFormatError(message, file=path, line=line, column=column, layer=layer) from None
    return net


def read_prototxt(path: str | os.PathLike[str]) -> Any:
    """Read a ``.prototxt`` file into a NetParameter message."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CaffeFormatError(f"cannot read: {exc.strerror}", file=path) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CaffeFormatError(
            "not a text prototxt (binary data; a .caffemodel?)", file=path, offset=exc.start
        ) from None
    if "\x00" in text:
        raise CaffeFormatError("not a text prototxt (NUL bytes; a .caffemodel?)", file=path, offset=text.index("\x00"))
    return parse_prototxt(text, path)


def _enclosing_layer(text: str, line: int | None) -> str | None:
    """Best effort: the name of the last ``name: "..."`` at layer level before ``line``."""
    if not line:
        return None
    head = "\n".join(text.splitlines()[:line])
    names = re.findall(r'(?:^|layers?\s*\{)\s*name\s*:\s*"([^"]*)"', head, re.M)
    return names[-1] if names else None

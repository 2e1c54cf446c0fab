"""``.prototxt`` (protobuf text format) reading with the built-in Caffe schema.

Fields the schema does not know do not stop the parse at the first one: every one is collected
(:mod:`.prototxt_scan`) with its line and layer. They are an error listing them all, except when they all sit
in data layers, whose parameters do not shape the converted net (CaffeOnSpark's ``source_class``, a fork's
augmentation options): then the file parses and one note lists them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from segconvert.errors import CaffeFormatError
from segconvert.formats.caffe_schema import message_class
from segconvert.formats.prototxt_scan import UnknownField, scan_unknown_fields

_LOC = re.compile(r"^\s*(\d+):(\d+)\s*:\s*")
# Layer types whose parameters only say where training data come from: unknown fields there are reported only.
REPORT_ONLY_TYPES = frozenset(
    {"Data", "ImageData", "ImageSegData", "HDF5Data", "MemoryData", "WindowData", "DummyData", "AnnotatedData"}
    | {"VideoData", "CoSData"}
    | {"DATA", "IMAGE_DATA", "HDF5_DATA", "MEMORY_DATA", "WINDOW_DATA", "DUMMY_DATA"}  # V1 ``layers`` enum names
)


def _describe(u: UnknownField, path: str | os.PathLike[str]) -> str:
    where = f"{path}:{u.line}"
    if u.layer is not None or u.layer_type is not None:
        where += f" layer '{u.layer or '?'}' ({u.layer_type or 'no type'})"
    return f"{where}: {u.path}"


def parse_prototxt(text: str, path: str | os.PathLike[str] = "<string>", notes: list[str] | None = None) -> Any:
    """Parse prototxt text into a NetParameter; errors name the file, line and column.

    Unknown fields: see the module docstring. The note about report-only ones is appended to ``notes``.
    """
    net = message_class("NetParameter")()
    cleaned, unknown = scan_unknown_fields(text, net.DESCRIPTOR)
    _parse(cleaned, net, text, path)
    if unknown:
        fatal = [u for u in unknown if u.layer_type not in REPORT_ONLY_TYPES]
        listed = "; ".join(_describe(u, path) for u in unknown)
        if fatal:
            first = fatal[0]
            raise CaffeFormatError(
                f"{len(unknown)} field(s) unknown to the Caffe schema (built-in: BVLC, DeepLab-v2, PSPNet, SSD, "
                f"NVCaffe and the forks named in segconvert.formats.caffe_schema): {listed}",
                file=path,
                line=first.line,
                column=first.column,
                layer=first.layer,
            )
        if notes is not None:
            notes.append(
                f"ignored {len(unknown)} unknown field(s) of data layers (they do not shape the net): {listed}"
            )
    return net


def _parse(text: str, net: Any, original: str, path: str | os.PathLike[str]) -> None:
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
        layer = _enclosing_layer(original, line)
        raise CaffeFormatError(message, file=path, line=line, column=column, layer=layer) from None


def read_prototxt(path: str | os.PathLike[str], notes: list[str] | None = None) -> Any:
    """Read a ``.prototxt`` file into a NetParameter message (``notes``: see :func:`parse_prototxt`)."""
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
    return parse_prototxt(text, path, notes)


def _enclosing_layer(text: str, line: int | None) -> str | None:
    """Best effort: the name of the last ``name: "..."`` at layer level before ``line``."""
    if not line:
        return None
    head = "\n".join(text.splitlines()[:line])
    names = re.findall(r'(?:^|layers?\s*\{)\s*name\s*:\s*"([^"]*)"', head, re.M)
    return names[-1] if names else None

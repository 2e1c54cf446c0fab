"""Typed errors. Every user-facing failure is one of these and renders as a single line."""

from __future__ import annotations

from pathlib import Path


class SegconvertError(Exception):
    """Base class: a message plus where it happened (file, layer, byte offset, line/column, key)."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        layer: str | None = None,
        offset: int | None = None,
        line: int | None = None,
        column: int | None = None,
        key: str | None = None,
    ) -> None:
        self.message = message
        self.file = str(file) if file is not None else None
        self.layer = layer
        self.offset = offset
        self.line = line
        self.column = column
        self.key = key
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """``file:line:col: layer 'x': byte offset N: key 'k': message`` with the known parts only."""
        where = []
        if self.file is not None:
            loc = self.file
            if self.line is not None:
                loc += f":{self.line}"
                if self.column is not None:
                    loc += f":{self.column}"
            where.append(loc)
        if self.layer is not None:
            where.append(f"layer '{self.layer}'")
        if self.offset is not None:
            where.append(f"byte offset {self.offset}")
        if self.key is not None:
            where.append(f"key '{self.key}'")
        msg = " ".join(self.message.split())
        return ": ".join([*where, msg]) if where else msg


class CaffeFormatError(SegconvertError):
    """A .caffemodel or .prototxt that cannot be read (corrupt, truncated, wrong type, bad syntax)."""


class CheckpointError(SegconvertError):
    """A TF checkpoint or Keras HDF5 file that cannot be read."""


class ConversionError(SegconvertError):
    """Source and target do not match (architecture, missing/unused tensors, shape mismatch)."""


class WeightsFileError(SegconvertError):
    """A converted weights file (safetensors/.pth) that cannot be loaded."""


class DatasetError(SegconvertError):
    """A dataset root or prediction folder that does not have the expected layout."""


class OutputPathError(SegconvertError):
    """An output path that cannot be written (read-only folder, a file in the way, no permission)."""

"""Click parameter types whose failures follow the one-line rule (``error: FILE: reason``, exit 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from segconvert.errors import SegconvertError


class ExistingPath(click.ParamType):
    """A path that must exist (a file, or a folder with ``folder=True``), as a :class:`~pathlib.Path`.

    Unlike ``click.Path(exists=True)`` a missing path is a typed error that ``cli.main`` prints as one line
    naming the path (exit 2), not a usage block. ``tf_prefix=True`` also accepts a TF checkpoint prefix
    (``PREFIX.index`` exists). ``text=True`` gives the value as ``str`` (commands whose functions take text).
    """

    name = "path"

    def __init__(self, *, folder: bool = False, tf_prefix: bool = False, text: bool = False) -> None:
        self.folder = folder
        self.tf_prefix = tf_prefix
        self.text = text

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        path = self._check(value, param)
        return str(path) if self.text else path

    def _check(self, value: Any, param: click.Parameter | None) -> Path:
        path = Path(value).expanduser()
        what = f"{param.human_readable_name}: " if param is not None and param.human_readable_name else ""
        if not path.exists():
            if self.tf_prefix and Path(str(path) + ".index").exists():
                return path
            raise SegconvertError(f"{what}no such {'folder' if self.folder else 'file'}", file=path)
        if self.folder and not path.is_dir():
            raise SegconvertError(f"{what}expected a folder, got a file", file=path)
        if not self.folder and path.is_dir():
            raise SegconvertError(f"{what}is a folder, expected a file", file=path)
        return path

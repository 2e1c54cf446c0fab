"""Atomic file writes (no partial output files) with the permissions ``open()`` would give."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` filtered by the process umask (what ``open(path, "w")`` gives a new file)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mode & ~mask


def open_mode(tmp: str | os.PathLike[str]) -> None:
    """Give a ``mkstemp`` file (created 0600) the mode a file made by ``open()`` would have."""
    os.chmod(tmp, umask_mode())


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], Any]) -> None:
    """Call ``write(tmp)`` on a temp file beside ``path``, then rename it over ``path`` (no partial files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        open_mode(tmp)
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

"""Atomic file writes (no partial output files) with the permissions ``open()`` would give."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from segconvert.errors import OutputPathError


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


def check_output_path(path: str | os.PathLike[str], *, directory: bool = False) -> Path:
    """Fail early (before any work) when ``path`` cannot be written; nothing is created on failure.

    A file path needs its nearest existing ancestor to be a writable directory and must not be a directory
    itself; ``directory=True`` checks a folder that will be created (or filled) instead. Raises
    :class:`~segconvert.errors.OutputPathError` with the path and the reason.
    """
    path = Path(path)
    if not directory and path.is_dir():
        raise OutputPathError("is a directory, expected a file path", file=path)
    if directory and path.exists() and not path.is_dir():
        raise OutputPathError("exists and is not a directory", file=path)
    probe = path if (directory and path.is_dir()) else path.parent
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise OutputPathError(f"cannot create it: {probe} is not a directory", file=path)
    target = path if path.exists() else probe
    if not os.access(target, os.W_OK) or (target.is_dir() and not os.access(target, os.X_OK)):
        where = "" if target == path else f" ({target} is not writable)"
        raise OutputPathError(f"permission denied{where}", file=path)
    if not path.exists():  # os.access misses read-only mounts (/sys, /proc): probe with a real create
        try:
            fd, tmp = tempfile.mkstemp(dir=probe, prefix=".segconvert-probe-")
        except OSError as exc:
            raise OutputPathError(f"cannot write there: {exc.strerror or exc}", file=path) from None
        os.close(fd)
        os.unlink(tmp)
    return path

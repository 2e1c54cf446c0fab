"""Source-file provenance (sha256, size) without importing torch, so hashing can run while torch loads."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file (hashlib releases the GIL, so this overlaps with other work in a thread)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def source_entry(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"path": name, "bytes": size, "sha256": hex}`` for the metadata's ``source.files`` list."""
    p = Path(path)
    return {"path": p.name, "bytes": p.stat().st_size, "sha256": sha256_file(p)}


def hash_sources_in_background(paths: Sequence[str | os.PathLike[str]]) -> Callable[[], list[dict[str, Any]]]:
    """Start hashing ``paths`` in a daemon thread now; the returned callable waits and gives the entries.

    An error (unreadable file) is re-raised by the callable, in the caller's thread.
    """
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["entries"] = [source_entry(p) for p in paths]
        except BaseException as exc:  # handed to the caller
            result["error"] = exc

    thread = threading.Thread(target=work, name="segconvert-sha256", daemon=True)
    thread.start()

    def wait() -> list[dict[str, Any]]:
        thread.join()
        if "error" in result:
            raise result["error"]
        return result["entries"]

    return wait

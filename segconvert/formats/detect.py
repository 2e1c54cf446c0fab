"""Tell source file kinds apart by content (extensions are only a hint)."""

from __future__ import annotations

from pathlib import Path

from segconvert.errors import SegconvertError

_SSTABLE_MAGIC = bytes.fromhex("57fb808b247547db")  # LevelDB table footer magic, little-endian


def detect_kind(path: str | Path) -> str:
    """One of ``prototxt``, ``caffemodel``, ``tf_checkpoint``, ``keras_h5``."""
    p = Path(path)
    if not p.exists():
        if Path(str(p) + ".index").exists():
            return "tf_checkpoint"
        raise SegconvertError("no such file", file=p)
    if p.is_dir():
        raise SegconvertError("is a directory, expected a model file", file=p)
    if p.suffix == ".index" or (p.name.startswith(p.stem) and ".data-" in p.name):
        return "tf_checkpoint"
    with p.open("rb") as fh:
        head = fh.read(4096)
        size = p.stat().st_size
        tail = b""
        if size >= 8:
            fh.seek(size - 8)
            tail = fh.read(8)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "keras_h5"
    if tail == _SSTABLE_MAGIC:
        return "tf_checkpoint"
    if p.suffix in (".prototxt", ".pbtxt") or _looks_like_text(head):
        return "prototxt"
    return "caffemodel"


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a cut multi-byte character at the end
            return False
        text = head[: exc.start].decode("utf-8")
    printable = sum(c.isprintable() or c in "\n\r\t" for c in text)
    return printable >= 0.95 * len(text)

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
    if tail == _SSTABLE_MAGIC or _starts_like_sstable(head):  # a truncated checkpoint has lost its footer
        return "tf_checkpoint"
    if p.suffix in (".prototxt", ".pbtxt") or _looks_like_text(head):
        return "prototxt"
    return "caffemodel"


_CONVERT_HINT = {
    "prototxt": "a Caffe prototxt (text): convert it with `segconvert caffe2torch NET.prototxt WEIGHTS.caffemodel`",
    "caffemodel": "a Caffe .caffemodel: convert it first with `segconvert caffe2torch NET.prototxt THIS -o OUT`",
    "tf_checkpoint": "a TensorFlow checkpoint: convert it first with `segconvert slim2torch THIS -o OUT`",
    "keras_h5": "a Keras HDF5 file: convert it first with `segconvert keras2torch THIS -o OUT`",
    "onnx": "an ONNX model (an export, not a converted weights file): give the .safetensors it was exported from",
}


def looks_like_safetensors(head: bytes, size: int) -> bool:
    """An 8-byte little-endian header length (inside the file) followed by a JSON object."""
    n = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
    return 1 < n <= size - 8 and head[8:9] == b"{"


def describe_foreign_file(path: str | Path) -> str | None:
    """For a file that is not a segconvert weights file (safetensors / torch archive): what it is and what to
    do, in one phrase; None when it looks like one (or cannot be told)."""
    p = Path(path)
    if not p.is_file():
        return None
    with p.open("rb") as fh:
        head = fh.read(64)
    if head.startswith(b"PK") or looks_like_safetensors(head, p.stat().st_size):
        return None
    if head.lstrip()[:1] in (b"{", b"["):
        return "a JSON file (a .json sidecar?): give the weights file itself"
    if head[:1] == b"\x08" and (b"\x12" in head[:32] or b"\x3a" in head):  # ModelProto: ir_version varint first
        return _CONVERT_HINT["onnx"]
    kind = detect_kind(p)
    if kind == "caffemodel" and (not head or head[:1] not in (b"\x0a", b"\x12", b"\x1a", b"\xa2", b"\x22", b"\x2a")):
        return None  # no protobuf field a NetParameter starts with: unknown bytes
    return _CONVERT_HINT.get(kind)


def _starts_like_sstable(head: bytes) -> bool:
    """A TF checkpoint table's first entry: the empty key (shared 0, length 0), a varint value length, then a
    protobuf header (V1 ``SavedTensorSlices`` field 1, V2 ``BundleHeaderProto`` field 1). A caffemodel never
    starts with a zero byte (protobuf has no field 0)."""
    if not head.startswith(b"\x00\x00"):
        return False
    i = 2
    while i < min(len(head), 7) and head[i] & 0x80:
        i += 1
    return i + 1 < len(head) and head[i + 1] in (0x08, 0x0A)


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

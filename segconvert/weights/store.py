"""Converted-weights files: safetensors (default) or ``.pth``, with provenance metadata and a JSON sidecar.

The metadata (architecture and config, classes, input size, expected preprocessing, source files with
sha256, segconvert version, parity figures) is stored inside the weights file and in ``<file>.json``.
Writes are atomic and deterministic: the same input gives byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from segconvert import __version__
from segconvert.errors import OutputPathError, WeightsFileError
from segconvert.fileio import atomic_write, check_output_path
from segconvert.weights.provenance import sha256_file

__all__ = ["save_converted", "read_metadata", "load_model", "write_safetensors", "check_weights_output"]

META_KEY = "segconvert"
FORMATS = ("safetensors", "pth")


def _canonical(meta: Mapping[str, Any]) -> str:
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=False)


def weights_format(path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """The container for ``path``: ``fmt``, else ``pth`` for a .pth/.pt name, else safetensors."""
    path = Path(path)
    fmt = fmt or ("pth" if path.suffix in (".pth", ".pt") else "safetensors")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    if fmt == "pth" and path.suffix == ".safetensors":
        raise OutputPathError("--format pth writes a torch archive: name it .pth, or drop --format pth", file=path)
    if fmt == "safetensors" and path.suffix in (".pth", ".pt"):
        raise OutputPathError(f"--format safetensors under a {path.suffix} name: name it .safetensors", file=path)
    return fmt


def check_weights_output(path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """Before any work: the weights file and its ``<path>.json`` sidecar can be written. Returns the format."""
    fmt = weights_format(path, fmt)
    check_output_path(path)
    check_output_path(sidecar_path(path))
    return fmt


def save_converted(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    fmt: str | None = None,
    *,
    progress: bool = False,
) -> Path:
    """Write weights + metadata atomically, then the ``<path>.json`` sidecar. Returns the weights path.

    ``progress``: show a byte progress bar on stderr while writing a large (> 64 MiB) safetensors file.
    """
    path = Path(path)
    fmt = check_weights_output(path, fmt)
    meta = {**meta, "segconvert_version": meta.get("segconvert_version", __version__)}
    text = _canonical(meta)
    tensors = {k: v.detach().to("cpu") for k, v in sorted(state_dict.items())}

    digest: dict[str, str] = {}

    def write_weights(tmp: str) -> None:
        if fmt == "safetensors":
            digest["sha256"] = write_safetensors(tmp, tensors, {META_KEY: text}, progress=progress)
        else:
            with open(tmp, "wb") as fh:  # a file object keeps the archive's record names fixed ("archive/")
                torch.save({"state_dict": tensors, META_KEY: text}, fh)
            digest["sha256"] = sha256_file(tmp)

    atomic_write(path, write_weights)
    sidecar = {
        **meta,
        "weights_file": {"path": path.name, "format": fmt, "sha256": digest["sha256"]},
        "tensors": {
            k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for k, v in tensors.items()
        },
    }
    side_text = json.dumps(sidecar, sort_keys=True, indent=1, allow_nan=False) + "\n"
    atomic_write(sidecar_path(path), lambda tmp: Path(tmp).write_text(side_text))
    return path


_ST_DTYPES = {
    torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip


def write_safetensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: dict[str, str],
    *,
    progress: bool = False,
) -> str:
    """Stream tensors into the safetensors format (8-byte header length, JSON header, raw little-endian data).

    Unlike ``safetensors.torch.save_file`` this never holds a second in-memory copy of the weights: each
    tensor's bytes go straight from its (possibly memory-mapped) storage to the file, and a second thread
    hashes the same buffers while the next one is written. Returns the file's sha256 (hex).
    """
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    digest = hashlib.sha256()
    bar = None
    if progress and offset > 64 * 2**20:
        from tqdm import tqdm

        bar = tqdm(
            total=offset, desc=f"writing {Path(path).name}", unit="B", unit_scale=True, unit_divisor=1024, leave=False
        )
    with open(path, "wb") as fh, ThreadPoolExecutor(max_workers=1, thread_name_prefix="segconvert-sha256") as hasher:
        pending = []  # one worker: updates run in submission order

        def emit(buf: memoryview | bytes) -> None:
            fh.write(buf)
            pending.append(hasher.submit(digest.update, buf))
            if len(pending) > 64:  # bound what waits to be hashed (a non-contiguous tensor's copy waits too)
                pending.pop(0).result()

        emit(len(raw).to_bytes(8, "little") + raw)
        for t in tensors.values():
            if t.numel():
                data = t.contiguous()
                buf = memoryview(data.view(torch.uint8).numpy() if data.dtype == torch.bool else data.numpy())
                emit(buf.cast("B"))
                if bar is not None:
                    bar.update(buf.nbytes)
        for f in pending:
            f.result()
    if bar is not None:
        bar.close()
    return digest.hexdigest()


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    return Path(str(path) + ".json")


def _load_raw(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not path.is_file():
        raise WeightsFileError("no such weights file", file=path)
    from segconvert.formats.detect import describe_foreign_file

    foreign = describe_foreign_file(path)
    if foreign is not None:  # a source model, an export, a sidecar: say what it is instead of a parser error
        raise WeightsFileError(f"not a segconvert weights file but {foreign}", file=path)
    with path.open("rb") as fh:
        head = fh.read(4)
    try:
        if head.startswith(b"PK"):  # by content: torch.load(path) reads a .safetensors *name* as safetensors
            with path.open("rb") as fh:
                obj = torch.load(fh, map_location="cpu", weights_only=True)
            if not isinstance(obj, dict) or META_KEY not in obj or "state_dict" not in obj:
                raise WeightsFileError("a .pth without segconvert metadata (not written by segconvert)", file=path)
            return dict(obj["state_dict"]), json.loads(obj[META_KEY])
        from safetensors import safe_open

        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt") as f:
            meta_text = (f.metadata() or {}).get(META_KEY)
            if meta_text is None:
                raise WeightsFileError("a safetensors file without segconvert metadata", file=path, key=META_KEY)
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
        return tensors, json.loads(meta_text)
    except WeightsFileError:
        raise
    except Exception as exc:  # corrupt container: one typed error, never a traceback
        raise WeightsFileError(f"cannot read weights: {type(exc).__name__}: {exc}", file=path) from None


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata stored in a converted weights file."""
    return _load_raw(Path(path))[1]


def load_model(
    path: str | os.PathLike[str], device: str = "cpu", *, fuse: bool = False, check: bool = False, **overrides: Any
) -> torch.nn.Module:
    """Rebuild the model from the file's metadata, load the weights strictly, and put it in eval mode.

    ``fuse=True``: the inference form (BatchNorm / Scale / Bias folded into the convolutions, in-place
    activations; :func:`segconvert.inference.prepare.prepare_model`), ``check=True`` verifying it against the
    unfused model on the metadata's input. The default is the plain module, whose submodules and
    intermediate outputs are the source layers' (what parity checks and fine-tuning need); ``eval``,
    ``predict`` and ``benchmark`` ask for the fused form. The weights file is never changed.
    """
    from segconvert.reference_models import create_model

    path = Path(path)
    state, meta = _load_raw(path)
    config = {**meta.get("config", {}), **overrides}
    try:
        model = create_model(meta["arch"], **config)
    except KeyError as exc:
        raise WeightsFileError(f"unknown architecture {exc}", file=path, key="arch") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsFileError(
            f"weights do not match architecture {meta['arch']}: missing {list(missing)[:5]}, "
            f"unexpected {list(unexpected)[:5]}",
            file=path,
        )
    model.eval().to(device)
    model.segconvert_meta = meta
    if fuse:
        from segconvert.inference.prepare import prepare_model

        model = prepare_model(model, fuse=True, check=check, source=path)
    return model

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
                raw_bytes = data.reshape(-1).view(torch.uint8) if data.dtype in (torch.bool, torch.bfloat16) else data
                buf = memoryview(raw_bytes.numpy())
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


_ST_TORCH = {v: k for k, v in _ST_DTYPES.items()}


def _read_safetensors(path: Path, tensors: bool) -> tuple[dict[str, torch.Tensor], str | None]:
    """The tensors (read into fresh, writable memory: one copy, no file mapping kept alive) and the metadata
    text of a safetensors file. ``safe_open`` validates the header first; the data are then read tensor by
    tensor straight into their final storage, so loading never holds the weights twice."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta_text = (f.metadata() or {}).get(META_KEY)
        keys = list(f.keys())
    out: dict[str, torch.Tensor] = {}
    if meta_text is None or not tensors:
        return out, meta_text
    with path.open("rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
        base = 8 + n
        for key in keys:
            info = header[key]
            start, end = info["data_offsets"]
            t = torch.empty(info["shape"], dtype=_ST_TORCH[info["dtype"]])
            nbytes = t.numel() * t.element_size()
            if end - start != nbytes:
                raise ValueError(f"tensor {key}: {end - start} bytes for shape {info['shape']}")
            if nbytes:
                fh.seek(base + start)
                view = memoryview(t.view(-1).view(torch.uint8).numpy()).cast("B")
                if fh.readinto(view) != nbytes:
                    raise ValueError(f"tensor {key}: the file ends inside its data")
            out[key] = t
    return out, meta_text


def _load_raw(path: Path, tensors: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, metadata) of a converted-weights file; ``tensors=False``: the metadata only."""
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
        state, meta_text = _read_safetensors(path, tensors)
        if meta_text is None:
            raise WeightsFileError("a safetensors file without segconvert metadata", file=path, key=META_KEY)
        return state, json.loads(meta_text)
    except WeightsFileError:
        raise
    except Exception as exc:  # corrupt container: one typed error, never a traceback
        raise WeightsFileError(f"cannot read weights: {type(exc).__name__}: {exc}", file=path) from None


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata stored in a converted weights file."""
    return _load_raw(Path(path), tensors=False)[1]


def _tied(model: torch.nn.Module) -> list[list[str]]:
    """Groups of state-dict names that are one tensor (tied parameters / buffers), in the module's order."""
    groups: dict[int, list[str]] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(t), []).append(name)
    return [g for g in groups.values() if len(g) > 1]


def _on_meta(model: torch.nn.Module) -> bool:
    return any(t.is_meta for t in (*model.parameters(), *model.buffers()))


def _build(meta: dict[str, Any], config: dict[str, Any], state: dict[str, torch.Tensor], path: Path) -> torch.nn.Module:
    """The model of ``meta["arch"]`` holding the tensors of ``state`` themselves (no copy of the weights).

    It is built on the ``meta`` device (no random initialisation, no memory) and the file's tensors are
    assigned to it (cast first where the module's dtype differs, ties restored); an architecture whose
    constructor computes tensors a file does not hold (non-persistent buffers) is built for real instead."""
    from segconvert.reference_models import create_model

    try:
        with torch.device("meta"):
            model = create_model(meta["arch"], **config)
    except KeyError as exc:
        raise WeightsFileError(f"unknown architecture {exc}", file=path, key="arch") from None
    except Exception:  # noqa: BLE001 - a constructor the meta device cannot run: build it for real
        model = create_model(meta["arch"], **config)
    own = model.state_dict(keep_vars=True)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise WeightsFileError(
            f"weights do not match architecture {meta['arch']}: missing {missing[:5]}, unexpected {unexpected[:5]}",
            file=path,
        )
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise WeightsFileError(
                f"weights do not match architecture {meta['arch']}: shape {list(state[k].shape)} where the "
                f"architecture has {list(v.shape)}",
                file=path,
                key=k,
            )
    cast = {k: v if v.dtype == own[k].dtype else v.to(own[k].dtype) for k, v in state.items()}
    _assign(model, cast)
    if _on_meta(model):  # non-persistent buffers computed by the constructor: build for real, then assign
        model = create_model(meta["arch"], **config)
        _assign(model, cast)
    return model


def _assign(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``load_state_dict(assign=True)``, with tied tensors tied again (assignment gives each name its own)."""
    ties = _tied(model)
    model.load_state_dict(state, strict=True, assign=True)
    for group in ties:
        owner, _, attr = group[0].rpartition(".")
        mod = model.get_submodule(owner)
        first = mod._parameters.get(attr, mod._buffers.get(attr))
        for name in group[1:]:
            owner, _, attr = name.rpartition(".")
            mod = model.get_submodule(owner)
            table = mod._parameters if attr in mod._parameters else mod._buffers
            table[attr] = first


def load_model(
    path: str | os.PathLike[str],
    device: str = "cpu",
    *,
    fuse: bool = False,
    check: bool = False,
    onednn: bool | None = None,
    **overrides: Any,
) -> torch.nn.Module:
    """Rebuild the model from the file's metadata, load the weights strictly, and put it in eval mode.

    ``fuse=True``: the inference form (BatchNorm / Scale / Bias folded into the convolutions, in-place
    activations; :func:`segconvert.inference.prepare.prepare_model`), ``check=True`` verifying it against the
    unfused model on the metadata's input; ``onednn`` (with ``fuse``): the oneDNN convolution pass (None:
    on the CPU in float32; pass False when the model will run under autocast). The default is the plain
    module, whose submodules and intermediate outputs are the source layers' (what parity checks and
    fine-tuning need); ``eval``, ``predict`` and ``benchmark`` ask for the fused form. The weights file is
    never changed.
    """
    path = Path(path)
    state, meta = _load_raw(path)
    model = _build(meta, {**meta.get("config", {}), **overrides}, state, path)
    del state
    model.eval().to(device)
    model.segconvert_meta = meta
    if fuse:
        from segconvert.inference.prepare import prepare_model

        model = prepare_model(model, fuse=True, check=check, onednn=onednn, source=path)
    return model

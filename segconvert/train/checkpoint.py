"""Full training state on disk: written atomically every K iterations, last N kept, resumed bit for bit.

A checkpoint ``OUT/checkpoints/state_iter_<N>.pt`` holds what an uninterrupted run would still have in memory:
the trainer's ``state_dict()`` (weights, optimiser history, iteration, schedule, data stream position, log
smoothing window), the RNG states (torch CPU and CUDA, numpy's global generator, Python's ``random``) and
``extra`` (the run's recorded configuration). It is a plain ``torch.save`` of tensors and Python values, read
back with ``weights_only=True`` (no code is executed on load).

:class:`SignalGuard` turns SIGINT / SIGTERM into a flag that the loop checks between iterations: the loop then
writes a final checkpoint and raises :class:`TrainingInterrupted` (the CLI exits 128 + signal number). A second
signal interrupts at once.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from segconvert.errors import SegconvertError, WeightsFileError
from segconvert.fileio import atomic_write
from segconvert.train.engine import global_rng_state, set_global_rng_state

__all__ = [
    "FORMAT",
    "Checkpointer",
    "SignalGuard",
    "Stateful",
    "TrainingInterrupted",
    "checkpoint_path",
    "find_checkpoints",
    "latest_checkpoint",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

FORMAT = "segconvert-train-state/1"
_NAME = re.compile(r"^state_iter_(\d+)\.pt$")


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class TrainingInterrupted(SegconvertError):
    """SIGINT / SIGTERM during training; the final checkpoint has been written."""

    def __init__(self, signum: int, iteration: int, path: Path | None) -> None:
        self.signum, self.iteration, self.path = signum, iteration, path
        name = signal.Signals(signum).name
        where = f"checkpoint written to {path}; continue with --resume" if path else "no checkpoint written"
        super().__init__(f"interrupted by {name} after iteration {iteration}: {where}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


# One implementation of the global RNG snapshot: the Trainer's (also in its state_dict).
rng_state = global_rng_state
set_rng_state = set_global_rng_state


def checkpoint_path(out_dir: str | Path, iteration: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"state_iter_{int(iteration)}.pt"


def find_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """(iteration, path) of every checkpoint in ``OUT/checkpoints``, oldest first."""
    folder = Path(out_dir) / "checkpoints"
    found = []
    if folder.is_dir():
        for p in folder.iterdir():
            m = _NAME.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = find_checkpoints(out_dir)
    return found[-1][1] if found else None


def _pack(obj: Any) -> Any:
    """numpy arrays/scalars -> tensors with a marker, so ``torch.load(weights_only=True)`` reads the file."""
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": torch.from_numpy(obj.astype(np.int64) if obj.dtype == np.uint32 else obj.copy()),
                "dtype": obj.dtype.str}  # fmt: skip
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        return {k: _pack(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        packed = [_pack(v) for v in obj]
        return packed if isinstance(obj, list) else tuple(packed)
    return obj


def _unpack(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "__ndarray__" in obj and len(obj) == 2:
            return obj["__ndarray__"].numpy().astype(np.dtype(obj["dtype"]))
        return {k: _unpack(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        unpacked = [_unpack(v) for v in obj]
        return unpacked if isinstance(obj, list) else tuple(unpacked)
    return obj


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Atomic ``torch.save`` (a reader never sees a partial file); numpy values are stored as tensors."""
    path = Path(path)
    packed = _pack(state)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            torch.save(packed, fh)

    atomic_write(path, write)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint file, or the latest one in a run folder ``OUT`` (``weights_only``: no code runs)."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise WeightsFileError(
                "no training checkpoint (checkpoints/state_iter_<N>.pt) in the run folder", file=path
            )
        path = found
    if not path.is_file():
        raise WeightsFileError("no such training checkpoint", file=path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsFileError(f"cannot read training checkpoint: {type(exc).__name__}: {exc}", file=path) from None
    state = _unpack(state)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise WeightsFileError(f"not a segconvert training checkpoint (expected format {FORMAT})", file=path)
    state["path"] = str(path)
    return state


class Checkpointer:
    """Writes ``trainer.state_dict()`` + RNG states + ``extra()`` every ``every`` iterations; keeps ``keep``."""

    def __init__(
        self,
        out_dir: str | Path,
        every: int,
        keep: int = 2,
        extra: Callable[[], Mapping[str, Any]] | None = None,
        *,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.out_dir, self.every, self.keep = Path(out_dir), int(every), max(1, int(keep))
        self.extra = extra
        self.rank, self.world = int(rank), int(world)  # under torchrun: every rank builds the state, rank 0 writes
        self.last_saved: int | None = None

    def state(self, trainer: Stateful, iteration: int) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "iteration": int(iteration),
            "trainer": trainer.state_dict(),
            "rng": rng_state(),
            "extra": dict(self.extra()) if self.extra else {},
        }

    def save(self, trainer: Stateful, iteration: int) -> Path:
        """A collective under torchrun (the trainer's state may gather from every rank); rank 0 writes."""
        state = self.state(trainer, iteration)
        path = checkpoint_path(self.out_dir, iteration)
        if self.rank == 0:
            save_checkpoint(path, state)
            for _, old in find_checkpoints(self.out_dir)[: -self.keep]:
                old.unlink(missing_ok=True)
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()
        self.last_saved = int(iteration)
        return path

    def maybe_save(self, trainer: Stateful, iteration: int) -> Path | None:
        if self.every > 0 and iteration % self.every == 0 and iteration != self.last_saved:
            return self.save(trainer, iteration)
        return None

    @staticmethod
    def restore(trainer: Stateful, state: Mapping[str, Any]) -> int:
        """Load a :func:`load_checkpoint` result into the RNGs and ``trainer`` (which may then restore its own
        rank's generator states); returns the iteration."""
        set_rng_state(state["rng"])
        trainer.load_state_dict(state["trainer"])
        return int(state["iteration"])


class SignalGuard:
    """``with SignalGuard() as guard:`` ... ``if guard.signum: ...`` between iterations (see module docstring)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # second signal: stop now
            self._restore()
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> SignalGuard:
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def __exit__(self, *exc: Any) -> None:
        self._restore()

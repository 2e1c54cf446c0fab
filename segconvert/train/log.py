"""Training logs a person wants to watch: progress bar, Caffe-style display lines, JSON lines, TensorBoard.

- :class:`CaffeDisplay`: Caffe's ``Solver::Step`` lines, every ``display`` iterations (Caffe's 0-based
  ``iter_``): ``Iteration N, loss = <smoothed over average_loss>``, one ``Train net output #k`` line per loss
  output (the last pass's value, as Caffe prints it) and ``Iteration N, lr = <rate>``; numbers as C++ streams
  print them (6 significant digits). The smoothing is Caffe's ``UpdateSmoothedLoss`` in float32.
- :class:`ProgressBar`: iteration/max, each loss term, lr, it/s, ETA and memory (tqdm, on stderr).
- :class:`JsonlLog`: one JSON object per iteration (``train_log.jsonl``), appended and flushed; a resumed run
  first drops the records past its start, so the file equals an uninterrupted run's.
- :class:`TensorBoardLog`: scalars, only when ``torch.utils.tensorboard`` is importable.

Every sink takes :class:`IterationRecord` objects; ``state_dict()`` / ``load_state_dict()`` keep what a resume
needs (the smoothing window).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

__all__ = [
    "IterationRecord",
    "CaffeDisplay",
    "ProgressBar",
    "JsonlLog",
    "TensorBoardLog",
    "caffe_number",
    "peak_memory_mib",
    "tensorboard_available",
]


@dataclass
class IterationRecord:
    """One finished iteration (``iteration`` = updates done, 1-based; Caffe's ``iter_`` is ``iteration - 1``).

    ``loss``: the iteration loss (sum over passes / iter_size); ``terms``: each loss output averaged over the
    passes; ``last_pass``: each loss output of the last pass (what Caffe prints); ``loss_weights`` per output.
    """

    iteration: int
    lr: float
    loss: float
    terms: dict[str, float] = field(default_factory=dict)
    last_pass: dict[str, float] = field(default_factory=dict)
    loss_weights: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {
            "iter": self.iteration,
            "lr": self.lr,
            "loss": self.loss,
            **{f"loss/{k}": v for k, v in self.terms.items()},
        }
        out["seconds"] = round(self.seconds, 6)
        out.update(self.extra)
        return out


def caffe_number(x: float) -> str:
    """A float as ``std::ostream << float`` prints it (precision 6, ``%g``)."""
    return format(float(np.float32(x)), ".6g")


def peak_memory_mib(device: Any = None) -> float:
    """Peak CUDA memory allocated on ``device`` when it is a CUDA device, else the process's peak RSS (MiB)."""
    import torch

    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class CaffeDisplay:
    """Caffe's display lines (see the module docstring)."""

    def __init__(self, display: int, average_loss: int = 1, stream: TextIO | None = None) -> None:
        self.display, self.average_loss = int(display), max(1, int(average_loss))
        self.stream = stream
        self.losses: list[float] = []
        self.smoothed = np.float32(0)
        self.start_iter = 0  # Caffe's start_iter (the smoothing index counts from it)
        self.lines: list[str] = []

    def restart(self, iteration: int) -> None:
        """What Caffe's ``Solver::Step`` does on entry: clear the window, count from ``iteration`` (done so far).
        A run driven by ``solver.step(1)`` calls restarts the window every iteration."""
        self.losses, self.smoothed, self.start_iter = [], np.float32(0), int(iteration)

    def _smooth(self, loss: float, it: int) -> None:
        loss32 = np.float32(loss)
        if len(self.losses) < self.average_loss:
            self.losses.append(float(loss32))
            size = np.float32(len(self.losses))
            self.smoothed = np.float32((self.smoothed * (size - np.float32(1)) + loss32) / size)
        else:
            idx = (it - self.start_iter) % self.average_loss
            self.smoothed = np.float32(
                self.smoothed + (loss32 - np.float32(self.losses[idx])) / np.float32(self.average_loss)
            )
            self.losses[idx] = float(loss32)

    def __call__(self, rec: IterationRecord) -> list[str]:
        it = rec.iteration - 1
        self._smooth(rec.loss, it)
        if not self.display or it % self.display:
            return []
        lines = [f"Iteration {it}, loss = {caffe_number(self.smoothed)}"]
        for k, (name, value) in enumerate(rec.last_pass.items()):
            w = rec.loss_weights.get(name, 1.0)
            lines.append(
                f"    Train net output #{k}: {name} = {caffe_number(value)}"
                + (f" (* {caffe_number(w)} = {caffe_number(w * value)} loss)" if w else "")
            )
        lines.append(f"Iteration {it}, lr = {caffe_number(rec.lr)}")
        self.lines.extend(lines)
        if self.stream is not None:
            for line in lines:
                print(line, file=self.stream, flush=True)
        return lines

    def state_dict(self) -> dict[str, Any]:
        return {"losses": list(self.losses), "smoothed": float(self.smoothed), "start_iter": self.start_iter}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.losses = [float(v) for v in state["losses"]]
        self.smoothed = np.float32(state["smoothed"])
        self.start_iter = int(state["start_iter"])


class ProgressBar:
    """tqdm bar: iteration/max, it/s and ETA (tqdm's), each loss term, lr, memory."""

    def __init__(self, max_iter: int, start: int = 0, device: Any = None, enabled: bool = True) -> None:
        from tqdm import tqdm

        self.device = device
        self.bar = tqdm(
            total=max_iter, initial=start, desc="train", unit="it", file=sys.stderr, disable=not enabled,
            dynamic_ncols=True, smoothing=0.1,
        )  # fmt: skip

    def __call__(self, rec: IterationRecord) -> None:
        post = {"loss": f"{rec.loss:.4g}", **{k: f"{v:.4g}" for k, v in rec.terms.items() if k != "loss"}}
        post["lr"] = f"{rec.lr:.3g}"
        post["mem"] = f"{peak_memory_mib(self.device):.0f}MiB"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(rec.iteration - self.bar.n)

    def write(self, text: str) -> None:
        self.bar.write(text, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


class JsonlLog:
    """``path``: one JSON object per iteration (and per validation, ``"event": "val"``)."""

    def __init__(self, path: str | Path, start: int = 0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # resume: keep the records up to the start iteration only
            kept = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln)["iter"] <= start]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        self._fh = self.path.open("a")
        self._t0 = time.perf_counter()

    def write(self, obj: Mapping[str, Any]) -> None:
        self._fh.write(json.dumps(obj, allow_nan=True) + "\n")
        self._fh.flush()

    def __call__(self, rec: IterationRecord) -> None:
        self.write(rec.to_json())

    def close(self) -> None:
        self._fh.close()


def _no_tensorflow_in_tensorboard() -> None:
    """tensorboard's ``compat.tf`` imports TensorFlow when it is installed (seconds and hundreds of MB per training
    process, only to write scalars); its ``notf`` switch makes it use its own stub, which writes the same events."""
    import sys
    import types

    if "tensorflow" not in sys.modules:
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))


def tensorboard_available() -> bool:
    _no_tensorflow_in_tensorboard()
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except Exception:
        return False
    return True


class TensorBoardLog:
    """Scalars ``train/loss``, ``train/loss/<term>``, ``train/lr`` (and ``val/*``, ``test<i>/*``) in ``log_dir``."""

    def __init__(self, log_dir: str | Path, start: int = 0) -> None:
        _no_tensorflow_in_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir), purge_step=start + 1 if start else None)

    def __call__(self, rec: IterationRecord) -> None:
        self.writer.add_scalar("train/loss", rec.loss, rec.iteration)
        self.writer.add_scalar("train/lr", rec.lr, rec.iteration)
        for k, v in rec.terms.items():  # as train_log.jsonl's "loss/<term>" (a term may be named "loss")
            self.writer.add_scalar(f"train/loss/{k}", v, rec.iteration)

    def scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        self.writer.close()

"""Checkpoints of a (possibly distributed) PyTorch-form run: every rank takes part, rank 0 writes.

A signal on any rank reaches every rank through the step's reduction (:attr:`TorchTrainer.stop_signal`), so all
ranks stop after the same step; the state (with every rank's RNG states) is gathered, rank 0 writes it
atomically, and every rank raises :class:`~segconvert.train.checkpoint.TrainingInterrupted`. A resume loads the
same file on every rank (each takes its own RNG states back).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.distributed as dist

from .checkpoint import (
    Checkpointer,
    SignalGuard,
    TrainingInterrupted,
    checkpoint_path,
    find_checkpoints,
    save_checkpoint,
)

__all__ = ["RankCheckpointer", "run_torch_checkpointed"]


class RankCheckpointer(Checkpointer):
    """:class:`Checkpointer` whose ``save`` is a collective: every rank builds the state, rank 0 writes it."""

    def __init__(self, *args: Any, rank: int = 0, world: int = 1, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.rank, self.world = int(rank), int(world)

    def save(self, trainer: Any, iteration: int) -> Path:
        state = self.state(trainer, iteration)
        path = checkpoint_path(self.out_dir, iteration)
        if self.rank == 0:
            save_checkpoint(path, state)
            for _, old in find_checkpoints(self.out_dir)[: -self.keep]:
                old.unlink(missing_ok=True)
        if self.world > 1:
            dist.barrier()
        self.last_saved = int(iteration)
        return path

    @staticmethod
    def restore(trainer: Any, state: Any) -> int:  # the trainer restores its own rank's RNG states
        trainer.load_state_dict(state["trainer"])
        return int(state["iteration"])


class _Hook:
    def __init__(self, checkpointer: RankCheckpointer) -> None:
        self.checkpointer = checkpointer
        self.final_path: Path | None = None

    def on_step_end(self, trainer: Any, record: Any) -> None:
        if trainer.stop_signal:
            self.final_path = self.checkpointer.save(trainer, trainer.iteration)
            trainer.stop_requested = True
            return
        self.checkpointer.maybe_save(trainer, trainer.iteration)


def run_torch_checkpointed(trainer: Any, checkpointer: RankCheckpointer, stop_at: int | None = None) -> list[Any]:
    """``trainer.run(stop_at)`` with checkpoints; SIGINT/SIGTERM on any rank: one more checkpoint, then
    :class:`TrainingInterrupted` on every rank. The last iteration is checkpointed too (unless ``every == 0``)."""
    guard = SignalGuard()
    hook = _Hook(checkpointer)
    trainer.hooks.append(hook)
    trainer.signal_guard = guard
    try:
        with guard:
            records = trainer.run(stop_at)
    finally:
        trainer.hooks.remove(hook)
        trainer.signal_guard = None
    if trainer.stop_signal:
        raise TrainingInterrupted(trainer.stop_signal, trainer.iteration, hook.final_path)
    if checkpointer.every > 0 and checkpointer.last_saved != trainer.iteration:
        checkpointer.save(trainer, trainer.iteration)
    return records

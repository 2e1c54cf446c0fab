"""Trainer hooks (see :mod:`segconvert.train.engine`): logging, checkpoints + signals, snapshots, validation.

Each is a small object with ``on_step_end(trainer, record)`` (and friends); pass them in ``Trainer(hooks=...)``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from .checkpoint import Checkpointer, SignalGuard, TrainingInterrupted
from .log import CaffeDisplay, IterationRecord, JsonlLog, ProgressBar

__all__ = ["LogHook", "CheckpointHook", "SnapshotHook", "ValidationHook", "run_checkpointed", "to_iteration_record"]


def to_iteration_record(record: Any, loss_weights: Mapping[str, float] | None = None) -> IterationRecord:
    """An engine ``StepRecord`` as the log sinks' :class:`IterationRecord`."""
    last = {k: v for k, v in (record.passes[-1] if record.passes else {}).items() if k != "total"}
    return IterationRecord(
        iteration=record.iteration,
        lr=record.lr,
        loss=record.loss,
        terms=dict(record.mean_losses),
        last_pass=last,
        loss_weights=dict(loss_weights or {}),
        seconds=record.seconds,
        extra={"metrics": dict(record.metrics)} if record.metrics else {},
    )


class LogHook:
    """Caffe display lines (to ``stream`` or through the bar), progress bar, JSON lines, TensorBoard."""

    def __init__(
        self,
        display: CaffeDisplay | None = None,
        bar: ProgressBar | None = None,
        jsonl: JsonlLog | None = None,
        tensorboard: Any = None,
        loss_weights: Mapping[str, float] | None = None,
    ) -> None:
        self.display, self.bar, self.jsonl, self.tb = display, bar, jsonl, tensorboard
        self.loss_weights = dict(loss_weights or {})

    def on_step_end(self, trainer: Any, record: Any) -> None:
        rec = to_iteration_record(record, self.loss_weights)
        if self.display is not None:
            for line in self.display(rec):
                if self.bar is not None and self.display.stream is None:
                    self.bar.write(line)
        for sink in (self.jsonl, self.tb):
            if sink is not None:
                sink(rec)
        if self.bar is not None:
            self.bar(rec)

    def on_train_end(self, trainer: Any) -> None:
        for sink in (self.bar, self.jsonl, self.tb):
            if sink is not None:
                sink.close()


def _stop_signal(trainer: Any, guard: SignalGuard | None) -> int | None:
    """The signal to stop on: a trainer that takes the guard (:class:`~.torch_engine.TorchTrainer`) reports the one
    its ranks agreed on after the same step; otherwise this process's own."""
    if hasattr(trainer, "signal_guard"):
        return trainer.stop_signal or None
    return guard.signum if guard is not None else None


class CheckpointHook:
    """Full-state checkpoints every K iterations; on SIGINT/SIGTERM (``guard``) one more, then a stop request."""

    def __init__(self, checkpointer: Checkpointer, guard: SignalGuard | None = None) -> None:
        self.checkpointer, self.guard = checkpointer, guard
        self.final_path: Path | None = None

    def on_step_end(self, trainer: Any, record: Any) -> None:
        if _stop_signal(trainer, self.guard):
            self.final_path = self.checkpointer.save(trainer, trainer.iteration)
            trainer.stop_requested = True
            return
        self.checkpointer.maybe_save(trainer, trainer.iteration)


def run_checkpointed(trainer: Any, checkpointer: Checkpointer, stop_at: int | None = None) -> list[Any]:
    """``trainer.run(stop_at)`` with a :class:`CheckpointHook` appended and SIGINT/SIGTERM guarded: on a signal the
    final checkpoint is written and :class:`TrainingInterrupted` raised; else the last iteration is checkpointed
    too (unless checkpointing is off, ``checkpointer.every == 0``). Returns the step records."""
    guard = SignalGuard()
    hook = CheckpointHook(checkpointer, guard)
    trainer.hooks.append(hook)
    agreed = hasattr(trainer, "signal_guard")
    if agreed:
        trainer.signal_guard = guard
    try:
        with guard:
            records = trainer.run(stop_at)
    finally:
        trainer.hooks.remove(hook)
        if agreed:
            trainer.signal_guard = None
    signum = _stop_signal(trainer, guard)
    if signum:
        raise TrainingInterrupted(signum, trainer.iteration, hook.final_path)
    if checkpointer.every > 0 and checkpointer.last_saved != trainer.iteration:
        checkpointer.save(trainer, trainer.iteration)
    return records


class SnapshotHook:
    """``OUT/iter_<N>.safetensors`` every ``every`` iterations (Caffe's ``snapshot``): ``write(path, iteration)``."""

    def __init__(self, out_dir: str | Path, every: int, write: Callable[[Path, int], Any]) -> None:
        self.out_dir, self.every, self.write = Path(out_dir), int(every), write

    def on_step_end(self, trainer: Any, record: Any) -> None:
        if self.every > 0 and trainer.iteration % self.every == 0:
            self.write(self.out_dir / f"iter_{trainer.iteration}.safetensors", trainer.iteration)


class ValidationHook:
    """Every ``every`` iterations: :func:`segconvert.eval.evaluate` on ``dataset`` with ``protocol`` (and
    ``preprocessing``, needed for a bare model without converted-weights metadata), the per-class table printed
    to ``stream`` and the scores appended to ``jsonl`` (``"event": "val"``)."""

    def __init__(
        self,
        every: int,
        model: Any,
        dataset: Any,
        protocol: Any,
        *,
        device: Any = "cpu",
        limit: int | None = None,
        jsonl: JsonlLog | None = None,
        stream: TextIO | None = None,
        preprocessing: Any = None,
    ) -> None:
        self.every, self.model, self.dataset, self.protocol = int(every), model, dataset, protocol
        self.device, self.limit, self.jsonl = device, limit, jsonl
        self.preprocessing = preprocessing  # an eval Preprocessing: what the training data fed the model
        self.stream = stream or sys.stdout
        self.results: list[tuple[int, Any]] = []

    def validate(self, iteration: int) -> Any:
        from segconvert.eval.report import class_table, summary_line
        from segconvert.eval.runner import evaluate

        was_training = self.model.training
        result = evaluate(self.model, self.dataset, self.protocol, device=self.device, limit=self.limit,
                          preprocessing=self.preprocessing, progress=False)  # fmt: skip
        self.model.train(was_training)
        print(f"validation after iteration {iteration}:", file=self.stream)
        print(class_table(result), file=self.stream)
        print(summary_line(result), file=self.stream, flush=True)
        payload = result.to_json()
        if self.jsonl is not None:
            self.jsonl.write({"iter": iteration, "event": "val", **{k: payload[k] for k in payload if k != "info"}})
        self.results.append((iteration, result))
        return result

    def on_step_end(self, trainer: Any, record: Any) -> None:
        if self.every > 0 and trainer.iteration % self.every == 0:
            self.validate(trainer.iteration)

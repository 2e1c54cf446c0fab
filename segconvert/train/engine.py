"""The training loop: Caffe's ``Solver::Step`` iteration accounting, ``iter_size`` accumulation, hooks, state.

One :meth:`Trainer.step` is one Caffe iteration (``solver.step(1)``):

1. ``rate = caffe_learning_rate(solver, trainer.iteration)`` -- ``trainer.iteration`` is Caffe's ``iter_``, the
   number of updates done so far (0 before the first);
2. gradients zeroed, then ``iter_size`` passes, each on a new batch: forward, ``total.backward()`` (each pass
   normalised by its own loss layers, e.g. its own count of valid labels); the gradients accumulate (Caffe's
   diff sum, *not* yet divided);
3. one optimizer update (:class:`~segconvert.train.optim.CaffeOptimizer`: ``* float32(1/iter_size)``, decay,
   momentum); ``trainer.iteration += 1``.

The iteration loss is ``float32(sum of the pass totals) / iter_size``; the smoothed loss Caffe prints ("Iteration
N, loss =") is its running mean over the last ``average_loss`` iterations, updated in float32 as
``Solver::UpdateSmoothedLoss`` does. Caffe restarts that window at every ``Step()`` call (``solver.step(1)`` logs
each iteration's own loss); here it spans the trainer's life, like one ``caffe train`` run, resumes included.

Hook interface (for logging, checkpoints, validation; a hook implements any subset):

- ``on_train_start(trainer)``: before the first step of :meth:`Trainer.run` (after a resume, too);
- ``on_pass_end(trainer, record, pass_index)``: after each pass's backward (``record.passes[-1]`` is its dict);
- ``on_gradients_ready(trainer, record)``: accumulated gradients in ``.grad``, before the update;
- ``on_step_end(trainer, record)``: after the update; ``trainer.iteration`` is already ``record.iteration``;
- ``on_train_end(trainer)``: after the last step, or when :attr:`Trainer.stop_requested` stopped the run.

``record`` is a :class:`StepRecord`. A hook may set ``trainer.stop_requested = True`` (e.g. on SIGTERM) to stop
after the current step; :meth:`Trainer.run` then returns normally and ``trainer.stopped_early`` is True.

State interface: :meth:`Trainer.state_dict` returns ``{"format": 1, "iteration", "model" (``net.model``'s
state_dict), "optimizer" (``CaffeOptimizer.state_dict()``: per-parameter history), "bn_blobs" (Caffe BatchNorm
accumulators of batch-statistics layers), "data" (the data source's ``state_dict()``: position, permutations,
its RNG), "rng" ({"torch", "numpy", "python", "cuda"}: global generator states, for Dropout and random data
transforms), "loss_window" (the last ``average_loss`` iteration losses, in Caffe's ring order), "smoothed_loss",
"solver" (the solver's values)}``;
:meth:`Trainer.load_state_dict` restores all of it, so ``run()`` continues as an uninterrupted run would. Tensors
stay tensors (save with ``torch.save``; load with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .caffe_net import CaffeTrainNet
from .optim import CaffeOptimizer
from .schedules import caffe_learning_rate

__all__ = ["StepRecord", "Trainer", "global_rng_state", "run_steps", "set_global_rng_state"]


def global_rng_state() -> dict[str, Any]:
    """torch / numpy / Python (/ CUDA) global generator states as tensors and plain values (``weights_only``-safe)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`global_rng_state`'s output."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class StepRecord:
    """What one iteration did. ``iteration``: updates done after it (1 for the first; Caffe logs it as 0)."""

    iteration: int
    lr: float
    loss: float  # float32(sum of pass totals) / iter_size
    smoothed_loss: float  # Caffe's running mean of the last average_loss iteration losses ("Iteration N, loss =")
    passes: list[dict[str, float]] = field(default_factory=list)  # per pass: each loss layer, "total"
    mean_losses: dict[str, float] = field(default_factory=dict)  # float32(sum over passes) / iter_size
    valid_counts: list[dict[str, int]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)  # the last pass's metrics
    seconds: float = 0.0


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.ascontiguousarray(v)).to(device) for k, v in batch.items()}


def run_steps(trainer: Any, max_iter: int | None = None) -> list[StepRecord]:
    """The loop of both trainers: ``trainer.step()`` until ``max_iter`` (default ``trainer.max_iter``) updates are
    done or a hook set ``trainer.stop_requested``; ``on_train_start`` / ``on_train_end`` around it."""
    stop_at = trainer.max_iter if max_iter is None else int(max_iter)
    records: list[StepRecord] = []
    trainer.stop_requested = trainer.stopped_early = False
    trainer._call("on_train_start")
    while trainer.iteration < stop_at:
        records.append(trainer.step())
        if trainer.stop_requested:
            trainer.stopped_early = trainer.iteration < stop_at
            break
    trainer._call("on_train_end")
    return records


class Trainer:
    """Runs a Caffe solver on a :class:`CaffeTrainNet` (see the module docstring for hooks and state)."""

    def __init__(
        self,
        net: CaffeTrainNet,
        solver: Any,
        data: Any,
        *,
        device: str | torch.device = "cpu",
        hooks: Iterable[Any] = (),
        max_iter: int | None = None,
        arithmetic: str = "fma",
        form: str = "caffe",
    ) -> None:
        self.device = torch.device(device)
        self.net = net.to(self.device)
        self.solver = solver
        self.data = data
        self.hooks = list(hooks)
        self.max_iter = int(solver.max_iter if max_iter is None else max_iter)
        self.optimizer = CaffeOptimizer(
            net.param_groups(),
            solver_type=solver.solver_type,
            momentum=solver.momentum or 0.0,
            momentum2=solver.momentum2,
            delta=solver.delta,
            rms_decay=solver.rms_decay,
            weight_decay=solver.weight_decay or 0.0,
            regularization_type=solver.regularization_type,
            iter_size=solver.iter_size,
            clip_gradients=solver.clip_gradients,
            arithmetic=arithmetic,
            form=form,
        )
        self.iteration = 0
        self.loss_window: list[float] = []
        self.smoothed_loss = np.float32(0)
        self.stop_requested = False
        self.stopped_early = False

    # ------------------------------------------------------------------------------------------ loop
    def _call(self, event: str, *args: Any) -> None:
        for hook in self.hooks:
            fn = getattr(hook, event, None)
            if fn is not None:
                fn(self, *args)

    def learning_rate(self) -> float:
        """The rate of the next iteration (Caffe ``GetLearningRate`` at ``iter_ = self.iteration``)."""
        return caffe_learning_rate(self.solver, self.iteration)

    def step(self) -> StepRecord:
        """One Caffe iteration: ``iter_size`` passes, one update."""
        t0 = time.perf_counter()
        rate = self.learning_rate()
        self.net.train()
        self.optimizer.zero_grad(set_to_none=False)
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        record = StepRecord(iteration=self.iteration + 1, lr=rate, loss=0.0, smoothed_loss=0.0)
        loss_sum = np.float32(0)
        sums: dict[str, np.float32] = {}
        for p in range(int(self.solver.iter_size)):
            out = self.net(_to_device(self.data.next_batch(), self.device))
            if out.total.requires_grad:
                out.total.backward()
            total = np.float32(out.total.detach().item())
            loss_sum = np.float32(loss_sum + total)
            values = {k: float(v.detach().item()) for k, v in out.losses.items()}
            for k, v in values.items():
                sums[k] = np.float32(sums.get(k, np.float32(0)) + np.float32(v))
            record.passes.append({**values, "total": float(total)})
            record.valid_counts.append(dict(out.valid_counts))
            record.metrics = dict(out.metrics)
            self._call("on_pass_end", record, p)
        n = np.float32(self.solver.iter_size)
        record.loss = float(np.float32(loss_sum / n))
        record.mean_losses = {k: float(np.float32(v / n)) for k, v in sums.items()}
        self._call("on_gradients_ready", record)
        self.optimizer.step(rate, self.iteration)
        self.iteration += 1
        record.smoothed_loss = self._update_smoothed_loss(np.float32(record.loss))
        record.seconds = time.perf_counter() - t0
        self._call("on_step_end", record)
        return record

    def _update_smoothed_loss(self, loss: np.float32) -> float:
        """Caffe ``UpdateSmoothedLoss`` (float32); called after ``self.iteration`` was incremented."""
        n = int(self.solver.average_loss)
        if len(self.loss_window) < n:
            self.loss_window.append(float(loss))
            size = np.float32(len(self.loss_window))
            self.smoothed_loss = np.float32((self.smoothed_loss * (size - np.float32(1)) + loss) / size)
        else:
            idx = (self.iteration - 1) % n
            self.smoothed_loss = np.float32(
                self.smoothed_loss + (loss - np.float32(self.loss_window[idx])) / np.float32(n)
            )
            self.loss_window[idx] = float(loss)
        return float(self.smoothed_loss)

    def run(self, max_iter: int | None = None) -> list[StepRecord]:
        """Step until ``max_iter`` updates are done (Caffe's ``Solve``) or a hook requests a stop."""
        return run_steps(self, max_iter)

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs (see the module docstring)."""
        return {
            "format": 1,
            "iteration": self.iteration,
            "model": {k: v.detach().clone() for k, v in self.net.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "bn_blobs": {k: [b.clone() for b in v] for k, v in self.net.bn_blobs.items()},
            "data": self.data.state_dict(),
            "rng": global_rng_state(),
            "loss_window": list(self.loss_window),
            "smoothed_loss": float(self.smoothed_loss),
            "solver": self.solver.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (model, history, iteration, data position, RNG, loss window)."""
        self.net.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.net.bn_blobs = {k: [b.clone() for b in v] for k, v in state.get("bn_blobs", {}).items()}
        self.data.load_state_dict(state["data"])
        set_global_rng_state(state["rng"])
        self.iteration = int(state["iteration"])
        self.loss_window = [float(v) for v in state["loss_window"]]
        self.smoothed_loss = np.float32(state.get("smoothed_loss", 0.0))

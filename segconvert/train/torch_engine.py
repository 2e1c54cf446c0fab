"""The PyTorch-form training loop of the PSPNet presets, on one process or many (torchrun + DDP).

One :meth:`TorchTrainer.step` is one optimiser update of the global batch:

1. the learning rate of every group is ``base_lr * lr_mult * (1 - it / max_iter) ** power`` for the step's
   ``it`` (0 before the first update). ``schedule="poly_after_step"`` is semseg's form (the groups start at
   ``base_lr * lr_mult``; after ``optimizer.step()`` the rate of ``current_iter = it + 1`` is set),
   ``"poly_before_step"`` TF's ``polynomial_decay(global_step)`` / PSPNet-TF-Reproduce's (computed from ``it``,
   then ``it += 1``): the same sequence of rates, each as its source computes it;
2. ``accumulate`` micro-batches per rank (DDP ``no_sync`` on all but the last), each ``loss / accumulate``
   backward under autocast (``--amp``) through the GradScaler for fp16; a regulariser (L2 / L2-SP) is added once
   to the last micro-batch's loss;
3. ``optimizer.step()`` (``torch.optim.SGD``: semseg's SGD with ``weight_decay``; TF's MomentumOptimizer
   ``accum = m * accum + g; w -= lr * accum`` is the same update), then the loss terms and pixel counts are
   reduced across ranks for the log, together with a stop flag (SIGTERM on any rank stops every rank after the
   same step).

Hooks: the same interface as :class:`segconvert.train.engine.Trainer` (``on_train_start``, ``on_step_end``,
``on_train_end``; ``record`` has ``iteration``, ``lr``, ``loss``, ``mean_losses``, ``passes``, ``metrics``,
``seconds``), so the logging, checkpoint and validation hooks are shared. :meth:`state_dict` holds the model
(unwrapped), optimizer, GradScaler, iteration, the data position and every rank's RNG states (gathered).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .amp import Amp
from .engine import StepRecord, global_rng_state, run_steps, set_global_rng_state

__all__ = ["TorchTrainer", "poly_rate"]

SCHEDULES = ("poly_after_step", "poly_before_step")


def poly_rate(base_lr: float, it: int, max_iter: int, power: float) -> float:
    """``base_lr * (1 - it / max_iter) ** power`` (semseg ``poly_learning_rate``)."""
    return base_lr * (1 - float(it) / float(max_iter)) ** power


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class TorchTrainer:
    """Runs a :class:`~segconvert.train.psp_model.PSPTrainNet` on :class:`~segconvert.train.psp_data.PSPBatches`."""

    def __init__(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        data: Any,
        *,
        base_lr: float,
        max_iter: int,
        power: float = 0.9,
        schedule: str = "poly_after_step",
        accumulate: int = 1,
        amp: Amp | None = None,
        regulariser: Any = None,
        device: str | torch.device = "cpu",
        hooks: Iterable[Any] = (),
        channels_last: bool = False,
        compile: bool | str = False,
    ) -> None:
        if schedule not in SCHEDULES:
            raise ValueError(f"solver.schedule must be one of {SCHEDULES}, got {schedule!r}")
        self.device = torch.device(device)
        self.net = net.to(self.device)  # the PSPTrainNet (unwrapped); .model is the PSPNet
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.channels_last = bool(channels_last)
        self.rank = dist.get_rank() if _distributed() else 0
        self.world = dist.get_world_size() if _distributed() else 1
        self.wrapped: nn.Module = self.net
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        if compile:  # True: torch.compile's default backend (inductor); a string names the backend
            backend = compile if isinstance(compile, str) else "inductor"
            self.forward = torch.compile(self.wrapped, backend=backend)
        else:
            self.forward = self.wrapped
        self.optimizer, self.data = optimizer, data
        self.base_lr, self.max_iter, self.power = float(base_lr), int(max_iter), float(power)
        self.schedule, self.accumulate = schedule, int(accumulate)
        self.amp = amp or Amp("none", self.device.type)
        self.regulariser = regulariser
        self.hooks = list(hooks)
        self.iteration = 0
        self.stop_requested = self.stopped_early = False
        self.stop_signal = 0  # a signal number seen on any rank (reduced with every step's numbers)
        self.signal_guard: Any = None  # a SignalGuard whose ``signum`` this rank reports
        if schedule == "poly_after_step":
            self._set_lr(self.base_lr)

    # ---------------------------------------------------------------------------------------- schedule
    def _set_lr(self, rate: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = rate * g.get("lr_mult", 1.0)

    def learning_rate(self) -> float:
        """The base rate the next step uses (groups multiply it by their ``lr_mult``)."""
        return poly_rate(self.base_lr, self.iteration, self.max_iter, self.power)

    # ---------------------------------------------------------------------------------------- loop
    def _call(self, event: str, *args: Any) -> None:
        for hook in self.hooks:
            fn = getattr(hook, event, None)
            if fn is not None:
                fn(self, *args)

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.data.next_batch()
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels.to(self.device, non_blocking=True)

    def step(self) -> StepRecord:
        t0 = time.perf_counter()
        if self.schedule == "poly_before_step":
            self._set_lr(self.learning_rate())
        rate = self.optimizer.param_groups[0]["lr"] / self.optimizer.param_groups[0].get("lr_mult", 1.0)
        self.wrapped.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {}
        counts = torch.zeros(2, dtype=torch.float64)
        passes = []
        for k in range(self.accumulate):
            last = k == self.accumulate - 1
            sync = nullcontext() if last or self.world == 1 else self.wrapped.no_sync()  # type: ignore[operator]
            images, labels = self._batch()
            with sync:
                with self.amp.autocast():
                    total, losses, metrics = self.forward(images, labels)
                loss = total / self.accumulate
                if last and self.regulariser is not None:
                    reg = self.regulariser(self.net.model)
                    losses = {**losses, "reg": reg.detach()}
                    loss = loss + reg
                if self.amp.scaler is not None:
                    self.amp.scaler.scale(loss).backward()
                else:
                    loss.backward()
            for name, v in losses.items():
                sums[name] = sums.get(name, 0.0) + v.detach().double().cpu() / (1 if name == "reg" else self.accumulate)
            counts += torch.stack([metrics["correct"].double().cpu(), metrics["valid"].double().cpu()])
            passes.append({n: float(v.detach()) for n, v in losses.items()})
        if self.amp.scaler is not None:
            self.amp.scaler.step(self.optimizer)
            self.amp.scaler.update()
        else:
            self.optimizer.step()
        self.iteration += 1
        if self.schedule == "poly_after_step" and self.iteration < self.max_iter:
            self._set_lr(poly_rate(self.base_lr, self.iteration, self.max_iter, self.power))
        if self.signal_guard is not None and self.signal_guard.signum:
            self.stop_signal = int(self.signal_guard.signum)
        names = sorted(sums)
        local = torch.cat([torch.stack([sums[n] for n in names]), counts])
        if self.world > 1:
            reduced = local.to(self.device)
            dist.all_reduce(reduced)
            flag = torch.tensor([float(self.stop_signal)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            self.stop_signal = int(flag.item())
            local = reduced.cpu()
            local[: len(names)] /= self.world  # losses: the mean over ranks; pixel counts stay sums
        values = {n: float(local[i]) for i, n in enumerate(names)}
        correct, valid = float(local[len(names)]), float(local[len(names) + 1])
        loss_value = values["main"] + (self.net.aux_weight * values["aux"] if "aux" in values else 0.0)
        loss_value += values.get("reg", 0.0)
        record = StepRecord(iteration=self.iteration, lr=float(rate), loss=loss_value, smoothed_loss=loss_value,
                            passes=passes, mean_losses=values,
                            metrics={"pixel_acc": correct / valid if valid else 0.0})  # fmt: skip
        record.seconds = time.perf_counter() - t0
        self._call("on_step_end", record)
        return record

    def run(self, max_iter: int | None = None) -> list[StepRecord]:
        return run_steps(self, max_iter)

    # ---------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs; a collective under torchrun (every rank's RNG states are gathered)."""
        rng = global_rng_state()
        ranks = [rng]
        if self.world > 1:
            ranks = [None] * self.world
            dist.all_gather_object(ranks, rng)
        return {
            "format": "segconvert-torch-trainer/1",
            "iteration": self.iteration,
            "world": self.world,
            "model": {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "amp": self.amp.state_dict(),
            "data": self.data.state_dict(),
            "rng_ranks": ranks,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.amp.load_state_dict(state["amp"])
        self.data.load_state_dict(state["data"])
        self.iteration = int(state["iteration"])
        ranks = state["rng_ranks"]
        set_global_rng_state(ranks[self.rank] if len(ranks) == self.world else ranks[0])
        if self.schedule == "poly_after_step":
            self._set_lr(poly_rate(self.base_lr, self.iteration, self.max_iter, self.power))

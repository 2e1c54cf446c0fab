"""Evaluation sharded over torchrun ranks, with exactly the one-process scores.

Rank ``r`` of ``W`` evaluates images ``r, r + W, r + 2W, ...``. The confusion matrix and the image counts are
integers, summed with ``all_reduce`` in int64. The Cityscapes iIoU sums are floats whose value depends on the
order of the additions, so each rank keeps its images' instance rows (id, size, TP, category TP) instead of
adding them; the rows are gathered and replayed in image order on every rank, which repeats the one-process
additions one for one. Every rank ends with the same, bit-identical result.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from segconvert.eval.metrics import CityscapesScorer, EvalResult
from segconvert.train.distributed import init_distributed, world_info

__all__ = ["ShardedScorer", "is_main_process", "join_group", "leave_group", "rank_device", "shard_indices"]


def is_main_process() -> bool:
    """True on rank 0 (and without torchrun)."""
    return world_info()[0] == 0


def rank_device(device: torch.device) -> torch.device:
    """Under torchrun, a bare ``cuda`` becomes this process's ``cuda:LOCAL_RANK``."""
    _rank, local, world = world_info()
    if world > 1 and device.type == "cuda" and device.index is None:
        return torch.device("cuda", local)
    return device


def join_group(device: torch.device) -> tuple[int, int, bool]:
    """(rank, world size, whether this call created the process group): gloo on CPU, NCCL on CUDA."""
    created = world_info()[2] > 1 and not dist.is_initialized()
    rank, world = init_distributed(str(device))
    return rank, world, created


def leave_group() -> None:
    """Destroy the process group :func:`join_group` created."""
    if dist.is_initialized():
        dist.destroy_process_group()


def shard_indices(n: int, rank: int, world: int) -> range:
    """This rank's images of ``n``: strided, so shard sizes differ by at most one."""
    return range(rank, n, world)


class ShardedScorer:
    """Wraps a dataset scorer on one rank; :meth:`result` reduces over the ranks and scores every image."""

    def __init__(self, scorer: Any, rank: int, world: int) -> None:
        self.scorer, self.rank, self.world = scorer, rank, world
        self.rows: list[list[list[int]]] = []  # per local image: its instance rows (Cityscapes), deferred
        self._apply = None
        if isinstance(scorer, CityscapesScorer):
            self._apply = scorer.add_instance_rows
            scorer.add_instance_rows = self._defer  # type: ignore[method-assign]

    def _defer(self, rows: list[list[int]]) -> None:
        self.rows[-1] = rows

    def update(self, pred: Any, target: Any) -> None:
        self.rows.append([])
        self.scorer.update(pred, target)

    def _backend_device(self, t: torch.Tensor) -> torch.device:
        return t.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def _sum(self, t: torch.Tensor) -> torch.Tensor:
        dev = self._backend_device(t)
        buf = t.to(dev, torch.int64).clone()
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return buf.to(t.device, t.dtype)

    def result(self) -> EvalResult:
        s = self.scorer
        s.cm.matrix = self._sum(s.cm.matrix)
        counts = [s.num_images, getattr(s, "images_without_instances", 0)]
        counts = self._sum(torch.tensor(counts, dtype=torch.int64, device=s.cm.matrix.device)).tolist()
        s.num_images = int(counts[0])
        if self._apply is not None:
            s.images_without_instances = int(counts[1])
            gathered: list[Any] = [None] * self.world
            dist.all_gather_object(gathered, self.rows)
            del s.add_instance_rows  # the class method again
            for i in range(s.num_images):  # image i was image i // W of rank i % W
                self._apply(gathered[i % self.world][i // self.world])
        return s.result()

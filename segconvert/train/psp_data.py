"""Training data of the PSPNet presets: augmented samples, a DistributedSampler per epoch, resumable batches.

A sample depends only on ``(seed, epoch, index)`` (:func:`~segconvert.train.transforms.sample_rng`), never on the
rank or loader process that decodes it, so any ``num_workers`` gives the same batches. Each epoch's order is
``torch.utils.data.DistributedSampler`` (``shuffle``, ``seed``, ``drop_last``, ``set_epoch``): one permutation
of the dataset, rank ``r`` of ``W`` taking positions ``r, r + W, ...``; with a per-rank batch of ``B / W`` the
ranks' batches of one step are together the same ``B`` images a one-process run takes at that step.
:class:`PSPBatches` counts the micro-batches it has handed out, so a resume restarts mid-epoch at the next
batch without decoding the ones before.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .transforms import Compose, sample_rng, shrink_label_nearest

__all__ = ["PSPBatches", "PSPSamples", "training_label", "per_rank_batch"]


def training_label(dataset: Any, i: int) -> np.ndarray:
    """The label a model is trained on: train ids with 255 ignored (Cityscapes' labelIds mapped to trainIds)."""
    label = dataset.load_target(i).label
    if getattr(dataset, "name", "") == "cityscapes":
        label = _cityscapes_label_to_train()[label]
    return label


@functools.cache
def _cityscapes_label_to_train() -> np.ndarray:
    from segconvert.eval.labels import cityscapes_train_to_label_lut

    lut = np.full(256, 255, np.uint8)
    for tid, lid in enumerate(cityscapes_train_to_label_lut()[:19]):
        lut[lid] = tid
    return lut


def per_rank_batch(global_batch: int, world: int, accumulate: int = 1) -> int:
    """``global / (world * accumulate)``; a one-line error when it does not divide."""
    n = int(world) * int(accumulate)
    if global_batch % n:
        ok = [w for w in range(1, global_batch + 1) if global_batch % (w * accumulate) == 0]
        raise ValueError(
            f"global batch {global_batch} does not split over {world} processes x {accumulate} accumulation steps "
            f"(world sizes that divide it: {ok}); set data.batch_size or run.grad_accum"
        )
    return global_batch // n


class PSPSamples(Dataset):
    """``dataset[(epoch, index)] -> (CHW float32 image, HW int64 label)`` after the preset's transforms."""

    def __init__(self, dataset: Any, transforms: Compose, seed: int, label_shrink: int = 1) -> None:
        self.dataset, self.transforms, self.seed, self.label_shrink = dataset, transforms, int(seed), int(label_shrink)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key
        image = self.dataset.load_image(index).astype(np.float32)
        label = training_label(self.dataset, index)
        image, label = self.transforms(image, label, sample_rng(self.seed, epoch, index))
        if self.label_shrink > 1:
            label = shrink_label_nearest(label, self.label_shrink)
        image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
        return image, torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))


class _Keys(torch.utils.data.Sampler):
    """``(epoch, index)`` keys from micro-batch ``start`` on, epoch after epoch (one DataLoader for the run)."""

    def __init__(self, sampler: DistributedSampler, batch_size: int, per_epoch: int, start: int) -> None:
        self.sampler, self.batch_size, self.per_epoch, self.start = sampler, batch_size, per_epoch, start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, offset = divmod(self.start, self.per_epoch)
        while True:
            self.sampler.set_epoch(epoch)
            order = list(self.sampler)[offset * self.batch_size : self.per_epoch * self.batch_size]
            yield from ((epoch, i) for i in order)
            epoch, offset = epoch + 1, 0


class PSPBatches:
    """This rank's micro-batches, epoch after epoch; ``state_dict`` is the count handed out."""

    def __init__(
        self,
        samples: PSPSamples,
        batch_size: int,
        *,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        num_workers: int = 0,
    ) -> None:
        self.samples, self.batch_size, self.num_workers = samples, int(batch_size), int(num_workers)
        self.sampler = DistributedSampler(samples, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed,
                                          drop_last=True)  # fmt: skip
        self.per_epoch = len(self.sampler) // self.batch_size
        if self.per_epoch == 0:
            raise ValueError(
                f"{len(samples)} training images give no full batch of {self.batch_size} per process over {world}"
            )
        self.done = 0
        self._iter: Iterator[Any] | None = None

    @property
    def epoch(self) -> int:
        return self.done // self.per_epoch

    def _open(self) -> None:
        keys = _Keys(self.sampler, self.batch_size, self.per_epoch, self.done)
        # its own generator: creating the loader draws no number from the global RNG (Dropout's), so a resumed
        # run's generator states stay those of the uninterrupted run; samples draw from sample_rng only
        loader = DataLoader(self.samples, batch_size=self.batch_size, sampler=keys, num_workers=self.num_workers,
                            drop_last=True, generator=torch.Generator().manual_seed(self.done))  # fmt: skip
        self._iter = iter(loader)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._iter is None:
            self._open()
        batch = next(self._iter)  # type: ignore[arg-type]
        self.done += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"done": self.done, "per_epoch": self.per_epoch, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state["per_epoch"]) != self.per_epoch or int(state["batch_size"]) != self.batch_size:
            raise ValueError(
                f"checkpoint data position is for {state['per_epoch']} batches of {state['batch_size']} per epoch, "
                f"this run has {self.per_epoch} of {self.batch_size} (another dataset or world size?)"
            )
        self.done, self._iter = int(state["done"]), None

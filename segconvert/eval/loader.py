"""Images and ground truth decoded (and resized) ahead of the network: in-process, or in DataLoader workers.

``decoded(dataset, indices, workers, prepare)`` yields one :class:`Decoded` per index, in the order given,
whatever the number of workers (the DataLoader returns samples in order), so results do not depend on
``workers``. ``prepare(image)``, run where the image was decoded, is the CPU part of a protocol (its
``resized_images``: the image at every size the protocol runs, on the CPU whatever the inference device, so
the network's input pixels are the same on every device and for any number of workers). Each item carries the
seconds its decode and its ``prepare`` took where they ran (summed over workers by the eval loop); an error
raised while reading a file is carried back as a value and raised again in the main process, unchanged (one
line, not a worker traceback).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.utils.data

from segconvert.eval.datasets import SegDataset, Target

__all__ = ["Decoded", "decoded", "default_workers"]


def default_workers(device: object = "cpu") -> int:
    """``segconvert eval``'s default: half the CPUs, at most 4 (the rest run the network) or, when a GPU runs
    the network, at most 8 (the workers also resize the images); 0 on one CPU."""
    gpu = getattr(device, "type", str(device).split(":")[0]) == "cuda"
    return min(8 if gpu else 4, (os.cpu_count() or 1) // 2)


@dataclass
class Decoded:
    index: int
    image: np.ndarray | None
    target: Target | None
    seconds: float  # decode time, measured where it ran (a worker or this process)
    error: BaseException | None = None
    prepared: Any = None  # prepare(image), when a prepare step was given
    prepare_seconds: float = 0.0


class _Reader(torch.utils.data.Dataset):
    def __init__(
        self, dataset: SegDataset, indices: Sequence[int], prepare: Callable[[np.ndarray], Any] | None = None
    ) -> None:
        self.dataset, self.indices, self.prepare = dataset, list(indices), prepare

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> Decoded:
        i = self.indices[k]
        t0 = time.perf_counter()
        try:
            image, target = self.dataset.load_image(i), self.dataset.load_target(i)
        except Exception as exc:  # noqa: BLE001 - raised again, as is, by the consumer
            return Decoded(i, None, None, time.perf_counter() - t0, exc)
        item = Decoded(i, image, target, time.perf_counter() - t0)
        if self.prepare is not None:
            t1 = time.perf_counter()
            try:
                item.prepared = self.prepare(image)
            except Exception as exc:  # noqa: BLE001 - as above
                item.error = exc
            item.prepare_seconds = time.perf_counter() - t1
        return item


def _as_is(item: Any) -> Any:
    return item


def decoded(
    dataset: SegDataset,
    indices: Sequence[int],
    workers: int = 0,
    prepare: Callable[[np.ndarray], Any] | None = None,
) -> Iterator[Decoded]:
    """The decoded samples of ``indices`` in order; ``workers`` > 0: read by that many worker processes.

    ``prepare``: run on each decoded image where it was decoded (a picklable callable); its result is the
    item's ``prepared``."""
    reader = _Reader(dataset, indices, prepare)
    if workers <= 0 or len(reader) <= 1:
        for k in range(len(reader)):
            yield reader[k]
        return
    loader = torch.utils.data.DataLoader(
        reader, batch_size=None, shuffle=False, num_workers=min(int(workers), len(reader)), collate_fn=_as_is
    )
    yield from loader

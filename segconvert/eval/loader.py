"""Images and ground truth decoded ahead of the network: in-process, or in DataLoader worker processes.

``decoded(dataset, indices, workers)`` yields one :class:`Decoded` per index, in the order given, whatever
the number of workers (the DataLoader returns samples in order), so results do not depend on ``workers``.
Each item carries the seconds its decode took where it ran (summed over workers by the eval loop); an error
raised while reading a file is carried back as a value and raised again in the main process, unchanged (one
line, not a worker traceback).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.utils.data

from segconvert.eval.datasets import SegDataset, Target

__all__ = ["Decoded", "decoded", "default_workers"]


def default_workers() -> int:
    """``segconvert eval``'s default: half the CPUs, at most 4 (the rest run the network); 0 on one CPU."""
    return min(4, (os.cpu_count() or 1) // 2)


@dataclass
class Decoded:
    index: int
    image: np.ndarray | None
    target: Target | None
    seconds: float  # decode time, measured where it ran (a worker or this process)
    error: BaseException | None = None


class _Reader(torch.utils.data.Dataset):
    def __init__(self, dataset: SegDataset, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> Decoded:
        i = self.indices[k]
        t0 = time.perf_counter()
        try:
            image, target = self.dataset.load_image(i), self.dataset.load_target(i)
        except Exception as exc:  # noqa: BLE001 - raised again, as is, by the consumer
            return Decoded(i, None, None, time.perf_counter() - t0, exc)
        return Decoded(i, image, target, time.perf_counter() - t0)


def _as_is(item: Any) -> Any:
    return item


def decoded(dataset: SegDataset, indices: Sequence[int], workers: int = 0) -> Iterator[Decoded]:
    """The decoded samples of ``indices`` in order; ``workers`` > 0: read by that many worker processes."""
    reader = _Reader(dataset, indices)
    if workers <= 0 or len(reader) <= 1:
        for k in range(len(reader)):
            yield reader[k]
        return
    loader = torch.utils.data.DataLoader(
        reader, batch_size=None, shuffle=False, num_workers=min(int(workers), len(reader)), collate_fn=_as_is
    )
    yield from loader

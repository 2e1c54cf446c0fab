"""Latency of a model's forward: median / p90 after warm-up, images per second, peak memory."""

from __future__ import annotations

import os
import resource
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from segconvert.inference.prepare import autocast

__all__ = ["BenchResult", "benchmark_model", "peak_rss_mib"]


def peak_rss_mib() -> float:
    """This process' peak resident set size so far (MiB)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if os.uname().sysname != "Darwin" else kb / 2**20


@dataclass
class BenchResult:
    device: str
    input_shapes: list[list[int]]
    batch: int
    warmup: int
    runs: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    images_per_second: float
    peak_memory_mib: float  # CUDA: torch.cuda.max_memory_allocated after warm-up; CPU: peak RSS of the process
    memory_kind: str
    settings: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _percentile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def benchmark_model(
    model: nn.Module,
    inputs: Sequence[torch.Tensor],
    *,
    warmup: int = 2,
    runs: int = 10,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    settings: dict[str, Any] | None = None,
) -> BenchResult:
    """Time ``runs`` forwards of ``model(*inputs)`` after ``warmup`` ones (inference mode, synchronised)."""
    if runs < 1 or warmup < 0:
        raise ValueError("runs must be >= 1 and warmup >= 0")
    dev = next((p.device for p in model.parameters()), inputs[0].device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    xs = [x.to(dev).contiguous(memory_format=fmt) if x.dim() == 4 else x.to(dev) for x in inputs]
    cuda = dev.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    with torch.inference_mode(), autocast(dev, amp_dtype):
        for _ in range(warmup):
            model(*xs)
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            model(*xs)
            sync()
            times.append(time.perf_counter() - t0)
    batch = int(xs[0].shape[0]) if xs and xs[0].dim() else 1
    med = statistics.median(times)
    mem = torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else peak_rss_mib()
    return BenchResult(
        device=str(dev),
        input_shapes=[list(x.shape) for x in xs],
        batch=batch,
        warmup=warmup,
        runs=runs,
        median_ms=1000 * med,
        p90_ms=1000 * _percentile(times, 0.9),
        mean_ms=1000 * statistics.fmean(times),
        images_per_second=batch / med if med > 0 else float("inf"),
        peak_memory_mib=mem,
        memory_kind="cuda max_memory_allocated" if cuda else "process peak RSS",
        settings=dict(settings or {}),
    )

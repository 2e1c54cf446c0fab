"""Crops per forward from a memory budget (``segconvert eval --batch-memory MiB``).

The first time a crop size is seen, one crop runs alone and the memory its forward needed is measured:
on CUDA ``max_memory_allocated`` above what was allocated before, on the CPU the rise of the peak RSS
(``VmHWM``, reset through ``/proc/self/clear_refs``). The budget divided by that figure is the number of crops
per forward (at least 1; a flip pair counts as two crops). Where nothing can be measured (MPS, no /proc),
one crop runs at a time. Batching changes no number: each crop's logits are those of a forward on its own,
and the crops are accumulated in the same order (tested in tests/test_eval_crop_batch.py).
"""

from __future__ import annotations

import torch
from torch import nn

from segconvert.inference.memory import proc_status_bytes

__all__ = ["measure_forward_bytes", "crops_for_budget"]


def _reset_cpu_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def measure_forward_bytes(model: nn.Module, crop: torch.Tensor, rt: object) -> int | None:
    """Bytes a forward of the (1, C, h, w) ``crop`` needs above what is held before it; None if unmeasurable."""
    from segconvert.eval.protocols import forward_batch

    dev = crop.device
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        forward_batch(model, crop, rt)  # type: ignore[arg-type]
        torch.cuda.synchronize(dev)
        return max(0, torch.cuda.max_memory_allocated(dev) - base)
    if dev.type == "cpu" and _reset_cpu_peak():
        base = proc_status_bytes("VmRSS")
        forward_batch(model, crop, rt)  # type: ignore[arg-type]
        peak = proc_status_bytes("VmHWM")
        if base is not None and peak is not None:
            return max(0, peak - base)
    return None


def crops_for_budget(model: nn.Module, crop: torch.Tensor, rt: object, budget_mib: float) -> int:
    """Crops per forward that fit ``budget_mib`` MiB, from one measured forward of ``crop``."""
    need = measure_forward_bytes(model, crop, rt)
    if not need:
        return 1
    return max(1, int(budget_mib * 2**20 // need))

"""CPU float environment for timing: subnormal numbers flushed to zero (FTZ/DAZ).

TensorFlow's CPU executor flushes subnormals in its compute threads; PyTorch does not, and a net whose softmax
underflows (random weights on 0-255 input: probabilities of ~1e-40) runs its exponentials on the slow subnormal
path (Fast-SCNN at 512x1024: about 1.6x slower; README, ``segconvert benchmark``). ``torch.set_flush_denormal``
sets the calling thread's MXCSR only; threads started afterwards inherit it (POSIX threads copy the creator's
floating-point environment), so :func:`flush_denormals` must run before torch's first parallel region starts the
OpenMP pool. Values change only below float32's smallest normal number (1.2e-38).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["denormals_flushed", "flush_denormals"]


def flush_denormals(on: bool = True) -> bool:
    """Flush subnormal float32/float64 values to zero on this thread and the threads it starts from now;
    returns False where the CPU has no such mode (non-x86 builds)."""
    import torch

    return bool(torch.set_flush_denormal(on))


@contextlib.contextmanager
def denormals_flushed(on: bool = True) -> Iterator[bool]:
    """:func:`flush_denormals` for the block (yields whether it took effect); this thread is reset afterwards
    (threads started inside keep the mode: they are torch's pool, which lives as long as the process)."""
    done = flush_denormals(True) if on else False
    try:
        yield done
    finally:
        if done:
            flush_denormals(False)

"""Process memory for inference: peak RSS readings and glibc's large-allocation threshold.

glibc serves allocations above its mmap threshold with fresh mappings that go back to the system when
freed, but it raises that threshold to the size of every mapped block freed (up to 32 MiB). After the first
freed activation, a net's 10-30 MB activations come from the heap instead, and a heap fragmented by them
keeps its freed pages: on PSPNet50 at 473 that is about 100 MB of peak RSS nobody uses.
:func:`fix_mmap_threshold` pins the threshold (``mallopt(M_MMAP_THRESHOLD)``, which also turns the
adjustment off), so freed activations are returned at once. It changes no result; it costs page faults on
each large allocation (a few ms per forward on the nets here). ``segconvert eval`` calls it; library users
opt in.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import sys

__all__ = ["fix_mmap_threshold", "keep_freed_memory", "peak_rss", "current_rss", "proc_status_bytes"]

_M_TRIM_THRESHOLD = -1  # glibc malloc.h
_M_MMAP_THRESHOLD = -3


def fix_mmap_threshold(mib: float = 1.0) -> bool:
    """Serve allocations above ``mib`` MiB by mmap for the rest of the process (glibc); False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(mib * 2**20)))
    except (OSError, AttributeError):  # musl and other C libraries without mallopt
        return False


def _mallopt(param: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(param, value))
    except (OSError, AttributeError):  # musl and other C libraries without mallopt
        return False


def keep_freed_memory() -> bool:
    """The opposite policy, for latency: glibc keeps freed activations for the next forward (heap only, no
    trimming: ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` set high, from inside the process), so
    a steady-state forward page-faults nothing in. Peak RSS then also keeps what fragmentation holds."""
    return _mallopt(_M_MMAP_THRESHOLD, 2**30) and _mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)


def proc_status_bytes(key: str) -> int | None:
    """A ``/proc/self/status`` size field (``VmRSS``, ``VmHWM``) in bytes; None where there is none."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss() -> int:
    """Peak resident set size of this process in bytes (``VmHWM``, else ``ru_maxrss``)."""
    got = proc_status_bytes("VmHWM")
    if got is not None:
        return got
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def current_rss() -> int | None:
    """Resident set size now in bytes (``VmRSS``), None where /proc is absent."""
    return proc_status_bytes("VmRSS")

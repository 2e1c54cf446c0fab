"""Subnormal flushing for timing (``segconvert benchmark --flush-denormal``): set before torch's thread pool
starts, every worker thread flushes (each half of a 2-thread element-wise op reads a subnormal input as 0)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHILD = """
import sys, torch
from segconvert.inference.floats import flush_denormals
on = sys.argv[1] == "1"
if on:
    assert flush_denormals()
torch.set_num_threads(2)
x = torch.full((1 << 22,), 1e-39)  # a subnormal float32, stored as is
y = x * 3.0  # 4M elements: split over both threads
print(int((y == 0).sum()), y.numel(), torch.get_num_threads())
"""


@pytest.mark.parametrize("on", [False, True])
def test_worker_threads_inherit_the_flush_mode(on):
    res = subprocess.run([sys.executable, "-c", CHILD, str(int(on))], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    zeros, n, threads = map(int, res.stdout.split())
    if threads < 2:
        pytest.skip("torch runs one thread here")
    assert zeros == (n if on else 0)  # every element: the workers' share flushed too (or none without)

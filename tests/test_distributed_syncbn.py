"""Two gloo processes (torchrun, CPU): SyncBN output, input/weight gradients and running statistics equal one
BatchNorm over the whole batch (torch's SyncBatchNorm refuses CPU in torch 2.13, so ours is tested)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cpu_syncbn_two_ranks_equals_one_bn() -> None:
    worker = Path(__file__).with_name("dist_syncbn_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_port()),
           str(worker)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("ok=True") == 2, out.stdout

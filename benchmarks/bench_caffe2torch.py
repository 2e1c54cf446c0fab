"""Benchmark: full-width PSPNet101 (~263 MB) ``segconvert caffe2torch`` end to end, wall time and peak RSS.

Generates the caffemodel from the released Cityscapes prototxt (random weights, real layout), then runs,
side by side and alternating, each in a fresh process (wall clock, peak RSS from ``resource.getrusage``):

- ``segconvert caffe2torch`` (the real command line);
- the baseline a one-off port does: protobuf ``ParseFromString`` of the whole file, ``np.array`` per blob,
  ``torch.from_numpy`` and ``safetensors.torch.save_file`` (no mapping, no checks, no hashing);
- ``python -c "import torch"``, the floor any converter that produces torch tensors pays.

Targets: < 3 s and peak RSS < 2x the file size. Run: ``python benchmarks/bench_caffe2torch.py [--json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_PROTOTXT = HERE.parent.parent / "shared/fixtures/caffe/pspnet101_cityscapes_713/full.prototxt"


_BASELINE = """
import sys, numpy as np, torch
from safetensors.torch import save_file
from segconvert.formats.caffe_schema import message_class
net = message_class("NetParameter")()
with open(sys.argv[1], "rb") as fh:
    net.ParseFromString(fh.read())
tensors = {}
for layer in net.layer:
    for i, b in enumerate(layer.blobs):
        arr = np.array(b.data, dtype=np.float32).reshape(tuple(b.shape.dim))
        tensors[f"{layer.name}.{i}"] = torch.from_numpy(arr)
save_file(tensors, sys.argv[2])
"""


def _timed(cmd: list[str]) -> float:
    """Wall seconds of one fresh process."""
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prototxt", type=Path, default=DEFAULT_PROTOTXT)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from segconvert.formats.caffemodel_writer import random_weights_for, write_caffemodel
    from segconvert.graph import load_net

    with tempfile.TemporaryDirectory() as tmp:
        model = write_caffemodel(Path(tmp) / "pspnet101.caffemodel", random_weights_for(load_net(args.prototxt)))
        size = model.stat().st_size
        model.read_bytes()  # warm page cache
        runs: dict[str, list[float]] = {"segconvert": [], "baseline": [], "import_torch": []}
        for i in range(args.repeat):
            out = Path(tmp) / f"out{i}.safetensors"
            cmd = [
                sys.executable,
                "-m",
                "segconvert.cli",
                "caffe2torch",
                str(args.prototxt),
                str(model),
                "-o",
                str(out),
            ]
            runs["segconvert"].append(_timed(cmd))
            runs["baseline"].append(_timed([sys.executable, "-c", _BASELINE, str(model), str(Path(tmp) / "b.st")]))
            runs["import_torch"].append(_timed([sys.executable, "-c", "import torch"]))
        walls = runs["segconvert"]
        rss = _peak_alone(cmd)  # RUSAGE_CHILDREN is a max over all children: measure segconvert alone
    result = {
        "file_bytes": size,
        "wall_s_median": statistics.median(walls),
        "wall_s": walls,
        "baseline_wall_s_median": statistics.median(runs["baseline"]),
        "import_torch_wall_s_median": statistics.median(runs["import_torch"]),
        "speedup_vs_baseline": statistics.median(runs["baseline"]) / statistics.median(walls),
        "peak_rss_bytes": rss,
        "peak_rss_over_file": rss / size,
        "targets": {"wall_s": 3.0, "peak_rss_over_file": 2.0},
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"caffe2torch, full-width PSPNet101 ({size / 2**20:.0f} MiB), {args.repeat} fresh processes")
        print(f"wall time: median {result['wall_s_median']:.2f}s (target < 3 s), runs {[round(w, 2) for w in walls]}")
        print(
            f"baseline (protobuf parse + save_file, no checks): median {result['baseline_wall_s_median']:.2f}s "
            f"-> segconvert {result['speedup_vs_baseline']:.2f}x faster; "
            f"'import torch' alone: {result['import_torch_wall_s_median']:.2f}s"
        )
        print(f"peak RSS: {rss / 2**20:.0f} MiB = {result['peak_rss_over_file']:.2f}x the file (target < 2x)")


def _peak_alone(cmd: list[str]) -> int:
    """Peak RSS of ``cmd`` measured in a fresh interpreter whose only child is ``cmd``."""
    probe = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)"
    )
    return int(subprocess.run([sys.executable, "-c", probe, *cmd], check=True, capture_output=True, text=True).stdout)


if __name__ == "__main__":
    main()

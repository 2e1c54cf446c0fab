"""Benchmark: full-width PSPNet101 (~263 MB) ``segconvert caffe2torch`` end to end, wall time and peak RSS.

Generates the caffemodel from the released Cityscapes prototxt (random weights, real layout), then runs
the real command line in a fresh process under ``/usr/bin/time``-style accounting (wall clock and the
child's peak RSS from ``resource.getrusage``). Targets: < 3 s and peak RSS < 2x the file size.
Run: ``python benchmarks/bench_caffe2torch.py [--json]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_PROTOTXT = HERE.parent.parent / "shared/fixtures/caffe/pspnet101_cityscapes_713/full.prototxt"


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
        walls, rss = [], []
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
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            walls.append(time.perf_counter() - t0)
            rss.append(max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) * 1024)
    result = {
        "file_bytes": size,
        "wall_s_median": statistics.median(walls),
        "wall_s": walls,
        "peak_rss_bytes": max(rss),
        "peak_rss_over_file": max(rss) / size,
        "targets": {"wall_s": 3.0, "peak_rss_over_file": 2.0},
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"caffe2torch, full-width PSPNet101 ({size / 2**20:.0f} MiB), {args.repeat} fresh processes")
        print(f"wall time: median {result['wall_s_median']:.2f}s (target < 3 s), runs {[round(w, 2) for w in walls]}")
        print(f"peak RSS: {max(rss) / 2**20:.0f} MiB = {result['peak_rss_over_file']:.2f}x the file (target < 2x)")


if __name__ == "__main__":
    main()

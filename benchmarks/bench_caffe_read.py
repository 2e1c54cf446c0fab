"""Benchmark: segconvert's streaming caffemodel reader vs protobuf's whole-file parse (what converters do).

Generates a PSPNet101-sized caffemodel (~263 MB, the released Cityscapes prototxt with random weights in
the real layout), then reads it in fresh processes, each side several times, reporting the median:
  (a) segconvert: ``read_caffemodel`` (memory-mapped, every blob a numpy view);
  (b) baseline: ``NetParameter.ParseFromString(open(f).read())`` then ``np.array(blob.data)`` per blob.
Reported: (i) time until every blob is an array, (ii) a full pass touching every value (float64 sum per
blob), (iii) peak RSS and peak anonymous memory. Run: ``python benchmarks/bench_caffe_read.py [--json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_PROTOTXT = HERE.parent.parent / "shared/fixtures/caffe/pspnet101_cityscapes_713/full.prototxt"

CHILD = r"""
import json, sys, time
sys.path.insert(0, {bench!r})
t0 = time.perf_counter()
import numpy as np
from _memwatch import MemWatch
side, path = sys.argv[1], sys.argv[2]
with MemWatch() as mw:
    if side == "segconvert":
        from segconvert.formats.caffemodel import read_caffemodel
        t_import = time.perf_counter() - t0
        t1 = time.perf_counter()
        model = read_caffemodel(path)
        blobs = [b for layer in model.layers for b in layer.blobs]
    else:
        from segconvert.formats.caffe_schema import message_class
        t_import = time.perf_counter() - t0
        t1 = time.perf_counter()
        net = message_class("NetParameter")()
        with open(path, "rb") as fh:
            net.ParseFromString(fh.read())
        t_parse = time.perf_counter() - t1
        blobs = []
        for layer in net.layer:
            for b in layer.blobs:
                blobs.append(np.array(b.data, dtype=np.float32).reshape(tuple(b.shape.dim)))
    t_arrays = time.perf_counter() - t1
    mw.sample()
    t2 = time.perf_counter()
    total = 0.0
    for b in blobs:
        total += float(b.sum(dtype=np.float64))
    t_pass = time.perf_counter() - t2
print(json.dumps({{"side": side, "import_s": t_import, "arrays_s": t_arrays, "pass_s": t_pass,
                  "blobs": len(blobs), "checksum": total, "peak_rss": MemWatch.peak_rss(),
                  "peak_anon": mw.peak_anon}}))
"""


def run_child(side: str, path: Path) -> dict:
    code = CHILD.format(bench=str(HERE))
    out = subprocess.run([sys.executable, "-c", code, side, str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def generate(prototxt: Path, out: Path) -> Path:
    from segconvert.formats.caffemodel_writer import random_weights_for, write_caffemodel
    from segconvert.graph import load_net

    return write_caffemodel(out, random_weights_for(load_net(prototxt), seed=0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prototxt", type=Path, default=DEFAULT_PROTOTXT)
    ap.add_argument("--caffemodel", type=Path, help="use this file instead of generating one")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.caffemodel or generate(args.prototxt, Path(tmp) / "pspnet101_sized.caffemodel")
        size = path.stat().st_size
        path.read_bytes()  # warm the page cache so both sides start equal
        runs = {s: [run_child(s, path) for _ in range(args.repeat)] for s in ("segconvert", "protobuf")}
    med = {s: {k: statistics.median(r[k] for r in rs) for k in rs[0] if k not in ("side",)} for s, rs in runs.items()}
    assert abs(med["segconvert"]["checksum"] - med["protobuf"]["checksum"]) < 1e-6 * max(
        1.0, abs(med["protobuf"]["checksum"])
    )
    a, b = med["segconvert"], med["protobuf"]
    result = {
        "file_bytes": size,
        "segconvert": a,
        "protobuf": b,
        "ratios": {
            "arrays_speedup": b["arrays_s"] / a["arrays_s"],
            "pass_speedup": b["pass_s"] / a["pass_s"],
            "peak_rss_over_file": {"segconvert": a["peak_rss"] / size, "protobuf": b["peak_rss"] / size},
            "peak_anon_over_file": {"segconvert": a["peak_anon"] / size, "protobuf": b["peak_anon"] / size},
        },
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return
    mb = 1024 * 1024
    print(f"file: {size / mb:.1f} MiB, {int(a['blobs'])} blobs, median of {args.repeat} fresh processes each")
    print(f"{'':28s}{'segconvert':>14s}{'protobuf':>14s}{'ratio':>10s}")
    print(
        f"{'(i) all blobs as arrays':28s}{a['arrays_s']:>13.4f}s{b['arrays_s']:>13.4f}s"
        f"{b['arrays_s'] / a['arrays_s']:>9.1f}x"
    )
    print(
        f"{'(ii) full pass (f64 sums)':28s}{a['pass_s']:>13.4f}s{b['pass_s']:>13.4f}s{b['pass_s'] / a['pass_s']:>9.2f}x"
    )
    print(
        f"{'(iii) peak RSS':28s}{a['peak_rss'] / mb:>12.1f}M{b['peak_rss'] / mb:>12.1f}M"
        f"{'':>2s}{a['peak_rss'] / size:.2f}x / {b['peak_rss'] / size:.2f}x file"
    )
    print(
        f"{'(iii) peak anonymous memory':28s}{a['peak_anon'] / mb:>12.1f}M{b['peak_anon'] / mb:>12.1f}M"
        f"{'':>2s}{a['peak_anon'] / size:.2f}x / {b['peak_anon'] / size:.2f}x file"
    )
    print(f"{'import':28s}{a['import_s']:>13.4f}s{b['import_s']:>13.4f}s")


if __name__ == "__main__":
    main()

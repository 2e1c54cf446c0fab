"""Benchmark: inference of converted Keras models (keras2torch, generic path) vs the same models in tf_keras.

Families: Fast-SCNN and DeepLabV3+ MobileNetV2 (output stride 16), full width, built with the test builders
(``tests/keras_families.py``) and random weights, saved as full-model ``.h5`` and converted with
``segconvert.converters.keras_generic``. Every measurement runs in a fresh process (one per family and
runtime): load, ``--warmup`` runs, then ``--repeat`` timed runs on the same input; the table gives median and p90
latency, images/s and the ratio PyTorch / Keras (below 1: PyTorch faster); both sides are timed the same way
here (``segconvert.inference.benchmark`` did not exist when this was written). With ``--device cuda``
(a GPU machine) the PyTorch side runs there; ``--gpu-size`` adds Fast-SCNN images/s at 1024x2048.

    python benchmarks/bench_keras.py [--size 512 1024] [--repeat 10] [--device cpu] [--threads N] [--channels-last]
                                     [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}

MAKE = textwrap.dedent(
    """
    import sys
    import tf_keras as K
    from tests import keras_families
    from tests.keras_cases import randomize
    family, h, w, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    if family == "fast_scnn":
        m = keras_families.fast_scnn(K, (h, w), classes=19, w=1.0)
    else:
        m = keras_families.deeplab_mobilenetv2(K, (h, w), os=16, classes=19, alpha=1.0)
    randomize(m)
    m.save(out)
    """
)

TIME_KERAS = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np, tf_keras as K
    path, h, w, batch, warmup, repeat, threads = sys.argv[1], *map(int, sys.argv[2:8])
    if threads:
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    m = K.models.load_model(path, compile=False)
    x = np.random.default_rng(0).uniform(-1, 1, (batch, h, w, 3)).astype(np.float32)
    f = lambda: m(x, training=False).numpy()
    for _ in range(warmup):
        f()
    times = []
    for _ in range(repeat):
        t = time.perf_counter(); f(); times.append(time.perf_counter() - t)
    print(json.dumps({"times": times}))
    """
)

TIME_TORCH = textwrap.dedent(
    """
    import json, sys, time
    import torch
    from segconvert import load_model
    path, h, w, batch, warmup, repeat, device, threads, cl = *sys.argv[1:2], *map(int, sys.argv[2:7]), *sys.argv[7:10]
    if int(threads):
        torch.set_num_threads(int(threads))
    m = load_model(path, device=device)
    x = torch.rand(batch, 3, h, w, device=device) * 2 - 1
    if int(cl):  # NHWC memory (same values; oneDNN's fast depthwise / 1x1 kernels, as TF uses)
        m, x = m.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    def f():
        with torch.inference_mode():
            m(x)
        if device == "cuda":
            torch.cuda.synchronize()
    for _ in range(warmup):
        f()
    times = []
    for _ in range(repeat):
        t = time.perf_counter(); f(); times.append(time.perf_counter() - t)
    print(json.dumps({"times": times}))
    """
)


def _child(code: str, *args: object) -> dict:
    res = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=ENV)
    if res.returncode != 0:
        raise SystemExit(f"child failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _stats(times: list[float], batch: int) -> dict:
    times = sorted(times)
    med = statistics.median(times)
    return {"median_ms": med * 1e3, "p90_ms": times[int(0.9 * (len(times) - 1))] * 1e3, "images_s": batch / med}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", nargs=2, type=int, default=[512, 1024], metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--gpu-size", nargs=2, type=int, default=None, metavar=("H", "W"))
    ap.add_argument("--families", nargs="+", default=["fast_scnn", "deeplab_mnv2"])
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for both runtimes (0: their defaults)")
    ap.add_argument("--channels-last", action="store_true", help="PyTorch side in channels_last memory format")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from segconvert.commands.convert_keras import convert_keras_generic_files

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fam in a.families:
            h, w = a.size
            h5, st = Path(tmp) / f"{fam}.h5", Path(tmp) / f"{fam}.safetensors"
            _child(MAKE + "\nprint('{}')", fam, h, w, h5)
            convert_keras_generic_files(h5, st)
            run = (h, w, a.batch, a.warmup, a.repeat)
            load = os.getloadavg()[0]
            keras = _stats(_child(TIME_KERAS, h5, *run, a.threads)["times"], a.batch)
            torch_ = _stats(_child(TIME_TORCH, st, *run, a.device, a.threads, int(a.channels_last))["times"], a.batch)
            rows.append({"family": fam, "size": [h, w], "device": a.device, "keras": keras, "torch": torch_,
                         "ratio": torch_["median_ms"] / keras["median_ms"],
                         "load": [load, os.getloadavg()[0]]})  # fmt: skip
        if a.gpu_size and a.device == "cuda":
            h, w = a.gpu_size
            h5, st = Path(tmp) / "fscnn_big.h5", Path(tmp) / "fscnn_big.safetensors"
            _child(MAKE + "\nprint('{}')", "fast_scnn", h, w, h5)
            convert_keras_generic_files(h5, st)
            run = (h, w, a.batch, a.warmup, a.repeat, "cuda", 0, int(a.channels_last))
            big = _stats(_child(TIME_TORCH, st, *run)["times"], a.batch)
            rows.append({"family": "fast_scnn", "size": [h, w], "device": "cuda", "torch": big})
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'family':14s} {'size':>10s} {'device':6s} {'keras ms':>10s} {'torch ms':>10s} {'p90 torch':>10s} "
          f"{'img/s torch':>11s} {'torch/keras':>11s} {'load avg':>9s}")  # fmt: skip
    for r in rows:
        k = r.get("keras", {})
        print(
            f"{r['family']:14s} {'x'.join(map(str, r['size'])):>10s} {r['device']:6s} "
            f"{k.get('median_ms', float('nan')):10.1f} {r['torch']['median_ms']:10.1f} {r['torch']['p90_ms']:10.1f} "
            f"{r['torch']['images_s']:11.2f} {r.get('ratio', float('nan')):11.2f} "
            + ("{:4.1f}-{:<4.1f}".format(*r["load"]) if "load" in r else "")
        )
    print("load avg: 1-min load before and after the pair (2+ busy cores elsewhere skews OpenMP, i.e. PyTorch, most)")


if __name__ == "__main__":
    main()

"""Benchmark: inference of converted Keras models (keras2torch, generic path) vs the same models in tf_keras.

Families: Fast-SCNN and DeepLabV3+ MobileNetV2 (output stride 16), full width, built with the test builders
(``tests/keras_families.py``) and random weights, saved as full-model ``.h5`` and converted with
``segconvert.converters.keras_generic``. Runtimes, each measured in a fresh process on the same input:

- ``keras``: tf_keras ``model(x, training=False)`` inside ``tf.function`` (graph mode, as ``model.predict``
  runs it: Grappler / oneDNN fusions); ``keras_eager``: the same call eagerly (layer by layer);
- ``eager``: ``segconvert.load_model(file)`` as it comes (one module per Keras layer, BN separate);
- ``fused``: ``load_model(file, fuse=True)`` in NCHW memory (``--no-channels-last``; BN folded
  into the convolutions, in-place activations);
- ``fused_cl``: that in channels_last memory, the form ``segconvert benchmark`` / ``predict`` run by default;
- ``fused_nodnn`` / ``fused_cl_nodnn``: the same without the oneDNN convolution pass (``--no-onednn``:
  eager ``F.conv2d``, activations separate), for A/B;
- ``--allocators`` adds ``fused_thp`` (``THP_MEM_ALLOC_ENABLE=1``: PyTorch's CPU allocations on huge pages) and
  ``fused_malloc`` / ``fused_cl_malloc`` (``MALLOC_MMAP_THRESHOLD_=2**30 MALLOC_TRIM_THRESHOLD_=2**31-1``: glibc
  keeps freed memory).
  By default glibc maps allocations above its (dynamic, at most 32 MB) threshold fresh and trims the heap on
  free, so every forward page-faults its large activations in again (``faults``: minor page faults per
  forward); TF's own allocator keeps its memory.

``--rounds`` repeats the whole set with the runtimes' order rotated (the machine may be shared: interleaving
spreads load changes over all of them); per runtime the table gives the median and p90 of every timed run of
every round, images/s, the ratio to graph-mode Keras's median (below 1: faster), the thread counts the runtimes
report, and the 1-minute load average seen. With ``--device cuda`` the PyTorch runtimes run there and
``--gpu-size`` adds Fast-SCNN images/s at that size.

    python benchmarks/bench_keras.py [--size 512 1024] [--threads 1] [--rounds 3] [--repeat 10] [--allocators]
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
RUNTIMES = ("keras", "keras_eager", "eager", "fused", "fused_cl", "fused_nodnn", "fused_cl_nodnn")
ALLOCATORS = {  # --allocators: the fused model with the CPU allocator tuned through the environment
    "fused_thp": {"THP_MEM_ALLOC_ENABLE": "1"},
    "fused_malloc": {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)},
    "fused_cl_malloc": {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)},
}

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
    print("{}")
    """
)

_TIMING = """
import resource
def timed(f, warmup, repeat):
    global faults
    for _ in range(warmup):
        f()
    times, start = [], resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeat):
        t = time.perf_counter(); f(); times.append(time.perf_counter() - t)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / repeat
    return times
"""

TIME_KERAS = (
    textwrap.dedent(
        """
    import json, sys, time
    import numpy as np, tensorflow as tf, tf_keras as K
    path, h, w, batch, warmup, repeat, threads, graph = sys.argv[1], *map(int, sys.argv[2:9])
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    m = K.models.load_model(path, compile=False)
    x = tf.constant(np.random.default_rng(0).uniform(-1, 1, (batch, h, w, 3)).astype(np.float32))
    call = tf.function(lambda t: m(t, training=False)) if graph else (lambda t: m(t, training=False))
    """
    )
    + _TIMING
    + textwrap.dedent(
        """
    times = timed(lambda: call(x).numpy(), warmup, repeat)
    intra = tf.config.threading.get_intra_op_parallelism_threads()
    print(json.dumps({"times": times, "threads": intra or "default", "faults": faults}))
    """
    )
)

TIME_TORCH = (
    textwrap.dedent(
        """
    import json, sys, time
    import torch
    from segconvert import load_model
    path, (h, w, batch, warmup, repeat, threads, fuse, cl, dnn) = sys.argv[1], map(int, sys.argv[2:11])
    device = sys.argv[11]
    torch.set_flush_denormal(True)  # as segconvert benchmark and TF's CPU runtime; before the thread pool starts
    if threads:
        torch.set_num_threads(threads)
    from segconvert.inference.prepare import prepare_model
    m = load_model(path, device=device)
    if fuse:  # the inference form, in NHWC memory (its default) or NCHW
        m = prepare_model(m, onednn=None if dnn else False, channels_last=bool(cl))
    x = torch.rand(batch, 3, h, w, device=device) * 2 - 1
    if cl:  # NHWC input for the NHWC model: oneDNN's NHWC depthwise / 1x1 kernels (TF's layout)
        x = x.contiguous(memory_format=torch.channels_last)
    """
    )
    + _TIMING
    + textwrap.dedent(
        """
    def f():
        with torch.inference_mode():
            m(x)
        if device == "cuda":
            torch.cuda.synchronize()
    times = timed(f, warmup, repeat)
    folded = sum(len(v) for v in m.segconvert_fuse.folded.values()) if getattr(m, "segconvert_fuse", None) else 0
    dnn = getattr(m, "segconvert_onednn", None)
    dnn = len(dnn.convs) if dnn is not None else 0
    print(json.dumps({"times": times, "threads": torch.get_num_threads(), "folded": folded, "onednn": dnn,
                      "faults": faults}))
    """
    )
)


def _child(code: str, *args: object, env: dict[str, str] | None = None) -> dict:
    res = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env or ENV)
    if res.returncode != 0:
        raise SystemExit(f"child failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _stats(times: list[float], batch: int) -> dict:
    times = sorted(times)
    med = statistics.median(times)
    return {"median_ms": med * 1e3, "p90_ms": times[-(-9 * len(times) // 10) - 1] * 1e3, "images_s": batch / med}


def _measure(runtime: str, h5: Path, st: Path, run: tuple, a: argparse.Namespace) -> dict:
    if runtime.startswith("keras"):
        return _child(TIME_KERAS, h5, *run, a.threads, int(runtime == "keras"))
    fuse, cl, dnn = int(runtime != "eager"), int(runtime.startswith("fused_cl")), int("nodnn" not in runtime)
    env = {**ENV, **ALLOCATORS.get(runtime, {})}
    return _child(TIME_TORCH, st, *run, a.threads, fuse, cl, dnn, a.device, env=env)


def bench_family(fam: str, tmp: Path, a: argparse.Namespace) -> list[dict]:
    """Every runtime on one family, ``a.rounds`` interleaved rounds; one row per runtime."""
    from segconvert.commands.convert_keras import convert_keras_generic_files

    h, w = a.size
    h5, st = tmp / f"{fam}.h5", tmp / f"{fam}.safetensors"
    _child(MAKE, fam, h, w, h5)
    convert_keras_generic_files(h5, st)
    runtimes = [r for r in (*RUNTIMES, *(ALLOCATORS if a.allocators else ())) if r in a.runtimes]
    times: dict[str, list[float]] = {r: [] for r in runtimes}
    info: dict[str, dict] = {}
    loads: list[float] = [os.getloadavg()[0]]
    run = (h, w, a.batch, a.warmup, a.repeat)
    for i in range(a.rounds):
        for r in runtimes[i % len(runtimes) :] + runtimes[: i % len(runtimes)]:
            got = _measure(r, h5, st, run, a)
            times[r] += got.pop("times")
            info[r] = got
            loads.append(os.getloadavg()[0])
    keras_ms = _stats(times["keras"], a.batch)["median_ms"] if "keras" in times else float("nan")
    rows = []
    for r in runtimes:
        s = _stats(times[r], a.batch)
        rows.append({"family": fam, "size": [h, w], "device": "cpu" if "keras" in r else a.device, "runtime": r,
                     **s, "ratio": s["median_ms"] / keras_ms, "runs": len(times[r]), **info[r],
                     "load": [min(loads), max(loads)]})  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", nargs=2, type=int, default=[512, 1024], metavar=("H", "W"))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=10, help="timed runs per process")
    ap.add_argument("--rounds", type=int, default=2, help="fresh processes per runtime, interleaved")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--gpu-size", nargs=2, type=int, default=None, metavar=("H", "W"))
    ap.add_argument("--families", nargs="+", default=["fast_scnn", "deeplab_mnv2"])
    ap.add_argument("--runtimes", nargs="+", default=[*RUNTIMES, *ALLOCATORS], help="subset to run")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for both runtimes (0: their defaults)")
    ap.add_argument("--allocators", action="store_true", help="add the fused_thp and fused_malloc runtimes")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fam in a.families:
            rows += bench_family(fam, Path(tmp), a)
        if a.gpu_size and a.device == "cuda":
            from segconvert.commands.convert_keras import convert_keras_generic_files

            h, w = a.gpu_size
            h5, st = Path(tmp) / "fscnn_big.h5", Path(tmp) / "fscnn_big.safetensors"
            _child(MAKE, "fast_scnn", h, w, h5)
            convert_keras_generic_files(h5, st)
            big = _child(TIME_TORCH, st, h, w, a.batch, a.warmup, a.repeat, 0, 1, 1, 1, "cuda")
            rows.append({"family": "fast_scnn", "size": [h, w], "device": "cuda", "runtime": "fused",
                         **_stats(big.pop("times"), a.batch), **big})  # fmt: skip
    if a.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'family':13s} {'size':>9s} {'runtime':12s} {'device':6s} {'threads':>7s} {'median ms':>9s} "
          f"{'p90 ms':>8s} {'img/s':>6s} {'vs keras':>8s} {'faults':>7s} {'runs':>4s} {'load avg':>9s}")  # fmt: skip
    for r in rows:
        load = "{:4.1f}-{:<4.1f}".format(*r["load"]) if "load" in r else ""
        print(
            f"{r['family']:13s} {'x'.join(map(str, r['size'])):>9s} {r['runtime']:12s} {r['device']:6s} "
            f"{r.get('threads', ''):>7} {r['median_ms']:9.1f} {r['p90_ms']:8.1f} {r['images_s']:6.2f} "
            f"{r.get('ratio', float('nan')):8.2f} {r.get('faults', float('nan')):7.0f} "
            f"{r.get('runs', a.repeat):4d} {load}"
        )
    print("vs keras: median / graph-mode Keras's median (below 1: faster); faults: minor page faults per forward;")
    print("load avg: 1-min load, min-max over the rounds;")
    print("on a shared machine (load above the thread count) the numbers are noisy, OpenMP (PyTorch) most.")


if __name__ == "__main__":
    main()

"""Benchmark: read a ~100 MB TF checkpoint (V1 and V2) with segconvert vs ``tf.train.load_checkpoint``.

Every measurement runs in a fresh Python process:

* **cold**: wall time of the whole child process (interpreter start, imports, open, every tensor to numpy),
  what a user pays for one ``segconvert`` call;
* **warm**: time of opening and reading only, measured inside the child after the imports (files in the
  page cache); the child also reports the CPU time of that part (all its threads), which is less sensitive
  than wall time to other load on the machine.

Rows: ``segconvert`` (default: every tensor's checksum verified, so every byte is read), ``segconvert
verify=False`` (zero-copy views of the memory map, nothing read until used) and ``tensorflow``
(``get_tensor`` of every variable, which reads, checks the CRC and copies). Memory comes from a separate
run of each child that samples ``/proc/self/status`` (``VmHWM``; ``RssAnon`` every 2 ms, peak kept) and
reports the peak anonymous memory both absolute and above the post-import baseline. The readers take
turns within every repetition, so a change of machine load hits them alike. Needs TensorFlow to write the
checkpoints and for the baseline.

    python benchmarks/bench_tf_read.py [--size-mb 100] [--repeat 3] [--json]
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
import time
from pathlib import Path

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

GENERATE = textwrap.dedent(
    """
    import os, sys, numpy as np, tensorflow as tf
    out, size_mb = sys.argv[1], float(sys.argv[2])
    rng = np.random.default_rng(0)
    g = tf.Graph()
    with g.as_default():
        total, b, variables = 0, 0, []
        while total < size_mb * 1e6:  # bottleneck-like units: 1x1, 3x3, 1x1 convs + 4 BN vectors each
            for j, shape in enumerate([(1, 1, 1024, 256), (3, 3, 256, 256), (1, 1, 256, 1024)]):
                scope = f"net/block{b}/conv{j}"
                w = rng.standard_normal(shape, dtype=np.float32)
                variables.append(tf.compat.v1.Variable(w, name=scope + "/weights"))
                for bn in ("gamma", "beta", "moving_mean", "moving_variance"):
                    v = rng.standard_normal(shape[-1], dtype=np.float32)
                    variables.append(tf.compat.v1.Variable(v, name=f"{scope}/BatchNorm/{bn}"))
                total += w.nbytes + 16 * shape[-1]
            b += 1
        variables.append(tf.compat.v1.Variable(np.int64(0), name="global_step"))
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for fmt in ("V1", "V2"):
                os.makedirs(f"{out}/{fmt}", exist_ok=True)
                saver = tf.compat.v1.train.Saver(write_version=getattr(tf.compat.v1.train.SaverDef, fmt))
                saver.save(sess, f"{out}/{fmt}/model.ckpt", write_meta_graph=False)
    print(len(variables))
    """
)

CHILD = textwrap.dedent(
    """
    import sys, time, threading
    T0 = time.perf_counter()
    reader, path, sample = sys.argv[1], sys.argv[2], sys.argv[3] == "1"

    def status(key):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        return 0

    if reader == "tensorflow":
        import tensorflow as tf
    else:
        from segconvert.formats.tf_checkpoint import open_checkpoint
    T1 = time.perf_counter()
    base_anon = status("RssAnon:")
    peak = [base_anon]
    stop = threading.Event()

    def sampler():
        while not stop.is_set():
            peak[0] = max(peak[0], status("RssAnon:"))
            time.sleep(0.002)

    if sample:
        th = threading.Thread(target=sampler, daemon=True)
        th.start()
    T2 = time.perf_counter()
    C2 = time.process_time()
    if reader == "tensorflow":
        r = tf.train.load_checkpoint(path)
        arrays = {k: r.get_tensor(k) for k in r.get_variable_to_shape_map()}
    else:
        ck = open_checkpoint(path, verify=reader == "segconvert")
        arrays = {k: ck[k] for k in ck}
    T3 = time.perf_counter()
    C3 = time.process_time()
    if sample:
        stop.set()
        th.join()
    peak[0] = max(peak[0], status("RssAnon:"))
    nbytes = sum(a.nbytes for a in arrays.values())
    print(f"{T1 - T0} {T3 - T2} {C3 - C2} {nbytes} {status('VmHWM:')} {peak[0]} {base_anon}")
    """
)

READERS = ["segconvert", "segconvert-noverify", "tensorflow"]
LABEL = {"segconvert": "segconvert", "segconvert-noverify": "segconvert verify=False", "tensorflow": "tensorflow"}


def run_child(reader: str, path: str, sample: bool) -> dict:
    t = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, reader, path, "1" if sample else "0"],
        capture_output=True,
        text=True,
        env=ENV,
        check=False,
    )
    wall = time.perf_counter() - t
    if out.returncode:
        raise SystemExit(f"{reader} child failed:\n{out.stderr[-3000:]}")
    imp, read, cpu, nbytes, hwm, peak_anon, base_anon = out.stdout.split()[-7:]
    return {
        "cold_s": wall,
        "import_s": float(imp),
        "warm_s": float(read),
        "warm_cpu_s": float(cpu),
        "tensor_bytes": int(nbytes),
        "vm_hwm": int(hwm),
        "peak_anon": int(peak_anon),
        "base_anon": int(base_anon),
    }


def checkpoint_paths(work: Path) -> dict[str, tuple[str, int]]:
    v1 = work / "V1" / "model.ckpt"
    v2 = work / "V2" / "model.ckpt"
    size2 = sum(f.stat().st_size for f in (work / "V2").glob("model.ckpt.*"))
    return {"V1": (str(v1), v1.stat().st_size), "V2": (str(v2), size2)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=float, default=100.0)
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is reported")
    ap.add_argument("--workdir", type=Path, default=None, help="keep/reuse the generated checkpoints here")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--save", type=Path, default=None, help="also write the JSON results to this file")
    args = ap.parse_args(argv)

    tmp = None
    work = args.workdir
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_tf_read_")
        work = Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "V2" / "model.ckpt.index").exists() or not (work / "V1" / "model.ckpt").exists():
        gen = subprocess.run(
            [sys.executable, "-c", GENERATE, str(work), str(args.size_mb)], capture_output=True, text=True, env=ENV
        )
        if gen.returncode:
            raise SystemExit(f"generating the checkpoints needs TensorFlow:\n{gen.stderr[-3000:]}")

    results: dict = {"size_mb": args.size_mb, "repeat": args.repeat, "python": sys.version.split()[0], "rows": []}
    for fmt, (path, size) in checkpoint_paths(work).items():
        for reader in READERS:
            run_child(reader, path, False)  # warm the page cache / any first-run effects
        runs: dict[str, list[dict]] = {reader: [] for reader in READERS}
        for _ in range(args.repeat):  # interleaved: every repetition runs each reader once
            for reader in READERS:
                runs[reader].append(run_child(reader, path, False))
        for reader in READERS:
            mem = run_child(reader, path, True)
            rs = runs[reader]
            row = {
                "format": fmt,
                "reader": reader,
                "checkpoint_bytes": size,
                "cold_s": statistics.median(r["cold_s"] for r in rs),
                "warm_s": statistics.median(r["warm_s"] for r in rs),
                "warm_min_s": min(r["warm_s"] for r in rs),
                "warm_cpu_s": statistics.median(r["warm_cpu_s"] for r in rs),
                "import_s": statistics.median(r["import_s"] for r in rs),
                "tensor_bytes": rs[0]["tensor_bytes"],
                "vm_hwm": mem["vm_hwm"],
                "peak_anon": mem["peak_anon"],
                "peak_anon_over_baseline": mem["peak_anon"] - mem["base_anon"],
            }
            results["rows"].append(row)
        tf_row = next(r for r in results["rows"] if r["format"] == fmt and r["reader"] == "tensorflow")
        for r in results["rows"]:
            if r["format"] == fmt:
                r["cold_speedup_vs_tf"] = tf_row["cold_s"] / r["cold_s"]
                r["warm_speedup_vs_tf"] = tf_row["warm_s"] / r["warm_s"]
                r["warm_min_speedup_vs_tf"] = tf_row["warm_min_s"] / r["warm_min_s"]
                r["warm_cpu_speedup_vs_tf"] = tf_row["warm_cpu_s"] / r["warm_cpu_s"]
                r["peak_anon_ratio"] = r["peak_anon"] / size
                r["peak_anon_over_baseline_ratio"] = r["peak_anon_over_baseline"] / size
    results["load_average"] = os.getloadavg()
    results["cpus"] = os.cpu_count()
    if tmp is not None:
        tmp.cleanup()
    if args.save is not None:
        args.save.write_text(json.dumps(results, indent=2) + "\n")
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results)
    return results


def print_table(results: dict) -> None:
    mb = 1e6
    head = (
        f"{'fmt':4} {'reader':24} {'cold s':>7} {'x TF':>6} {'warm s':>8} {'x TF':>6} {'min x':>6} "
        f"{'cpu s':>7} {'x TF':>6} {'VmHWM MB':>9} {'anon MB':>8} {'anon+ MB':>9} {'anon+/ckpt':>10}"
    )
    load = results.get("load_average")
    print(
        f"checkpoint ~{results['size_mb']:.0f} MB, median of {results['repeat']} fresh processes per cell, "
        f"{results.get('cpus')} CPUs" + (f", load average {load[0]:.1f} at the end" if load else "")
    )
    print(head)
    print("-" * len(head))
    for r in results["rows"]:
        print(
            f"{r['format']:4} {LABEL[r['reader']]:24} {r['cold_s']:7.2f} {r['cold_speedup_vs_tf']:6.1f} "
            f"{r['warm_s']:8.4f} {r['warm_speedup_vs_tf']:6.2f} {r['warm_min_speedup_vs_tf']:6.2f} "
            f"{r['warm_cpu_s']:7.3f} {r['warm_cpu_speedup_vs_tf']:6.2f} {r['vm_hwm'] / mb:9.1f} "
            f"{r['peak_anon'] / mb:8.1f} {r['peak_anon_over_baseline'] / mb:9.1f} "
            f"{r['peak_anon_over_baseline_ratio']:10.3f}"
        )
    print(
        "x TF = TensorFlow time / this time (higher is faster; 'min x' compares the fastest runs, 'cpu' the CPU "
        "time of the read); anon+ = peak RssAnon above the post-import level"
    )


if __name__ == "__main__":
    main()

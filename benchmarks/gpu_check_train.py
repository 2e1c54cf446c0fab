"""Issue 12's GPU check, in one call: full PSPNet50, batch 8, crop 768, activation checkpointing + bf16.

On a lent H200 (``device`` tool), from the repository root::

    python3 benchmarks/gpu_check_train.py --out "$OUT"        # < 5 minutes; writes $OUT/gpu_check_train.json

Phases, each a separate :func:`bench_train_pspnet.run_benchmark` call with only its own run on the GPU (so
``torch.cuda.max_memory_allocated`` is that run's alone; caches emptied in between):

1. ``bf16+ckpt`` (checkpointing policy ``light``, the ``--grad-checkpointing`` default) on
   ``pspnet-semseg-cityscapes`` (19 classes, full-resolution logits and 3x3 aux head: the heaviest semseg form)
   at batch 8, crop 768: the check -- the trainer step's ``max_memory_allocated`` must be under 12 GiB; images/s
   of the trainer and of the bare loop, and the trainer's overhead (target <= 5%);
2. ``plain``, ``ckpt``, ``ckpt-all``, ``bf16``, ``fp16+ckpt`` at the same size (checkpointing's activation-memory
   and time ratios at full width), then ``bf16+ckpt`` on ``pspnet-fss-cityscapes`` (its own batch 8 / crop 768: labels
   shrunk to 1/8, 1x1 aux, L2 on kernels -- the bare loop adds the same regulariser);

each phase only while the time left (``--budget``, default 240 s) is more than 1.5x the longest phase so far.
The JSON is rewritten (atomically) after every phase, so a cut-off run still leaves what it measured.
``--dry-run``: the same code on CPU at toy size (widths / 16, crop 65, batch 2), to know the script works.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train_pspnet as bench  # noqa: E402

LIMIT_GIB = 12.0
SEMSEG, FSS = "pspnet-semseg-cityscapes", "pspnet-fss-cityscapes"


def phases(gpu: bool) -> list[tuple[str, str]]:
    """(recipe, config) in the order they run; the first is the check."""
    rest = ["plain", "ckpt", "ckpt-all", "bf16"] + (["fp16+ckpt"] if gpu else [])
    return [(SEMSEG, "bf16+ckpt"), *((SEMSEG, c) for c in rest), (FSS, "bf16+ckpt")]


def bench_args(recipe: str, a: argparse.Namespace) -> argparse.Namespace:
    toy = ["--divisor", "16", "--crop", "65", "--batch", "2", "--threads", "1"] if a.dry_run else []
    argv = ["--device", a.device, "--recipe", recipe, "--iters", str(a.iters), "--warmup", str(a.warmup), *toy]
    if not a.dry_run:
        argv += ["--divisor", "1", "--crop", str(a.crop), "--batch", str(a.batch)]
    ns = bench.parser().parse_args(argv)
    bench.finish_args(ns)
    return ns


def summary(first: dict[str, Any], gpu: bool) -> dict[str, Any]:
    r = first["results"]["bf16+ckpt"]
    check: dict[str, Any] = {
        "config": "bf16+ckpt",
        "images_per_s_trainer": r["images_per_s"]["trainer"],
        "images_per_s_bare": r["images_per_s"]["bare"],
        "overhead_pct": r["overhead_pct"],
        "overhead_ok": r["overhead_pct"] <= 5.0,
    }
    if gpu:
        peak = max(r["memory"][m]["max_allocated_mib"] for m in ("bare", "trainer")) / 1024
        check.update(max_allocated_gib=peak, limit_gib=LIMIT_GIB, fits=peak < LIMIT_GIB)
    return check


def ratios(done: dict[str, Any]) -> dict[str, Any]:
    """Checkpointing at full width from the separate phases (trainer numbers)."""
    res = {k.split(":", 1)[1]: v["results"][k.split(":", 1)[1]] for k, v in done.items() if k.startswith(SEMSEG)}
    out = {}
    for base, ck in (("plain", "ckpt"), ("plain", "ckpt-all"), ("bf16", "bf16+ckpt")):
        if base in res and ck in res:
            p, c = res[base], res[ck]
            out[f"{ck} / {base}"] = {
                "act_peak": c["memory"]["trainer"]["act_peak_mib"] / p["memory"]["trainer"]["act_peak_mib"],
                "saved": c["memory"]["saved_mib"] / p["memory"]["saved_mib"],
                "time_trainer": c["seconds_per_iter"]["trainer"] / p["seconds_per_iter"]["trainer"],
                "recompute_floor": 1 + p["forward_share"],
            }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"), help="folder for the JSON ($OUT)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, toy size: check that the script runs")
    ap.add_argument("--budget", type=float, default=240.0, help="seconds; later phases are skipped past it")
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=768)
    ap.add_argument("--max-phases", type=int, default=None, help="run only the first N phases")
    a = ap.parse_args(argv)
    gpu = not a.dry_run
    if gpu and not torch.cuda.is_available():
        print("error: no CUDA device (use --dry-run on CPU)", file=sys.stderr)
        return 2
    a.device = "cuda" if gpu else "cpu"
    a.iters, a.warmup = (2, 1) if a.dry_run else (a.iters, a.warmup)
    path = Path(a.out) / "gpu_check_train.json"
    t0 = time.perf_counter()
    record: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if gpu else "cpu (dry run)",
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "settings": {"batch": a.batch, "crop": a.crop, "iters": a.iters, "dry_run": a.dry_run},
        "phases": {},
        "skipped": [],
    }
    longest = 0.0
    for i, (recipe, config) in enumerate(phases(gpu)[: a.max_phases]):
        left = a.budget - (time.perf_counter() - t0)
        if i and left < 1.5 * longest:
            record["skipped"].append(f"{recipe}:{config}")
            continue
        start = time.perf_counter()
        print(f"== {recipe} {config} ({left:.0f} s of the budget left)", flush=True)
        try:
            out = bench.run_benchmark(bench_args(recipe, a), [config])
        except Exception as exc:  # e.g. out of memory: record it, free, go on with the next phase
            record.setdefault("errors", {})[f"{recipe}:{config}"] = f"{type(exc).__name__}: {exc}"[:2000]
            print(f"error: {recipe} {config}: {type(exc).__name__}: {str(exc)[:300]}", file=sys.stderr)
            out = None
        else:
            bench.report(out)
            record["phases"][f"{recipe}:{config}"] = out
            if i == 0:
                record["check"] = summary(out, gpu)
            record["checkpointing"] = ratios(record["phases"])
        record["seconds"] = time.perf_counter() - t0
        bench.write_json(path, record)
        longest = max(longest, time.perf_counter() - start)
        del out
        gc.collect()
        if gpu:
            torch.cuda.empty_cache()
    if "check" not in record:
        print(f"check failed: {record.get('errors')}; wrote {path}", file=sys.stderr)
        return 1
    c, first = record["check"], next(iter(record["phases"].values()))["settings"]
    mem = f"max_memory_allocated {c['max_allocated_gib']:.2f} GiB (limit {LIMIT_GIB:g}: " \
          f"{'fits' if c['fits'] else 'DOES NOT FIT'}), " if gpu else ""  # fmt: skip
    size = f"widths /{first['divisor']} batch {first['batch']} crop {first['crop']}"
    print(f"check bf16+ckpt {size}: {mem}{c['images_per_s_trainer']:.2f} images/s "
          f"(bare {c['images_per_s_bare']:.2f}), trainer overhead {c['overhead_pct']:+.1f}%; "
          f"{record['seconds']:.0f} s; skipped {record['skipped'] or 'none'}; wrote {path}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

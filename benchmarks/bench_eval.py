"""Benchmark: evaluation throughput at Cityscapes resolution with the ``pspnet`` protocol, and metric cost.

Inference (images/s on 1024x2048 RGB images, ``pspnet`` preset: long side 2049, 8 windows of 713, flip):
  (a) segconvert: crops batched (``--batch-size``, default 8: 4 windows + their flips per forward);
  (b) baseline: the same protocol one crop at a time (the MATLAB / semseg loop), batch size 1.
  The model is a width-reduced PSPNet50 (random weights) on CPU; with a GPU, also the full-width PSPNet101
  (channels_last + float16 autocast).
Metric accumulation, reported separately (ms per image, 1024x2048, labelIds + instanceIds):
  (c) segconvert: ``CityscapesScorer`` (torch bincount confusion matrix + instance statistics on the device);
  (d) baseline: the pure-Python path of cityscapesScripts' ``evaluatePair`` (if installed), else a numpy
      ``np.unique`` confusion matrix.
Run: ``python benchmarks/bench_eval.py [--images 2] [--batch-size 8] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np
import torch

from segconvert.eval.datasets import Target
from segconvert.eval.metrics import CityscapesScorer
from segconvert.eval.protocols import Preprocessing, Runtime, get_protocol
from segconvert.reference_models import create_model

SMALL = dict(stem_widths=[8, 8, 16], widths=[8, 16, 32, 64], out_widths=[32, 64, 128, 256], ppm_width=64, head_width=64)
PREP = Preprocessing("BGR", (103.939, 116.779, 123.68))


def make_model(full: bool, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    kw: dict[str, Any] = {} if full else SMALL
    model = create_model("pspnet101" if full else "pspnet50", num_classes=19, input_size=[713, 713], **kw)
    return model.eval().to(device)


def time_inference(model: torch.nn.Module, images: list[np.ndarray], rt: Runtime) -> float:
    """Median seconds per image (one warm-up image first)."""
    proto = get_protocol("pspnet", "cityscapes")
    proto.predict(model, images[0], PREP, rt).argmax(0)
    times = []
    for img in images:
        if rt.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        proto.predict(model, img, PREP, rt).argmax(0).cpu()
        if rt.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cityscapes_pair(rng: np.random.Generator, h: int = 1024, w: int = 2048) -> tuple[np.ndarray, ...]:
    gt = np.repeat(np.repeat(rng.integers(0, 34, (h // 32, w // 32)), 32, 0), 32, 1).astype(np.uint8)
    inst = gt.astype(np.int32)
    cars = gt == 26
    inst[cars] = 26000 + (np.arange(cars.sum()) // 4096)  # instances of 4096 pixels
    pred = gt.copy()
    noise = rng.random((h, w)) < 0.2
    pred[noise] = rng.integers(0, 34, int(noise.sum()))
    return gt, inst, pred


def time_metric_ours(pairs: list[tuple[np.ndarray, ...]], device: torch.device) -> float:
    scorer = CityscapesScorer(device)
    tensors = [(torch.from_numpy(p).to(device), Target(g, i)) for g, i, p in pairs]
    t0 = time.perf_counter()
    for pred, target in tensors:
        scorer.update_label_ids(pred, target)
    scorer.result()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / len(pairs)


def time_metric_baseline(pairs: list[tuple[np.ndarray, ...]]) -> tuple[float, str]:
    try:
        import tempfile
        from pathlib import Path

        from PIL import Image

        np.in1d = np.isin  # type: ignore[attr-defined]  # cityscapesScripts 2.3.0 on numpy >= 2.4
        from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official
    except ImportError:
        t0 = time.perf_counter()
        for g, _, p in pairs:
            enc = g.astype(np.int64) * 35 + p
            vals, counts = np.unique(enc, return_counts=True)
        return (time.perf_counter() - t0) / len(pairs), "numpy np.unique confusion"
    args = official.args
    args.quiet, args.JSONOutput = True, False
    conf = official.generateMatrix(args)
    stats = official.generateInstanceStats(args)
    with tempfile.TemporaryDirectory() as d:
        files = []
        for k, (g, i, p) in enumerate(pairs):
            fp, fg = Path(d) / f"p{k}.png", Path(d) / f"g{k}_labelIds.png"
            Image.fromarray(p).save(fp)
            Image.fromarray(g).save(fg)
            Image.fromarray(i.astype(np.uint16)).save(Path(d) / f"g{k}_instanceIds.png")
            files.append((str(fp), str(fg)))
        t0 = time.perf_counter()
        for fp, fg in files:
            official.evaluatePair(fp, fg, conf, stats, {}, args)
        return (time.perf_counter() - t0) / len(pairs), "cityscapesScripts evaluatePair (python path, incl. PNG reads)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (1024, 2048, 3), dtype=np.uint8) for _ in range(a.images)]
    report: dict[str, Any] = {"images": a.images, "resolution": [1024, 2048], "protocol": "pspnet ss+flip"}
    runs = [("cpu", False)] + ([("cuda", False), ("cuda", True)] if torch.cuda.is_available() else [])
    for dev_name, full in runs:
        dev = torch.device(dev_name)
        model = make_model(full, dev)
        if dev.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        batched = time_inference(model, images, Runtime(dev, a.batch_size))
        single = time_inference(model, images, Runtime(dev, 1))
        key = f"{dev_name}_{'pspnet101_full' if full else 'pspnet50_small'}"
        report[key] = {
            "batched_img_per_s": 1 / batched,
            "one_crop_at_a_time_img_per_s": 1 / single,
            "speedup": single / batched,
        }
    pairs = [cityscapes_pair(rng) for _ in range(3)]
    for dev_name in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        report[f"metric_ms_per_image_{dev_name}"] = 1000 * time_metric_ours(pairs, torch.device(dev_name))
    base, what = time_metric_baseline(pairs)
    report["metric_ms_per_image_baseline"] = 1000 * base
    report["metric_baseline"] = what
    report["metric_speedup_cpu"] = base * 1000 / report["metric_ms_per_image_cpu"]
    if a.json:
        print(json.dumps(report, indent=2))
        return
    print(f"pspnet protocol, {a.images} images 1024x2048 (8 windows of 713 + flips per image)")
    for key, v in report.items():
        if isinstance(v, dict):
            print(
                f"  {key:<24} batched {v['batched_img_per_s']:.3f} img/s   one crop at a time "
                f"{v['one_crop_at_a_time_img_per_s']:.3f} img/s   speedup {v['speedup']:.2f}x"
            )
    print("metric accumulation (Cityscapes labelIds + iIoU instance statistics, per 1024x2048 image)")
    for key in [k for k in report if k.startswith("metric_ms")]:
        print(f"  {key:<34} {report[key]:8.1f} ms")
    print(f"  baseline = {report['metric_baseline']}; segconvert CPU is {report['metric_speedup_cpu']:.1f}x faster")


if __name__ == "__main__":
    main()

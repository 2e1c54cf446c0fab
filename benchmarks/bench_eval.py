"""Benchmark: evaluation throughput at Cityscapes resolution with the ``pspnet`` protocol, and metric cost.

Inference (images/s on 1024x2048 RGB images, ``pspnet`` preset: long side 2049, 8 windows of 713, flip):
  (a) segconvert: crops batched (``--batch-size``, default 8; `segconvert eval` uses 8 on CUDA and 1 on CPU,
      where batches measured slower per crop);
  (b) baseline: the same protocol one crop at a time (the MATLAB / semseg loop), batch size 1.
  The model is a width-reduced PSPNet50 (random weights) on CPU; with a GPU, also the full-width PSPNet101
  (channels_last + float16 autocast). ``protocol_only``: the same protocol around a model that returns zeros
  (resizes, padding, softmax fusion, the MATLAB imresize of the score maps): the cost that is not the network.
Metric accumulation, reported separately (ms per image, 1024x2048, labelIds + instanceIds):
  (c) segconvert: ``CityscapesScorer`` (torch bincount confusion matrix + instance statistics on the device),
      accumulation alone, and with the PNG decoding that `segconvert score` does;
  (d) baseline: cityscapesScripts' ``evaluatePair`` (its pure-Python path, PNG decoding included), if installed.
Run: ``python benchmarks/bench_eval.py [--images 1] [--batch-size 8] [--metric-only] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from segconvert.eval.datasets import Target
from segconvert.eval.metrics import CityscapesScorer
from segconvert.eval.protocols import Preprocessing, Runtime, get_protocol
from segconvert.reference_models import create_model

SMALL = dict(stem_widths=[8, 8, 16], widths=[8, 16, 32, 64], out_widths=[32, 64, 128, 256], ppm_width=64, head_width=64)
PREP = Preprocessing("BGR", (103.939, 116.779, 123.68))


class ZeroLogits(torch.nn.Module):
    """19 zero logits per pixel: the protocol's own cost without a network."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], 19, *x.shape[-2:])


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


def write_pngs(pairs: list[tuple[np.ndarray, ...]], folder: Path) -> list[tuple[str, str, str]]:
    files = []
    for k, (g, i, p) in enumerate(pairs):
        fp, fg, fi = folder / f"p{k}.png", folder / f"g{k}_labelIds.png", folder / f"g{k}_instanceIds.png"
        Image.fromarray(p).save(fp)
        Image.fromarray(g).save(fg)
        Image.fromarray(i.astype(np.uint16)).save(fi)
        files.append((str(fp), str(fg), str(fi)))
    return files


def time_metric_ours(pairs: list[tuple[np.ndarray, ...]], device: torch.device) -> float:
    """Accumulation only: arrays already decoded (what `segconvert eval` adds per image)."""
    scorer = CityscapesScorer(device)
    tensors = [(torch.from_numpy(p).to(device), Target(g, i)) for g, i, p in pairs]
    scorer.update_label_ids(*tensors[0])  # warm-up (first-call initialisation), then a fresh scorer
    scorer = CityscapesScorer(device)
    t0 = time.perf_counter()
    for pred, target in tensors:
        scorer.update_label_ids(pred, target)
    scorer.result()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / len(pairs)


def time_score_ours(files: list[tuple[str, str, str]]) -> float:
    """Like the official evaluator: decode the three PNGs, then accumulate (CPU)."""
    scorer = CityscapesScorer("cpu")
    t0 = time.perf_counter()
    for fp, fg, fi in files:
        pred, gt, inst = (np.asarray(Image.open(f)) for f in (fp, fg, fi))
        scorer.update_label_ids(pred, Target(gt, inst.astype(np.int32)))
    scorer.result()
    return (time.perf_counter() - t0) / len(files)


def time_metric_baseline(files: list[tuple[str, str, str]]) -> tuple[float, str] | None:
    try:
        np.in1d = np.isin  # type: ignore[attr-defined]  # cityscapesScripts 2.3.0 on numpy >= 2.4
        from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official
    except ImportError:
        return None
    args = official.args
    args.quiet, args.JSONOutput = True, False
    conf = official.generateMatrix(args)
    stats = official.generateInstanceStats(args)
    t0 = time.perf_counter()
    for fp, fg, _ in files:
        official.evaluatePair(fp, fg, conf, stats, {}, args)
    return (time.perf_counter() - t0) / len(files), "cityscapesScripts evaluatePair (python path)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--metric-only", action="store_true", help="skip the (slow on CPU) inference part")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (1024, 2048, 3), dtype=np.uint8) for _ in range(a.images)]
    report: dict[str, Any] = {"images": a.images, "resolution": [1024, 2048], "protocol": "pspnet ss+flip"}
    runs = [("cpu", False)] + ([("cuda", False), ("cuda", True)] if torch.cuda.is_available() else [])
    runs = [] if a.metric_only else runs
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
        if not full:
            report[f"{dev_name}_protocol_only_s_per_img"] = time_inference(ZeroLogits(), images, Runtime(dev, 1))
    pairs = [cityscapes_pair(rng) for _ in range(4)]
    threads = torch.get_num_threads()
    # the metric ops are memory-bound: `segconvert score` runs them on one CPU thread (like numpy); the
    # default thread count is shown too (it suffers on a loaded machine)
    torch.set_num_threads(1)
    report["metric_accumulate_ms_cpu_1thread"] = 1000 * time_metric_ours(pairs, torch.device("cpu"))
    torch.set_num_threads(threads)
    report[f"metric_accumulate_ms_cpu_{threads}threads"] = 1000 * time_metric_ours(pairs, torch.device("cpu"))
    if torch.cuda.is_available():
        report["metric_accumulate_ms_cuda"] = 1000 * time_metric_ours(pairs, torch.device("cuda"))
    with tempfile.TemporaryDirectory() as d:
        files = write_pngs(pairs, Path(d))
        torch.set_num_threads(1)
        report["score_ms_segconvert"] = 1000 * time_score_ours(files)
        torch.set_num_threads(threads)
        base = time_metric_baseline(files)
    if base is not None:
        report["score_ms_baseline"] = 1000 * base[0]
        report["score_baseline"] = base[1]
        report["score_speedup"] = report["score_ms_baseline"] / report["score_ms_segconvert"]
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
    for key in [k for k in report if k.endswith("protocol_only_s_per_img")]:
        print(f"  {key:<34} {report[key]:8.2f} s  (everything but the network)")
    print("metric (Cityscapes labelIds + iIoU instance statistics), per 1024x2048 image")
    for key in [k for k in report if k.startswith("metric_accumulate")]:
        print(f"  {key:<34} {report[key]:8.1f} ms  (accumulation only, arrays already decoded)")
    print(f"  {'score_ms_segconvert':<34} {report['score_ms_segconvert']:8.1f} ms  (PNG decode + accumulate, 1 thread)")
    if "score_ms_baseline" in report:
        print(f"  {'score_ms_baseline':<34} {report['score_ms_baseline']:8.1f} ms  ({report['score_baseline']})")
        print(f"  segconvert / baseline speedup: {report['score_speedup']:.2f}x")


if __name__ == "__main__":
    main()

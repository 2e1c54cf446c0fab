"""Evaluation loops: run a protocol over a dataset (``evaluate``) or score label PNGs on disk (``score_folder``)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from segconvert.errors import DatasetError, WeightsFileError
from segconvert.eval import palettes
from segconvert.eval.datasets import SegDataset, read_index_png
from segconvert.eval.metrics import EvalResult
from segconvert.eval.protocols import Preprocessing, Protocol, Runtime


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """'auto' -> cuda if available, else mps, else cpu."""
    if isinstance(spec, torch.device):
        return spec
    if spec in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} requested but CUDA is not available")
    return dev


def load_weights(path: str | Path, device: torch.device) -> nn.Module:
    """Rebuild a converted model with :func:`segconvert.load_model` (the converted-weights store)."""
    try:
        from segconvert import load_model
    except ImportError as exc:  # pragma: no cover
        raise WeightsFileError("segconvert.load_model is not available", file=path) from exc
    try:
        return load_model(str(path), device=str(device))
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("segconvert"):
            raise WeightsFileError(f"cannot load converted weights: {exc.name} is not available", file=path) from exc
        raise


class _Timer:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.total: dict[str, float] = {}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def add(self, key: str, seconds: float) -> None:
        self.total[key] = self.total.get(key, 0.0) + seconds


class _TimedForward(nn.Module):
    """Wraps a model: counts the seconds spent in its forwards (synchronised on CUDA) for ``--benchmark``."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.model, self.device = model, device
        self.segconvert_meta = getattr(model, "segconvert_meta", None)
        self.seconds, self.calls = 0.0, 0

    def forward(self, *args: Any) -> Any:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        out = self.model(*args)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


def timing_split(timing: dict[str, Any]) -> str:
    """One line: images/s and the seconds of decode (loading + the loader's image resizes), protocol (padding,
    crops, flip fusion, score resizes), network (the forwards) and metrics, from
    ``evaluate(..., time_network=True)``'s ``info["timing"]``."""
    net = float(timing.get("network", 0.0))
    proto = max(float(timing.get("inference", 0.0)) - net, 0.0)
    ips = timing.get("images_per_second")
    workers = int(timing.get("workers", 0))
    decode = f"decode {timing.get('load', 0.0):.2f}s + resize {timing.get('resize', 0.0):.2f}s"
    if workers:
        decode += f" (summed over {workers} workers; waited {timing.get('wait', 0.0):.2f}s for them)"
    parts = [
        decode,
        f"protocol {proto:.2f}s",
        f"network {net:.2f}s ({timing.get('forwards', 0)} forwards)",
        f"metrics {timing.get('metric', 0.0):.2f}s",
    ]
    return f"benchmark: {ips or 0.0:.3f} images/s over {timing.get('seconds', 0.0):.2f}s: " + ", ".join(parts)


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=not enabled, dynamic_ncols=True)


def save_prediction(dataset: SegDataset, index: int, pred: np.ndarray, image: np.ndarray, out_dir: Path) -> None:
    """``labels/`` released-format label PNG, ``color/`` palette PNG, ``overlay/`` blended RGB PNG."""
    sample = dataset.samples[index]
    rel = dataset.prediction_relpath(sample)
    values = dataset.label_png_values(pred)
    palettes.atomic_save_png(Image.fromarray(values, mode="L"), out_dir / "labels" / rel)
    palettes.atomic_save_png(palettes.palette_image(pred, dataset.palette), out_dir / "color" / rel)
    ov = palettes.overlay(image, pred, dataset.palette)
    palettes.atomic_save_png(Image.fromarray(ov), out_dir / "overlay" / rel)


def evaluate(
    model: nn.Module,
    dataset: SegDataset,
    protocol: Protocol,
    *,
    device: str | torch.device = "auto",
    batch_size: int | None = None,
    amp: bool | None = None,
    channels_last: bool | None = None,
    limit: int | None = None,
    save_pred: str | Path | None = None,
    preprocessing: Preprocessing | None = None,
    progress: bool = True,
    on_image: Callable[[int, np.ndarray], None] | None = None,
    time_network: bool = False,
    workers: int = 0,
    batch_memory: float | None = None,
) -> EvalResult:
    """Predict every image with ``protocol`` and score it with the dataset's metric (accumulated on device).

    ``batch_size``, ``amp`` and ``channels_last`` default by device (see :class:`Runtime`; the inference form
    of ``prepare_model`` runs channels_last on every device); ``batch_memory``
    (MiB): crops per forward from a memory budget instead (``batch_size`` wins when both are given).
    ``workers``: images and ground truth decoded, and resized to the protocol's scales
    (:meth:`Protocol.resized_images`, on the CPU whatever the device), by that many DataLoader worker
    processes (0: in this process); the scores do not depend on it. The result's ``info["timing"]`` separates
    decode (``load``: the seconds spent decoding, ``resize``: resizing, both summed over the workers;
    ``wait``: the seconds this process waited for them), inference and metric seconds.
    """
    from segconvert.eval import distributed as dist_eval
    from segconvert.eval.loader import decoded

    dev = dist_eval.rank_device(resolve_device(device))
    rank, world, created = dist_eval.join_group(dev) if dist_eval.world_info()[2] > 1 else (0, 1, False)
    prep = preprocessing or Preprocessing.from_model(model)
    rt = Runtime.for_model(model, dev, batch_size, amp, channels_last, batch_memory=batch_memory)
    model = model.eval().to(dev, memory_format=rt.memory_format)
    timed = _TimedForward(model, dev) if time_network else None
    if timed is not None:
        model = timed  # type: ignore[assignment]
    scorer = dataset.make_scorer(dev)
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    if n == 0:
        raise DatasetError("no images to evaluate", file=dataset.root)
    indices = dist_eval.shard_indices(n, rank, world)  # range(n) in one process
    if world > 1:
        scorer = dist_eval.ShardedScorer(scorer, rank, world)
    out_dir = Path(save_pred) if save_pred else None
    timer = _Timer(dev)
    start = time.perf_counter()
    bar = _progress(len(indices), f"eval {dataset.name}", progress and rank == 0)
    items = decoded(dataset, indices, workers, protocol.resized_images)  # images resized on the CPU, ahead
    try:
        while True:
            t0 = time.perf_counter()
            item = next(items, None)
            if item is None:
                break
            if item.error is not None:
                raise item.error
            i, image, target = item.index, item.image, item.target
            assert image is not None and target is not None
            t1 = time.perf_counter()
            timer.add("wait", t1 - t0)
            timer.add("load", item.seconds)
            timer.add("resize", item.prepare_seconds)
            scores = protocol.predict(model, image, prep, rt, item.prepared)
            pred = scores.argmax(0)
            if scores.shape[0] <= 255:
                pred = pred.to(torch.uint8)  # class ids fit: the metric takes its fast path
            timer.sync()
            t2 = time.perf_counter()
            num_classes = scores.shape[0]
            if num_classes != dataset.num_classes:
                raise DatasetError(
                    f"model predicts {num_classes} classes but {dataset.name} has {dataset.num_classes}",
                    file=dataset.root,
                )
            if tuple(pred.shape) != tuple(target.label.shape):
                raise DatasetError(
                    f"prediction {tuple(pred.shape)} and ground truth {tuple(target.label.shape)} differ in size",
                    file=dataset.samples[i].label,
                )
            scorer.update(pred, target)
            timer.sync()
            t3 = time.perf_counter()
            if out_dir is not None or on_image is not None:
                pred_np = pred.cpu().numpy().astype(np.uint8)
                if out_dir is not None:
                    save_prediction(dataset, i, pred_np, image, out_dir)
                if on_image is not None:
                    on_image(i, pred_np)
            timer.add("inference", t2 - t1)
            timer.add("metric", t3 - t2)
            bar.update(1)
    finally:
        items.close()  # stops the workers when the loop ends early
        bar.close()
    elapsed = time.perf_counter() - start
    result = scorer.result()  # sharded: reduced over the ranks, the one-process scores on every rank
    if created:
        dist_eval.leave_group()
    n = len(indices)  # timing below is this rank's
    result.info.update(
        split=dataset.split,
        protocol=protocol.describe(),
        device=str(dev),
        runtime={
            "crops_per_forward": rt.crops_per_forward,
            "channels_last": rt.memory_format == torch.channels_last,
            "autocast": str(rt.autocast_dtype).replace("torch.", "") if rt.autocast_dtype else None,
        },
        timing={
            "seconds": elapsed,
            "images_per_second": n / elapsed if elapsed else None,
            "workers": int(workers),
            **timer.total,
        },
    )
    if batch_memory:
        result.info["runtime"]["batch_memory_mib"] = batch_memory
    if timed is not None:
        result.info["timing"].update(network=timed.seconds, forwards=timed.calls, images=n)
    if world > 1:
        result.info["world_size"] = world
    return result


def score_folder(
    dataset: SegDataset,
    pred_dir: str | Path,
    *,
    pred_ids: str,
    device: str | torch.device = "cpu",
    limit: int | None = None,
    progress: bool = True,
) -> EvalResult:
    """Score existing prediction PNGs (named as the official tools expect) with the dataset's metric."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DatasetError("prediction folder not found", file=pred_dir)
    dev = resolve_device(device)
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    if limit is not None:
        dataset.samples = dataset.samples[:n]
    files = dataset.find_predictions(pred_dir)
    scorer = dataset.make_scorer(dev)
    bar = _progress(n, f"score {dataset.name}", progress)
    try:
        for i, path in enumerate(files):
            target = dataset.load_target(i)
            pred, _mode = read_index_png(path, "prediction")
            if pred.ndim != 2:
                raise DatasetError("prediction PNG must be single-channel", file=path)
            if pred.shape != target.label.shape:
                raise DatasetError(
                    f"prediction size {pred.shape[::-1]} != ground truth size {target.label.shape[::-1]} (W, H)",
                    file=path,
                )
            dataset.score_prediction(scorer, pred, target, pred_ids, path)
            bar.update(1)
    finally:
        bar.close()
    result = scorer.result()
    result.info.update(split=dataset.split, predictions=str(pred_dir), pred_ids=pred_ids)
    return result

"""Issue 15's GPU check, in one call: ``segconvert eval``'s loop on synthetic Cityscapes and VOC images.

On a lent H100/H200 (``device`` tool), from the repository root::

    python3 benchmarks/gpu_check_infer.py --out "$OUT"     # writes $OUT/gpu_check_infer.json (a few minutes)

Phases, each :func:`segconvert.eval.runner.evaluate` (the loop ``segconvert eval --benchmark`` runs) with the
inference form (``load_model(fuse=True)``: BatchNorm folded, channels_last) of full-width random weights in the
released layout (the fixtures' ``full.prototxt``, written as a caffemodel and converted with ``caffe2torch``):

1. ``pspnet101-cityscapes`` (the check): the ``pspnet`` protocol at 713 (sliding windows, stride 476, flip:
   16 crops of 713x713 per image) over ``--images`` (500) synthetic 1024x2048 images with labelIds, bf16
   autocast, ``--batch`` crops per forward; images are made ("decoded") and MATLAB-resized in DataLoader
   workers, the score maps resized (MATLAB-exact), fused and scored on the GPU. Target: < 60 s for 500 images.
2. ``deeplab-v2-msc``: the ``deeplab-msc`` protocol (pad to 513, one forward of the three-scale MSC net) over
   ``--deeplab-images`` synthetic 375x500 VOC-sized images, bf16 then float32.

Recorded per phase: images/s, the decode / protocol / network / metrics split of ``--benchmark``,
``torch.cuda.max_memory_allocated`` and the seconds to build, convert and load the model. The JSON is rewritten
(atomically) after every phase. A synthetic image is generated from its index (noise) in the worker, standing
in for PNG decoding (a real 1024x2048 PNG takes a worker ~40-60 ms more). ``--dry-run``: the same code on the
CPU with the width-reduced fixture nets and their real weights, two small images a phase, to know it works.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segconvert.eval.datasets import Sample, SegDataset, Target

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures" / "caffe"
TARGET_S, TARGET_IMAGES = 60.0, 500


class Synthetic(SegDataset):
    """A dataset of noise images with random labels, made from the index where it is read (a worker)."""

    def __init__(self, kind: str, n: int, size: tuple[int, int]) -> None:
        from segconvert.eval import palettes
        from segconvert.eval.labels import CITYSCAPES_CLASSES, VOC_CLASSES

        super().__init__(Path(f"<synthetic {kind}>"), "synthetic")
        self.name, self.size = kind, size
        self.class_names = CITYSCAPES_CLASSES if kind == "cityscapes" else VOC_CLASSES
        self.palette = palettes.voc_palette()
        self.samples = [Sample(f"{i:05d}", self.root, self.root) for i in range(n)]

    def load_image(self, i: int) -> np.ndarray:
        return np.random.default_rng(i).integers(0, 256, (*self.size, 3), dtype=np.uint8)

    def load_target(self, i: int) -> Target:
        rng = np.random.default_rng(10_000 + i)
        if self.name == "cityscapes":  # labelIds 0..33
            return Target(rng.integers(0, 34, self.size, dtype=np.uint8))
        label = rng.integers(0, 21, self.size, dtype=np.uint8)
        label[:4] = 255  # a void border, as VOC's
        return Target(label)

    def make_scorer(self, device: Any = "cpu") -> Any:
        from segconvert.eval.metrics import CityscapesScorer, SegScorer

        if self.name == "cityscapes":
            return CityscapesScorer(device)
        return SegScorer("voc", self.class_names, device)


def convert(case: str, tmp: Path, dry_run: bool) -> Path:
    """The fixture net as converted weights: full width with random weights, or (dry run) the fixture's own."""
    from segconvert.formats.caffemodel_writer import random_weights_for, write_caffemodel
    from segconvert.graph import load_net

    root = FIXTURES / case
    if dry_run:
        proto, model = root / "net.prototxt", root / "weights.caffemodel"
    else:
        proto = root / "full.prototxt"
        model = write_caffemodel(tmp / f"{case}.caffemodel", random_weights_for(load_net(proto), seed=0))
    out = tmp / f"{case}.safetensors"
    cmd = [sys.executable, "-m", "segconvert", "caffe2torch", str(proto), str(model), "-o", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    if not dry_run:
        model.unlink()
    return out


def run_phase(case: str, protocol: Any, ds: Synthetic, a: argparse.Namespace, amp: str | bool, tmp: Path) -> dict:
    import segconvert
    from segconvert.eval.runner import evaluate, timing_split

    t0 = time.perf_counter()
    weights = convert(case, tmp, a.dry_run)
    model = segconvert.load_model(weights, device=a.device, fuse=True)
    built = time.perf_counter() - t0
    if a.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    res = evaluate(
        model, ds, protocol, device=a.device, batch_size=a.batch, amp=amp, workers=a.workers,
        progress=False, time_network=True,
    )  # fmt: skip
    timing = res.info["timing"]
    out = {
        "images": len(ds),
        "image_size": list(ds.size),
        "protocol": protocol.describe(),
        "amp": amp,
        "runtime": res.info["runtime"],
        "seconds": timing["seconds"],
        "images_per_s": timing["images_per_second"],
        "split": timing_split(timing),
        "timing": timing,
        "build_convert_load_s": built,
        "max_memory_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if a.device == "cuda" else None,
    }
    print(f"  {out['split']}", flush=True)
    del model
    gc.collect()
    if a.device == "cuda":
        torch.cuda.empty_cache()
    return out


def phases(a: argparse.Namespace) -> list[tuple[str, str, Any, Synthetic, str | bool]]:
    from segconvert.eval.protocols import get_protocol

    if a.dry_run:  # width-reduced nets at their own input sizes; 2 small images
        cs = get_protocol("pspnet", "cityscapes", crop=713, base_size=1024)
        dl = get_protocol("deeplab-msc", "voc", crop=129)
        cs_set, dl_set = Synthetic("cityscapes", 2, (512, 1024)), Synthetic("voc", 2, (100, 120))
    else:
        cs, dl = get_protocol("pspnet", "cityscapes", crop=713), get_protocol("deeplab-msc", "voc", crop=513)
        cs_set = Synthetic("cityscapes", a.images, (1024, 2048))
        dl_set = Synthetic("voc", a.deeplab_images, (375, 500))
    return [
        ("pspnet101-cityscapes", "pspnet101_cityscapes_713", cs, cs_set, "bf16"),
        ("deeplab-v2-msc bf16", "deeplab_v2_resnet101_msc", dl, dl_set, "bf16"),
        ("deeplab-v2-msc fp32", "deeplab_v2_resnet101_msc", dl, dl_set, False),
    ]


def write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    from segconvert.eval.loader import default_workers

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"), help="folder for the JSON ($OUT)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, fixture nets, 2 images a phase")
    ap.add_argument("--images", type=int, default=TARGET_IMAGES)
    ap.add_argument("--deeplab-images", type=int, default=200)
    ap.add_argument("--batch", type=int, default=8, help="crops per forward")
    ap.add_argument("--workers", type=int, default=None, help="loader workers (default: eval's for the device)")
    ap.add_argument("--max-phases", type=int, default=None)
    a = ap.parse_args(argv)
    if not a.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device (use --dry-run on CPU)", file=sys.stderr)
        return 2
    a.device = "cpu" if a.dry_run else "cuda"
    a.workers = default_workers(a.device) if a.workers is None else a.workers
    if a.dry_run:
        a.batch, a.workers = 2, min(a.workers, 1)
    torch.backends.cudnn.benchmark = True  # fixed crop shapes: let cuDNN pick its kernels once
    path = Path(a.out) / "gpu_check_infer.json"
    record: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if not a.dry_run else "cpu (dry run)",
        "cpus": os.cpu_count(),
        "settings": {"batch": a.batch, "workers": a.workers, "dry_run": a.dry_run},
        "phases": {},
    }
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-infer-") as tmp:
        for name, case, proto, ds, amp in phases(a)[: a.max_phases]:
            print(f"== {name}: {len(ds)} images {ds.size[0]}x{ds.size[1]}, {proto.name}, amp {amp}", flush=True)
            try:
                record["phases"][name] = run_phase(case, proto, ds, a, amp, Path(tmp))
            except Exception as exc:  # e.g. out of memory: record it and go on with the next phase
                record.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"[:2000]
                print(f"error: {name}: {type(exc).__name__}: {str(exc)[:300]}", file=sys.stderr)
            record["seconds"] = time.perf_counter() - t0
            write_json(path, record)
    first = record["phases"].get("pspnet101-cityscapes")
    if first is None:
        print(f"check failed: {record.get('errors')}; wrote {path}", file=sys.stderr)
        return 1
    per_500 = first["seconds"] / first["images"] * TARGET_IMAGES
    record["check"] = {"seconds_per_500_images": per_500, "target_s": TARGET_S, "met": per_500 < TARGET_S}
    write_json(path, record)
    mem = first["max_memory_allocated_gib"]
    print(
        f"check pspnet101 cityscapes: {first['images_per_s']:.2f} images/s = {per_500:.1f} s per 500 images "
        f"(target < {TARGET_S:g} s: {'met' if per_500 < TARGET_S else 'NOT MET'})"
        + (f", max_memory_allocated {mem:.2f} GiB" if mem is not None else "")
        + f"; wrote {path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

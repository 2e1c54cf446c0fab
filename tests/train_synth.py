"""Synthetic training data for the train tests: a tiny VOC-layout dataset and a width-reduced DeepLab-v2 init."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from segconvert.train.checkpoint import find_checkpoints

COLOURS = {1: (220, 30, 30), 2: (30, 200, 40), 3: (40, 40, 230)}


def write_voc(
    root: Path,
    n: int = 3,
    size: int = 65,
    lo: int = 28,
    hi: int = 40,
    seed: int = 0,
    halves: bool = False,
    void: int = 0,
) -> list[str]:
    """``n`` images (grey background, one coloured rectangle of class 1 + i % 3) in VOC's layout, split
    ``train_aug`` (SegmentationClassAug grey labels) and ``val`` (the same images, palette labels).
    ``halves``: the coloured region is everything right of a column drawn from [lo, hi) (one straight edge:
    the fewest boundary pixels, which stride-8 logits cannot place exactly). ``void``: labels within this many
    pixels of the region's edge are 255, VOC's void border (its annotations have a ~5-pixel one)."""
    rng = np.random.default_rng(seed)
    for d in ("JPEGImages", "SegmentationClassAug", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    names = []
    palette = np.zeros((256, 3), np.uint8)
    for c, rgb in COLOURS.items():
        palette[c] = rgb
    for i in range(n):
        img = np.full((size, size, 3), 90, np.uint8)
        lab = np.zeros((size, size), np.uint8)
        c = 1 + i % 3
        h, w = (int(v) for v in rng.integers(lo, hi, 2))
        y, x = int(rng.integers(0, size - h)), int(rng.integers(0, size - w))
        if halves:
            y, h, x = 0, size, w
            w = size - x
        img[y : y + h, x : x + w] = COLOURS[c]
        if void:
            lab[max(0, y - void) : y + h + void, max(0, x - void) : x + w + void] = 255
            lab[y + void : y + h - void, x + void : x + w - void] = c
        else:
            lab[y : y + h, x : x + w] = c
        name = f"2007_{i:06d}"
        Image.fromarray(img).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
        Image.fromarray(lab).save(root / "SegmentationClassAug" / f"{name}.png")
        pal = Image.fromarray(lab).convert("P")
        pal.putpalette(palette.tobytes())
        pal.save(root / "SegmentationClass" / f"{name}.png")
        names.append(name)
    for split in ("train_aug", "val"):
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return names


def write_init(path: Path, num_classes: int = 91, divisor: int = 16, depth: int = 50, seed: int = 0) -> Path:
    """A width-reduced DeepLab-v2 written as caffe2torch writes a conversion (``num_classes`` 91: a COCO init),
    BN/Scale scales damped as in a trained net (stem 0.02, residual-closing 0.2) so that training is stable."""
    import torch

    from segconvert.reference_models.deeplab_v2 import DeepLabV2
    from segconvert.weights.store import save_converted

    torch.manual_seed(seed)
    cfg = dict(depth=depth, stem_widths=[64 // divisor], widths=[w // divisor for w in (64, 128, 256, 512)],
               num_classes=num_classes, msc=True, input_size=[513, 513])  # fmt: skip
    model = DeepLabV2(**cfg)
    with torch.no_grad():
        model.backbone.stem.bn1.weight.mul_(0.02)
        for name, m in model.named_modules():
            if name.endswith("bn3"):
                m.weight.mul_(0.2)
    meta = {
        "arch": model.arch_name,
        "config": model.config,
        "num_classes": num_classes,
        "input_size": [513, 513],
        "preprocessing": {"channel_order": "BGR", "mean": [104.008, 116.669, 122.675], "std": None, "scale": 1.0},
        "source": {"format": "caffe", "net_name": "synthetic COCO init"},
    }
    save_converted(path, model.state_dict(), meta)
    return path


def sigterm_after_three_iterations(args: list, out: Path, max_iter: int, timeout: float) -> int:
    """Run ``segconvert train ARGS -o OUT`` in a fresh process, SIGTERM it once its log has 3 iterations, check the
    interrupted state (exit 143, one line, exactly one checkpoint at the stop, no final weights); the stop iteration."""
    cmd = [sys.executable, "-m", "segconvert.cli", "train", *args, "-o", out]
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "train_log.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 128 + signal.SIGTERM, err
    last = err.strip().splitlines()[-1]
    stopped = int(last.split("after iteration ")[1].split(":")[0])
    assert "interrupted by SIGTERM" in last and 3 <= stopped < max_iter
    assert [it for it, _ in find_checkpoints(out)] == [stopped]
    assert not (out / "final.safetensors").exists()
    return stopped


def write_psp_init(path: Path, num_classes: int = 21, divisor: int = 16, depth: int = 50, seed: int = 0) -> Path:
    """A width-reduced PSPNet written as the converters write one (frozen BN, adaptive pyramid pooling), the
    residual-closing BN scales damped (0.2) as in a trained net, so that training from it is well conditioned."""
    import torch

    from segconvert.reference_models.pspnet import PSPNet
    from segconvert.weights.store import save_converted

    torch.manual_seed(seed)
    d = divisor
    model = PSPNet(depth=depth, num_classes=num_classes, stem="deep", stem_widths=[64 // d, 64 // d, 128 // d],
                   widths=[w // d for w in (64, 128, 256, 512)], ppm_width=512 // d, head_width=512 // d,
                   ppm_mode="adaptive", norm="frozen")  # fmt: skip
    with torch.no_grad():
        for name, m in model.named_modules():
            if name.endswith("bn3"):
                m.weight.mul_(0.2)
    meta = {
        "arch": model.arch_name,
        "config": model.config,
        "num_classes": num_classes,
        "input_size": None,
        "preprocessing": {
            "channel_order": "RGB",
            "mean": [123.675, 116.28, 103.53],
            "std": [58.395, 57.12, 57.375],
            "scale": 1.0,
        },  # fmt: skip
        "source": {"format": "caffe", "net_name": "synthetic PSPNet init"},
    }
    save_converted(path, model.state_dict(), meta)
    return path

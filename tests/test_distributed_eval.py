"""``torchrun --nproc-per-node 2 -m segconvert eval`` (gloo, CPU) gives exactly the one-process scores."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segconvert.eval.distributed import shard_indices
from segconvert.reference_models import create_model
from segconvert.weights.store import save_converted
from tests.test_eval_datasets import cityscapes_root

CONFIG = dict(
    num_classes=19,
    input_size=[64, 64],
    stride_in="1x1",
    stem_widths=[8, 8, 16],
    ppm_width=16,
    head_width=16,
    widths=[8, 16, 32, 64],
    out_widths=[16, 32, 64, 128],
    ppm_mode="adaptive",
)


def _weights(tmp_path: Path, num_classes: int) -> Path:
    """A width-reduced PSPNet50 with random weights and BN statistics, saved as a converted checkpoint."""
    torch.manual_seed(0)
    cfg = {**CONFIG, "num_classes": num_classes}
    model = create_model("pspnet50", **cfg)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_mean"):
                t.normal_(0, 0.1)
            elif name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
    meta = {
        "arch": "pspnet50",
        "config": cfg,
        "num_classes": num_classes,
        "input_size": cfg["input_size"],
        "preprocessing": {"channel_order": "RGB", "mean": [120.0, 110.0, 100.0], "std": [60.0, 60.0, 60.0]},
    }
    return save_converted(tmp_path / "w.safetensors", model.state_dict(), meta)


def _voc_root(tmp_path: Path, n: int) -> Path:
    rng = np.random.default_rng(1)
    root = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    names = [f"2007_{i:06d}" for i in range(n)]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        label = rng.integers(0, 21, (40, 48)).astype(np.uint8)
        label[:3] = 255
        Image.fromarray(label, mode="L").save(root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(names) + "\n")
    return tmp_path


def _cityscapes(tmp_path: Path, n: int) -> Path:
    """Random-layout Cityscapes images with many instances per image (so the float iIoU sums have many terms)."""
    root, items = cityscapes_root(tmp_path, n=n, h=32, w=64, seed=3)
    rng = np.random.default_rng(4)
    for stem, city, _pred, gt, _inst in items:
        img = rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png")
        inst = gt.astype(np.uint16)
        things = (gt >= 24) & (gt <= 33)
        ys, xs = np.mgrid[:32, :64]
        xs = (ys // 4) * 32 + xs // 2 + rng.integers(0, 2, gt.shape)  # many instances of uneven sizes
        inst[things] = gt[things].astype(np.uint16) * 1000 + xs[things].astype(np.uint16)
        Image.fromarray(inst).save(root / "gtFine" / "val" / city / f"{stem}_gtFine_instanceIds.png")
    return root


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _eval(args: list[str], nproc: int, tmp_path: Path) -> tuple[dict, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("WORLD_SIZE", None)
    if nproc == 1:
        cmd = [sys.executable, "-m", "segconvert", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port", _port()]
        cmd += ["-m", "segconvert", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), proc.stderr


def _scores(res: dict) -> dict:
    keep = ("num_images", "metrics", "classes", "categories", "confusion_matrix")
    return {k: res[k] for k in keep if k in res}


def test_shards_are_strided_and_cover_every_image():
    shards = [list(shard_indices(5, r, 2)) for r in range(2)]
    assert shards == [[0, 2, 4], [1, 3]]


@pytest.mark.parametrize("dataset", ["cityscapes", "voc"])
def test_two_process_eval_equals_one_process_exactly(tmp_path, dataset):
    n = 5  # odd: the two shards hold 3 and 2 images
    if dataset == "cityscapes":
        root, classes = _cityscapes(tmp_path / "cs", n), 19
    else:
        root, classes = _voc_root(tmp_path / "voc", n), 21
    weights = _weights(tmp_path, classes)
    base = ["eval", str(weights), "--dataset", dataset, "--root", str(root), "--protocol", "whole"]
    base += ["--device", "cpu", "--json", "--quiet"]
    one, _ = _eval(base, 1, tmp_path)
    two, err = _eval([*base, "--save-pred", str(tmp_path / "pred2")], 2, tmp_path)
    assert one["num_images"] == two["num_images"] == n
    assert two["world_size"] == 2 and "world_size" not in one
    assert _scores(two) == _scores(one)  # exact: floats compared with ==, the whole confusion matrix too
    assert sum(map(sum, one["confusion_matrix"])) > 0 and len({c["iou"] for c in one["classes"]}) > 1
    if dataset == "cityscapes":
        assert one["metrics"]["iIoU"] is not None
        assert any(c.get("iiou") for c in one["classes"])
    # each rank wrote its own images' predictions: together, every image once
    assert len(list((tmp_path / "pred2" / "labels").rglob("*.png"))) == n

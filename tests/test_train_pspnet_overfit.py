"""Each PSPNet preset over-fits a handful of synthetic images: `segconvert train --recipe P` (the preset's own
optimizer, schedule, augmentation, losses and regulariser; a width-reduced PSPNet50, CPU) then `segconvert eval`
of its final snapshot on the same images gives > 90% pixel accuracy.

What is changed from each preset, and why: the crop (65) and batch (2) to fit a CPU test, the schedule's length
(400 iterations instead of 30k-120k), the class count (the synthetic VOC-layout set has 21), and for
fast-semantic-segmentation the BN moving-average decay (0.9997 averages over ~3000 steps, longer than the run:
0.99 is the same estimator on this run's time scale). The images have VOC's void border (255 near the edges).
Read at one thread: 0.95-0.99 (semseg), 0.92-0.99 (L2-SP), 0.94-0.96 (fss) over seeds and lengths 300/400.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.cli_runner import run_cli
from tests.train_synth import write_psp_init, write_voc

ITERS = 400
PRESETS = {
    "pspnet-semseg-voc": [f"solver.epochs={ITERS // 2}"],  # semseg: max_iter = epochs x (4 images / batch 2)
    "pspnet-semseg-ade20k": [f"solver.epochs={ITERS // 2}"],
    "pspnet-semseg-cityscapes": [f"solver.epochs={ITERS // 2}"],
    "pspnet-l2sp-cityscapes": [f"solver.max_iter={ITERS}"],
    "pspnet-l2sp-ade20k": [f"solver.max_iter={ITERS}"],
    "pspnet-fss-cityscapes": [f"solver.max_iter={ITERS}", "model.bn_momentum=0.01"],
}


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: the same float32 trajectory on any machine (the accuracies below were read at one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("psp_overfit")
    write_voc(base / "voc", n=4, size=65, lo=26, hi=39, void=2)
    return base / "voc", write_psp_init(base / "init.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_overfits_synthetic_images(data: tuple[Path, Path], tmp_path: Path, preset: str) -> None:
    root, init = data
    sets = ["data.crop_size=[65,65]", "data.batch_size=2", "run.num_workers=0", "model.num_classes=21",
            "run.checkpoint_every=0", *PRESETS[preset]]  # fmt: skip
    out = tmp_path / "run"
    code, _, err = run_cli("train", "--recipe", preset, "--dataset", "voc", "--root", root, "--split", "train_aug",
                           "--init", init, "--quiet", *(a for s in sets for a in ("--set", s)), "-o", out)  # fmt: skip
    assert code == 0, err
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(rows) == ITERS
    code, stdout, err = run_cli("eval", out / "final.safetensors", "--dataset", "voc", "--root", root, "--split",
                                "val", "--protocol", "whole", "--device", "cpu", "--json", "--quiet")  # fmt: skip
    assert code == 0, err
    acc = json.loads(stdout)["metrics"]["aAcc"]
    print(f"{preset}: pixel accuracy {acc:.4f} after {ITERS} iterations")
    assert acc > 0.9

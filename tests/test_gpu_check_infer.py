"""The dry run of benchmarks/gpu_check_infer.py (issue 15's GPU check): every phase through eval's loop on CPU."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from segconvert.testing import fixture_path
from tests.test_bench_train_pspnet import _load


@pytest.fixture(autouse=True)
def _keep_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_dry_run_runs_every_phase_through_the_eval_loop_and_writes_the_check(tmp_path: Path) -> None:
    for case in ("pspnet101_cityscapes_713", "deeplab_v2_resnet101_msc"):
        fixture_path("caffe", case)  # skips (or fails under SEGCONVERT_REQUIRE_FIXTURES=1) without ../shared
    gpu = _load("gpu_check_infer")
    assert gpu.main(["--dry-run", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "gpu_check_infer.json").read_text())
    assert "errors" not in record, record.get("errors")
    assert list(record["phases"]) == ["pspnet101-cityscapes", "deeplab-v2-msc bf16", "deeplab-v2-msc fp32"]
    cs = record["phases"]["pspnet101-cityscapes"]
    assert cs["images"] == 2 and cs["protocol"]["name"] == "pspnet" and cs["protocol"]["flip"] is True
    assert cs["runtime"] == {"crops_per_forward": 2, "channels_last": True, "autocast": "bfloat16"}
    t = cs["timing"]
    assert t["forwards"] == 2 * 2 and t["resize"] > 0 and t["workers"] == 1  # 2 windows x flip pair per image
    assert cs["split"].startswith("benchmark:") and "network" in cs["split"] and "resize" in cs["split"]
    assert record["phases"]["deeplab-v2-msc fp32"]["runtime"]["autocast"] is None
    check = record["check"]
    assert check["target_s"] == 60 and check["seconds_per_500_images"] > 0 and isinstance(check["met"], bool)


def test_synthetic_images_are_made_from_their_index() -> None:
    gpu = _load("gpu_check_infer")
    ds = gpu.Synthetic("cityscapes", 3, (8, 16))
    a, b = ds.load_image(1), ds.load_image(1)
    assert a.shape == (8, 16, 3) and a.dtype.name == "uint8" and (a == b).all() and (a != ds.load_image(2)).any()
    assert ds.load_target(0).label.max() <= 33 and ds.num_classes == 19


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_without_cuda_it_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _load("gpu_check_infer").main(["--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err and not list(tmp_path.iterdir())

"""Smoke tests of benchmarks/bench_train_pspnet.py and the GPU check's dry run (toy-width PSPNet50 on CPU)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str) -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _keep_threads() -> Iterator[None]:
    threads = torch.get_num_threads()  # the dry run sets 1 thread: give the rest of the session its own back
    yield
    torch.set_num_threads(threads)


def test_bench_measures_both_loops_and_checkpointing_keeps_less(tmp_path: Path) -> None:
    bench = _load("bench_train_pspnet")
    argv = "--device cpu --divisor 16 --crop 49 --batch 2 --iters 2 --warmup 1 --threads 1".split()
    a = bench.parser().parse_args(argv)
    assert bench.finish_args(a) == ["plain", "bf16", "ckpt", "ckpt-all", "bf16+ckpt", "bf16+ckpt-all"]  # no fp16
    out = bench.run_benchmark(a, ["plain", "ckpt", "ckpt-all"])
    for name in ("plain", "ckpt", "ckpt-all"):
        r = out["results"][name]
        assert len(r["times"]["bare"]) == len(r["times"]["trainer"]) == 2
        assert all(r["images_per_s"][m] > 0 for m in ("bare", "trainer")) and math.isfinite(r["overhead_pct"])
        for m in ("bare", "trainer"):
            mem = r["memory"][m]
            assert mem["step_peak_mib"] > mem["act_peak_mib"] > 0  # the step peak holds the gradients too
        assert 0 < r["memory"]["saved_mib"] <= r["memory"]["bare"]["step_peak_mib"]
        assert 0 < r["forward_share"] < 1
    light, every = out["checkpointing"]["ckpt / plain"], out["checkpointing"]["ckpt-all / plain"]
    assert light["saved"] < 0.8 and light["act_peak"] < 0.8  # allocator accounting: deterministic, not a timing
    assert every["saved"] < light["saved"] and every["act_peak"] <= light["act_peak"]  # + layer4, pyramid, head
    bench.write_json(tmp_path / "b.json", out)
    assert json.loads((tmp_path / "b.json").read_text())["settings"]["configs"] == ["plain", "ckpt", "ckpt-all"]


def test_bench_refuses_fp16_on_cpu_and_unknown_configs() -> None:
    bench = _load("bench_train_pspnet")
    a = bench.parser().parse_args(["--device", "cpu", "--configs", "fp16"])
    with pytest.raises(SystemExit, match="CUDA only"):
        bench.run_benchmark(a, bench.finish_args(a))
    with pytest.raises(SystemExit, match="unknown config 'fp8'"):
        bench.finish_args(bench.parser().parse_args(["--device", "cpu", "--configs", "plain,fp8"]))


def test_gpu_check_dry_run_writes_the_check(tmp_path: Path) -> None:
    gpu = _load("gpu_check_train")
    assert gpu.main(["--dry-run", "--out", str(tmp_path), "--max-phases", "1"]) == 0
    record = json.loads((tmp_path / "gpu_check_train.json").read_text())
    assert list(record["phases"]) == ["pspnet-semseg-cityscapes:bf16+ckpt"]
    check = record["check"]
    assert check["config"] == "bf16+ckpt" and check["images_per_s_trainer"] > 0
    assert math.isfinite(check["overhead_pct"])
    settings = record["phases"]["pspnet-semseg-cityscapes:bf16+ckpt"]["settings"]
    assert (settings["divisor"], settings["crop"], settings["batch"]) == (16, 65, 2)
    assert [p[1] for p in gpu.phases(True)][:3] == ["bf16+ckpt", "plain", "ckpt"] and "fp16+ckpt" not in str(
        gpu.phases(False)
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_gpu_check_without_cuda_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _load("gpu_check_train").main(["--out", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err and not list(tmp_path.iterdir())

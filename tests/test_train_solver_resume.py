"""``segconvert train --solver ... --resume OUT``: full-state checkpoints of a Caffe solver run; resuming gives the
losses and weights of an uninterrupted run bit for bit (CPU); SIGTERM in a fresh process writes a final checkpoint,
exits 143, and resuming it gives the uninterrupted result."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from segconvert.testing import fixture_path
from segconvert.train.checkpoint import find_checkpoints, load_checkpoint
from tests.cli_runner import run_cli
from tests.train_synth import sigterm_after_three_iterations


@pytest.fixture
def work(tmp_path):
    dst = tmp_path / "case"
    shutil.copytree(fixture_path("caffe_train", "sgd_recipe_small"), dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    return dst


def _train(work: Path, out: Path, *args) -> None:
    code, _, err = run_cli("train", "--solver", work / "solver.prototxt", "--weights", work / "init.caffemodel",
                           "-o", out, *args)  # fmt: skip
    assert code == 0, err


def _log(out: Path) -> list[dict]:
    rows = [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("seconds")
    return rows


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_solver_resume_after_5_of_12_equals_the_uninterrupted_run(tmp_path, work):
    whole, part = tmp_path / "whole", tmp_path / "part"
    _train(work, whole, "--checkpoint-every", 5)
    _train(work, part, "--checkpoint-every", 5, "--max-iter", 5)
    state = load_checkpoint(part)
    assert state["iteration"] == 5 and state["trainer"]["optimizer"]["state"], "history saved"
    assert state["extra"]["solver_run"]["max_iter"] == 5
    # the partial run's weights really differ from the whole run's: the comparison below can fail
    partial = load_file(str(part / "final.safetensors"))
    assert any(not torch.equal(v, load_file(str(whole / "final.safetensors"))[k]) for k, v in partial.items())
    code, stdout, err = run_cli("train", "--resume", part, "--max-iter", 12)
    assert code == 0 and "trained 12 iterations" in stdout, err
    rows = _log(part)
    assert [r["iter"] for r in rows] == list(range(1, 13))
    assert rows == _log(whole)  # lr and every loss term, exactly
    _assert_same_weights(part / "final.safetensors", whole / "final.safetensors")
    assert [it for it, _ in find_checkpoints(part)] == [10, 12]  # every 5, the last, last 2 kept
    # a fresh run into a folder holding one is refused; nothing is overwritten
    code, _, err = run_cli("train", "--solver", work / "solver.prototxt", "--weights", work / "init.caffemodel",
                           "-o", part)  # fmt: skip
    assert code == 2 and "already holds a training run" in err


def test_solver_sigterm_mid_run_then_resume_gives_the_uninterrupted_result(tmp_path, work):
    solver = work / "solver.prototxt"
    solver.write_text(solver.read_text().replace("max_iter: 12", "max_iter: 3000"))  # long enough to be killed
    out = tmp_path / "killed"
    args = ["--solver", solver, "--weights", work / "init.caffemodel", "--checkpoint-every", 0]
    stopped = sigterm_after_three_iterations(args, out, max_iter=3000, timeout=120)
    stop = stopped + 4
    code, _, err = run_cli("train", "--resume", out, "--max-iter", stop)
    assert code == 0, err
    _train(work, tmp_path / "whole", "--max-iter", stop, "--checkpoint-every", 0)
    assert len(_log(out)) == stop and _log(out) == _log(tmp_path / "whole")
    _assert_same_weights(out / "final.safetensors", tmp_path / "whole" / "final.safetensors")


def test_solver_resume_of_an_empty_folder_fails_in_one_line(tmp_path):
    code, _, err = run_cli("train", "--resume", tmp_path / "nothing")
    assert code == 2 and "no training run to resume" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "nothing").exists()


def test_solver_test_phase_without_a_test_data_layer_fails_in_one_line(tmp_path, work):
    """The fixture net's data layer is TRAIN-only, so its TEST phase (Caffe's generic test net) has no data:
    refused before anything is written (the test phase itself: tests/test_train_testphase.py)."""
    solver = work / "solver.prototxt"
    solver.write_text(solver.read_text() + "test_iter: 2\ntest_interval: 4\n")
    code, stdout, err = run_cli("train", "--solver", solver, "--weights", work / "init.caffemodel", "-o",
                                tmp_path / "out", "--max-iter", 1)  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "has no data layer in its TEST phase" in err and not (tmp_path / "out").exists()

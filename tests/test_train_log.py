"""Training logs: Caffe's own display lines (from the real Caffe runs in caffe_train), JSON lines, progress bar."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from segconvert.testing import fixture_path
from segconvert.train.log import CaffeDisplay, IterationRecord, JsonlLog, ProgressBar, caffe_number


@pytest.mark.parametrize("case", ["sgd_recipe_small", "sgd_step_policy", "deeplab_v2_msc_train"])
def test_display_lines_equal_caffes_log(case):
    """Feed Caffe's own per-iteration values; the lines must be Caffe's log lines (last-pass outputs, lr)
    character for character. The fixtures drove ``solver.step(1)``, and each ``Step`` restarts the
    smoothing window, hence ``restart`` per iteration."""
    folder = fixture_path("caffe_train", case)
    meta = json.loads((folder / "meta.json").read_text())
    traj = np.load(folder / "trajectory.npz")
    solver = meta["solver"]
    iter_size = int(solver.get("iter_size", 1))
    show_outputs = any("Train net output" in ln for ln in meta["log_lines"])
    disp = CaffeDisplay(display=1, average_loss=int(solver.get("average_loss", 1)), stream=io.StringIO())
    for t in range(1, meta["iterations"] + 1):
        last = {ly["name"]: float(traj[f"iter{t}/pass{iter_size}/{ly['name']}"]) for ly in meta["loss_layers"]}
        rec = IterationRecord(
            iteration=t,
            lr=float(traj[f"iter{t}/lr"]),
            loss=float(traj[f"iter{t}/loss"]),
            last_pass=last if show_outputs else {},
            loss_weights={ly["name"]: ly["loss_weight"] for ly in meta["loss_layers"]},
        )
        disp.restart(t - 1)
        disp(rec)
    assert disp.lines == meta["log_lines"]
    assert disp.stream.getvalue().splitlines() == meta["log_lines"]


def test_smoothing_window_survives_a_resume():
    losses = [3.0, 2.5, 2.25, 1.0, 0.5, 0.75, 0.25]
    whole = CaffeDisplay(display=1, average_loss=3)
    for i, v in enumerate(losses, 1):
        whole(IterationRecord(i, 0.1, v))
    first = CaffeDisplay(display=1, average_loss=3)
    for i, v in enumerate(losses[:4], 1):
        first(IterationRecord(i, 0.1, v))
    second = CaffeDisplay(display=1, average_loss=3)
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for i, v in enumerate(losses[4:], 5):
        second(IterationRecord(i, 0.1, v))
    assert first.lines + second.lines == whole.lines
    assert whole.lines[-2] == f"Iteration 6, loss = {caffe_number((0.5 + 0.75 + 0.25) / 3)}"


def test_display_interval_uses_caffes_zero_based_iteration():
    disp = CaffeDisplay(display=20, average_loss=1)
    shown = [i for i in range(1, 62) if disp(IterationRecord(i, 0.1, 1.0))]
    assert shown == [1, 21, 41, 61]  # Caffe's iter_ 0, 20, 40, 60


def test_jsonl_log_truncates_to_the_resume_point(tmp_path):
    path = tmp_path / "train_log.jsonl"
    log = JsonlLog(path)
    for i in range(1, 6):
        log(IterationRecord(i, 0.01 * i, 1.0 / i, terms={"loss": 1.0 / i}))
    log.close()
    log = JsonlLog(path, start=3)
    log(IterationRecord(4, 0.04, 9.0))
    log.close()
    rows = [json.loads(ln) for ln in path.read_text().splitlines()]
    assert [r["iter"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["loss"] == 9.0 and rows[0]["loss/loss"] == 1.0


def test_progress_bar_shows_terms_lr_and_memory(capsys):
    bar = ProgressBar(10, enabled=True)
    bar(IterationRecord(3, 2.5e-4, 1.5, terms={"loss": 0.5, "loss_res05": 1.0}))
    bar.bar.refresh()
    bar.close()
    err = capsys.readouterr().err
    assert "3/10" in err and "loss_res05=1" in err and "lr=0.00025" in err and "MiB" in err

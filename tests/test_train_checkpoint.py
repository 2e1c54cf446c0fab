"""Full-state checkpoints: resume equals an uninterrupted run bit for bit (CPU); SIGTERM in a fresh process
writes a final checkpoint and exits 143, and resuming it gives the uninterrupted result."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from segconvert.errors import WeightsFileError
from segconvert.train.checkpoint import find_checkpoints, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from segconvert.train.recipe_run import RunFolderError, train_recipe
from tests.cli_runner import run_cli
from tests.train_synth import sigterm_after_three_iterations, write_init, write_voc

SETS = ["solver.max_iter=8", "solver.iter_size=2", "solver.base_lr=0.003", "solver.display=1",
        "solver.average_loss=3", "solver.snapshot=0", "data.crop_size=33", "run.checkpoint_every=1",
        "run.keep_checkpoints=2"]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("ckpt")
    write_voc(base / "voc", n=3, size=41, lo=14, hi=22)
    return base / "voc", write_init(base / "init.safetensors", num_classes=21, depth=50, divisor=16)


def _run(out, data, sets=SETS, **kw):
    root, init = data
    text = io.StringIO()
    kw.setdefault("init", init)
    summary = train_recipe(out, recipe="deeplabv2-voc12", overrides=sets, dataset="voc", root=root, progress=False,
                           stream=text, **kw)  # fmt: skip
    return summary, text.getvalue().splitlines()


def _log(out: Path) -> list[dict]:
    rows = [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("seconds")
    return rows


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_resume_equals_an_uninterrupted_run_bit_for_bit(tmp_path, data):
    _, whole_lines = _run(tmp_path / "whole", data)
    _run(tmp_path / "part", data, max_iter=3)
    state = load_checkpoint(tmp_path / "part")
    assert state["iteration"] == 3 and state["trainer"]["data"]["position"] == 3 * 2  # iter_size 2, batch 1
    assert state["trainer"]["optimizer"]["state"], "optimizer history is saved"
    summary, resumed_lines = _run(tmp_path / "part", data, sets=[], resume=True)
    assert summary["started_at"] == 3 and summary["iterations"] == 8
    assert _log(tmp_path / "part") == _log(tmp_path / "whole")  # every loss term and lr, exactly
    _assert_same_weights(tmp_path / "part" / "final.safetensors", tmp_path / "whole" / "final.safetensors")
    display = [ln for ln in whole_lines if ln.startswith(("Iteration", "    Train"))]
    assert display[-len(resumed_lines) :] == resumed_lines  # the smoothing window was carried over too
    assert [it for it, _ in find_checkpoints(tmp_path / "part")] == [7, 8]  # last N kept


def test_resume_and_fresh_run_guards(tmp_path, data):
    with pytest.raises(RunFolderError, match="no recipe run to resume"):
        _run(tmp_path / "empty", data, resume=True)
    _run(tmp_path / "run", data, sets=[*SETS, "solver.max_iter=2"])
    with pytest.raises(RunFolderError, match="already holds a training run"):
        _run(tmp_path / "run", data)
    with pytest.raises(WeightsFileError, match="not a segconvert training checkpoint"):
        save_checkpoint(tmp_path / "bad.pt", {"format": "x"})
        load_checkpoint(tmp_path / "bad.pt")


def test_rng_states_round_trip_through_a_weights_only_file(tmp_path):
    import random

    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    save_checkpoint(tmp_path / "s.pt", {"format": "segconvert-train-state/1", "rng": rng_state()})
    want = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(load_checkpoint(tmp_path / "s.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2]


def test_sigterm_mid_run_then_resume_gives_the_uninterrupted_result(tmp_path, data):
    root, init = data
    sets = [*SETS, "solver.max_iter=40", "run.checkpoint_every=1000"]
    out = tmp_path / "killed"
    args = ["--recipe", "deeplabv2-voc12", "--init", init, "--dataset", "voc", "--root", root, "--quiet",
            *(a for s in sets for a in ("--set", s))]  # fmt: skip
    sigterm_after_three_iterations(args, out, max_iter=40, timeout=300)
    code, _, err = run_cli("train", "--resume", out, "--quiet")
    assert code == 0, err
    _run(tmp_path / "whole", data, sets=sets)
    assert _log(out) == _log(tmp_path / "whole")
    _assert_same_weights(out / "final.safetensors", tmp_path / "whole" / "final.safetensors")


def test_val_every_prints_the_class_table_and_logs_the_scores(tmp_path, data):
    """``--val-every 1`` on the synthetic VOC set: after iterations 1 and 2 the per-class table is printed and the
    scores land in train_log.jsonl; the last validation equals ``segconvert eval`` of the final snapshot."""
    root, init = data
    out = tmp_path / "val"
    sets = [*SETS, "solver.max_iter=2", "solver.display=0", "run.checkpoint_every=0", "solver.iter_size=1",
            "model.msc=false"]  # fmt: skip
    code, stdout, err = run_cli("train", "--recipe", "deeplabv2-voc12", "--init", init, "--dataset", "voc", "--root",
                                root, "-o", out, "--quiet", "--val-every", 1, "--val-limit", 2,
                                *(a for s in sets for a in ("--set", s)))  # fmt: skip
    assert code == 0, err
    assert "validation after iteration 1:" in stdout and "validation after iteration 2:" in stdout
    assert stdout.count("Score Average : ") == 2 and "aeroplane     : " in stdout and "background    : " in stdout
    rows = [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]
    vals = [r for r in rows if r.get("event") == "val"]
    assert [r["iter"] for r in vals] == [1, 2] and all(r["num_images"] == 2 for r in vals)
    assert [r["iter"] for r in rows if "event" not in r] == [1, 2]
    assert len(vals[-1]["classes"]) == 21
    code, ev, err = run_cli("eval", out / "final.safetensors", "--dataset", "voc", "--root", root, "--split", "val",
                            "--protocol", "whole", "--device", "cpu", "--limit", 2, "--json", "--quiet")  # fmt: skip
    assert code == 0, err
    scored = json.loads(ev)
    for k, v in scored["metrics"].items():
        assert vals[-1]["metrics"][k] == pytest.approx(v, abs=1e-12, nan_ok=True), k
    assert [c["iou"] for c in vals[-1]["classes"]] == pytest.approx([c["iou"] for c in scored["classes"]], nan_ok=True)

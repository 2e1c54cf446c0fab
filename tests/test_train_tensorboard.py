"""``segconvert train --solver`` writes TensorBoard events (when tensorboard is installed): read back with
TensorBoard's own ``EventAccumulator``, every iteration's loss, loss terms and lr, and every test output, equal
``train_log.jsonl``'s values (TensorBoard stores float32)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.cli_runner import run_cli
from tests.test_train_testphase import make_case

pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install -e .[test])")


def _scalars(folder) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_tensorboard_scalars_equal_the_jsonl_log(tmp_path):
    solver = make_case(tmp_path / "case")
    code, _, err = run_cli("train", "--solver", solver, "-o", tmp_path / "out")
    assert code == 0, err
    rows = [json.loads(ln) for ln in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    train = [r for r in rows if "event" not in r]
    tests = [r for r in rows if r.get("event") == "test"]
    tb = _scalars(tmp_path / "out" / "tensorboard")
    f32 = lambda v: float(np.float32(v))  # noqa: E731
    assert tb["train/loss"] == {r["iter"]: f32(r["loss"]) for r in train} and len(train) == 5
    assert tb["train/lr"] == {r["iter"]: f32(r["lr"]) for r in train}
    assert tb["train/loss/loss"] == {r["iter"]: f32(r["loss/loss"]) for r in train}
    assert tb["train/loss"] != tb["train/loss/loss"]  # loss_weight 2: the total is not the term
    for name in ("accuracy", "loss"):
        assert tb[f"test0/{name}"] == {r["iter"]: f32(r["outputs"][name]) for r in tests} and len(tests) == 3
    assert tb["test0/total_loss"] == {r["iter"]: f32(r["loss"]) for r in tests}

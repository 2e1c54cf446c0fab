"""A solver whose train net is inline (``net_param { ... }`` / ``train_net_param``) trains as the same net in a
file does, through the CLI; errors inside it name the solver file and line."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.numpy import load_file

from segconvert.testing import fixture_path
from tests.cli_runner import run_cli


@pytest.fixture
def work(tmp_path):
    dst = tmp_path / "case"
    shutil.copytree(fixture_path("caffe_train", "sgd_step_policy"), dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    return dst


def _inline(work, field: str) -> None:
    solver = work / "solver.prototxt"
    net = (work / "train.prototxt").read_text()
    text = solver.read_text().replace('net: "train.prototxt"\n', f"{field} {{\n{net}}}\n")
    assert field in text and "train.prototxt" not in text
    (work / "inline.prototxt").write_text(text)


def _log(folder):
    rows = [json.loads(ln) for ln in (folder / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.mark.parametrize("field", ["net_param", "train_net_param"])
def test_inline_net_trains_like_the_file(work, tmp_path, field):
    _inline(work, field)
    args = ("--weights", work / "init.caffemodel", "--max-iter", 3)
    code, _, err = run_cli("train", "--solver", work / "solver.prototxt", "-o", tmp_path / "file", *args)
    assert code == 0, err
    code, _, err = run_cli("train", "--solver", work / "inline.prototxt", "-o", tmp_path / "inline", *args)
    assert code == 0, err
    assert _log(tmp_path / "inline") == _log(tmp_path / "file") and len(_log(tmp_path / "file")) == 3
    a, b = load_file(tmp_path / "file" / "final.safetensors"), load_file(tmp_path / "inline" / "final.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_error_in_an_inline_net_names_the_solver_line(work, tmp_path):
    _inline(work, "net_param")
    solver = work / "inline.prototxt"
    solver.write_text(solver.read_text().replace('type: "SoftmaxWithLoss"', 'type: "HingeLoss"'))
    code, _, err = run_cli("train", "--solver", solver, "--weights", work / "init.caffemodel", "-o", tmp_path / "o")
    line = next(i for i, t in enumerate(solver.read_text().splitlines(), 1) if 'name: "loss"' in t)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{solver}:{line}" in err and "HingeLoss layer is not supported in training" in err, err
    assert not (tmp_path / "o").exists()

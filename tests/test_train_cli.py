"""``segconvert train`` on bad input: one line naming the file and line, exit 2, nothing written."""

from __future__ import annotations

import shutil

import pytest

from segconvert.testing import fixture_path
from tests.cli_runner import run_cli


@pytest.fixture
def work(tmp_path):
    src = fixture_path("caffe_train", "sgd_step_policy")
    dst = tmp_path / "case"
    shutil.copytree(src, dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    return dst


def _train(work, tmp_path):
    out = tmp_path / "out"
    result = run_cli("train", "--solver", work / "solver.prototxt", "--weights", work / "init.caffemodel", "-o", out)
    return result, out


def _line_of(path, needle):
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def _edit(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


@pytest.mark.parametrize(
    ("old", "new", "needle", "words"),
    [
        ('type: "SGD"', 'type: "SGD"\nwarmup_iters: 5', "warmup_iters", 'no field named "warmup_iters"'),
        ('type: "SGD"', 'type: "Momentum"', 'type: "Momentum"', "unknown solver type 'Momentum'"),
        ("max_iter: 8", 'max_iter: "eight"', "max_iter", "max_iter"),
        ('net: "train.prototxt"', 'net: "missing.prototxt"', "missing.prototxt", "not found"),
    ],
)
def test_bad_solver(work, tmp_path, old, new, needle, words):
    solver = work / "solver.prototxt"
    _edit(solver, old, new)
    (code, out, err), dest = _train(work, tmp_path)
    line = _line_of(solver, needle)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{solver}:{line}" in err and words in err, err
    assert not dest.exists()


def test_missing_data_file(work, tmp_path):
    (work / "batches_h5.txt").write_text("nowhere.h5\n")
    (code, _, err), dest = _train(work, tmp_path)
    net = work / "train.prototxt"
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    line = _line_of(net, 'name: "data"')
    assert f"{net}:{line}" in err and "nowhere.h5" in err and "not found" in err, err
    assert not dest.exists()


def test_unsupported_loss_layer(work, tmp_path):
    net = work / "train.prototxt"
    _edit(net, 'type: "SoftmaxWithLoss"', 'type: "HingeLoss"')
    (code, _, err), dest = _train(work, tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{net}:{_line_of(net, 'HingeLoss')}" in err and "HingeLoss layer is not supported in training" in err
    assert not dest.exists()


def test_unwritable_output_is_refused_before_training(work, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(
        "train", "--solver", work / "solver.prototxt", "--weights", work / "init.caffemodel", "-o", blocker / "out"
    )
    assert code == 2 and "not a directory" in err, err


def test_weights_and_init_exclude_each_other(work, tmp_path):
    code, _, err = run_cli(
        "train",
        "--solver",
        work / "solver.prototxt",
        "--weights",
        work / "init.caffemodel",
        "--init",
        work / "init.caffemodel",
        "-o",
        tmp_path / "o",
    )
    assert code == 2 and "not both" in err and not (tmp_path / "o").exists()


def test_init_from_a_generic_conversion_gives_the_same_run(work, tmp_path):
    """``--init`` with ``caffe2torch --generic`` output of the train net equals ``--weights init.caffemodel``."""
    from segconvert.weights.store import load_model

    conv, deploy = tmp_path / "conv.safetensors", work / "deploy.prototxt"
    text = (work / "train.prototxt").read_text()
    head, rest = text.split("layer {", 2)[1:]
    data = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 15 dim: 15 } } }\n'
    deploy.write_text(text.split("layer {")[0] + data + "layer {" + rest.split('layer { name: "loss"')[0])
    code, _, err = run_cli("caffe2torch", deploy, work / "init.caffemodel", "-o", conv, "--generic")
    assert code == 0, err
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli("train", "--solver", work / "solver.prototxt", "--init", conv, "-o", a, "--max-iter", 2)[0] == 0
    assert (
        run_cli(
            "train",
            "--solver",
            work / "solver.prototxt",
            "--weights",
            work / "init.caffemodel",
            "-o",
            b,
            "--max-iter",
            2,
        )[0]
        == 0
    )
    sa, sb = load_model(a / "final.safetensors").state_dict(), load_model(b / "final.safetensors").state_dict()
    assert sa.keys() == sb.keys() and all(sa[k].equal(sb[k]) for k in sa)


def test_solver_weights_field_is_the_initial_caffemodel(work, tmp_path):
    with (work / "solver.prototxt").open("a") as fh:
        fh.write('weights: "init.caffemodel"\n')
    a, b = tmp_path / "a", tmp_path / "b"
    code, stdout, err = run_cli("train", "--solver", work / "solver.prototxt", "-o", a, "--max-iter", 2)
    assert code == 0 and "model: generic" in stdout, err
    code, _, err = run_cli(
        "train", "--solver", work / "solver.prototxt", "--weights", work / "init.caffemodel", "-o", b, "--max-iter", 2
    )
    assert code == 0, err
    from segconvert.weights.store import load_model, read_metadata

    sa, sb = load_model(a / "final.safetensors").state_dict(), load_model(b / "final.safetensors").state_dict()
    assert all(sa[k].equal(sb[k]) for k in sb)
    assert "init.caffemodel" in {f["path"] for f in read_metadata(a / "final.safetensors")["source"]["files"]}

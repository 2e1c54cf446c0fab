"""``evaluate(..., workers=N)`` / ``segconvert eval --workers N``: decode in DataLoader workers, same scores."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from segconvert.errors import DatasetError
from segconvert.eval.datasets import get_dataset
from segconvert.eval.protocols import get_protocol
from segconvert.eval.runner import evaluate
from segconvert.weights.store import load_model
from tests.test_distributed_eval import _voc_root, _weights


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("workers")
    return _weights(tmp, 21), _voc_root(tmp / "voc", 5)


def _run(weights: Path, root: Path, workers: int, **kw):
    model = load_model(weights, fuse=True)
    ds = get_dataset("voc", root / "VOCdevkit" / "VOC2012" if (root / "VOCdevkit").is_dir() else root, "val")
    proto = get_protocol("semseg", "voc", crop=32, base_size=48, flip=True).with_options(scales=(1.0,))
    return evaluate(model, ds, proto, device="cpu", progress=False, workers=workers, time_network=True, **kw)


def test_two_workers_give_the_in_process_confusion_matrix_bit_for_bit(setup):
    weights, root = setup
    zero, two = _run(weights, root, 0), _run(weights, root, 2)
    assert zero.confusion.sum() > 0 and zero.num_images == two.num_images == 5
    assert zero.confusion.dtype == two.confusion.dtype and np.array_equal(zero.confusion, two.confusion)
    assert zero.summary() == two.summary()
    assert two.info["timing"]["workers"] == 2 and zero.info["timing"]["workers"] == 0
    t = two.info["timing"]
    assert t["workers"] == 2 and t["load"] > 0 and t["wait"] >= 0  # decode seconds measured in the workers


def test_a_corrupt_image_read_by_a_worker_is_the_one_line_dataset_error(setup, tmp_path):
    weights, root = setup
    import shutil

    copy = tmp_path / "voc"
    shutil.copytree(root, copy)
    jpg = sorted((copy / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg"))[3]
    jpg.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError) as info:
        _run(weights, copy, 2)
    text = str(info.value)
    assert "\n" not in text and "cannot read image" in text and jpg.name in text
    assert "Traceback" not in text and "worker" not in text


def test_cli_workers_and_the_benchmark_split(setup, tmp_path):
    weights, root = setup
    cmd = [sys.executable, "-m", "segconvert", "eval", str(weights), "--dataset", "voc", "--root", str(root)]
    cmd += ["--protocol", "whole", "--device", "cpu", "--quiet", "--json", "--benchmark"]
    outs = {}
    for n in ("0", "2"):
        proc = subprocess.run([*cmd, "--workers", n], capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs[n] = proc
    import json

    a, b = (json.loads(outs[n].stdout) for n in ("0", "2"))
    assert a["confusion_matrix"] == b["confusion_matrix"] and a["metrics"] == b["metrics"]
    line = outs["2"].stderr.strip().splitlines()[-1]
    assert line.startswith("benchmark:") and "summed over 2 workers" in line and "network" in line
    assert "workers" not in outs["0"].stderr.strip().splitlines()[-1]
    bad = subprocess.run([*cmd, "--workers", "-1"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert bad.returncode == 2


def test_eval_amp_choice_reaches_the_runtime_and_fp16_on_the_cpu_is_one_line(setup):
    import json

    from tests.cli_runner import run_cli

    weights, root = setup
    base = ("eval", weights, "--dataset", "voc", "--root", root, "--protocol", "whole", "--device", "cpu")
    base += ("--quiet", "--json", "--workers", "0", "--limit", "2")
    code, _, err = run_cli(*base, "--amp", "fp16")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--amp fp16" in err, err
    runs = {}
    for amp in ("bf16", "off"):
        code, out, err = run_cli(*base, "--amp", amp)
        assert code == 0, err
        runs[amp] = json.loads(out)
    assert runs["bf16"]["runtime"]["autocast"] == "bfloat16" and runs["off"]["runtime"]["autocast"] is None
    assert np.array(runs["bf16"]["confusion_matrix"]).sum() == np.array(runs["off"]["confusion_matrix"]).sum() > 0

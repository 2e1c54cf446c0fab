"""``segconvert verify``: converted weights against independent runtimes running the source files."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch

from segconvert.errors import SegconvertError
from segconvert.parity.verify import classify_sources
from segconvert.parity.verify_caffe import _budget
from segconvert.testing import fixture_path
from segconvert.weights.store import read_metadata, save_converted
from tests.cli_runner import run_cli, run_process

pytest.importorskip("cv2")
HAVE_PYCAFFE = importlib.util.find_spec("caffe") is not None


def _tensors(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture(scope="module")
def psp(tmp_path_factory):
    from segconvert.commands.convert_caffe import convert_caffe_files

    d = fixture_path("caffe", "pspnet50_ade20k_473")
    out = tmp_path_factory.mktemp("verify") / "psp.safetensors"
    convert_caffe_files(d / "net.prototxt", d / "weights.caffemodel", out)
    return d, out


def test_good_conversion_passes_and_says_which_runtimes(psp):
    d, weights = psp
    res = run_process("verify", weights, d / "net.prototxt", d / "weights.caffemodel", "--json")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    out = json.loads(res.stdout)
    assert out["ok"] and out["first_failure"] is None and out["unchecked_layers"] == []
    runtimes = {r["name"]: r for r in out["runtimes"]}
    cv = runtimes["opencv-dnn"]
    assert cv["used"] and cv["version"].startswith("4.")
    rows = cv["report"]["layers"]
    assert len(rows) >= 80 and all(r["ok"] for r in rows)
    names = [r["name"] for r in rows]
    assert names[0] == "conv1_1_3x3_s2/relu" and names[-1] == "conv6_interp"
    assert {"conv5_3_pool6", "conv5_3_concat", "conv5_4/dropout"} <= set(names)
    assert runtimes["pycaffe"]["used"] == HAVE_PYCAFFE
    if not HAVE_PYCAFFE:
        assert runtimes["pycaffe"]["reason"] == "not importable"


def test_corrupted_bn_mean_fails_at_that_layer(psp, tmp_path):
    d, weights = psp
    state = _tensors(weights)
    key = "backbone.layer2.0.bn2.running_mean"  # conv3_1_3x3/bn
    state[key] = state[key].clone()
    state[key][0] -= 2.0
    bad = save_converted(tmp_path / "bad.safetensors", state, read_metadata(weights))
    res = run_cli("verify", bad, d / "net.prototxt", d / "weights.caffemodel", "--json")
    assert res.returncode == 1, res.stderr
    out = json.loads(res.stdout)
    assert not out["ok"] and out["first_failure"]["layer"] == "conv3_1_3x3/relu"
    rows = next(r for r in out["runtimes"] if r["name"] == "opencv-dnn")["report"]["layers"]
    idx = [r["name"] for r in rows].index("conv3_1_3x3/relu")
    assert all(r["ok"] for r in rows[:idx]) and rows[idx]["rel"] > 1e-2
    text = run_process("verify", bad, d / "net.prototxt", d / "weights.caffemodel")
    assert text.returncode == 1
    lines = text.stdout.splitlines()
    assert "FIRST DIVERGENCE: conv3_1_3x3/relu (ReLU); likely cause:" in text.stdout
    used = next(li for li in lines if li.startswith("runtimes used:"))
    assert "opencv-dnn 4." in used and "layers)" in used
    if not HAVE_PYCAFFE:
        assert used.endswith("not available: pycaffe (not importable)")
    assert "layers no runtime could check: none" in lines
    assert "OpenCV ran a rewritten twin" in text.stdout and "BN" in text.stdout
    assert lines[-1].startswith(
        "result: FAILED, first layer over tolerance: conv3_1_3x3/relu (ReLU) against opencv-dnn"
    )


@pytest.mark.slow
def test_changed_source_file_is_noted(psp, tmp_path):
    """A caffemodel that is not the one converted: sha256 note, and OpenCV's outputs disagree from that layer on."""
    from segconvert.graph import load_net

    d, weights = psp
    src = tmp_path / "weights.caffemodel"
    shutil.copy(d / "weights.caffemodel", src)
    layer = load_net(d / "net.prototxt", src).layer("conv5_4")
    raw = bytearray(src.read_bytes())
    off = layer.blob_offsets[0]
    blob = layer.blobs[0]
    pos = raw.find(blob.reshape(-1)[:4].tobytes(), off)  # the packed float data of the blob
    assert pos > 0
    raw[pos : pos + 4] = np.float32(blob.reshape(-1)[0] + 5.0).tobytes()
    src.write_bytes(bytes(raw))
    res = run_cli("verify", weights, d / "net.prototxt", src, "--json")
    assert res.returncode == 1
    out = json.loads(res.stdout)
    assert "weights.caffemodel differs from the file that was converted (sha256 mismatch)" in out["notes"]
    assert out["first_failure"]["layer"] == "conv5_4/dropout"  # the end of the chain conv5_4 -> /bn -> /relu


def test_onnx_runtime_and_image_input(psp, tmp_path):
    from PIL import Image

    from segconvert.export.onnx import export_onnx
    from segconvert.parity.inputs import synthetic_image
    from segconvert.weights.store import load_model

    pytest.importorskip("onnxruntime")
    d, weights = psp
    onnx_file = export_onnx(load_model(weights), tmp_path / "psp.onnx", (1, 3, 473, 473)).path
    image = tmp_path / "photo.png"
    Image.fromarray(synthetic_image(500, 620, seed=7)).save(image)
    res = run_cli("verify", weights, "--onnx", onnx_file, "--image", image, "--json")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    out = json.loads(res.stdout)
    assert out["input"].startswith("image photo.png, 1x3x473x473, BGR minus mean [103.939, 116.779, 123.68]")
    (ort,) = out["runtimes"]
    assert ort["name"] == "onnxruntime" and ort["used"] and ort["what"] == "final output"
    (row,) = ort["report"]["layers"]
    assert row["ok"] and row["rel"] <= 1e-4 and row["shape"] == [1, 150, 473, 473]


def test_deeplab_msc_through_opencv(tmp_path):
    """The MSC net (Interp shrink_factor, which OpenCV ignores) runs through the rewritten twin, all scales."""
    from segconvert.commands.convert_caffe import convert_caffe_files

    d = fixture_path("caffe", "deeplab_v2_resnet101_msc")
    weights = tmp_path / "msc.safetensors"
    convert_caffe_files(d / "net.prototxt", d / "weights.caffemodel", weights)
    res = run_cli("verify", weights, d / "net.prototxt", d / "weights.caffemodel", "--json")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    out = json.loads(res.stdout)
    names = {r["name"] for r in next(r for r in out["runtimes"] if r["name"] == "opencv-dnn")["report"]["layers"]}
    assert {"data_res075", "data_res05", "fc1_voc12_res075_interp", "fc_fusion", "fc1_interp"} <= names
    assert {"res5c_relu_res05", "res5c_relu_res075", "res5c_relu"} <= names
    assert out["unchecked_layers"] == []


def test_generic_caffe_net_real_mtcnn(tmp_path):
    """A real third-party net through the generic path: every layer checked by OpenCV."""
    from segconvert.converters.caffe_generic import convert_caffe_generic
    from segconvert.graph import load_net

    d = fixture_path("real", "mtcnn_caffe")
    net = load_net(d / "det2.prototxt", d / "det2.caffemodel")
    conv = convert_caffe_generic(net)
    meta = {"arch": conv.arch, "config": conv.config, "input_size": None, "preprocessing": None}
    weights = save_converted(tmp_path / "det2.safetensors", conv.state_dict, meta)
    res = run_cli("verify", weights, d / "det2.prototxt", d / "det2.caffemodel", "--json")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    out = json.loads(res.stdout)
    assert out["input"].startswith("synthetic image (seed 0), 1x3x24x24, raw pixels")
    rows = next(r for r in out["runtimes"] if r["name"] == "opencv-dnn")["report"]["layers"]
    assert {r["name"] for r in rows} == {s["name"] for s in conv.config["layers"] if s.get("module")}


def test_tf_checkpoint_tensors(tmp_path):
    pytest.importorskip("tensorflow")
    from segconvert.commands.convert_tf import convert_slim_files

    ckpt = fixture_path("tf", "slim_resnet_v1_50_os8") / "model.ckpt"
    weights = tmp_path / "slim.safetensors"
    convert_slim_files(ckpt, weights, output_stride=8)
    res = run_cli("verify", weights, ckpt, "--input-size", "33", "33", "--json")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    out = json.loads(res.stdout)
    tf, graph = out["runtimes"]
    assert tf["name"] == "tensorflow" and graph["name"] == "tensorflow (graph)"
    assert tf["used"] and tf["what"].endswith("checkpoint tensors") and int(tf["what"].split()[0]) > 250
    assert graph["used"]  # the slim graph itself ran in TensorFlow, every end-point compared
    assert out["unchecked_layers"] == []
    state = _tensors(weights)
    state["layer3.2.conv2.weight"] = state["layer3.2.conv2.weight"].clone()
    state["layer3.2.conv2.weight"][0, 0, 1, 1] += 0.5
    bad = save_converted(tmp_path / "bad.safetensors", state, read_metadata(weights))
    res = run_cli("verify", bad, ckpt, "--input-size", "33", "33", "--json")
    assert res.returncode == 1
    failure = json.loads(res.stdout)["first_failure"]
    assert failure == {"runtime": f"tensorflow {tf['version']}", "layer": "layer3.2.conv2.weight", "type": "tensor"}


def test_keras_weights_file_cannot_be_run(tmp_path):
    from segconvert.commands.convert_tf import convert_keras_files

    h5 = fixture_path("keras", "pspnet_keras_style") / "weights.h5"
    weights = tmp_path / "k.safetensors"
    convert_keras_files(h5, weights)
    res = run_cli("verify", weights, h5)
    assert res.returncode == 1
    assert "not available: tensorflow/keras (a Keras weights file has no graph" in res.stdout
    assert res.stdout.rstrip().endswith("result: NOTHING CHECKED (no runtime could compare anything)")


def test_bad_arguments_are_one_line_errors(psp, tmp_path):
    d, weights = psp
    cases = [
        ([weights, tmp_path / "missing.prototxt"], "no such file"),
        ([weights, d / "net.prototxt"], "needs both the .prototxt and the .caffemodel"),
        ([weights], "nothing to verify against"),
        ([weights, d / "meta.json"], "unknown source file type"),
        ([d / "meta.json", d / "net.prototxt", d / "weights.caffemodel"], "meta.json"),
    ]
    for args, fragment in cases:
        res = run_cli("verify", *args)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert fragment in res.stderr and len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


def test_classify_sources_and_budget(tmp_path):
    (tmp_path / "m.ckpt.index").write_bytes(b"")
    kinds = classify_sources([tmp_path / "n.prototxt", tmp_path / "n.caffemodel"])
    assert kinds == {"prototxt": tmp_path / "n.prototxt", "caffemodel": tmp_path / "n.caffemodel"}
    assert classify_sources([tmp_path / "m.ckpt"]) == {"checkpoint": tmp_path / "m.ckpt"}
    assert classify_sources([tmp_path / "m.ckpt.index"]) == {"checkpoint": tmp_path / "m.ckpt"}
    with pytest.raises(SegconvertError, match="two prototxt"):
        classify_sources([tmp_path / "a.prototxt", tmp_path / "b.prototxt"])
    taps = [(str(i), None) for i in range(10)]
    sizes = {str(i): 100 for i in range(10)}
    assert _budget(taps, sizes, 2000) == taps
    kept = _budget(taps, sizes, 1000)
    assert kept[0] == taps[0] and kept[-1] == taps[-1] and len(kept) == 5

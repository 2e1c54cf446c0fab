"""Nets whose input is not one 3-channel image: the declared inputs recorded at conversion time drive export-onnx
(one ONNX input per net input, names kept) and verify (synthetic inputs of those shapes; --image only for image
inputs). The Caffe nets are written by the tests (prototxt text + segconvert's caffemodel writer) and checked
against OpenCV dnn; the 1-D net is a real tf_keras model checked against Keras' own prediction."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segconvert.errors import SegconvertError
from segconvert.formats.caffemodel_writer import random_weights_for, write_caffemodel
from segconvert.graph import load_net
from segconvert.parity.inputs import model_input
from segconvert.weights.inputs import (
    InputShapeError,
    InputSpec,
    apply_input_shapes,
    concrete_shape,
    image_input,
    input_specs,
    parse_input_shape,
    synthetic_inputs,
)
from tests.cli_runner import run_cli

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
cv2 = pytest.importorskip("cv2")

GREY = """name: "grey_classifier"
input: "pixels"
input_shape { dim: 1 dim: 1 dim: 28 dim: 28 }
layer { name: "conv1" type: "Convolution" bottom: "pixels" top: "conv1"
  convolution_param { num_output: 6 kernel_size: 5 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""
RGBD = """name: "rgbd_seg"
layer { name: "rgbd" type: "Input" top: "rgbd" input_param { shape { dim: 1 dim: 4 dim: 33 dim: 33 } } }
layer { name: "conv1" type: "Convolution" bottom: "rgbd" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "score" type: "Convolution" bottom: "pool1" top: "score"
  convolution_param { num_output: 5 kernel_size: 1 } }
layer { name: "up" type: "Deconvolution" bottom: "score" top: "up"
  convolution_param { num_output: 5 kernel_size: 4 stride: 2 pad: 1 group: 5 bias_term: false } }
"""
TWO_STREAM = """name: "two_stream"
input: "left"
input_shape { dim: 1 dim: 3 dim: 16 dim: 16 }
input: "right"
input_shape { dim: 1 dim: 1 dim: 16 dim: 16 }
layer { name: "conv_l" type: "Convolution" bottom: "left" top: "conv_l"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "conv_r" type: "Convolution" bottom: "right" top: "conv_r"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "fuse" type: "Eltwise" bottom: "conv_l" bottom: "conv_r" top: "fuse" eltwise_param { operation: SUM } }
layer { name: "relu" type: "ReLU" bottom: "fuse" top: "fuse" }
layer { name: "score" type: "Convolution" bottom: "fuse" top: "score"
  convolution_param { num_output: 2 kernel_size: 1 } }
"""
# name -> (prototxt, declared inputs as recorded, last layer)
NETS = {
    "grey": (GREY, [("pixels", [1, 1, 28, 28], "image")], "prob"),
    "rgbd": (RGBD, [("rgbd", [1, 4, 33, 33], "tensor")], "up"),
    "two_stream": (TWO_STREAM, [("left", [1, 3, 16, 16], "image"), ("right", [1, 1, 16, 16], "image")], "score"),
}


def _write_net(tmp_path, name: str):
    proto = tmp_path / f"{name}.prototxt"
    proto.write_text(NETS[name][0])
    model = write_caffemodel(tmp_path / f"{name}.caffemodel", random_weights_for(load_net(proto), seed=3))
    return proto, model


def _convert(tmp_path, name: str, *extra: str):
    proto, model = _write_net(tmp_path, name)
    weights = tmp_path / f"{name}.safetensors"
    res = run_cli("caffe2torch", proto, model, "-o", weights, *extra)
    assert res.returncode == 0, res.stdout + res.stderr
    return proto, model, weights


def _onnxruntime(path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {k: np.ascontiguousarray(v, np.float32) for k, v in feeds.items()})[0]


@pytest.mark.parametrize("name", sorted(NETS))
def test_caffe_net_inputs_through_export_onnx_opencv_and_verify(name, tmp_path):
    from segconvert.parity.opencv_runtime import opencv_run

    proto, caffemodel, weights = _convert(tmp_path, name)
    declared, last = NETS[name][1], NETS[name][2]
    meta = json.loads((tmp_path / f"{name}.safetensors.json").read_text())
    assert [(i["name"], i["shape"], i["kind"]) for i in meta["inputs"]] == declared

    out = tmp_path / f"{name}.onnx"
    res = run_cli("export-onnx", weights, "-o", out)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.rstrip().endswith("-> OK")
    graph = onnx.load(str(out)).graph
    dims = [(i.name, [d.dim_value for d in i.type.tensor_type.shape.dim]) for i in graph.input]
    assert dims == [(n, s) for n, s, _ in declared]  # one ONNX input per net input, the net's names and shapes

    # onnxruntime against OpenCV dnn running the Caffe files (an independent implementation)
    rng = np.random.default_rng(1)
    feeds = {n: rng.uniform(0, 255, s).astype(np.float32) for n, s, _ in declared}
    ref = opencv_run(proto, caffemodel, feeds, layers=[last]).outputs[last]
    ours = _onnxruntime(out, feeds)
    assert ours.shape == ref.shape
    assert np.max(np.abs(ours - ref)) <= 1e-4 * np.abs(ref).max()

    res = run_cli("verify", weights, proto, caffemodel, "--onnx", out, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    used = {r["name"] for r in report["runtimes"] if r["used"]}
    assert {"opencv-dnn", "onnxruntime"} <= used, report["runtimes"]
    for _, s, _ in declared:
        assert "x".join(map(str, s)) in report["input"]


def test_verify_image_only_for_image_inputs(tmp_path):
    from PIL import Image

    photo = tmp_path / "photo.png"
    rgb = np.random.default_rng(0).integers(0, 256, (30, 26, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(photo)
    proto, caffemodel, weights = _convert(tmp_path, "grey")
    res = run_cli("verify", weights, proto, caffemodel, "--image", photo, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["input"].startswith("image photo.png, 1x1x28x28, raw pixels")
    # the grey input is the image's luma, scaled to fit 28x28 and padded (what verify fed both runtimes)
    spec = input_specs(json.loads((tmp_path / "grey.safetensors.json").read_text()))[0]
    x = image_input(rgb, spec)
    assert x.shape == (1, 1, 28, 28) and 0 < x.max() <= 255
    scaled = image_input(rgb, InputSpec("p", (1, 1, 30, 26), "image"))[0, 0]
    np.testing.assert_allclose(scaled, rgb.astype(np.float32) @ np.float32([0.299, 0.587, 0.114]), atol=0.51)

    proto, caffemodel, weights = _convert(tmp_path, "rgbd")
    res = run_cli("verify", weights, proto, caffemodel, "--image", photo)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert "rgbd 1x4x33x33 (tensor)" in res.stderr and "--image" in res.stderr


def test_wrong_input_shape_is_one_line_and_writes_nothing(tmp_path):
    proto, caffemodel = _write_net(tmp_path, "grey")
    out = tmp_path / "g.safetensors"
    for bad, fragment in [
        ("nosuch:1,1,28,28", "unknown input(s) ['nosuch']"),
        ("pixels:1,3,28,28", "axis 1 is 1"),
        ("pixels=1,1,28,28", "NAME:N,C,H,W"),
        ("pixels:1,0,28,28", "positive size or -1"),
    ]:
        res = run_cli("caffe2torch", proto, caffemodel, "-o", out, "--input-shape", bad)
        assert res.returncode == 2, (bad, res.stdout, res.stderr)
        assert fragment in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert not out.exists() and not (tmp_path / "g.safetensors.json").exists()
    _, _, weights = _convert(tmp_path, "grey")
    res = run_cli("export-onnx", weights, "-o", tmp_path / "g.onnx", "--input-shape", "pixels:1,3,28,28")
    assert res.returncode == 2 and "axis 1 is 1" in res.stderr and not (tmp_path / "g.onnx").exists()


def test_input_shape_recorded_and_exported(tmp_path):
    """``--input-shape`` at conversion: a batch of 2 for the classifier; a new size for the fully convolutional
    4-channel net (Caffe's shape inference runs with it), then per-axis dynamic export of its spatial axes."""
    _, _, weights = _convert(tmp_path, "grey", "--input-shape", "pixels:2,1,28,28")
    assert input_specs(json.loads((tmp_path / "grey.safetensors.json").read_text()))[0].shape == (2, 1, 28, 28)
    res = run_cli("export-onnx", weights, "-o", tmp_path / "g.onnx")
    assert res.returncode == 0 and "input pixels 2x1x28x28" in res.stdout, res.stdout + res.stderr

    proto, caffemodel, weights = _convert(tmp_path, "rgbd")
    out = tmp_path / "r.onnx"
    res = run_cli("export-onnx", weights, "-o", out, "--dynamic-axes", "rgbd:2,3")
    assert res.returncode == 0, res.stdout + res.stderr
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == [1, 4, "height", "width"]
    from segconvert.parity.opencv_runtime import opencv_run

    x = np.random.default_rng(2).normal(size=(1, 4, 21, 30)).astype(np.float32)
    redeclared = tmp_path / "rgbd21.prototxt"
    redeclared.write_text(RGBD.replace("dim: 33 dim: 33", "dim: 21 dim: 30"))
    ref = opencv_run(redeclared, caffemodel, x, layers=["up"]).outputs["up"]
    np.testing.assert_allclose(_onnxruntime(out, {"rgbd": x}), ref, rtol=0, atol=1e-4 * np.abs(ref).max())


def test_keras_conv1d_net(tmp_path):
    """A 1-D signal net (tf_keras Conv1D) through keras2torch's generic path and export-onnx, against Keras."""
    keras = pytest.importorskip("tf_keras")
    inp = keras.Input((40, 2), name="signal")
    h = keras.layers.Conv1D(6, 5, padding="same", activation="relu", name="c1")(inp)
    h = keras.layers.MaxPooling1D(2, name="p1")(h)
    out = keras.layers.Conv1D(3, 3, padding="valid", name="c2")(h)
    model = keras.Model(inp, out)
    rng = np.random.default_rng(0)
    for w in model.weights:
        w.assign(rng.normal(0, 0.5, w.shape).astype(np.float32))
    model.save(tmp_path / "sig.h5")
    weights = tmp_path / "sig.safetensors"
    res = run_cli("keras2torch", tmp_path / "sig.h5", "-o", weights)
    assert res.returncode == 0, res.stdout + res.stderr
    spec = input_specs(json.loads((tmp_path / "sig.safetensors.json").read_text()))[0]
    assert (spec.name, spec.shape, spec.kind) == ("signal", (-1, 2, 40), "tensor")

    onnx_path = tmp_path / "sig.onnx"
    res = run_cli("export-onnx", weights, "-o", onnx_path, "--dynamic")
    assert res.returncode == 0, res.stdout + res.stderr
    graph = onnx.load(str(onnx_path)).graph
    assert [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == ["batch", 2, "length"]
    x = rng.normal(size=(3, 40, 2)).astype(np.float32)  # Keras layout (N, L, C)
    ref = model.predict(x, verbose=0)  # (N, L', C')
    ours = _onnxruntime(onnx_path, {"signal": x.transpose(0, 2, 1)}).transpose(0, 2, 1)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    res = run_cli("verify", weights, "--onnx", onnx_path)
    assert res.returncode == 0 and "synthetic tensor (seed 0), 1x2x40" in res.stdout, res.stdout + res.stderr


# ------------------------------------------------------------------------------------------ the library


def test_parse_and_apply_input_shapes():
    assert parse_input_shape("data:1,3,224,224") == ("data", (1, 3, 224, 224))
    assert parse_input_shape(" x/in:0 : -1, 2, 50 ") == ("x/in:0", (-1, 2, 50))  # Keras-style names with ':'
    for bad in ("data", "data:", ":1,3", "data:1", "data:1,a,2", "data:1,-2,3"):
        with pytest.raises(InputShapeError):
            parse_input_shape(bad)
    specs = [InputSpec("a", (1, 3, -1, -1), "image", {"mean": [1.0, 2.0, 3.0]}), InputSpec("b", (1, 4, 8, 8))]
    out = apply_input_shapes(specs, ["a:2,3,10,12"])
    assert out[0] == InputSpec("a", (2, 3, 10, 12), "image", {"mean": [1.0, 2.0, 3.0]}) and out[1] == specs[1]
    with pytest.raises(InputShapeError, match="axis 1 is 4"):
        apply_input_shapes(specs, ["b:1,3,8,8"])
    with pytest.raises(SegconvertError, match=r"unknown input\(s\) \['c'\]"):
        apply_input_shapes(specs, {"c": (1, 1)})


def test_input_specs_of_files_written_before_inputs_were_recorded():
    pre = {"channel_order": "BGR", "mean": [104.0, 117.0, 123.0], "std": None, "scale": 1.0}
    named = {"arch": "pspnet50", "config": {"input_size": [473, 473]}, "input_size": [473, 473], "preprocessing": pre}
    (spec,) = input_specs(named)
    assert spec == InputSpec("input", (1, 3, 473, 473), "image", {k: v for k, v in pre.items() if v is not None})
    # one 3-channel image: the synthetic input is exactly the old single-image check input
    x = synthetic_inputs([spec], size=(33, 41))[0].numpy()
    np.testing.assert_array_equal(x, model_input(named, size=(33, 41)))
    generic = {"arch": "caffe_generic", "config": {"inputs": [{"name": "a", "shape": [1, 1, 9, 9]}, {"name": "b",
               "shape": None}]}, "input_size": None, "preprocessing": None}  # fmt: skip
    a, b = input_specs(generic)
    assert (a.name, a.shape, a.kind, b.name, b.shape) == ("a", (1, 1, 9, 9), "image", "b", (-1, 3, -1, -1))
    assert concrete_shape(b) == (1, 3, 321, 321) and concrete_shape(b, (20, 22), batch=2) == (2, 3, 20, 22)
    xs = synthetic_inputs([InputSpec("t", (2, 5, 7, 9)), InputSpec("s", (1, 2, 30))], seed=4)
    assert [tuple(t.shape) for t in xs] == [(2, 5, 7, 9), (1, 2, 30)]
    assert float(xs[0].abs().max()) <= 1.0 and not np.array_equal(xs[0][0].numpy(), xs[0][1].numpy())


@pytest.mark.parametrize("name", sorted(NETS))
def test_benchmark_uses_the_declared_inputs_and_predict_refuses_non_rgb_nets(name, tmp_path):
    """benchmark feeds synthetic inputs of the declared shapes; predict (RGB images) refuses in one line."""
    from PIL import Image

    _, _, weights = _convert(tmp_path, name)
    declared = NETS[name][1]
    res = run_cli("benchmark", weights, "--runs", "2", "--warmup", "1", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["input_shapes"] == [s for _, s, _ in declared]

    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(tmp_path / "x.png")
    res = run_cli("predict", weights, tmp_path / "x.png", "-o", tmp_path / "pred", "--mean", "0")
    assert res.returncode == 2, res.stdout + res.stderr
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line and declared[0][0] in line, line
    assert not (tmp_path / "pred").exists()

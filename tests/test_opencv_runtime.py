"""OpenCV dnn as a reference runtime: its rewritten twin of each net against real-Caffe outputs (fixtures)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segconvert.errors import SegconvertError
from segconvert.formats.caffe_schema import LayerParameter
from segconvert.formats.caffemodel_writer import write_caffemodel
from segconvert.parity.opencv_runtime import VERIFIED_TYPES, opencv_forward, opencv_run
from segconvert.testing import fixture_path
from tests.caffe_cases import LAYER_CASES

cv2 = pytest.importorskip("cv2")

pytestmark = pytest.mark.parity

# What OpenCV dnn cannot compute even after the rewrites (layer -> expected reason fragment).
EXPECTED_UNCHECKED = {"argmax_axis1": {"argmax": "ArgMax"}, "argmax_axis1_top2_val": {"argmax": "ArgMax"}}


def _case(*parts: str):
    d = fixture_path("caffe", *parts)
    return d, np.load(d / "input.npy"), np.load(d / "outputs.npz"), json.loads((d / "meta.json").read_text())


def test_all_76_layer_cases_are_covered():
    root = fixture_path("caffe", "layers")
    assert sorted(p.name for p in root.iterdir() if (p / "net.prototxt").is_file()) == sorted(LAYER_CASES)
    assert len(LAYER_CASES) == 76


@pytest.mark.parametrize("case", LAYER_CASES)
def test_layer_case_matches_real_caffe(case):
    d, x, outs, meta = _case("layers", case)
    result = opencv_run(d / "net.prototxt", d / "weights.caffemodel", x)
    declared = [layer["name"] for layer in meta["layers"] if not layer.get("implicit")]
    unchecked = dict(result.unchecked)
    expected = EXPECTED_UNCHECKED.get(case, {})
    assert set(unchecked) == set(expected), unchecked
    for name, fragment in expected.items():
        assert fragment in unchecked[name]
    assert set(result.outputs) == set(declared) - set(expected)
    types = {layer["name"]: layer["type"] for layer in meta["layers"]}
    for name, ours in result.outputs.items():
        assert types[name] in VERIFIED_TYPES
        ref = outs[f"{name}/0"]
        assert ours.shape == ref.shape, name
        scale = max(float(np.max(np.abs(ref))), 1.0)
        assert np.max(np.abs(ours - ref)) <= 1e-5 * scale, (case, name)


def test_verified_types_are_the_measured_ones():
    """Every type claimed exact occurs in a real-Caffe layer case (Input/Split only implicitly)."""
    seen = set()
    for case in LAYER_CASES:
        meta = json.loads((fixture_path("caffe", "layers", case) / "meta.json").read_text())
        seen |= {layer["type"] for layer in meta["layers"] if not layer.get("implicit")}
    assert set(VERIFIED_TYPES) - seen == {"Input", "Split"}
    assert seen - set(VERIFIED_TYPES) == {"ArgMax"}


@pytest.mark.parametrize("case", ["interp_shrink4_zoom3", "interp_pad_neg_zoom2", "innerproduct_transpose"])
def test_raw_opencv_gets_these_wrong(case):
    """Why the twin exists: unmodified, OpenCV ignores shrink_factor, negative pads and transpose."""
    d, x, outs, _ = _case("layers", case)
    net = cv2.dnn.readNetFromCaffe(str(d / "net.prototxt"), str(d / "weights.caffemodel"))
    net.setInput(x)
    name = "interp" if case.startswith("interp") else "ip"
    raw = net.forward(name)
    ref = outs[f"{name}/0"]
    assert raw.shape != ref.shape or np.max(np.abs(raw - ref)) > 1e-2 * np.max(np.abs(ref))
    fixed = opencv_run(d / "net.prototxt", d / "weights.caffemodel", x).outputs[name]
    assert np.max(np.abs(fixed - ref)) <= 1e-5 * np.max(np.abs(ref))


def test_raw_opencv_has_no_psp_bn():
    d, x, outs, _ = _case("layers", "bn_psp_eps_inplace")
    with pytest.raises(cv2.error):
        cv2.dnn.readNetFromCaffe(str(d / "net.prototxt"), str(d / "weights.caffemodel")).forward()
    result = opencv_run(d / "net.prototxt", d / "weights.caffemodel", x)
    assert result.rewrites == [("bn", "BN -> BatchNorm(eps 0.001) + Scale")]
    np.testing.assert_allclose(result.outputs["bn"], outs["bn/0"], atol=1e-5)


@pytest.mark.parametrize("case", ["pspnet50_ade20k_473", "deeplab_v2_resnet101_msc", "deeplab_v2_resnet101_single"])
def test_network_against_real_caffe(case):
    """Whole nets: PSPNet (BN rewritten) and DeepLab MSC (Interp shrink rewritten) run and match Caffe's dump
    within the fixtures README's figure for two correct float32 implementations (2e-3 of the reference)."""
    d, x, outs, meta = _case(case)
    entries = {o["key"]: o for o in meta["outputs"]}
    outputs, unchecked = opencv_forward(d / "net.prototxt", d / "weights.caffemodel", x)
    assert unchecked == []
    compared = 0
    for name, ours in outputs.items():
        entry = entries.get(f"{name}/0")
        if entry is None:
            continue
        mine = ours[np.ix_(*entry["index"])] if entry["stored"] == "sampled" else ours
        assert list(ours.shape) == entry["shape"], name
        assert np.max(np.abs(mine - outs[f"{name}/0"])) <= 2e-3 * entry["stats"]["absmax"], name
        compared += 1
    assert compared >= 0.9 * len([layer for layer in meta["layers"] if not layer.get("implicit")])


def _write_net(tmp_path, text: str, weights: dict[str, list[np.ndarray]]):
    proto = tmp_path / "net.prototxt"
    proto.write_text(text)
    pairs = []
    for name, blobs in weights.items():
        head = LayerParameter()
        head.name, head.type = name, "Convolution"
        pairs.append((head, blobs))
    return proto, write_caffemodel(tmp_path / "net.caffemodel", pairs)


NET = """
name: "t" input: "data" input_dim: 1 input_dim: 2 input_dim: 5 input_dim: 6
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "am" type: "ArgMax" bottom: "conv" top: "am" argmax_param { axis: 1 } }
layer { name: "pow" type: "Power" bottom: "am" top: "pow" power_param { scale: 2 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "relu" }
"""


def test_unsupported_layer_and_its_dependents_are_reported(tmp_path):
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(3, 2, 1, 1)).astype("f4"), rng.normal(size=3).astype("f4")
    proto, model = _write_net(tmp_path, NET, {"conv": [w, b]})
    x = rng.normal(size=(1, 2, 5, 6)).astype("f4")
    outputs, unchecked = opencv_forward(proto, model, x)
    reasons = dict(unchecked)
    assert set(reasons) == {"am", "pow"}
    assert "ArgMax" in reasons["am"] and "depends on am" in reasons["pow"]
    conv = np.einsum("oi,nihw->nohw", w[:, :, 0, 0], x) + b[None, :, None, None]
    np.testing.assert_allclose(outputs["conv"], conv, atol=1e-5)
    np.testing.assert_allclose(outputs["relu"], np.maximum(conv, 0), atol=1e-5)
    # a subset, and the input size re-declared (the prototxt says 5x6)
    x2 = rng.normal(size=(2, 2, 7, 3)).astype("f4")
    outputs, unchecked = opencv_forward(proto, model, x2, ["relu", "missing"])
    assert list(outputs) == ["relu"] and outputs["relu"].shape == (2, 3, 7, 3)
    assert unchecked == [("missing", "no such layer in the net")]


def test_opencv_failure_is_a_typed_error(tmp_path):
    rng = np.random.default_rng(0)
    text = (
        NET.split("layer {")[0]
        + NET.split("\n")[2]
        + ('\nlayer { name: "lrn" type: "LRN" bottom: "conv" top: "lrn" lrn_param { local_size: 4 } }')
    )  # Caffe itself refuses an even local_size; OpenCV raises
    proto, model = _write_net(tmp_path, text, {"conv": [rng.normal(size=(3, 2, 1, 1)).astype("f4"), np.zeros(3, "f4")]})
    with pytest.raises(SegconvertError, match="OpenCV dnn .* failed on the net"):
        opencv_run(proto, model, np.zeros((1, 2, 5, 6), "f4"))

"""An SSD-style net (written by the test, random weights) end to end: generic path vs OpenCV dnn, CLI, --until."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch

from segconvert.converters.caffe_generic import convert_caffe_generic, cut_net
from segconvert.errors import ConversionError
from segconvert.graph import load_net
from segconvert.reference_models.caffe_generic import CaffeGenericNet
from segconvert.weights.store import read_metadata
from tests.caffe_ssd_cases import opencv_outputs, ssd_text, write_net
from tests.cli_runner import run_cli

pytest.importorskip("cv2")

_TAPS = ["conv1_norm", "conv1_norm_mbox_conf_flat", "conv2_mbox_priorbox", "mbox_loc", "mbox_priorbox"]
_TAPS += ["mbox_conf_flatten"]


@pytest.fixture(scope="module")
def ssd_files(tmp_path_factory):
    return write_net(tmp_path_factory.mktemp("ssd"), ssd_text(num_classes=3, size=32, keep_top_k=20))


def _model(net):
    conv = convert_caffe_generic(net)
    model = CaffeGenericNet(**conv.config)
    model.load_state_dict(conv.state_dict)
    return model.eval(), conv


def _by_label_score(rows: np.ndarray) -> np.ndarray:
    """OpenCV lists keep_top_k survivors by score, the fork by label then score: compare in one order."""
    return rows[np.lexsort((-rows[:, 2], rows[:, 1], rows[:, 0]))]


@pytest.mark.parametrize("seed", [1, 2])
def test_ssd_net_matches_opencv_layers_and_detections(ssd_files, seed):
    proto, model_file = ssd_files
    model, conv = _model(load_net(proto, model_file))
    assert conv.config["outputs"] == ["detection_out"]
    x = np.random.default_rng(seed).uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)
    ours = model.layer_outputs(torch.from_numpy(x))
    theirs = opencv_outputs(proto, model_file, x, [*_TAPS, "detection_out"])
    for name, cv in zip(_TAPS, theirs, strict=False):
        np.testing.assert_allclose(ours[f"{name}/0"].numpy().reshape(cv.shape), cv, rtol=1e-4, atol=2e-5, err_msg=name)
    det, cv_det = ours["detection_out/0"].numpy()[0, 0], theirs[-1][0, 0]
    assert det.shape == cv_det.shape and det.shape[0] == 20  # keep_top_k reached
    labels = det[:, 1]
    assert np.all(np.diff(labels) >= 0)  # the fork's order: by label, best first within a label
    for lab in np.unique(labels):
        assert np.all(np.diff(det[labels == lab, 2]) <= 0)
    np.testing.assert_allclose(_by_label_score(det), _by_label_score(cv_det), rtol=1e-4, atol=2e-5)


def test_cli_emit_source_and_until(ssd_files, tmp_path):
    proto, model_file = ssd_files
    out, src = tmp_path / "ssd.safetensors", tmp_path / "tiny_ssd.py"
    code, stdout, err = run_cli("caffe2torch", proto, model_file, "-o", out, "--emit-source", src)
    assert code == 0, err
    assert "path: generic (--emit-source)" in stdout
    spec = importlib.util.spec_from_file_location("tiny_ssd_generated", src)
    module = importlib.util.module_from_spec(spec)
    sys.modules["tiny_ssd_generated"] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["tiny_ssd_generated"]
    from safetensors.torch import load_file

    generated = module.tiny_ssd().eval()
    generated.load_state_dict(load_file(out))
    model, _ = _model(load_net(proto, model_file))
    x = torch.from_numpy(np.random.default_rng(5).uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32))
    with torch.no_grad():
        assert torch.equal(generated(x), model(x))
    # --until: the raw heads, no DetectionOutput; the unread blobs are the outputs
    heads = tmp_path / "heads.safetensors"
    code, stdout, err = run_cli("caffe2torch", proto, model_file, "-o", heads, "--until", "mbox_conf_flatten")
    assert code == 0, err
    assert "path: generic (--until mbox_conf_flatten)" in stdout
    assert "cut after layer mbox_conf_flatten: dropped 1 later layer(s) (detection_out)" in stdout
    meta = read_metadata(heads)
    assert meta["config"]["outputs"] == ["mbox_conf_flatten", "mbox_loc", "mbox_priorbox"]
    assert all(layer["type"] != "DetectionOutput" for layer in meta["config"]["layers"])
    code, stdout, err = run_cli("caffe2torch", proto, model_file, "-o", tmp_path / "x.safetensors", "--until", "nope")
    assert code == 2 and "--until: the net has no layer 'nope'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.safetensors").exists()


def test_cut_net_names_dropped_weighted_layers(ssd_files):
    proto, model_file = ssd_files
    net = cut_net(load_net(proto, model_file), "conv1_norm")
    assert [layer.name for layer in net.layers][-1] == "conv1_norm"
    assert "their weights are not converted: conv2," in net.warnings[-1]
    with pytest.raises(ConversionError):
        cut_net(net, "detection_out")


def test_opencv_runtime_twin_rewrites_priorbox(tmp_path):
    """The parity runtime's OpenCV twin writes PriorBox's clip out and truncates sizes as the fork does."""
    from segconvert.parity.opencv_runtime import opencv_run

    text = ssd_text().replace("min_size: 6.0", "min_size: 6.7").replace("    clip: false\n", "")
    proto, model_file = write_net(tmp_path, text)
    model, _ = _model(load_net(proto, model_file))
    x = np.random.default_rng(3).uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)
    result = opencv_run(proto, model_file, x)
    ours = model.layer_outputs(torch.from_numpy(x))
    assert dict(result.unchecked)["detection_out"].startswith("OpenCV orders the keep_top_k")
    for name in ("conv1_norm_mbox_priorbox", "conv2_mbox_priorbox", "mbox_priorbox", "conv1_norm", "mbox_conf_flatten"):
        np.testing.assert_allclose(ours[f"{name}/0"].numpy(), result.outputs[name], rtol=1e-4, atol=2e-5, err_msg=name)
    assert ours["conv1_norm_mbox_priorbox/0"].min() < 0  # not clipped: the fork's default

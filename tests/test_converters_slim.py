"""TF-Slim resnet_v1 / PSPNet-TF-Reproduce conversion: parity with TF's outputs, accounting, full names."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch

from segconvert.converters._tf_common import nhwc_parity
from segconvert.converters.slim import convert_slim
from segconvert.errors import ConversionError
from segconvert.formats.tf_checkpoint import open_checkpoint
from segconvert.testing import fixture_path

TOL = 1e-4  # fixtures README: atol=1e-4, rtol=1e-4 on O(1-10) activations

CASES = [
    ("slim_resnet_v1_50_os8", "model.ckpt", 8),
    ("slim_resnet_v1_50_os8", "resnet_v1_50.ckpt", 8),
    ("slim_resnet_v1_101_os16", "model.ckpt", 16),
    ("slim_resnet_v1_101_os16", "resnet_v1_101.ckpt", 16),
    ("pspnet_slim_psp_head", "model.ckpt", None),
]


def _assert_parity(model, tap_map, x, outputs, *, tol=TOL, label=""):
    report, _ = nhwc_parity(model, tap_map, x, outputs, source=label)
    assert not report.uncompared, report.uncompared  # every stored end-point has a module
    assert len(report.rows) == len(outputs)
    ours = {r.name: r for r in report.rows}
    for key, ref in outputs.items():
        row = ours[key]
        assert row.max_abs <= tol + tol * float(np.abs(ref).max()), (label, key, row.max_abs)
    return report


@pytest.mark.parametrize("case,fname,os_", CASES, ids=[f"{c}/{f}" for c, f, _ in CASES])
def test_fixture_parity(case, fname, os_):
    d = fixture_path("tf", case)
    conv = convert_slim(d / fname, output_stride=os_)
    model = conv.build_model()
    meta = json.loads((d / "meta.json").read_text())
    for inp, out in (("input.npy", "outputs.npz"), ("input_alt.npy", "outputs_alt.npz")):
        _assert_parity(model, conv.tap_map, np.load(d / inp), dict(np.load(d / out)), label=f"{case}/{inp}")
    assert conv.preprocessing == {"channel_order": "RGB", "mean": [123.68, 116.78, 103.94], "std": None, "scale": 1.0}
    assert conv.config["bn_eps"] == 1e-5 and conv.config["stride_in"] == "3x3_last"
    if case.startswith("slim_resnet"):
        assert conv.arch == "resnet" and conv.config["output_stride"] == meta["output_stride"]
        scope = meta["scope"]
        assert dict(conv.dropped) == {
            "global_step": "training step counter",
            f"{scope}/mean_rgb": "mean pixel, recorded as preprocessing",
        }
        assert conv.config["dilations"] == ([1, 1, 2, 4] if os_ == 8 else [1, 1, 1, 2])
    else:
        assert conv.arch == "pspnet50" and conv.dropped == []
        assert conv.config["ppm_mode"] == "tf_same" and conv.config["resize"] == "tf1_legacy"
    # every source tensor used once: sources + dropped cover the checkpoint exactly
    with open_checkpoint(d / fname) as ck:
        used = set(conv.sources.values()) | {n for n, _ in conv.dropped}
        assert used == set(ck.keys())


def test_layout_hwio_to_oihw_and_bn_names():
    d = fixture_path("tf", "slim_resnet_v1_50_os8")
    conv = convert_slim(d / "model.ckpt", output_stride=8)
    with open_checkpoint(d / "model.ckpt") as ck:
        w = ck["resnet_v1_50/block2/unit_4/bottleneck_v1/conv2/weights"]  # [3, 3, 16, 16]
        t = conv.state_dict["layer2.3.conv2.weight"]
        assert t.shape == (16, 16, 3, 3)
        assert float(t[5, 7, 0, 2]) == float(w[0, 2, 7, 5])  # [out, in, kh, kw] <- [kh, kw, in, out]
        var = ck["resnet_v1_50/block2/unit_1/bottleneck_v1/shortcut/BatchNorm/moving_variance"]
        np.testing.assert_array_equal(conv.state_dict["layer2.0.downsample.1.running_var"].numpy(), var)
    assert conv.sources["stem.bn1.weight"] == "resnet_v1_50/conv1/BatchNorm/gamma"


def test_stride_sits_in_the_last_unit():
    conv = convert_slim(fixture_path("tf", "slim_resnet_v1_50_os8") / "model.ckpt", output_stride=32)
    model = conv.build_model()
    assert model.layer1[2].conv2.stride == (2, 2) and model.layer1[0].conv2.stride == (1, 1)
    assert model.layer3[5].conv2.stride == (2, 2) and model.layer4[2].conv2.stride == (1, 1)
    assert isinstance(model.layer2[3].downsample, torch.nn.MaxPool2d)  # subsample shortcut x[::2, ::2]
    assert model.layer1[0].conv1.stride == (1, 1)


def test_pspnet_checkpoint_as_backbone_only():
    d = fixture_path("tf", "pspnet_slim_psp_head")
    conv = convert_slim(d / "model.ckpt", arch="resnet", output_stride=8)
    full = convert_slim(d / "model.ckpt")
    assert conv.arch == "resnet"
    reasons = dict(conv.dropped)
    assert reasons["resnet_v1_50/logits/weights"] == "classifier, not part of the backbone"
    assert reasons["resnet_v1_50/psp/pool6/weights"] == "not part of the backbone"
    assert sum(1 for n in reasons if "/psp/" in n) == 4 * 5
    for k, v in conv.state_dict.items():
        torch.testing.assert_close(v, full.state_dict[f"backbone.{k}"], rtol=0, atol=0)
    model = conv.build_model()
    x = np.load(d / "input.npy")
    ref = np.load(d / "outputs.npz")
    outs = {k: ref[k] for k in ("resnet_v1_50/conv1", "resnet_v1_50/pool1", "net")}
    _assert_parity(model, conv.tap_map, x, outs, label="backbone of pspnet")


class _FakeCheckpoint(dict):
    """name -> zeros of the listed shape, built on demand (full-width names without 100 MB of data)."""

    def __init__(self, variables):
        super().__init__()
        self.shapes = {v["name"]: tuple(v["shape"]) for v in variables}

    def keys(self):
        return self.shapes.keys()

    def __contains__(self, k):
        return k in self.shapes

    def __getitem__(self, k):
        return np.broadcast_to(np.float32(0.5), self.shapes[k])

    def shape(self, k):
        return self.shapes[k]


@pytest.mark.parametrize("depth", [50, 101])
def test_full_width_public_checkpoint_names(depth):
    """The public resnet_v1_{50,101}_2016_08_28 layout: backbone + dropped logits, or logits kept as fc."""
    d = fixture_path("tf", "slim_resnet_v1_50_full_names")
    data = json.loads((d / f"resnet_v1_{depth}.variables.json").read_text())
    variables = data["variables"] if isinstance(data, dict) else data
    extras = [{"name": "global_step", "shape": []}, {"name": f"resnet_v1_{depth}/mean_rgb", "shape": [3]}]
    ck = _FakeCheckpoint(variables + extras)
    conv = convert_slim(ck)
    assert conv.arch == "resnet" and conv.config["depth"] == depth
    assert conv.config["out_widths"] == [256, 512, 1024, 2048] and conv.config["num_classes"] == 0
    assert sorted(n for n, _ in conv.dropped) == sorted(
        [
            "global_step",
            f"resnet_v1_{depth}/mean_rgb",
            f"resnet_v1_{depth}/logits/weights",
            f"resnet_v1_{depth}/logits/biases",
        ]
    )
    assert len(conv.state_dict) == len(variables) - 2  # every other variable maps to one model tensor
    with_fc = convert_slim(ck, classifier=True)
    assert with_fc.config["num_classes"] == 1000 and tuple(with_fc.state_dict["fc.weight"].shape) == (1000, 2048, 1, 1)


def test_errors():
    d = fixture_path("tf", "slim_resnet_v1_50_os8")
    with pytest.raises(ConversionError, match="psp"):
        convert_slim(d / "model.ckpt", arch="pspnet50")
    with pytest.raises(ConversionError, match="resnet_v1_50, not pspnet101"):
        convert_slim(fixture_path("tf", "pspnet_slim_psp_head") / "model.ckpt", arch="pspnet101")
    ck = _FakeCheckpoint([{"name": "x/y", "shape": [2]}])
    with pytest.raises(ConversionError, match="no TF-Slim resnet_v1"):
        convert_slim(ck)
    with open_checkpoint(d / "model.ckpt") as real:
        fake = _FakeCheckpoint([{"name": n, "shape": list(real.shape(n))} for n in real.keys()])
    fake.shapes["resnet_v1_50/extra_head/weights"] = (1, 1, 256, 4)
    with pytest.raises(ConversionError, match="extra_head"):
        convert_slim(fake, arch="auto")
    assert dict(convert_slim(fake, arch="resnet").dropped)["resnet_v1_50/extra_head/weights"]


# ------------------------------------------------------------------------------------------------------
# fresh random slim graphs, built and run by real TensorFlow + tf_slim (parity extra)
# ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slim_env():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    tf = pytest.importorskip("tensorflow")
    pytest.importorskip("tf_keras")
    import tf_keras.src.legacy_tf_layers as legacy  # tf_slim's batch_norm imports the old module path
    import tf_keras.src.legacy_tf_layers.normalization as legacy_norm

    sys.modules.setdefault("tf_keras.legacy_tf_layers", legacy)
    sys.modules.setdefault("tf_keras.legacy_tf_layers.normalization", legacy_norm)
    slim = pytest.importorskip("tf_slim")
    from tf_slim.nets import resnet_v1

    return tf, slim, resnet_v1


def _random_value(name: str, shape, rng) -> np.ndarray:
    if name.endswith(("gamma", "moving_variance")):
        return rng.uniform(0.5, 1.5, shape)
    if name.endswith(("beta", "moving_mean", "biases")):
        return rng.normal(0, 0.1, shape)
    if name.endswith("weights"):
        return rng.normal(0, np.sqrt(1.0 / np.prod(shape[:3])), shape)
    return np.zeros(shape)


def _build_slim(env, tmp, *, depth, base, output_stride, hw, psp, seed):
    """Build a random slim resnet_v1 (+ holyseven-style PSP head), save V2 and V1, return outputs."""
    tf, slim, resnet_v1 = env
    scope = f"resnet_v1_{depth}"
    rng = np.random.default_rng(seed)
    units = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    x_np = rng.normal(0, 50, (1, *hw, 3)).astype(np.float32)
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, *hw, 3])
        blocks = [
            resnet_v1.resnet_v1_block(f"block{i + 1}", base_depth=b, num_units=n, stride=1 if i == 3 else 2)
            for i, (b, n) in enumerate(zip(base, units, strict=True))
        ]
        with slim.arg_scope(resnet_v1.resnet_arg_scope()):
            net, end_points = resnet_v1.resnet_v1(
                x, blocks, num_classes=None, is_training=False, global_pool=False,
                output_stride=output_stride, scope=scope,
            )  # fmt: skip
            taps = {k: v for k, v in end_points.items() if k.startswith(scope)}
            taps[f"{scope}/pool1"] = g.get_tensor_by_name(f"{scope}/pool1/MaxPool:0")
            taps["net"] = net
            if psp:
                with slim.arg_scope([slim.batch_norm], is_training=False), tf.compat.v1.variable_scope(scope):
                    fh, fw = net.shape[1], net.shape[2]
                    branches = [net]
                    for r in (6, 3, 2, 1):
                        k = [max(1, fh // r), max(1, fw // r)]
                        p = taps[f"{scope}/psp/pool{r}/avg_pool"] = tf.nn.avg_pool2d(net, k, k, "SAME")
                        p = taps[f"{scope}/psp/pool{r}"] = slim.conv2d(p, 8, [1, 1], scope=f"psp/pool{r}")
                        p = taps[f"{scope}/psp/pool{r}/resize"] = tf.compat.v1.image.resize_bilinear(p, [fh, fw])
                        branches.append(p)
                    cat = taps[f"{scope}/psp/concat"] = tf.concat(branches, 3)
                    y = taps[f"{scope}/block4/unit_4"] = slim.conv2d(cat, 8, [3, 3], scope="block4/unit_4")
                    logits = taps[f"{scope}/logits"] = slim.conv2d(
                        y, 5, [1, 1], activation_fn=None, normalizer_fn=None, scope="logits"
                    )
                    taps[f"{scope}/up_sample"] = tf.compat.v1.image.resize_bilinear(logits, list(hw))
        with tf.compat.v1.Session(graph=g) as sess:
            variables = tf.compat.v1.global_variables()
            for v in variables:
                v.load(_random_value(v.op.name, v.shape.as_list(), rng).astype(np.float32), sess)
            outputs = sess.run(taps, {x: x_np})
            for fmt in ("V2", "V1"):
                saver = tf.compat.v1.train.Saver(variables, write_version=getattr(tf.compat.v1.train.SaverDef, fmt))
                (tmp / fmt).mkdir()
                saver.save(sess, str(tmp / fmt / "model.ckpt"), write_meta_graph=False)
    return x_np, outputs


FRESH = [
    dict(depth=50, base=[4, 6, 10, 12], output_stride=16, hw=(70, 83), psp=False, seed=1),
    dict(depth=50, base=[2, 4, 6, 8], output_stride=32, hw=(64, 50), psp=False, seed=2),
    dict(depth=50, base=[3, 5, 7, 9], output_stride=8, hw=(81, 75), psp=True, seed=3),
]


@pytest.mark.parity
@pytest.mark.filterwarnings("ignore:`layer.apply` is deprecated")
@pytest.mark.parametrize("spec", FRESH, ids=[f"os{s['output_stride']}-{s['hw']}-psp{s['psp']}" for s in FRESH])
def test_fresh_slim_graph_parity(slim_env, tmp_path, spec):
    x, outputs = _build_slim(slim_env, tmp_path, **spec)
    for fmt, path in (("V2", tmp_path / "V2" / "model.ckpt"), ("V1", tmp_path / "V1" / "model.ckpt")):
        conv = convert_slim(path, output_stride=spec["output_stride"] if not spec["psp"] else None)
        assert conv.arch == ("pspnet50" if spec["psp"] else "resnet")
        _assert_parity(conv.build_model(), conv.tap_map, x, outputs, label=f"fresh {spec} {fmt}")

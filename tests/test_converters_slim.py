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
from segconvert.parity.tf_runtime import holyseven_graph, oandrienko_graph, slim_psp_head, slim_resnet_graph
from segconvert.reference_models import create_model
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
    # the psp fixture puts holyseven's head on slim's own backbone (stride in the last unit)
    conv = convert_slim(d / fname, output_stride=os_, stride_in="3x3_last" if os_ is None else None)
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


def test_psp_head_defaults_to_holysevens_first_unit_stride():
    """PSPNet-TF-Reproduce strides the first unit of block2; the fixture (slim backbone) then does not match."""
    d = fixture_path("tf", "pspnet_slim_psp_head")
    conv = convert_slim(d / "model.ckpt")
    assert conv.config["stride_in"] == "3x3" and conv.config["strides"] == [1, 2, 1, 1]
    assert conv.config["dilations"] == [1, 1, 2, 4]
    assert any("stride_in '3x3'" in n and "3x3_last" in n for n in conv.notes)
    model = conv.build_model()
    assert model.backbone.layer2[0].conv2.stride == (2, 2) and model.backbone.layer2[0].downsample[0].stride == (2, 2)
    assert model.backbone.layer1[2].conv2.stride == (1, 1)
    report, _ = nhwc_parity(
        model, conv.tap_map, np.load(d / "input.npy"), dict(np.load(d / "outputs.npz")), source="psp fixture"
    )
    bad = {r.name for r in report.rows if not r.ok}
    assert "resnet_v1_50/block1" in bad and "resnet_v1_50/up_sample" in bad  # other geometry, same output size
    assert "resnet_v1_50/conv1" not in bad and "resnet_v1_50/pool1" not in bad


def test_pspnet_checkpoint_as_backbone_only():
    d = fixture_path("tf", "pspnet_slim_psp_head")
    conv = convert_slim(d / "model.ckpt", arch="resnet", output_stride=8, stride_in="3x3_last")
    full = convert_slim(d / "model.ckpt", stride_in="3x3_last")
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


def test_reference_pspnet_tf_valid_pooling_and_relu6_head():
    """The two PSPNet options fast-semantic-segmentation needs, against hand-computed values."""
    small = dict(stem_widths=[4, 4, 8], widths=[4, 8, 8, 8], out_widths=[8, 8, 16, 16], ppm_width=4, head_width=8)
    m = create_model("pspnet50", ppm_mode="tf_valid", ppm_bins=[1, 2, 3, 6], head_act="relu6", **small).eval()
    assert create_model("pspnet50", **m.config).config == m.config
    assert isinstance(m.head.relu, torch.nn.ReLU6) and isinstance(m.ppm.pool6.relu, torch.nn.ReLU6)
    default = create_model("pspnet50", **small)
    assert default.config["head_act"] == "relu" and type(default.head.relu) is torch.nn.ReLU
    with pytest.raises(ValueError, match="head_act"):
        create_model("pspnet50", head_act="gelu", **small)
    x = torch.arange(21 * 18, dtype=torch.float64).reshape(1, 1, 21, 18) ** 1.5
    for b, cells in ((1, (1, 1)), (2, (2, 2)), (3, (3, 3)), (6, (7, 6))):
        y = getattr(m.ppm, f"pool{b}").pool(x)
        kh, kw = 21 // b, 18 // b  # TF VALID: whole windows only, the remainder rows/cols are dropped
        ref = np.array(
            [[x[0, 0, i * kh : (i + 1) * kh, j * kw : (j + 1) * kw].mean().item() for j in range(cells[1])]
             for i in range(cells[0])]
        )  # fmt: skip
        assert y.shape[-2:] == cells
        np.testing.assert_allclose(y[0, 0].numpy(), ref, rtol=1e-12)
    assert float(m.head.relu(torch.tensor([-1.0, 3.0, 9.0])).max()) == 6.0


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


def _load_all(sess, variables, value) -> None:
    """Set every variable in one session run (feeding the initial values), not one run per variable."""
    sess.run(
        [v.initializer for v in variables],
        {v.initial_value: np.asarray(value(v), np.float32).reshape(v.shape.as_list()) for v in variables},
    )


def _build_slim(env, tmp, *, depth, base, output_stride, hw, psp, seed, classes=None):
    """Build a random slim resnet_v1 (+ holyseven-style PSP head, or an ImageNet-style classifier), save V2
    and V1, return outputs."""
    tf, slim, resnet_v1 = env
    scope = f"resnet_v1_{depth}"
    rng = np.random.default_rng(seed)
    x_np = rng.normal(0, 50, (1, *hw, 3)).astype(np.float32)
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, *hw, 3])
        net, taps = slim_resnet_graph(
            tf, slim, resnet_v1, x, depth=depth, widths=base, out_widths=[4 * b for b in base],
            output_stride=output_stride, num_classes=classes, scope=scope,
        )  # fmt: skip
        if psp:
            slim_psp_head(tf, slim, net, taps, scope=scope, size=list(hw), ppm_width=8, head_width=8, num_classes=5)
        with tf.compat.v1.Session(graph=g) as sess:
            variables = tf.compat.v1.global_variables()
            _load_all(sess, variables, lambda v: _random_value(v.op.name, v.shape.as_list(), rng))
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
        if spec["psp"]:  # holyseven's head on slim's own backbone (the fixture's construction)
            conv = convert_slim(path, stride_in="3x3_last")
        else:
            conv = convert_slim(path, output_stride=spec["output_stride"])
        assert conv.arch == ("pspnet50" if spec["psp"] else "resnet")
        _assert_parity(conv.build_model(), conv.tap_map, x, outputs, label=f"fresh {spec} {fmt}")


# ------------------------------------------------------------------------------------------------------
# the two PSPNet projects' own graphs, rebuilt in real TensorFlow with their variable names (parity extra);
# the graph builders live in segconvert.parity.tf_runtime (also used by ``segconvert verify``)
# ------------------------------------------------------------------------------------------------------


def _run_and_save(tf, g, x, x_np, taps, rng, path, *, value=_random_value):
    with tf.compat.v1.Session(graph=g) as sess:
        variables = tf.compat.v1.global_variables()
        _load_all(sess, variables, lambda v: value(v.op.name, v.shape.as_list(), rng))
        outputs = sess.run(taps, {x: x_np})
        extra = {
            "global_step": tf.compat.v1.train.get_or_create_global_step(),
            "m": tf.compat.v1.Variable(np.ones((1, 1, 3, 64), np.float32), name=f"{variables[0].op.name}/Momentum"),
        }
        sess.run([e.initializer for e in extra.values()])
        tf.compat.v1.train.Saver(variables + list(extra.values())).save(sess, str(path), write_meta_graph=False)
    return outputs


@pytest.mark.parity
@pytest.mark.filterwarnings("ignore:`layer.apply` is deprecated")
def test_holyseven_pspnet_graph_parity(slim_env, tmp_path):
    """A PSPNet-TF-Reproduce checkpoint (own backbone: stride on the first unit) converts with the defaults."""
    tf = slim_env[0]
    rng = np.random.default_rng(7)
    hw = 104  # a multiple of 8, as the project's crops: its image_size // 8 is then the feature size (13)
    x_np = rng.normal(0, 50, (1, hw, hw, 3)).astype(np.float32)
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, hw, hw, 3])
        taps = holyseven_graph(tf, x, depth=50, filters=[32, 64, 128, 256], num_classes=5, image_size=hw, aux_units=6)
        outputs = _run_and_save(tf, g, x, x_np, taps, rng, tmp_path / "model.ckpt")
    conv = convert_slim(tmp_path / "model.ckpt")
    assert conv.arch == "pspnet50" and conv.config["stride_in"] == "3x3" and conv.config["dilations"] == [1, 1, 2, 4]
    reasons = dict(conv.dropped)
    assert reasons["resnet_v1_50/aux_logits/weights"] == "training-only auxiliary branch"
    assert reasons["resnet_v1_50/block3/unit_7/weights"] == "training-only auxiliary branch"
    assert reasons["global_step"] == "training step counter"
    assert reasons["resnet_v1_50/conv1/weights/Momentum"] == "optimizer state"
    report = _assert_parity(conv.build_model(), conv.tap_map, x_np, outputs, label="holyseven graph")
    assert len(report.rows) == len(outputs) > 90
    # the same checkpoint read with slim's stride placement is a different network
    slim_like = convert_slim(tmp_path / "model.ckpt", stride_in="3x3_last")
    rep, _ = nhwc_parity(slim_like.build_model(), slim_like.tap_map, x_np, outputs, source="slim placement")
    assert not rep.ok


def _oandrienko_value(name: str, shape, rng) -> np.ndarray:
    if name.startswith("PSPModule/") and name.endswith("BatchNorm/beta"):
        return rng.normal(4.0, 3.0, shape)  # pushes part of every PSP activation above 6: ReLU6 must clip it
    return _random_value(name, shape, rng)


@pytest.mark.parity
@pytest.mark.filterwarnings("ignore:`layer.apply` is deprecated")
def test_oandrienko_pspnet_graph_parity(slim_env, tmp_path):
    tf, slim, _ = slim_env
    rng = np.random.default_rng(11)
    hw = (161, 137)  # 8k+1: features 21 x 18, so the VALID pools drop cells (21 // (21 // 6) = 7 rows)
    x_np = rng.normal(0, 50, (1, *hw, 3)).astype(np.float32)
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, *hw, 3])
        taps = oandrienko_graph(tf, slim, x, base=[8, 16, 32, 64], psp_width=16, num_classes=5, aux=True)
        outputs = _run_and_save(tf, g, x, x_np, taps, rng, tmp_path / "model.ckpt", value=_oandrienko_value)
    assert outputs["PSPModule/Conv_4"].max() == 6.0 and outputs["PSPModule/Conv"].max() == 6.0  # ReLU6 clips
    assert outputs["PSPModule/Conv_3/avg_pool"].shape[1:3] == (7, 6)
    conv = convert_slim(tmp_path / "model.ckpt")
    assert conv.arch == "pspnet50" and conv.config["dilations"] == [1, 1, 4, 16]
    assert conv.config["ppm_bins"] == [1, 2, 3, 6] and conv.config["ppm_mode"] == "tf_valid"
    assert conv.config["head_act"] == "relu6" and conv.config["resize"] == "align_corners"
    assert conv.preprocessing["mean"] == [123.68, 116.779, 103.939]
    assert dict(conv.dropped)["AuxPredictions/Conv/weights"] == "training-only auxiliary branch"
    with open_checkpoint(tmp_path / "model.ckpt") as ck:
        assert set(conv.sources.values()) | {n for n, _ in conv.dropped} == set(ck.keys())
    model = conv.build_model()
    report = _assert_parity(model, conv.tap_map, x_np, outputs, label="fast-semantic-segmentation graph")
    assert len(report.rows) == len(outputs) > 90
    with torch.no_grad():  # the model output is the Interp x8 logits at the input size
        y = model(torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy())).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(y, outputs["Predictions/Interp"], atol=TOL, rtol=TOL)
    # ReLU instead of ReLU6 in the head is visibly wrong on these activations
    plain = create_model(conv.arch, **{**conv.config, "head_act": "relu"})
    plain.load_state_dict(conv.state_dict)
    rep, _ = nhwc_parity(plain, conv.tap_map, x_np, {"PSPModule/Conv_4": outputs["PSPModule/Conv_4"]}, source="relu")
    assert not rep.ok


@pytest.mark.parity
@pytest.mark.filterwarnings("ignore:`layer.apply` is deprecated")
def test_fresh_imagenet_checkpoint_backbone_and_classifier(slim_env, tmp_path):
    """An ImageNet-style slim checkpoint (global pool + logits): the backbone conversion reports the dropped
    classifier; with classifier=True the logits become ``fc`` and match TF's."""
    spec = dict(depth=50, base=[2, 3, 4, 5], output_stride=None, hw=(67, 61), psp=False, seed=4, classes=7)
    x, outputs = _build_slim(slim_env, tmp_path, **spec)
    logits = outputs.pop("resnet_v1_50/logits")
    outputs.pop("resnet_v1_50/predictions", None)
    for fmt in ("V2", "V1"):
        path = tmp_path / fmt / "model.ckpt"
        conv = convert_slim(path)
        assert conv.arch == "resnet" and conv.config["num_classes"] == 0
        assert dict(conv.dropped) == {
            "resnet_v1_50/logits/weights": "classifier, not part of the backbone",
            "resnet_v1_50/logits/biases": "classifier, not part of the backbone",
        }
        _assert_parity(conv.build_model(), conv.tap_map, x, outputs, label=f"imagenet backbone {fmt}")
        full = convert_slim(path, classifier=True)
        assert full.dropped == [] and full.config["num_classes"] == 7
        with torch.no_grad():
            y = full.build_model()(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
        np.testing.assert_allclose(y.transpose(0, 2, 3, 1), logits, atol=TOL, rtol=TOL)


def test_fast_semantic_segmentation_names_without_tensorflow():
    """fast-semantic-segmentation's layout from names alone: mapping, config, dropped tensors, ICNet refusal."""
    d = fixture_path("tf", "slim_resnet_v1_50_os8")
    with open_checkpoint(d / "model.ckpt") as real:
        variables = [
            {"name": f"SharedFeatureExtractor/{n}", "shape": list(real.shape(n))}
            for n in real.keys()
            if n.startswith("resnet_v1_50/") and not n.endswith("mean_rgb")
        ]
    bn = ("beta", "gamma", "moving_mean", "moving_variance")
    for i, conv in enumerate(["Conv", "Conv_1", "Conv_2", "Conv_3", "Conv_4"]):
        k, cin = (3, 256 + 4 * 12) if i == 4 else (1, 256)
        variables.append({"name": f"PSPModule/{conv}/weights", "shape": [k, k, cin, 12]})
        variables += [{"name": f"PSPModule/{conv}/BatchNorm/{b}", "shape": [12]} for b in bn]
    variables += [
        {"name": "Predictions/Conv/weights", "shape": [1, 1, 12, 19]},
        {"name": "Predictions/Conv/biases", "shape": [19]},
        {"name": "AuxPredictions/Conv/weights", "shape": [1, 1, 64, 19]},
        {"name": "AuxPredictions/Conv/biases", "shape": [19]},
        {"name": "global_step", "shape": []},
    ]
    conv = convert_slim(_FakeCheckpoint(variables))
    assert conv.arch == "pspnet50" and conv.config["ppm_bins"] == [1, 2, 3, 6]
    assert conv.config["dilations"] == [1, 1, 4, 16] and conv.config["strides"] == [2, 1, 1, 1]
    assert conv.config["head_act"] == "relu6" and conv.config["ppm_mode"] == "tf_valid"
    assert conv.config["num_classes"] == 19 and conv.config["ppm_width"] == 12 and conv.config["head_width"] == 12
    assert conv.sources["ppm.pool6.conv.weight"] == "PSPModule/Conv_3/weights"
    assert conv.sources["ppm.pool1.bn.running_var"] == "PSPModule/Conv/BatchNorm/moving_variance"
    assert conv.sources["head.conv.weight"] == "PSPModule/Conv_4/weights"
    assert conv.sources["head.classifier.bias"] == "Predictions/Conv/biases"
    assert conv.sources["backbone.layer3.5.conv2.weight"] == (
        "SharedFeatureExtractor/resnet_v1_50/block3/unit_6/bottleneck_v1/conv2/weights"
    )
    assert sorted(conv.dropped) == [
        ("AuxPredictions/Conv/biases", "training-only auxiliary branch"),
        ("AuxPredictions/Conv/weights", "training-only auxiliary branch"),
        ("global_step", "training step counter"),
    ]
    assert set(conv.tap_map) >= {"PSPModule/Conv_3", "PSPModule/Conv_4", "Predictions/Conv", "Predictions/Interp"}
    backbone = convert_slim(_FakeCheckpoint(variables), arch="resnet")
    assert dict(backbone.dropped)["PSPModule/Conv_4/weights"] == "not part of the backbone"
    with pytest.raises(ConversionError, match="output stride 8"):
        convert_slim(_FakeCheckpoint(variables), output_stride=16)
    icnet = [v for v in variables if not v["name"].startswith(("PSPModule", "Predictions"))]
    icnet.append({"name": "PSPModule/Conv1x1/weights", "shape": [1, 1, 256, 12]})
    with pytest.raises(ConversionError, match="ICNet"):
        convert_slim(_FakeCheckpoint(icnet))

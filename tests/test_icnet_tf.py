"""ICNet from both TF layouts: real TF graphs rebuilt at test time (random weights, width-reduced), saved by TF's
Saver, converted by ``slim2torch`` onto ``icnet``, compared layer by layer.

* hellochick/ICNet-tensorflow ``model.py`` (``ICNet`` BN-merged and ``ICNet_BN``), written with its ``network.py``
  op semantics: ``conv`` (VALID after ``zero_padding``, or SAME for the strided 3x3), ``atrous_conv``,
  ``batch_normalization`` (eps 1e-5), ``interp`` (align_corners resize to (h-1)s+1 / h+(h-1)(z-1)), ``add``.
* oandrienko/fast-semantic-segmentation ``ICNetArchitecture.predict`` with ``dilated_resnet_v1_50`` (tf_slim ops,
  ``stack_blocks_dense``, ``overide_rate``, the 0.5 ``downsample_block``), ReLU6 arg_scope.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segconvert.reference_models import capture_outputs
from segconvert.weights.store import load_model
from tests.cli_runner import run_cli

pytest.importorskip("tensorflow")
pytest.importorskip("tf_slim")


def _rand(name: str, shape, rng) -> np.ndarray:
    if name.endswith(("gamma", "moving_variance")):
        return rng.uniform(0.5, 1.5, shape)
    if name.endswith(("beta", "moving_mean", "biases")):
        return rng.normal(0, 0.1, shape)
    return rng.normal(0, np.sqrt(2.0 / np.prod(shape[:3])), shape)


def _save(tf, g, taps: dict, x, x_np: np.ndarray, path, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    with tf.compat.v1.Session(graph=g) as sess:
        variables = tf.compat.v1.global_variables()
        feed = {v.initial_value: np.asarray(_rand(v.op.name, v.shape.as_list(), rng), np.float32) for v in variables}
        sess.run([v.initializer for v in variables], feed)
        tf.compat.v1.train.Saver(variables).save(sess, str(path), write_meta_graph=False)
        return sess.run(taps, {x: x_np})


# ------------------------------------------------------------------------------------------------ hellochick
class _Hellochick:
    """hellochick's network.py ops (NHWC), the variables named as its layers."""

    def __init__(self, tf, bn: bool):
        self.tf, self.v1, self.bn, self.layers = tf, tf.compat.v1, bn, {}

    def conv(self, x, k, c, s, name, relu=True, padding="VALID", rate=1, biased=None):
        tf = self.tf
        with self.v1.variable_scope(name):
            w = self.v1.get_variable("weights", [k, k, int(x.shape[-1]), c])
            if rate > 1:
                y = tf.nn.atrous_conv2d(x, w, rate, padding=padding)
            else:
                y = tf.nn.conv2d(x, w, [1, s, s, 1], padding=padding)
            if not self.bn or biased:
                y = tf.nn.bias_add(y, self.v1.get_variable("biases", [c]))
        self.layers[name] = y
        if self.bn and not biased:
            with self.v1.variable_scope(f"{name}_bn"):
                g = [self.v1.get_variable(n, [c]) for n in ("gamma", "beta", "moving_mean", "moving_variance")]
            y = self.layers[f"{name}_bn"] = tf.nn.batch_normalization(y, g[2], g[3], g[1], g[0], 1e-5)
        return tf.nn.relu(y) if relu else y

    def pad(self, x, p):
        return self.tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])

    def interp(self, x, s=1.0, z=1.0):
        h, w = x.shape[1], x.shape[2]
        h, w = (h - 1) * s + 1, (w - 1) * s + 1
        size = [int(h + (h - 1) * (z - 1)), int(w + (w - 1) * (z - 1))]
        return self.v1.image.resize_bilinear(x, size, align_corners=True)

    def add(self, a, b):
        return self.v1.image.resize_bilinear(a, self.tf.shape(b)[1:3]) + b  # its add() resizes the first input

    def build(self, x, num_classes, div=4):
        tf, L = self.tf, self.layers
        c = lambda n: max(1, n // div)  # noqa: E731
        y = self.interp(x, s=0.5)
        y = self.conv(y, 3, c(32), 2, "conv1_1_3x3_s2", padding="SAME")
        y = self.conv(y, 3, c(32), 1, "conv1_2_3x3", padding="SAME")
        y = self.conv(y, 3, c(64), 1, "conv1_3_3x3", padding="SAME")
        y = tf.nn.max_pool2d(self.pad(y, 1), 3, 2, "VALID")
        for si, n in enumerate((3, 4, 6, 3)):
            s, mid, out, d = si + 2, c(32 * 2**si), c(128 * 2**si), {4: 2, 5: 4}.get(si + 2, 1)
            for k in range(1, n + 1):
                base, stride = f"conv{s}_{k}", 2 if (s, k) == (3, 1) else 1
                short = self.conv(y, 1, out, stride, f"{base}_1x1_proj", relu=False) if k == 1 else y
                r = self.conv(y, 1, mid, stride, f"{base}_1x1_reduce")
                r = self.conv(self.pad(r, d), 3, mid, 1, f"{base}_3x3", rate=d)
                r = self.conv(r, 1, out, 1, f"{base}_1x1_increase", relu=False)
                y = L[base] = tf.nn.relu(self.add(short, r))
                if base == "conv3_1":
                    conv3_1, y = y, self.interp(y, s=0.5)
        h, w = int(y.shape[1]), int(y.shape[2])
        pools = []
        for b in (4 if self.bn else 6, 3, 2, 1):  # conv5_3_pool6 (ICNet_BN pools it by 4), pool3, pool2, pool1
            k = [h // b, w // b]
            p = tf.nn.avg_pool2d(y, k, k, "VALID")
            pools.append(self.v1.image.resize_bilinear(p, [h, w], align_corners=True))
        y = L["conv5_3_sum"] = tf.add_n([y, *pools])
        y = self.conv(y, 1, c(256), 1, "conv5_4_k1")
        up4 = y = self.interp(y, z=2.0)
        y = self.conv(self.pad(y, 2), 3, c(128), 1, "conv_sub4", relu=False, rate=2)
        p = self.conv(conv3_1, 1, c(128), 1, "conv3_1_sub2_proj", relu=False)
        y = L["sub24_sum/relu"] = tf.nn.relu(self.add(y, p))
        up24 = y = self.interp(y, z=2.0)
        y = self.conv(self.pad(y, 2), 3, c(128), 1, "conv_sub2", relu=False, rate=2)
        s1 = self.conv(x, 3, c(32), 2, "conv1_sub1", padding="SAME")
        s1 = self.conv(s1, 3, c(32), 2, "conv2_sub1", padding="SAME")
        s1 = self.conv(s1, 3, c(64), 2, "conv3_sub1", padding="SAME")
        s1 = self.conv(s1, 1, c(128), 1, "conv3_sub1_proj", relu=False)
        y = L["sub12_sum/relu"] = tf.nn.relu(self.add(y, s1))
        y = L["conv6_cls"] = self.conv(self.interp(y, z=2.0), 1, num_classes, 1, "conv6_cls", relu=False, biased=True)
        L["final"] = self.v1.image.resize_bilinear(y, x.shape[1:3], align_corners=True)  # its eval upsampling
        if self.bn:  # ICNet_BN's training heads
            L["sub4_out"] = self.conv(up4, 1, num_classes, 1, "sub4_out", relu=False, biased=True)
            L["sub24_out"] = self.conv(up24, 1, num_classes, 1, "sub24_out", relu=False, biased=True)
        return L


HELLOCHICK_TAPS = {
    "conv3_1": "backbone.layer2.0",
    "conv5_3_sum": "ppm",
    "sub24_sum/relu": "cff24.relu",
    "sub12_sum/relu": "cff12.relu",
    "conv6_cls": "classifier",
}


def _compare(ours: dict, theirs: dict, keys) -> None:
    for k in keys:
        a = ours[k].detach().numpy().transpose(0, 2, 3, 1)
        b = theirs[k]
        assert a.shape == b.shape, k
        assert np.abs(a - b).max() <= 1e-4 * max(1.0, np.abs(b).max()), k


@pytest.mark.parametrize("bn", [True, False], ids=["ICNet_BN", "ICNet"])
def test_hellochick_icnet(tmp_path, bn):
    from segconvert.parity.tf_runtime import import_tensorflow

    tf = import_tensorflow()
    h, w = (129, 257) if bn else (193, 257)  # odd at every stride-2 input: SAME == Caffe's symmetric pads
    classes = 19 if bn else 5  # 19-class BN-merged = the Cityscapes eval (fixed Caffe kernels, 1025x2049 only)
    rng = np.random.default_rng(1)
    x_np = rng.normal(0, 50, (1, h, w, 3)).astype(np.float32)
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, h, w, 3])
        taps = _Hellochick(tf, bn).build(x, classes)
        keys = [*HELLOCHICK_TAPS, "final"] + (["sub4_out", "sub24_out"] if bn else [])
        theirs = _save(tf, g, {k: taps[k] for k in keys}, x, x_np, tmp_path / "model.ckpt", seed=2 + bn)
    out = tmp_path / "icnet.safetensors"
    code, text, err = run_cli("slim2torch", tmp_path / "model.ckpt", "-o", out)
    assert code == 0, err
    assert "architecture: icnet" in text
    model = load_model(out)
    cfg = model.config
    assert cfg["batchnorm"] is bn and cfg["ppm_mode"] == "tf_valid" and cfg["aux"] is bn
    assert cfg["ppm_bins"] == ([4, 3, 2, 1] if bn else [6, 3, 2, 1])
    xt = torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        final, got = capture_outputs(model, xt, HELLOCHICK_TAPS)
    got["final"] = final
    _compare(got, theirs, [*HELLOCHICK_TAPS, "final"])
    if bn:  # the cascade-label-guidance heads (training mode, frozen BN: deterministic)
        model.train()
        with torch.no_grad():
            train = model(xt)
        _compare({"sub4_out": train["sub4"], "sub24_out": train["sub24"]}, theirs, ["sub4_out", "sub24_out"])


# ---------------------------------------------------------------------------------- fast-semantic-segmentation
def _fss_graph(tf, slim, x, *, base, stem, ppm, cff, sub1, classes):
    """ICNetArchitecture.predict (two-stage, evaluation) on PSPNetICNetDilatedResnet50FeatureExtractor."""
    from tf_slim.nets import resnet_utils

    v1 = tf.compat.v1
    taps = {}

    def interp(t, s=1.0, z=1.0):
        h, w = t.shape[1], t.shape[2]
        h, w = (h - 1) * s + 1, (w - 1) * s + 1
        return v1.image.resize_bilinear(t, [int(h + (h - 1) * (z - 1)), int(w + (w - 1) * (z - 1))], align_corners=True)

    @slim.add_arg_scope
    def bottleneck(inputs, depth, depth_bottleneck, stride, overide_rate=1, rate=1, outputs_collections=None):
        with v1.variable_scope(None, "bottleneck_v1", [inputs]) as sc:
            if depth == inputs.shape[-1]:
                shortcut = resnet_utils.subsample(inputs, stride, "shortcut")
            else:
                shortcut = slim.conv2d(inputs, depth, [1, 1], stride=stride, activation_fn=None, scope="shortcut")
            r = slim.conv2d(inputs, depth_bottleneck, [1, 1], stride=1, scope="conv1")
            r = resnet_utils.conv2d_same(r, depth_bottleneck, 3, stride, rate=rate * overide_rate, scope="conv2")
            r = slim.conv2d(r, depth, [1, 1], stride=1, activation_fn=None, scope="conv3")
            return slim.utils.collect_named_outputs(outputs_collections, sc.name, tf.nn.relu(shortcut + r))

    def downsample(inputs, s_factor, stride=1, rate=1, outputs_collections=None):
        return interp(inputs, s=s_factor)

    def block(name, d, n, stride, rate=1):
        unit = {"depth": d * 4, "depth_bottleneck": d, "overide_rate": rate}
        return resnet_utils.Block(name, bottleneck, [dict(unit, stride=1)] * (n - 1) + [dict(unit, stride=stride)])

    blocks = [block("block1", base[0], 3, 2), resnet_utils.Block("downsample_block", downsample, [{"s_factor": 0.5}])]
    blocks += [block("block2", base[1], 4, 2), block("block3", base[2], 6, 2, 2), block("block4", base[3], 3, 1, 4)]
    bn_params = {"decay": 0.9997, "center": True, "scale": True, "epsilon": 1e-5, "is_training": False}
    model_scope = slim.arg_scope(
        [slim.conv2d], activation_fn=tf.nn.relu6, normalizer_fn=slim.batch_norm, normalizer_params=bn_params
    )
    with model_scope, slim.arg_scope([slim.batch_norm], **bn_params):
        half_in = interp(x, s=0.5)
        with v1.variable_scope("SharedFeatureExtractor"):
            with slim.arg_scope(resnet_utils.resnet_arg_scope(batch_norm_epsilon=1e-5, batch_norm_scale=True)):
                with v1.variable_scope("resnet_v1_50", values=[half_in]) as sc:
                    collection = sc.original_name_scope + "_end_points"
                    with slim.arg_scope([slim.conv2d, bottleneck, resnet_utils.stack_blocks_dense],
                                        outputs_collections=collection):  # fmt: skip
                        net = resnet_utils.conv2d_same(half_in, stem, 7, stride=2, scope="conv1")
                        net = slim.max_pool2d(net, [3, 3], stride=2, scope="pool1")
                        quarter = resnet_utils.stack_blocks_dense(net, blocks, 2)
                    ends = slim.utils.convert_collection_to_dict(collection)
        half = taps["half"] = ends["SharedFeatureExtractor/resnet_v1_50/block1"]
        taps["quarter"] = quarter
        h, w = quarter.shape[1], quarter.shape[2]
        added = quarter
        with v1.variable_scope(None, "FastPSPModule"):
            for f in (1.0, 2.0, 3.0, 4.0):
                k = (int(h / f), int(w / f))
                p = slim.avg_pool2d(quarter, k, stride=k)
                added = tf.add(added, v1.image.resize_bilinear(p, (h, w), align_corners=True))
            taps["ppm_sum"] = added
            pooled = taps["ppm_conv"] = slim.conv2d(added, ppm, 1, stride=1)
        t = x
        for c, s in zip(sub1, (2, 2, 2, 1), strict=True):
            t = slim.conv2d(t, c, (3, 3), stride=s)
        taps["sub1"] = t

        def fusion(low, high):
            with v1.variable_scope(None, "CascadeFeatureFusion"):
                up = interp(low, z=2.0)
                d = slim.conv2d(up, cff, (3, 3), stride=1, rate=2, activation_fn=None, scope="DilatedConv")
                c = slim.conv2d(high, cff, (1, 1), activation_fn=None, scope="Conv")
                d = v1.image.resize_bilinear(d, tf.shape(c)[1:3])
                return tf.nn.relu(tf.add(c, d)), up

        first, up4 = fusion(pooled, half)
        second, up24 = fusion(first, t)
        taps["cff24"], taps["cff12"] = first, second
        final = interp(second, z=2.0)
        with v1.variable_scope("Predictions"):
            pred = taps["pred"] = slim.conv2d(final, classes, 1, 1, activation_fn=None, normalizer_fn=None)
            taps["pred_interp"] = interp(pred, z=4.0)
        taps["aux1"] = slim.conv2d(up4, classes, 1, 1, activation_fn=None, normalizer_fn=None, scope="AuxOutput")
        taps["aux2"] = slim.conv2d(up24, classes, 1, 1, activation_fn=None, normalizer_fn=None, scope="AuxOutput_1")
    return taps


FSS_TAPS = {
    "half": "backbone.layer1",
    "quarter": "backbone.layer4",
    "ppm_sum": "ppm",
    "ppm_conv": "ppm_conv",
    "sub1": "sub1",
    "cff24": "cff24.relu",
    "cff12": "cff12.relu",
    "pred": "classifier",
    "pred_interp": "upsample.interp",
}


@pytest.mark.filterwarnings("ignore:`layer.apply` is deprecated")
def test_fast_semantic_segmentation_icnet(tmp_path):
    from segconvert.parity.tf_runtime import import_slim

    tf, slim, _ = import_slim()
    h, w = 120, 136  # even sizes: the TF SAME pads are asymmetric, the cascade needs its resize of conv_low
    rng = np.random.default_rng(4)
    x_np = rng.normal(0, 50, (1, h, w, 3)).astype(np.float32)
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, h, w, 3])
        taps = _fss_graph(tf, slim, x, base=[8, 16, 32, 64], stem=16, ppm=32, cff=16, sub1=[8, 8, 16, 32], classes=6)
        names = {v.op.name for v in tf.compat.v1.global_variables()}
        assert {"FastPSPModule/Conv/weights", "Conv_3/weights", "CascadeFeatureFusion_1/DilatedConv/weights"} <= names
        theirs = _save(tf, g, taps, x, x_np, tmp_path / "model.ckpt", seed=5)
    assert (theirs["ppm_conv"] == 6.0).any() and (theirs["sub1"] == 6.0).any()  # the ReLU6 clip is exercised
    out = tmp_path / "fss_icnet.safetensors"
    code, text, err = run_cli("slim2torch", tmp_path / "model.ckpt", "-o", out)
    assert code == 0, err
    assert "architecture: icnet" in text and "ReLU6" in text
    model = load_model(out)
    assert model.config["backbone"] == "slim" and model.config["head_act"] == "relu6"
    xt = torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        _, got = capture_outputs(model, xt, FSS_TAPS)
    _compare(got, theirs, FSS_TAPS)
    model.train()
    with torch.no_grad():
        train = model(xt)
    _compare({"aux1": train["sub4"], "aux2": train["sub24"]}, theirs, ["aux1", "aux2"])


def test_tf_icnet_refuses_other_archs(tmp_path):
    from segconvert.converters.tf_icnet import convert_icnet_tf
    from segconvert.errors import ConversionError

    with pytest.raises(ConversionError, match="not a TF ICNet"):
        convert_icnet_tf({"resnet_v1_50/conv1/weights": np.zeros((7, 7, 3, 64), np.float32)})

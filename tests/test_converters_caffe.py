"""Caffe -> reference model conversion against the real-Caffe network fixtures (layer by layer)."""

from __future__ import annotations

import copy
import functools
import json

import numpy as np
import pytest
import torch

from segconvert.converters.caffe_detect import detect_caffe_arch
from segconvert.converters.caffe_names import Tap, convert_caffe_net
from segconvert.errors import ConversionError
from segconvert.reference_models import capture_outputs, create_model
from segconvert.testing import fixture_path

NETS = [
    "deeplab_v2_resnet101_msc",
    "deeplab_v2_resnet101_single",
    "pspnet50_ade20k_473",
    "pspnet101_cityscapes_713",
    "pspnet101_voc2012_473",
]
REDUCED = dict(widths=[8, 16, 32, 64], out_widths=[32, 64, 128, 256])
EXPECTED = {  # fixture README / SPEC 3-4: widths /8 except the classifier
    "deeplab_v2_resnet101_msc": (
        "deeplabv2_resnet101",
        dict(
            depth=101,
            msc=True,
            num_classes=21,
            input_size=[129, 129],
            stem_widths=[8],
            stride_in="1x1",
            aspp_rates=[6, 12, 18, 24],
            dilations=[1, 1, 2, 4],
            strides=[1, 2, 1, 1],
            **REDUCED,
        ),
    ),
    "deeplab_v2_resnet101_single": (
        "deeplabv2_resnet101",
        dict(depth=101, msc=False, num_classes=21, input_size=[97, 97], stem_widths=[8], stride_in="1x1", **REDUCED),
    ),
    "pspnet50_ade20k_473": (
        "pspnet50",
        dict(
            depth=50,
            num_classes=150,
            input_size=[473, 473],
            stride_in="1x1",
            stem_widths=[8, 8, 16],
            ppm_bins=[6, 3, 2, 1],
            ppm_width=64,
            head_width=64,
            dropout=0.1,
            dilations=[1, 1, 2, 4],
            **REDUCED,
        ),
    ),
    "pspnet101_cityscapes_713": (
        "pspnet101",
        dict(
            depth=101,
            num_classes=19,
            input_size=[713, 713],
            stride_in="3x3",
            stem_widths=[8, 8, 16],
            ppm_width=64,
            head_width=64,
            **REDUCED,
        ),
    ),
    "pspnet101_voc2012_473": (
        "pspnet101",
        dict(depth=101, num_classes=21, input_size=[473, 473], stride_in="3x3", ppm_bins=[6, 3, 2, 1], **REDUCED),
    ),
}
FULL = {  # the unmodified released prototxts (SPEC 3.1, 4.1)
    "deeplab_v2_resnet101_msc": (
        "deeplabv2_resnet101",
        dict(depth=101, msc=True, num_classes=21, input_size=[513, 513], stem_widths=[64]),
    ),
    "pspnet50_ade20k_473": (
        "pspnet50",
        dict(
            num_classes=150,
            input_size=[473, 473],
            stride_in="1x1",
            ppm_width=512,
            head_width=512,
            stem_widths=[64, 64, 128],
        ),
    ),
    "pspnet101_cityscapes_713": ("pspnet101", dict(num_classes=19, input_size=[713, 713], stride_in="3x3")),
    "pspnet101_voc2012_473": ("pspnet101", dict(num_classes=21, input_size=[473, 473], stride_in="3x3")),
}


@functools.cache
def _load(case: str, weights: bool = True):
    from segconvert.graph import load_net

    root = fixture_path("caffe", case)
    return load_net(root / "net.prototxt", root / "weights.caffemodel" if weights else None)


def _fresh(case: str):
    return copy.deepcopy(_load(case))


@pytest.mark.parametrize("case", NETS)
def test_detected_config(case):
    arch, want = EXPECTED[case]
    conv = convert_caffe_net(_load(case))
    assert conv.arch == arch
    for k, v in want.items():
        assert conv.config[k] == v, k
    assert conv.config["bn_eps"] == 1e-5 and conv.config["norm"] == "frozen"
    assert json.loads(json.dumps(conv.config)) == conv.config
    assert create_model(conv.arch, **conv.config).config == conv.config


@pytest.mark.parametrize("case", NETS)
def test_layer_by_layer_parity(case):
    root = fixture_path("caffe", case)
    net = _load(case)
    conv = convert_caffe_net(net)
    model = conv.build_model()
    assert set(conv.state_dict) == set(model.state_dict())
    meta = json.loads((root / "meta.json").read_text())
    entries = {e["key"]: e for e in meta["outputs"]}
    ref = np.load(root / "outputs.npz")
    # every Caffe blob (the input comes from the implicit layer) has a tap at its last in-place writer
    last_writer = {}
    for layer in meta["layers"]:
        if layer["implicit"]:
            continue
        for i, top in enumerate(layer["tops"]):
            last_writer[top] = f"{layer['name']}/{i}"
    assert "data" not in last_writer
    assert {b: f"{t.layer}/{t.top_index}" for b, t in conv.tap_map.items()} == last_writer
    x = torch.from_numpy(np.load(root / "input.npy"))
    out, got = capture_outputs(model, x, {b: (t.module, t.call) for b, t in conv.tap_map.items()})
    worst = 0.0
    for blob, tap in conv.tap_map.items():
        e = entries[f"{tap.layer}/{tap.top_index}"]
        mine = got[blob].numpy()
        assert list(mine.shape) == e["shape"], blob
        if e["stored"] == "sampled":
            mine = mine[np.ix_(*e["index"])]
        rel = float(np.abs(mine - ref[e["key"]]).max()) / max(e["stats"]["absmax"], 1e-6)
        worst = max(worst, rel)
        assert rel < 2e-3, (blob, rel)
    final = meta["outputs"][-1]
    assert final["key"] in ("fc1_interp/0", "conv6_interp/0")
    mine = out.numpy()
    assert list(mine.shape) == final["shape"]
    if final["stored"] == "sampled":
        mine = mine[np.ix_(*final["index"])]
    want = ref[final["key"]]
    assert float(np.abs(mine - want).max()) < 2e-3 * final["stats"]["absmax"]
    assert (mine.argmax(1) == want.argmax(1)).mean() >= 0.999


def test_msc_copies_are_shared_and_bn_sets_counted():
    net = _load("deeplab_v2_resnet101_msc")
    conv = convert_caffe_net(net)
    copies = {n for n, _ in conv.shared_copies}
    weighted_copies = {
        layer.name for layer in net.layers if layer.blobs and ("_res075" in layer.name or "_res05" in layer.name)
    }
    assert copies == weighted_copies and len(copies) == 2 * (104 * 2 + 104 + 4)  # conv + BN + Scale, 4 ASPP
    assert all(owner == c.replace("_res075", "").replace("_res05", "") for c, owner in conv.shared_copies)
    assert sum(k.endswith("running_mean") for k in conv.state_dict) == 104
    assert conv.tap_map["res5c_res075"] == Tap("backbone.layer4.2", 1, "res5c_relu_res075", 0)
    assert conv.tap_map["conv1"] == Tap("backbone.stem.relu1", 0, "conv1_relu", 0)
    assert conv.tap_map["fc1_interp"] == Tap("upsample.interp", 0, "fc1_interp", 0)
    psp = convert_caffe_net(_load("pspnet50_ade20k_473"))
    assert psp.tap_map["conv5_4"].module == "head.dropout"
    assert psp.tap_map["conv5_3_concat"].module == "ppm"
    assert psp.tap_map["conv3_1_1x1_reduce"].module == "backbone.layer2.0.relu1"


@pytest.mark.parametrize("case", sorted(FULL))
def test_full_prototxt_detected_as_full_width(case):
    from segconvert.graph import load_net

    net = load_net(fixture_path("caffe", case, "full.prototxt"))
    arch, want = FULL[case]
    det = detect_caffe_arch(net)
    assert det.arch == arch
    for k, v in want.items():
        assert det.config[k] == v, k
    assert det.config["widths"] == [64, 128, 256, 512] and det.config["out_widths"] == [256, 512, 1024, 2048]
    conv = convert_caffe_net(net, require_weights=False)  # structure check and tap map without weights
    assert conv.state_dict == {}
    skipped = {t for _, t, _ in conv.skipped_layers}
    if arch.startswith("deeplab"):
        assert {"ImageSegData", "SegAccuracy", "Silence"} <= skipped
        assert conv.config["dilations"] == [1, 1, 2, 4]
    else:
        assert conv.config["ppm_bins"] == [6, 3, 2, 1] and conv.config["dropout"] == pytest.approx(0.1)
    with pytest.raises(ConversionError, match="no weights"):
        convert_caffe_net(net)


def test_deeplab_train_prototxt_skips_label_and_loss_layers():
    from segconvert.graph import load_net

    net = load_net(fixture_path("caffe", "deeplab_v2_resnet101_msc", "train_full.prototxt"), phase="TRAIN")
    conv = convert_caffe_net(net, require_weights=False)
    skipped = {name: reason for name, _, reason in conv.skipped_layers}
    assert skipped["label_shrink"] == "label / loss branch" and skipped["label_shrink16"] == "label / loss branch"
    assert {"loss", "loss_res1", "loss_res075", "loss_res05"} <= set(skipped)
    assert conv.config["input_size"] == [321, 321]


def test_unused_blob_and_missing_layer_are_reported():
    net = _fresh("deeplab_v2_resnet101_single")
    net.layer("fc1_voc12_c1").blobs.append(np.zeros(3, np.float32))
    with pytest.raises(ConversionError, match=r"unused source blobs: fc1_voc12_c1\[2\]"):
        convert_caffe_net(net)
    net = _fresh("deeplab_v2_resnet101_single")
    net.layers = [layer for layer in net.layers if layer.name != "bn4b3_branch2b"]
    with pytest.raises(ConversionError, match="res4b3_branch2b.*no BatchNorm"):
        convert_caffe_net(net)
    net = _fresh("deeplab_v2_resnet101_single")
    net.layers = [layer for layer in net.layers if layer.name != "res4b3_branch2b"]
    # the next layer then reads a blob nothing produces: that is what is reported (before any mapping)
    with pytest.raises(ConversionError, match=r"bn4b3_branch2b'.*\['res4b3_branch2b'\] that nothing produced"):
        convert_caffe_net(net)
    # a BatchNorm without Scale is valid Caffe: gamma = 1, beta = 0, and it is noted
    net = _fresh("deeplab_v2_resnet101_single")
    net.layers = [layer for layer in net.layers if layer.name != "scale4b3_branch2b"]
    conv = convert_caffe_net(net)
    assert torch.equal(conv.state_dict["backbone.layer3.3.bn2.weight"], torch.ones(32))
    assert torch.equal(conv.state_dict["backbone.layer3.3.bn2.bias"], torch.zeros(32))
    assert any("bn4b3_branch2b" in n for n in conv.notes)


def test_tampered_msc_copy_and_wrong_hyperparameters_fail():
    net = _fresh("deeplab_v2_resnet101_msc")
    layer = net.layer("res4b7_branch2b_res05")
    layer.blobs[0] = layer.blobs[0] + 1.0
    with pytest.raises(ConversionError, match="res4b7_branch2b_res05"):
        convert_caffe_net(net)
    net = _fresh("pspnet101_voc2012_473")
    p = net.layer("conv4_7_3x3").param.convolution_param
    p.dilation[0] = 1
    p.pad[0] = 1
    with pytest.raises(ConversionError, match="conv4_7_3x3.*dilation"):
        convert_caffe_net(net)
    net = _fresh("pspnet50_ade20k_473")
    net.layer("conv5_3_pool3").param.pooling_param.pool = 0  # MAX instead of AVE
    with pytest.raises(ConversionError, match="conv5_3_pool3"):
        convert_caffe_net(net)


def test_arch_and_overrides():
    net = _load("pspnet50_ade20k_473")
    with pytest.raises(ConversionError, match="depth 50"):
        convert_caffe_net(net, arch="pspnet101")
    with pytest.raises(ConversionError):
        convert_caffe_net(net, arch="deeplabv2_resnet101")
    conv = convert_caffe_net(net, arch="pspnet50", overrides={"ppm_mode": "adaptive", "norm": "bn"})
    assert conv.config["ppm_mode"] == "adaptive"
    model = conv.build_model()
    assert isinstance(model.backbone.stem.bn1, torch.nn.BatchNorm2d)
    x = torch.from_numpy(np.load(fixture_path("caffe", "pspnet50_ade20k_473", "input.npy")))
    with torch.no_grad():
        out = model(x)  # adaptive pooling equals the fixed kernels at 473 (60 = 6 * 10)
    root = fixture_path("caffe", "pspnet50_ade20k_473")
    entry = json.loads((root / "meta.json").read_text())["outputs"][-1]
    want = np.load(root / "outputs.npz")[entry["key"]]
    mine = out.numpy()[np.ix_(*entry["index"])]
    assert float(np.abs(mine - want).max()) < 2e-3 * entry["stats"]["absmax"]


def test_unrecognised_net_raises():
    from segconvert.graph import load_net

    root = fixture_path("caffe", "v1_format")
    with pytest.raises(ConversionError, match="not a recognised"):
        convert_caffe_net(load_net(root / "net.prototxt", root / "weights.caffemodel"))

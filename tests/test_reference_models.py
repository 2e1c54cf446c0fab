"""Reference models: registry round trips, stride/dilation placement, MSC sizes, PPM, losses (small widths)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segconvert.reference_models import (
    FrozenBatchNorm2d,
    capture_outputs,
    create_model,
    deeplab_msc_loss,
    get_config,
    get_preset,
    list_models,
)
from segconvert.reference_models.ops import CaffePool2d, Conv2dSame, TFSamePool2d
from segconvert.reference_models.resnet import resolve_strides
from segconvert.testing import fixture_path

SMALL = dict(stem_widths=[8], widths=[4, 8, 8, 8], out_widths=[8, 8, 16, 16])
SMALL_PSP = dict(stem_widths=[4, 4, 8], widths=[4, 8, 8, 8], out_widths=[8, 8, 16, 16], ppm_width=4, head_width=8)


def _bn_count(model: nn.Module) -> int:
    return sum(isinstance(m, FrozenBatchNorm2d | nn.BatchNorm2d) for m in model.modules())


def test_registry_names_and_round_trip():
    names = list_models()
    for n in ("deeplabv2_resnet101", "pspnet50", "pspnet101", "resnet"):
        assert n in names
    for n in ("pspnet50_ade20k", "pspnet101_voc2012", "pspnet101_cityscapes", "deeplabv2_resnet101_voc12"):
        assert n in names
    assert list_models("pspnet*", include_presets=False) == ["pspnet101", "pspnet50"]
    for name, kw in [
        ("deeplabv2_resnet101", SMALL),
        ("deeplabv2_resnet101", {**SMALL, "msc": False}),
        ("pspnet50", SMALL_PSP),
        ("pspnet101_cityscapes", SMALL_PSP),
        ("resnet", {**SMALL, "stride_in": "3x3_last", "padding": "tf_same", "output_stride": 16}),
    ]:
        m = create_model(name, **kw)
        cfg = json.loads(json.dumps(m.config))  # JSON-serialisable
        again = create_model(m.arch_name, **cfg)
        assert again.config == m.config
        assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}
        assert get_config(name, **kw) == m.config
    with pytest.raises(KeyError):
        create_model("deeplabv3")
    with pytest.raises(ValueError):
        create_model("pspnet50", stride_in="2x2")


def test_presets():
    p = get_preset("pspnet101_cityscapes")
    assert p["arch"] == "pspnet101"
    assert p["config"]["num_classes"] == 19 and p["config"]["input_size"] == [713, 713]
    assert p["config"]["stride_in"] == "3x3" and p["preprocessing"]["channel_order"] == "BGR"
    assert get_config("pspnet50_ade20k")["num_classes"] == 150
    assert get_config("pspnet50_ade20k")["stride_in"] == "1x1"
    assert get_config("pspnet101_voc2012")["num_classes"] == 21
    d = get_config("deeplabv2_resnet101_voc12")
    assert d["msc"] and d["num_classes"] == 21 and d["input_size"] == [513, 513]
    assert get_preset("deeplabv2_resnet101_voc12")["preprocessing"]["mean"] == [104.008, 116.669, 122.675]


def test_resnet50_parameter_count_matches_torchvision():
    """torchvision resnet50 has 25,557,032 parameters; without fc (2048*1000 + 1000) that is 23,508,032."""
    m = create_model("resnet", depth=50)
    n = sum(v.numel() for k, v in m.state_dict().items() if "running_" not in k)
    assert n == 25_557_032 - 2_049_000


def test_deeplab_has_104_bn_sets_and_no_scale_copies():
    with torch.device("meta"):
        m = create_model("deeplabv2_resnet101_voc12")
    assert _bn_count(m) == 104
    assert sum(k.endswith("running_mean") for k in m.state_dict()) == 104
    assert not any("res075" in k or "res05" in k for k in m.state_dict())


def test_stride_placement_per_model():
    with torch.device("meta"):
        dl = create_model("deeplabv2_resnet101")
        p50 = create_model("pspnet50")
        p101 = create_model("pspnet101")
        slim = create_model("resnet", stride_in="3x3_last", padding="tf_same", output_stride=8)
    for m, strided in ((dl, "conv1"), (p50, "conv1")):
        u = m.backbone.layer2[0]
        assert getattr(u, strided).stride == (2, 2)
        assert u.conv2.stride == (1, 1) and u.conv3.stride == (1, 1)
        assert u.downsample[0].stride == (2, 2)
    u = p101.backbone.layer2[0]
    assert u.conv1.stride == (1, 1) and u.conv2.stride == (2, 2) and u.downsample[0].stride == (2, 2)
    # slim: stride in conv2 of the LAST unit of block1; its shortcut subsamples; block1 unit 1 projects at s1
    assert slim.layer1[-1].conv2.stride == (2, 2)
    assert isinstance(slim.layer1[-1].downsample, nn.MaxPool2d) and slim.layer1[-1].downsample.stride == 2
    assert slim.layer1[0].downsample[0].stride == (1, 1)
    assert all(u.conv2.stride == (1, 1) for layer in (slim.layer2, slim.layer3, slim.layer4) for u in layer)
    for m in (dl, p50, p101):
        assert m.backbone.layer1[0].downsample is not None  # Caffe projects in every first unit


def test_dilation_in_stages_4_and_5():
    with torch.device("meta"):
        for m in (create_model("deeplabv2_resnet101"), create_model("pspnet50"), create_model("pspnet101")):
            for layer, d in ((m.backbone.layer3, 2), (m.backbone.layer4, 4)):
                for u in layer:
                    assert u.conv2.dilation == (d, d) and u.conv2.padding == (d, d) and u.conv2.stride == (1, 1)
            for u in m.backbone.layer2[1:]:
                assert u.conv2.dilation == (1, 1)
        aspp = create_model("deeplabv2_resnet101").aspp
    assert [c.dilation[0] for c in aspp.convs] == [6, 12, 18, 24]
    assert [c.padding[0] for c in aspp.convs] == [6, 12, 18, 24]
    assert all(c.bias is not None for c in aspp.convs)


def test_resolve_strides():
    assert resolve_strides("1x1", 8) == ([1, 2, 1, 1], [1, 1, 2, 4])
    assert resolve_strides("3x3", 16) == ([1, 2, 2, 1], [1, 1, 1, 2])
    assert resolve_strides("3x3", 32) == ([1, 2, 2, 2], [1, 1, 1, 1])
    # slim stack_blocks_dense (tf/README): OS8 -> block1 stride, then rates 1, 2, 4; OS16 -> rates 1, 1, 2
    assert resolve_strides("3x3_last", 8) == ([2, 1, 1, 1], [1, 1, 2, 4])
    assert resolve_strides("3x3_last", 16) == ([2, 2, 1, 1], [1, 1, 1, 2])
    assert resolve_strides("3x3_last", 32) == ([2, 2, 2, 1], [1, 1, 1, 1])


@pytest.mark.parametrize("case,os_", [("slim_resnet_v1_50_os8", 8), ("slim_resnet_v1_101_os16", 16)])
def test_slim_backbone_shapes_match_tf(case, os_):
    root = fixture_path("tf", case)
    depth = 50 if "50" in case else 101
    scope = f"resnet_v1_{depth}"
    m = create_model(
        "resnet", depth=depth, stride_in="3x3_last", padding="tf_same", output_stride=os_, widths=[8, 16, 32, 64]
    ).eval()
    assert isinstance(m.stem.pool, TFSamePool2d)
    for npz, inp in (("outputs.npz", "input.npy"), ("outputs_alt.npz", "input_alt.npy")):
        ref = np.load(root / npz)
        x = torch.zeros(np.load(root / inp).transpose(0, 3, 1, 2).shape)
        taps = {"pool1": "stem", **{f"block{i}": f"layer{i}" for i in range(1, 5)}, "conv1": "stem.relu1"}
        _, got = capture_outputs(m, x, taps)
        for k, v in got.items():
            want = ref[f"{scope}/{k}"].shape
            assert tuple(v.shape) == (want[0], want[3], want[1], want[2]), (case, npz, k)


def test_deeplab_msc_sizes_and_outputs():
    m = create_model("deeplabv2_resnet101", **SMALL).eval()
    x = torch.randn(1, 3, 129, 129)
    taps = {
        "data_res075": "resize075",
        "data_res05": "resize05",
        "f1": ("aspp", 0),
        "f075": ("aspp", 1),
        "f05": ("aspp", 2),
        "u075": "upsample075",
        "u05": "upsample05",
        "fusion": "fuse",
        "conv1_05": ("backbone.stem.conv1", 2),
    }
    out, got = capture_outputs(m, x, taps)
    # fixture README "MSC sizes": 129 -> 97 / 65; features 17 / 13 / 9; interps 13 -> 17, 9 -> 17; out 129
    assert got["data_res075"].shape[-1] == 97 and got["data_res05"].shape[-1] == 65
    assert [got[k].shape[-1] for k in ("f1", "f075", "f05", "u075", "u05")] == [17, 13, 9, 17, 17]
    assert got["conv1_05"].shape[-1] == 33
    assert torch.equal(got["fusion"], torch.maximum(torch.maximum(got["f1"], got["u075"]), got["u05"]))
    assert out.shape == (1, 21, 129, 129)
    # eval output = Interp zoom 8 of the fused map: output pixel 8i equals feature pixel i
    assert torch.allclose(out[..., ::8, ::8], got["fusion"], atol=1e-5)
    m.train()
    tr = m(x)
    assert list(tr) == ["fc_fusion", "fc1_voc12", "fc1_voc12_res075_interp", "fc1_voc12_res05"]
    assert tr["fc1_voc12_res05"].shape[-1] == 9


def test_deeplab_single_scale_and_other_sizes():
    m = create_model("deeplabv2_resnet101", msc=False, **SMALL).eval()
    assert not hasattr(m, "fuse")
    assert m(torch.randn(1, 3, 97, 97)).shape == (1, 21, 97, 97)
    assert m(torch.randn(1, 3, 100, 90)).shape == (1, 21, 100, 90)
    m.train()
    assert list(m(torch.randn(1, 3, 65, 65))) == ["fc1_voc12"]


def test_deeplab_msc_loss_terms():
    g = torch.Generator().manual_seed(1)
    out = {
        "fc_fusion": torch.randn(2, 21, 41, 41, generator=g),
        "fc1_voc12": torch.randn(2, 21, 41, 41, generator=g),
        "fc1_voc12_res075_interp": torch.randn(2, 21, 41, 41, generator=g),
        "fc1_voc12_res05": torch.randn(2, 21, 21, 21, generator=g),
    }
    label = torch.randint(0, 21, (2, 321, 321), generator=g)
    label[:, :50] = 255
    total, terms = deeplab_msc_loss(out, label)
    assert list(terms) == ["loss", "loss_res1", "loss_res075", "loss_res05"]
    l8, l16 = label[:, ::8, ::8], label[:, ::16, ::16]
    want = [
        F.cross_entropy(out["fc_fusion"], l8, ignore_index=255),
        F.cross_entropy(out["fc1_voc12"], l8, ignore_index=255),
        F.cross_entropy(out["fc1_voc12_res075_interp"], l8, ignore_index=255),
        F.cross_entropy(out["fc1_voc12_res05"], l16, ignore_index=255),
    ]
    for got, w in zip(terms.values(), want, strict=True):
        assert torch.allclose(got, w, rtol=1e-5)
    assert torch.allclose(total, sum(want), rtol=1e-5)
    empty = torch.full((1, 321, 321), 255)
    t, _ = deeplab_msc_loss({k: v[:1] for k, v in out.items()}, empty)
    assert t.item() == 0.0  # Caffe VALID normalisation with no valid pixel: 0, not NaN


@pytest.mark.parametrize("size,kernels", [(473, [10, 20, 30, 60]), (713, [15, 30, 45, 90])])
def test_pspnet_fixed_ppm_kernels(size, kernels):
    with torch.device("meta"):
        m = create_model("pspnet101", input_size=[size, size])
    assert m.backbone.feature_size(size, size) == ((size - 1) // 8 + 1,) * 2
    assert [getattr(m.ppm, f"pool{b}").pool.pool.kernel_size[0] for b in (6, 3, 2, 1)] == kernels
    assert m.ppm.names == ["pool6", "pool3", "pool2", "pool1"]
    assert isinstance(m.backbone.stem.pool, CaffePool2d)


def test_pspnet_forward_concat_order_and_sizes():
    m = create_model("pspnet50", **SMALL_PSP).eval()
    x = torch.randn(1, 3, 473, 473)
    taps = {"feat": "backbone.layer4", "ppm": "ppm", **{f"p{b}": f"ppm.pool{b}" for b in (6, 3, 2, 1)}}
    taps.update({f"pooled{b}": f"ppm.pool{b}.pool" for b in (6, 3, 2, 1)})
    out, got = capture_outputs(m, x, taps)
    assert out.shape == (1, 150, 473, 473)
    assert got["feat"].shape[-1] == 60
    assert [got[f"pooled{b}"].shape[-1] for b in (6, 3, 2, 1)] == [6, 3, 2, 1]
    c = got["feat"].shape[1]
    parts = [got["feat"]] + [got[f"p{b}"] for b in (6, 3, 2, 1)]
    assert torch.equal(got["ppm"], torch.cat(parts, 1))
    assert got["ppm"].shape[1] == c + 4 * 4
    with pytest.raises(ValueError, match="crop"):
        m(torch.randn(1, 3, 400, 400))


def test_pspnet_adaptive_aux_and_norm_switch():
    m = create_model("pspnet50", ppm_mode="adaptive", aux=True, norm="bn", **SMALL_PSP)
    assert isinstance(m.backbone.stem.bn1, nn.BatchNorm2d)
    m.train()
    out = m(torch.randn(2, 3, 100, 120))
    assert set(out) == {"out", "aux"} and out["aux"].shape == (2, 150, 100, 120)
    m.eval()
    assert m(torch.randn(1, 3, 97, 97)).shape == (1, 150, 97, 97)
    frozen = create_model("pspnet50", ppm_mode="adaptive", **SMALL_PSP)
    frozen_sd = frozen.state_dict()
    bn_model = create_model("pspnet50", ppm_mode="adaptive", norm="bn", **SMALL_PSP)
    bn_model.load_state_dict(frozen_sd, strict=False)
    missing = set(bn_model.state_dict()) - set(frozen_sd)
    assert missing and all(k.endswith("num_batches_tracked") for k in missing)
    assert isinstance(create_model("pspnet50", norm="syncbn", **SMALL_PSP).head.bn, nn.SyncBatchNorm)


def test_pspnet_tf_variants_build_and_run():
    keras = create_model("pspnet50", padding="tf_same", **SMALL_PSP).eval()
    assert isinstance(keras.backbone.stem.conv1, Conv2dSame)
    assert keras(torch.randn(1, 3, 473, 473)).shape == (1, 150, 473, 473)
    slim = create_model(
        "pspnet50",
        stem="7x7",
        stride_in="3x3_last",
        padding="tf_same",
        ppm_mode="tf_same",
        resize="tf1_legacy",
        num_classes=19,
        input_size=None,
        stem_widths=[64],
        widths=[8, 16, 32, 64],
        ppm_width=64,
        head_width=64,
    ).eval()
    out, got = capture_outputs(slim, torch.randn(1, 3, 97, 97), {"f": "backbone.layer4", "p": "ppm.pool6.pool"})
    assert got["f"].shape[-1] == 13 and got["p"].shape[-1] == 7  # TF SAME k=2 on 13 -> 7 bins (tf/README)
    assert out.shape == (1, 19, 97, 97)


def test_capture_outputs_reports_missing_calls():
    m = create_model("deeplabv2_resnet101", msc=False, **SMALL).eval()
    with pytest.raises(KeyError):
        capture_outputs(m, torch.randn(1, 3, 33, 33), {"x": ("aspp", 1)})

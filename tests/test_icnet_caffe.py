"""ICNet from the Caffe release: hszhao/ICNet's icnet_cityscapes(_bnnomerge).prototxt topology, width-reduced and at
a smaller crop (pyramid kernels re-derived as the release's), random weights; the named path (``icnet``) against the
generic path (one module per Caffe layer, itself checked against real Caffe layer by layer)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segconvert.converters.caffe_auto import NAMED_PATH, convert_caffe_auto
from segconvert.converters.caffe_generic import convert_caffe_generic
from segconvert.errors import ConversionError
from segconvert.formats.caffemodel_writer import random_weights_for, write_caffemodel
from segconvert.formats.prototxt_builder import _bn, _conv, _layer
from segconvert.graph import load_net
from segconvert.reference_models import capture_outputs, create_model
from segconvert.reference_models.icnet import ICNET_CAFFE_POOLS

H, W = 257, 513  # conv5_3 is 9x17 (the release: 1025x2049 -> 33x65)
# bin -> (kernel, stride) as the release derives them: stride_h = (f_h - 1) // bin, stride_w = 2 stride_h,
# kernel = f - (bin - 1) stride (the release's 33x65 values follow the same rule, checked below)
POOLS = {6: ((4, 7), (1, 2)), 3: ((5, 9), (2, 4)), 2: ((5, 9), (4, 8)), 1: ((9, 17), (9, 17))}


def _pools_rule(fh: int, fw: int) -> dict[int, tuple[tuple[int, int], tuple[int, int]]]:
    out = {}
    for b in (6, 3, 2, 1):
        if b == 1:
            out[b] = ((fh, fw), (fh, fw))
            continue
        sh = (fh - 1) // b
        sw = 2 * sh
        out[b] = ((fh - (b - 1) * sh, fw - (b - 1) * sw), (sh, sw))
    return out


def test_pool_rule_reproduces_the_release():
    release = {b: (tuple(k), tuple(s)) for b, (k, s) in ICNET_CAFFE_POOLS.items()}
    assert _pools_rule(33, 65) == release
    assert _pools_rule(9, 17) == POOLS


def icnet_prototxt(div: int = 4, batchnorm: bool = True, classes: int = 19) -> str:
    """The released ICNet deploy topology (names, wiring, strides, dilations, Interp/Pooling/Eltwise layers)."""
    w = lambda c: max(1, c // div)  # noqa: E731
    bias = not batchnorm

    def conv(name, bottom, out, k, s=1, p=0, d=1, relu=True):
        text = _conv(name, bottom, out, k, s=s, p=p, d=d, bias=bias)
        if batchnorm:
            return text + _bn(name, relu)
        return text + (_layer(f"{name}/relu", "ReLU", [name], [name]) if relu else "")

    def interp(name, bottom, body):
        return _layer(name, "Interp", [bottom], [name], f"  interp_param {{\n{body}  }}\n")

    def add(name, bottoms, relu=True):
        text = _layer(name, "Eltwise", bottoms, [name], "  eltwise_param {\n    operation: SUM\n  }\n")
        return text + (_layer(f"{name}/relu", "ReLU", [name], [name]) if relu else "")

    t = f'name: "icnet_cityscapes"\ninput: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: {H}\ninput_dim: {W}\n'
    t += _layer("data_sub1", "Scale", ["data"], ["data_sub1"])
    t += interp("data_sub2", "data_sub1", "    shrink_factor: 2\n")
    t += conv("conv1_1_3x3_s2", "data_sub2", w(32), 3, s=2, p=1)
    t += conv("conv1_2_3x3", "conv1_1_3x3_s2", w(32), 3, p=1)
    t += conv("conv1_3_3x3", "conv1_2_3x3", w(64), 3, p=1)
    pool = "  pooling_param {\n    pool: MAX\n    kernel_size: 3\n    stride: 2\n    pad: 1\n  }\n"
    t += _layer("pool1_3x3_s2", "Pooling", ["conv1_3_3x3"], ["pool1_3x3_s2"], pool)
    prev = "pool1_3x3_s2"
    for si, n in enumerate((3, 4, 6, 3)):
        s = si + 2
        mid, out, dil = w(32 * 2**si), w(128 * 2**si), {4: 2, 5: 4}.get(s, 1)
        for k in range(1, n + 1):
            base, stride = f"conv{s}_{k}", (2 if (s, k) == (3, 1) else 1)
            t += conv(f"{base}_1x1_reduce", prev, mid, 1, s=stride)
            t += conv(f"{base}_3x3", f"{base}_1x1_reduce", mid, 3, p=dil, d=dil)
            t += conv(f"{base}_1x1_increase", f"{base}_3x3", out, 1, relu=False)
            short = prev
            if k == 1:
                t += conv(f"{base}_1x1_proj", prev, out, 1, s=stride, relu=False)
                short = f"{base}_1x1_proj"
            t += add(base, [short, f"{base}_1x1_increase"])
            prev = base
            if base == "conv3_1":
                t += interp("conv3_1_sub4", "conv3_1", "    shrink_factor: 2\n")
                prev = "conv3_1_sub4"
    for b, ((kh, kw), (sh, sw)) in POOLS.items():
        body = f"  pooling_param {{\n    pool: AVE\n    kernel_h: {kh}\n    kernel_w: {kw}\n"
        body += f"    stride_h: {sh}\n    stride_w: {sw}\n  }}\n"
        t += _layer(f"conv5_3_pool{b}", "Pooling", ["conv5_3"], [f"conv5_3_pool{b}"], body)
        t += interp(f"conv5_3_pool{b}_interp", f"conv5_3_pool{b}", "    height: 9\n    width: 17\n")
    t += add("conv5_3_sum", ["conv5_3"] + [f"conv5_3_pool{b}_interp" for b in POOLS], relu=False)
    t += conv("conv5_4_k1", "conv5_3_sum", w(256), 1)
    t += interp("conv5_4_interp", "conv5_4_k1", "    zoom_factor: 2\n")
    t += conv("conv_sub4", "conv5_4_interp", w(128), 3, p=2, d=2, relu=False)
    t += conv("conv3_1_sub2_proj", "conv3_1", w(128), 1, relu=False)
    t += add("sub24_sum", ["conv3_1_sub2_proj", "conv_sub4"])
    t += interp("sub24_sum_interp", "sub24_sum", "    zoom_factor: 2\n")
    t += conv("conv_sub2", "sub24_sum_interp", w(128), 3, p=2, d=2, relu=False)
    t += conv("conv1_sub1", "data_sub1", w(32), 3, s=2, p=1)
    t += conv("conv2_sub1", "conv1_sub1", w(32), 3, s=2, p=1)
    t += conv("conv3_sub1", "conv2_sub1", w(64), 3, s=2, p=1)
    t += conv("conv3_sub1_proj", "conv3_sub1", w(128), 1, relu=False)
    t += add("sub12_sum", ["conv3_sub1_proj", "conv_sub2"])
    t += interp("sub12_sum_interp", "sub12_sum", "    zoom_factor: 2\n")
    t += _conv("conv6_cls", "sub12_sum_interp", classes, 1, bias=True)
    t += interp("conv6_interp", "conv6_cls", "    zoom_factor: 4\n")
    return t


def _net(tmp_path, batchnorm: bool, seed: int):
    proto = tmp_path / f"icnet_{batchnorm}.prototxt"
    proto.write_text(icnet_prototxt(batchnorm=batchnorm))
    weights = random_weights_for(load_net(proto), seed=seed)
    model = tmp_path / f"icnet_{batchnorm}.caffemodel"
    write_caffemodel(model, weights)
    return load_net(proto, model)


# Caffe top -> (named-model module, generic layer_outputs key: the last in-place layer's output)
TAPS = {
    "conv3_1": ("backbone.layer2.0", "conv3_1/relu/0"),
    "conv5_3_sum": ("ppm", "conv5_3_sum/0"),
    "conv5_4_k1": ("ppm_conv", "conv5_4_k1/relu/0"),
    "sub24_sum": ("cff24.relu", "sub24_sum/relu/0"),
    "sub12_sum": ("cff12.relu", "sub12_sum/relu/0"),
    "conv6_cls": ("classifier", "conv6_cls/0"),
}


@pytest.mark.parametrize("batchnorm", [True, False], ids=["bnnomerge", "merged"])
def test_named_icnet_matches_generic_path(tmp_path, batchnorm):
    net = _net(tmp_path, batchnorm, seed=3 + batchnorm)
    conv, path = convert_caffe_auto(net)  # auto-detected from the prototxt
    assert path == NAMED_PATH and conv.arch == "icnet"
    cfg = conv.config
    assert cfg["batchnorm"] is batchnorm and cfg["input_size"] == [H, W] and cfg["input_scale"]
    assert cfg["ppm_bins"] == [6, 3, 2, 1] and cfg["ppm_kernels"][0] == [4, 7] and cfg["widths"] == [8, 16, 32, 64]
    named = conv.build_model()
    scale = net.layers[0].blobs[0].reshape(-1)
    assert not np.allclose(scale, 1.0)  # the input Scale is exercised
    generic = convert_caffe_generic(net).build_model()
    x = torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(0)) * 50
    ref = generic.layer_outputs(x)
    with torch.no_grad():
        out, got = capture_outputs(named, x, {k: v[0] for k, v in TAPS.items()})
    for k, (_, gkey) in TAPS.items():
        a, b = got[k], ref[gkey]
        assert a.shape == b.shape, k
        assert (a - b).abs().max().item() <= 1e-4 * max(1.0, b.abs().max().item()), k
    final = ref["conv6_interp/0"]
    assert out.shape == (1, 19, H, W) and (out - final).abs().max().item() <= 1e-4 * final.abs().max().item()


def test_icnet_arch_refuses_a_pspnet(tmp_path):
    from segconvert.formats.prototxt_builder import pspnet_prototxt

    proto = tmp_path / "psp.prototxt"
    proto.write_text(pspnet_prototxt(width_divisor=16, input_size=97))
    with pytest.raises(ConversionError, match="not an ICNet"):
        convert_caffe_auto(load_net(proto), arch="icnet")


def test_icnet_training_outputs_and_loss():
    from segconvert.reference_models.icnet import icnet_loss

    m = create_model("icnet", ppm_mode="adaptive", aux=True, norm="bn", stem_widths=[8, 8, 16],
                     widths=[8, 16, 32, 64], ppm_width=64, cff_width=32, sub1_widths=[8, 8, 16])  # fmt: skip
    m.train()
    x = torch.randn(2, 3, 129, 257)
    out = m(x)
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(33, 65), (17, 33), (9, 17)]
    label = torch.randint(0, 19, (2, 129, 257))
    label[:, :10] = 255
    total, terms = icnet_loss(out, label)
    assert set(terms) == {"out", "sub24", "sub4"}
    # the sub4 term by hand: weight 0.16, label at the align_corners sample points (every 16th pixel here)
    lab4 = label[:, ::16, ::16]
    ce = torch.nn.functional.cross_entropy(out["sub4"], lab4, ignore_index=255)
    assert torch.allclose(terms["sub4"], 0.16 * ce, rtol=1e-5)
    total.backward()
    assert m.classifier.weight.grad is not None and m.cff24.classifier.weight.grad is not None


def test_zoo_icnet_entries_build_with_the_published_sizes():
    """fast-semantic-segmentation's model zoo lists 26.82M / 6.71M parameters for its ICNet 1.0 / 0.5."""
    from segconvert.weights import zoo

    counts = {}
    for e in zoo.entries():
        if e["arch"] == "icnet":
            assert not zoo.validate(e)
            with torch.device("meta"):
                m = create_model("icnet", **e["config"])
            counts[e["name"]] = sum(p.numel() for p in m.parameters())
    assert round(counts["fss_icnet_1.0_1025_resnet_v1"] / 1e6, 2) == 26.82
    assert round(counts["fss_icnet_0.5_1025_resnet_v1"] / 1e6, 2) == 6.71
    assert counts["icnet_cityscapes_train_30k"] == counts["icnet_cityscapes_trainval_90k"]


def test_caffe2torch_detects_icnet(tmp_path):
    from segconvert.weights.store import load_model, read_metadata
    from tests.cli_runner import run_cli

    proto, model = tmp_path / "icnet.prototxt", tmp_path / "icnet.caffemodel"
    proto.write_text(icnet_prototxt(div=8, batchnorm=False))
    write_caffemodel(model, random_weights_for(load_net(proto), seed=9))
    code, out, err = run_cli("caffe2torch", proto, model, "-o", tmp_path / "icnet.safetensors")
    assert code == 0, err
    assert "architecture: icnet" in out and "path: named architecture" in out
    meta = read_metadata(tmp_path / "icnet.safetensors")
    assert meta["preprocessing"]["mean"] == [103.939, 116.779, 123.68] and meta["config"]["batchnorm"] is False
    assert isinstance(load_model(tmp_path / "icnet.safetensors").input_scale, torch.nn.Parameter)

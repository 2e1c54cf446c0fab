"""BatchNorm / BN / Scale / Bias folding (segconvert.inference.fuse) on the fixture nets and hand-built generic nets."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from torch import nn

from segconvert.converters import convert_caffe_net
from segconvert.converters.caffe_generic import convert_caffe_generic
from segconvert.inference.fuse import Folded, check_fused, fuse_model
from segconvert.reference_models.caffe_generic import CaffeGenericNet
from segconvert.testing import fixture_path

NETS = ["deeplab_v2_resnet101_single", "deeplab_v2_resnet101_msc", "pspnet50_ade20k_473"]
SLOW_NETS = ["pspnet101_voc2012_473", "pspnet101_cityscapes_713"]


@functools.cache
def _case(case: str):
    from segconvert.graph import load_net

    root = fixture_path("caffe", case)
    net = load_net(root / "net.prototxt", root / "weights.caffemodel")
    meta = json.loads((root / "meta.json").read_text())
    return net, meta, torch.from_numpy(np.load(root / "input.npy")), np.load(root / "outputs.npz")


def _last(out):
    return out[-1] if isinstance(out, (tuple, list)) else out


def _check_net(case: str, path: str) -> None:
    net, meta, x, ref = _case(case)
    model = convert_caffe_net(net).build_model() if path == "named" else convert_caffe_generic(net).build_model()
    fused, report = fuse_model(model, [x])
    declared = [lay for lay in meta["layers"] if not lay["implicit"]]
    n_bn = sum(lay["type"] in ("BN", "BatchNorm") for lay in declared)
    n_affine = sum(lay["type"] in ("BN", "BatchNorm", "Scale", "Bias") for lay in declared)
    copies = {lay["name"] for lay in declared if lay["name"].endswith(("_res075", "_res05"))}
    owners_bn = n_bn - sum(lay["type"] in ("BN", "BatchNorm") for lay in declared if lay["name"] in copies)
    # every BN / BatchNorm(+Scale) of the net follows a convolution: all are folded, each shared copy once
    assert len(report.folded) == owners_bn
    if path == "generic":
        owners_aff = n_affine - sum(lay["type"] in ("BatchNorm", "Scale") for lay in declared if lay["name"] in copies)
        assert sum(len(v) for v in report.folded.values()) == owners_aff
    assert report.trace_device == "empty"  # traced on a batch of 0: no arithmetic, nothing imported
    assert not any(isinstance(m, Folded) for m in model.modules())  # the original is untouched (a copy is fused)
    check = check_fused(model, fused, report, [x])
    assert check.worst_layer_rel <= 1e-5, check.describe()  # each fold exact in float32, on its real input
    assert check.ok(), check.describe()
    # and the fused net still matches real Caffe with the fixtures' end-to-end tolerance
    final = declared[-1]
    want = ref[f"{final['name']}/0"]
    with torch.no_grad():
        got = _last(fused(x)).numpy()
    entry = {o["key"]: o for o in meta["outputs"]}[f"{final['name']}/0"]
    if entry.get("stored") == "sampled":
        got = got[np.ix_(*entry["index"])]
    assert np.abs(got - want).max() <= 2e-3 * np.abs(want).max()


@pytest.mark.parametrize("path", ["named", "generic"])
@pytest.mark.parametrize("case", NETS)
def test_fused_matches_unfused_and_caffe_on_fixture_nets(case, path):
    _check_net(case, path)


@pytest.mark.parametrize("path", ["named", "generic"])
@pytest.mark.parametrize("case", NETS)
def test_the_empty_batch_trace_plans_what_the_meta_trace_plans(case, path, monkeypatch):
    """The trace on a batch of 0 (real kernels, zero elements) gives the same folds, in-place activations and
    oneDNN conversions as the meta-device trace it replaced."""
    import segconvert.inference.trace as trace_mod
    from segconvert.inference.onednn import onednn_model

    net, _, x, _ = _case(case)

    def plan(force_meta: bool):
        if force_meta:
            monkeypatch.setattr(trace_mod, "_empty_batch", lambda inputs: None)
        model = convert_caffe_net(net).build_model() if path == "named" else convert_caffe_generic(net).build_model()
        fused, report = fuse_model(model.eval(), [x], inplace=True)
        dnn = onednn_model(fused, [x])
        monkeypatch.undo()
        return report, dnn

    (empty, dnn_empty), (meta, dnn_meta) = plan(False), plan(True)
    assert (empty.trace_device, meta.trace_device) == ("empty", "meta")
    assert empty.folded == meta.folded and len(empty.folded) > 10
    assert empty.inplace == meta.inplace
    assert (dnn_empty.convs, dnn_empty.fused, dnn_empty.skipped) == (dnn_meta.convs, dnn_meta.fused, dnn_meta.skipped)
    assert len(dnn_empty.convs) > 10


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_NETS)
def test_fused_matches_on_pspnet101_nets(case):
    _check_net(case, "generic")


# ------------------------------------------------------------------------------- hand-built generic nets


def L(name, kind, bottoms, tops=None, module=None, **params):  # noqa: N802 - a layer spec, read like a prototxt line
    spec = {"name": name, "type": kind, "bottoms": list(bottoms), "tops": list(tops or [name]), "params": params}
    if kind not in ("Input", "Split"):
        spec["module"] = module or name
    return spec


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype.is_floating_point:
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                elif name.endswith("weight") and t.dim() == 1:
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                else:
                    t.copy_(torch.randn(t.shape, generator=g) * 0.3)
    return model.eval()


def _net(layers, c=4, hw=9):
    inputs = [{"name": "data", "shape": [1, c, hw, hw]}]
    model = CaffeGenericNet(layers, inputs, [layers[-1]["tops"][0]])
    return _randomise(model), torch.randn(1, c, hw, hw, generator=torch.Generator().manual_seed(1))


def _conv(name, bottom, cin=4, cout=6, bias=True, **kw):
    p = dict(in_channels=cin, out_channels=cout, kernel_size=3, padding=1, bias=bias, **kw)
    return L(name, "Convolution", [bottom], **p)


def _fused(layers, **kw):
    model, x = _net(layers, **kw)
    fused, report = fuse_model(model, [x])
    with torch.no_grad():
        a, b = model(x), fused(x)
    assert torch.allclose(a, b, rtol=0, atol=1e-5 * float(a.abs().max())), float((a - b).abs().max())
    return report, fused


def test_batchnorm_scale_bias_chain_folds_into_one_conv():
    layers = [
        _conv("conv", "data", bias=False),
        L("bn", "BatchNorm", ["conv"], ["conv"], num_features=6, eps=1e-5, use_global_stats=True),
        L("scale", "Scale", ["conv"], ["conv"], weight_shape=[6], bias_shape=[6], axis=1),
        L("bias", "Bias", ["conv"], ["conv"], shape=[6], axis=1),
        L("relu", "ReLU", ["conv"], ["conv"]),
    ]
    report, fused = _fused(layers)
    assert report.folded == {"conv": ["bn", "scale", "bias"]} and report.inplace == ["relu"]
    assert fused.conv.bias is not None and isinstance(fused.scale, Folded)


def test_psp_bn_after_conv_with_bias_and_deconv():
    layers = [
        _conv("conv", "data"),
        L("bn", "BN", ["conv"], ["conv"], num_features=6, eps=1e-3),
        L(
            "up",
            "Deconvolution",
            ["conv"],
            in_channels=6,
            out_channels=6,
            kernel_size=4,
            stride=2,
            padding=1,
            groups=3,
            bias=False,
        ),  # fmt: skip
        L("up_bn", "BN", ["up"], num_features=6, eps=1e-5),
    ]
    report, _ = _fused(layers)
    assert report.folded == {"conv": ["bn"], "up": ["up_bn"]}


def test_no_fold_when_the_conv_output_is_read_elsewhere_or_the_layer_is_not_per_channel():
    layers = [
        _conv("conv", "data"),
        L("bn", "BN", ["conv"], ["bn"], num_features=6),
        L("sum", "Eltwise", ["conv", "bn"], operation="sum"),  # the pre-BN value is needed: no fold
        _conv("conv2", "sum", cin=6, cout=6),
        L("scale2", "Scale", ["conv2"], ["s2"], weight_shape=[6, 9, 9], axis=1),  # per element, not per channel
        _conv("conv3", "s2", cin=6, cout=6),
        L("bn3", "BatchNorm", ["conv3"], ["b3"], num_features=6, use_global_stats=False),  # batch statistics
        L("relu3", "ReLU", ["b3"], ["r3"]),
        L("out", "Eltwise", ["b3", "r3"], operation="sum"),  # b3 read twice: the ReLU must not be in place
    ]
    report, _ = _fused(layers)
    assert report.folded == {} and report.inplace == []


def test_shared_conv_folds_only_when_every_use_has_the_same_bn():
    same = [
        _conv("conv", "data", cin=4, cout=4),
        L("bn", "BN", ["conv"], ["a"], num_features=4),
        L(
            "conv_b",
            "Convolution",
            ["a"],
            ["c2"],
            module="conv",
            in_channels=4,
            out_channels=4,
            kernel_size=3,
            padding=1,
            bias=True,
        ),  # fmt: skip
        L("bn_b", "BN", ["c2"], ["out"], module="bn", num_features=4),
    ]
    for s in same[2:]:
        s["shared_from"] = {"conv_b": "conv", "bn_b": "bn"}[s["name"]]
    report, _ = _fused(same)
    assert report.folded == {"conv": ["bn"]}
    other = [dict(s) for s in same]
    other[3] = L("bn_b", "BN", ["c2"], ["out"], num_features=4)  # a different BN after the second use
    report, _ = _fused(other)
    assert report.folded == {}


def test_batchnorm2d_in_eval_mode_and_not_in_training():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU())

        def forward(self, x):
            return self.body(x)

    m = _randomise(Block())
    x = torch.randn(2, 3, 8, 8)
    fused, report = fuse_model(m, [x])
    assert report.folded == {"body.0": ["body.1"]} and report.inplace == ["body.2"]
    with torch.no_grad():
        torch.testing.assert_close(fused(x), m(x), rtol=0, atol=1e-5 * float(m(x).abs().max()))
    with pytest.raises(ValueError, match="eval mode"):
        fuse_model(m.train(), [x])

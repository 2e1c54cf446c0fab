"""The oneDNN convolution pass (segconvert.inference.onednn) against the unfused eager model.

Every check compares with the plain converted module (BatchNorm separate, eager ``F.conv2d``): per oneDNN
convolution on the input it really gets (vs ``F.conv2d`` + the original activation: <= 1e-5 x magnitude) and
end to end (the folding bound of ``check_fused``), on the fixture PSPNet / DeepLab-v2 nets (named and generic),
the Keras benchmark families, and hand-built generic nets for each activation / padding / groups case; NCHW
and channels_last inputs, another batch and size than traced; the eager fallback under autocast, in float64
and with gradients; no change where oneDNN is absent.
"""

from __future__ import annotations

import copy
import functools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segconvert.inference import onednn as od
from segconvert.inference.onednn import FusedActivation, OneDNNConv2d, onednn_available, onednn_model
from segconvert.inference.prepare import prepare_model
from segconvert.reference_models import keras_ops

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN (mkldnn)")


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-12))


def _last(out):
    return out[-1] if isinstance(out, (tuple, list)) else out


def _layer_worst(model: nn.Module, *xs: torch.Tensor) -> float:
    """Worst oneDNN conv vs its eager fallback (F.conv2d + the original activation) on its real input."""
    worst, handles = 0.0, []

    def post(mod: OneDNNConv2d, args: tuple, out: torch.Tensor) -> None:
        nonlocal worst
        ref = mod.eager(args[0].clone())  # a copy: the original activation may work in place
        worst = max(worst, _rel(out, ref))

    for m in model.modules():
        if isinstance(m, OneDNNConv2d):
            handles.append(m.register_forward_hook(post))
    try:
        with torch.no_grad():
            model(*xs)
    finally:
        for h in handles:
            h.remove()
    return worst


def _check(model: nn.Module, xs: list[torch.Tensor], more: list[list[torch.Tensor]], end_rtol: float = 2e-3):
    """Prepare with and without the pass; compare with the unfused ``model`` on ``xs`` and each of ``more``."""
    model.eval()
    folded = prepare_model(copy.deepcopy(model), onednn=False, inputs=xs)
    fast = prepare_model(copy.deepcopy(model), onednn=True, inputs=xs)
    rep = fast.segconvert_onednn
    n_conv = sum(type(m) in (nn.Conv2d, keras_ops.Conv) for m in model.modules())
    assert rep.reason is None and len(rep.convs) >= 1
    assert not any(type(m) in (nn.Conv2d, keras_ops.Conv) for m in fast.modules())  # all replaced
    assert len(rep.convs) <= n_conv
    assert fast.state_dict().keys() == folded.state_dict().keys()  # the same parameters, same names
    for i, case in enumerate([xs, [x.contiguous(memory_format=torch.channels_last) for x in xs], *more]):
        with torch.no_grad():
            ref, got, fold = _last(model(*case)), _last(fast(*case)), _last(folded(*case))
        assert got.shape == ref.shape
        assert _rel(got, ref) <= end_rtol, (_rel(got, ref), _rel(fold, ref))
        if i < 2:  # per layer on the traced input, NCHW and channels_last (other kernels for NHWC)
            assert _layer_worst(fast, *case) <= 1e-5
        # the input's memory format is kept (oneDNN returns NHWC for NHWC, NCHW for NCHW)
        if got.dim() == 4 and case[0].dim() == 4 and min(got.shape[2:]) > 1 and got.shape[1] > 1:
            cl = case[0].is_contiguous(memory_format=torch.channels_last) and not case[0].is_contiguous()
            assert (
                fold.is_contiguous(memory_format=torch.channels_last)
                == got.is_contiguous(memory_format=torch.channels_last)
                or not cl
            )
    return fast, rep


# ------------------------------------------------------------------------------------------ fixture nets


@functools.cache
def _caffe_case(case: str):
    from segconvert.graph import load_net
    from segconvert.testing import fixture_path

    root = fixture_path("caffe", case)
    net = load_net(root / "net.prototxt", root / "weights.caffemodel")
    meta = json.loads((root / "meta.json").read_text())
    return net, meta, torch.from_numpy(np.load(root / "input.npy"))


_SLOW = pytest.mark.slow  # the generic twin of a net checked by name too (~30 s each on the 2-core machine)


@pytest.mark.parametrize(
    "case,path",
    [
        ("deeplab_v2_resnet101_single", "named"),
        pytest.param("deeplab_v2_resnet101_single", "generic", marks=_SLOW),
        ("deeplab_v2_resnet101_msc", "named"),
        ("deeplab_v2_resnet101_msc", "generic"),  # per-scale ReLU modules after the shared convs
        ("pspnet50_ade20k_473", "named"),
        pytest.param("pspnet50_ade20k_473", "generic", marks=_SLOW),
    ],
)
def test_fixture_nets(case, path):
    from segconvert.converters import convert_caffe_net
    from segconvert.converters.caffe_generic import convert_caffe_generic

    net, _, x = _caffe_case(case)
    model = convert_caffe_net(net).build_model() if path == "named" else convert_caffe_generic(net).build_model()
    other = torch.cat([x, x.flip(-1)])  # another batch than traced; DeepLab: another size too
    if case == "deeplab_v2_resnet101_single":
        other = torch.randn(2, 3, x.shape[2] + 16, x.shape[3] - 8, generator=torch.Generator().manual_seed(3))
        assert max(m.dilation[0] for m in model.modules() if isinstance(m, nn.Conv2d)) > 1  # ASPP
    fast, rep = _check(model, [x], [[other]])
    n_relu = sum(type(m) is nn.ReLU for m in model.modules())
    # every conv but the PSPNet head's (the pyramid pass's module: inference/pyramid.py) runs through oneDNN
    pyramid = fast.segconvert_fuse.pyramid
    assert pyramid == (["head.conv"] if "pspnet" in case and path == "named" else [])
    assert len(rep.convs) == sum(type(m) is nn.Conv2d for m in model.modules()) - len(pyramid)
    # every ReLU straight after a conv (+ folded BN) is fused; those after the residual add are not
    fused_relus = sum(isinstance(m, FusedActivation) for m in fast.modules())
    assert 0 < fused_relus < n_relu
    assert all(k.endswith("ReLU") for k in rep.fused.values())
    if "msc" in case:  # the shared backbone conv, its per-scale ReLU modules (generic) or one module (named)
        assert any(", " in k for k in rep.fused.values()) == (path == "generic")


# ------------------------------------------------------------------------------------------ Keras nets


@functools.cache
def _keras_model(builder: str, size: tuple[int, int], kwargs: str):
    from tests.keras_cases import randomize, tf_keras

    K = tf_keras()
    from segconvert.converters.keras_generic import convert_keras_generic
    from tests import keras_families

    m = getattr(keras_families, builder)(K, size, **json.loads(kwargs))
    randomize(m)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.h5"
        m.save(p)
        return convert_keras_generic(p, None).build_model().eval()


@pytest.mark.parametrize(
    "builder,kwargs",
    [("fast_scnn", {}), ("deeplab_mobilenetv2", {"os": 16}), ("deeplab_xception", {}), ("unet", {"separable": True})],
    ids=["fast_scnn", "deeplab_mnv2", "deeplab_xception", "separable_unet"],
)
def test_keras_families(builder, kwargs):
    size = (64, 96) if builder != "deeplab_xception" else (48, 64)
    model = _keras_model(builder, size, json.dumps(kwargs))
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fast, rep = _check(model, [x], [[torch.cat([x, -x])]], end_rtol=1e-5)  # shallow nets: tight end to end
    assert rep.fused
    seps = [m for m in model.modules() if isinstance(m, keras_ops.SeparableConv)]
    assert sum(isinstance(m, od.OneDNNSeparable) for m in fast.modules()) == len(seps)
    if builder == "deeplab_mobilenetv2":
        assert any(k.endswith("ReLU6") for k in rep.fused.values())


# --------------------------------------------------------------------------------- hand-built modules


class _Net(nn.Module):
    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _rand(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


EXACT = [
    nn.ReLU(),
    nn.ReLU(inplace=True),
    nn.ReLU6(),
    nn.Hardtanh(-1.5, 2.0),
    nn.LeakyReLU(0.2),
    keras_ops.KerasReLU(),
    keras_ops.KerasReLU(max_value=4.0),
    keras_ops.KerasReLU(negative_slope=0.3),
]
APPROX = [nn.Sigmoid(), nn.Tanh(), nn.SiLU(), nn.Hardswish(), nn.Hardsigmoid(), nn.GELU(), nn.GELU("tanh")]
NOT_FUSED = [keras_ops.KerasReLU(threshold=0.5), keras_ops.KerasReLU(max_value=6.0, negative_slope=0.1), nn.ELU()]


@pytest.mark.parametrize("act", EXACT + APPROX + NOT_FUSED, ids=lambda a: repr(a))
def test_each_activation(act):
    model = _rand(_Net(nn.Conv2d(8, 8, 3, padding=1), act, nn.Conv2d(8, 4, 1)))
    x = torch.randn(2, 8, 13, 11, generator=torch.Generator().manual_seed(1)) * 3
    approx = any(act is a for a in APPROX)
    for approximate in (False, True):
        fast = prepare_model(copy.deepcopy(model), onednn=False, inputs=[x])
        rep = onednn_model(fast, [x], approximate=approximate)
        fused = isinstance(fast.body[1], FusedActivation)
        assert fused == (any(act is a for a in EXACT) or (approx and approximate)), rep.fused
        for xx in (x, x.contiguous(memory_format=torch.channels_last), x[:1, :, :7, :9]):
            with torch.no_grad():
                ref, got = model(xx), fast(xx)
            if any(act is a for a in EXACT) or not fused:
                assert _rel(got, ref) <= 1e-6
            else:
                assert _rel(got, ref) <= 2e-6  # a few float32 ulps of the activation, through one 1x1 conv


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8),  # depthwise, dilated
        nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=4),  # grouped, not depthwise
        nn.Conv2d(8, 6, (3, 5), padding=(1, 2), dilation=(1, 3), bias=False),
        nn.Conv2d(8, 8, 3, padding=12, dilation=12),  # an ASPP branch
        keras_ops.Conv(8, 8, [3, 3], [2, 2], groups=8),  # TF SAME, stride 2: asymmetric on even sizes
        keras_ops.Conv(8, 6, [3, 3], [2, 2]),
        keras_ops.Conv(8, 6, [4, 4], [1, 1]),  # even kernel: asymmetric at stride 1
        keras_ops.Conv(8, 8, [3, 3], [1, 1], dilation=[2, 2], groups=8),
        keras_ops.Conv(8, 6, [3, 3], [2, 2], padding="valid"),
        keras_ops.SeparableConv(8, 6, [3, 3], [2, 2], padding="same", depth_multiplier=2),
        keras_ops.SeparableConv(8, 6, [3, 3], [1, 1], dilation=[2, 2], padding="same"),
    ],
    ids=lambda c: f"{type(c).__name__}:{c.extra_repr()}",
)
def test_padding_stride_dilation_groups(conv):
    model = _rand(_Net(conv, nn.ReLU()))
    for size in ((16, 16), (15, 17), (9, 12)):  # even (asymmetric SAME at stride 2) and odd
        x = torch.randn(2, 8, *size, generator=torch.Generator().manual_seed(2))
        fast = prepare_model(copy.deepcopy(model), inputs=[torch.randn(1, 8, 16, 16)])
        assert fast.segconvert_onednn.fused
        for xx in (x, x.contiguous(memory_format=torch.channels_last)):
            with torch.no_grad():
                ref, got = model(xx), fast(xx)
            assert got.shape == ref.shape
            assert _rel(got, ref) <= 1e-6


def test_not_fused_when_the_conv_output_is_read_elsewhere():
    class Skip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.relu, self.shared = nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.ReLU()
            self.conv2 = nn.Conv2d(4, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            a = self.relu(y) + y  # the pre-activation value is read again
            b = self.shared(self.conv2(a))
            return self.shared(b - 1)  # the same ReLU module on a non-conv value

    model = _rand(Skip())
    x = torch.randn(1, 4, 8, 8)
    fast = prepare_model(copy.deepcopy(model), inputs=[x])
    assert fast.segconvert_onednn.fused == {}
    assert len(fast.segconvert_onednn.convs) == 2
    with torch.no_grad():
        assert _rel(fast(x), model(x)) <= 1e-6


def test_inplace_activation_whose_output_is_read_later_is_fused():
    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.relu, self.conv2 = nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.relu(self.conv(x))
            return self.conv2(y) + y  # reads of the activated value

    model = _rand(Res())
    x = torch.randn(1, 4, 8, 8)
    fast = prepare_model(copy.deepcopy(model), inputs=[x])
    assert list(fast.segconvert_onednn.fused) == ["conv"]
    with torch.no_grad():
        assert _rel(fast(x), model(x)) <= 1e-6


# ------------------------------------------------------------------------------------------- fallbacks


def test_fallback_under_autocast_float64_and_grad():
    net, _, x = _caffe_case("deeplab_v2_resnet101_single")
    from segconvert.converters.caffe_generic import convert_caffe_generic

    model = convert_caffe_generic(net).build_model().eval()
    folded = prepare_model(copy.deepcopy(model), onednn=False, inputs=[x])
    fast = prepare_model(copy.deepcopy(model), onednn=True, inputs=[x])
    assert fast.segconvert_onednn.convs
    # bf16 autocast: the eager conv + activation, exactly what the folded model computes
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(fast(x), folded(x))
    # gradients wanted: eager (oneDNN's op has no backward)
    xg = x.clone().requires_grad_()
    out = fast(xg)
    out.sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
    assert torch.equal(out.detach(), folded(x).detach())
    # float64 weights and input: eager in float64
    f64, r64 = copy.deepcopy(fast).double(), copy.deepcopy(folded).double()
    with torch.no_grad():
        assert torch.equal(f64(x.double()), r64(x.double()))


def test_no_onednn_leaves_the_model_as_before(monkeypatch):
    model = _rand(_Net(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()))
    model.body[1].running_var.fill_(2.0)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    fast = prepare_model(copy.deepcopy(model))
    assert fast.segconvert_onednn.reason and not fast.segconvert_onednn.convs
    assert type(fast.body[0]) is nn.Conv2d and type(fast.body[2]) is nn.ReLU
    monkeypatch.undo()
    off = prepare_model(copy.deepcopy(model), onednn=False)
    assert off.segconvert_onednn is None and type(off.body[0]) is nn.Conv2d
    unfused = prepare_model(copy.deepcopy(model), fuse=False)
    assert unfused.segconvert_onednn is None and type(unfused.body[0]) is nn.Conv2d


def test_fast_path_is_the_onednn_op(monkeypatch):
    """The replaced modules really call oneDNN (and F.conv2d only when falling back)."""
    model = _rand(_Net(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()))
    fast = prepare_model(copy.deepcopy(model), inputs=[torch.randn(1, 3, 8, 8)])
    calls = []
    real = F.conv2d
    monkeypatch.setattr(F, "conv2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        fast(x)
        assert not calls
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast(x)
    assert calls

"""Caffe / TF exact ops against real-framework fixtures and hand-derived values (SPEC 2, 5.1, 5.3, 8)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segconvert.reference_models.deeplab_v2 import shrink_label
from segconvert.reference_models.ops import (
    CaffePool2d,
    Conv2dSame,
    FrozenBatchNorm2d,
    Interp,
    SamePad2d,
    TFSamePool2d,
    caffe_batchnorm_stats,
    caffe_bn_scale_to_params,
    caffe_pool_out,
    conv2d_same,
    conv2d_same_pads,
    interp_size,
    psp_bn_to_params,
    resize,
    resize_bilinear_tf1_legacy,
    tf_same_pads,
)
from segconvert.testing import fixture_path
from tests.caffe_cases import POOL_CASES

INTERP_CASES = [
    "interp_from1x1",
    "interp_hw_down",
    "interp_hw_up",
    "interp_out1",
    "interp_pad_neg_hw",
    "interp_pad_neg_zoom2",
    "interp_same_size",
    "interp_shrink2",
    "interp_shrink4_zoom3",
    "interp_zoom2",
    "interp_zoom4_shrink3",
]


def _hw(p, base: str, default: int) -> tuple[int, int]:
    """A Caffe (kernel|stride|pad) value: ``_h``/``_w`` fields, else the plain field, else the default."""
    if p.HasField(f"{base}_h"):
        return getattr(p, f"{base}_h"), getattr(p, f"{base}_w")
    name = base + ("_size" if base == "kernel" else "")
    v = getattr(p, name)
    if isinstance(v, int):
        return (v, v) if p.HasField(name) else (default, default)
    return (int(v[0]), int(v[-1])) if len(v) else (default, default)


def _module_for(layer) -> torch.nn.Module:
    """Build our op from the fixture prototxt's parameters (parsed with the Caffe schema)."""
    if layer.type == "Pooling":
        p = layer.pooling_param
        mode = {0: "max", 1: "ave"}[p.pool]
        return CaffePool2d(
            mode, _hw(p, "kernel", 0), _hw(p, "stride", 1), _hw(p, "pad", 0), global_pooling=p.global_pooling
        )
    if layer.type == "Interp":
        p = layer.interp_param
        kw = {n: getattr(p, n) for n in ("height", "width", "zoom_factor", "shrink_factor") if p.HasField(n)}
        return Interp(**kw, pad_beg=p.pad_beg, pad_end=p.pad_end)
    raise AssertionError(layer.type)


def _run_layer_case(case: str) -> int:
    from segconvert.formats.prototxt import read_prototxt

    root = fixture_path("caffe", "layers", case)
    net = read_prototxt(root / "net.prototxt")
    ref = np.load(root / "outputs.npz")
    blobs = {"data": torch.from_numpy(np.load(root / "input.npy"))}
    checked = 0
    for layer in net.layer:
        op = _module_for(layer)
        out = op(blobs[layer.bottom[0]])
        blobs[layer.top[0]] = out
        want = ref[f"{layer.name}/0"]
        assert tuple(out.shape) == want.shape, (layer.name, tuple(out.shape), want.shape)
        tol = 1e-5 * max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(out.numpy(), want, rtol=0, atol=tol, err_msg=f"{case}/{layer.name}")
        checked += 1
    return checked


@pytest.mark.parametrize("case", POOL_CASES)
def test_pool_matches_caffe(case):
    assert _run_layer_case(case) == 1


@pytest.mark.parametrize("case", INTERP_CASES)
def test_interp_matches_caffe(case):
    assert _run_layer_case(case) >= 1


def test_ceil_partial_divisor_is_clipped_to_h():
    """Pooling divisor at the ceil-partial window: rows 9..12 of an 11-row input count 2 rows, not 4."""
    x = torch.ones(1, 1, 11, 11)
    x[..., 9:, :] = 5.0
    y = CaffePool2d("ave", 4, 3, 0)(x)
    assert y.shape[-2:] == (4, 4)
    assert y[0, 0, 3, 0].item() == pytest.approx(5.0)  # (2*4 cells of 5) / (2*4), not / 16


def test_pool_pad_larger_than_half_kernel():
    """Caffe allows pad < kernel; PyTorch's pooling rejects pad > k/2. AVE k3 s1 p2 on ones, H=1."""
    x = torch.ones(1, 1, 1, 1)
    y = CaffePool2d("ave", 3, 1, 2)(x)
    # out = ceil((1+4-3)/1)+1 = 3, clip rule: (3-1)*1 >= 1+2? no -> 3; windows start -2,-1,0;
    # divisor = min(s+3, 3) - s = 3, 3, 3; each window covers the single 1 -> 1/3
    assert y.shape[-2:] == (3, 3)
    np.testing.assert_allclose(y.numpy(), np.full((1, 1, 3, 3), 1 / 9, np.float32), atol=1e-7)
    ym = CaffePool2d("max", 3, 1, 2)(torch.full((1, 1, 1, 1), -2.0))
    assert torch.equal(ym, torch.full((1, 1, 3, 3), -2.0))
    with pytest.raises(ValueError):
        CaffePool2d("max", 3, 1, 3)


# ------------------------------------------------------------------------ pitfall 1, 2: pooling sizes


def _caffe_formula(h: int, k: int, s: int, p: int) -> int:
    out = int(math.ceil(float(h + 2 * p - k) / s)) + 1
    if p > 0 and (out - 1) * s >= h + p:
        out -= 1
    return out


def test_pool_sizes_follow_caffe_formula_5_to_799():
    for h in range(5, 800):
        want = _caffe_formula(h, 3, 2, 1)
        assert caffe_pool_out(h, 3, 2, 1) == want
        # PyTorch ceil mode agrees for 3/2/1, floor mode differs at every even H (SPEC 2, pitfall #1)
        ceil = F.max_pool2d(torch.zeros(1, 1, h, 1), (3, 1), (2, 1), (1, 0), ceil_mode=True).shape[2]
        floor = (h + 2 - 3) // 2 + 1
        assert ceil == want
        assert (floor != want) == (h % 2 == 0)
    assert CaffePool2d("max", 3, 2, 1)(torch.zeros(1, 1, 6, 799)).shape[-2:] == (4, 400)


def test_ave_k3s2p1_on_ones_gives_caffe_borders():
    y = CaffePool2d("ave", 3, 2, 1)(torch.ones(1, 1, 5, 6))[0, 0].numpy()
    # H=5: windows start -1,1,3 (divisor 3 each, padding counted) -> 2/3, 1, 2/3
    # W=6: 4 windows start -1,1,3,5; the last ends at min(8, 6+1)=7 -> divisor 2, one valid cell -> 1/2
    rows = np.array([2 / 3, 1, 2 / 3])
    cols = np.array([2 / 3, 1, 1, 1 / 2])
    np.testing.assert_allclose(y, np.outer(rows, cols), atol=1e-7)


# ----------------------------------------------------------------------------- pitfall 3, 4, 5: BN


def test_caffe_batchnorm_scale_factor():
    mean = np.array([0.5, -1.0, 2.0], np.float32)
    var = np.array([1.0, 0.25, 4.0], np.float32)
    m, v = caffe_batchnorm_stats([mean * 1000, var * 1000, np.array([1000.0], np.float32)])
    np.testing.assert_allclose(m, mean, rtol=1e-6)
    np.testing.assert_allclose(v, var, rtol=1e-6)
    m0, v0 = caffe_batchnorm_stats([mean, var, np.array([0.0], np.float32)])
    assert not m0.any() and not v0.any()
    p = caffe_bn_scale_to_params([mean, var, np.array([1.0], np.float32)], [np.array([2.0, 3.0, 4.0], np.float32)])
    np.testing.assert_array_equal(p["bias"], np.zeros(3, np.float32))  # Scale without bias_term
    np.testing.assert_array_equal(p["weight"], [2.0, 3.0, 4.0])


def test_psp_bn_blob_order():
    c = 3
    blobs = [np.full((1, c, 1, 1), v, np.float32) for v in (1.5, 2.0, 3.0, 4.0)]
    p = psp_bn_to_params(blobs)
    assert [float(p[k][0]) for k in ("weight", "bias", "running_mean", "running_var")] == [1.5, 2.0, 3.0, 4.0]
    bn = FrozenBatchNorm2d(c, eps=1e-5)
    bn.load_state_dict({k: torch.from_numpy(v) for k, v in p.items()})
    x = torch.randn(1, c, 4, 4)
    np.testing.assert_allclose(
        bn(x).numpy(), (1.5 * (x - 3.0) / math.sqrt(4.0 + 1e-5) + 2.0).numpy(), rtol=1e-5, atol=1e-6
    )


def test_frozen_bn_eps_matters():
    """A tiny variance exposes an assumed eps (pitfall #5)."""
    a, b = FrozenBatchNorm2d(1, eps=1e-5), FrozenBatchNorm2d(1, eps=1e-3)
    for m in (a, b):
        m.running_var.fill_(1e-4)
    x = torch.ones(1, 1, 1, 1)
    assert a(x).item() == pytest.approx(1 / math.sqrt(1.1e-4), rel=1e-5)
    assert b(x).item() == pytest.approx(1 / math.sqrt(1.1e-3), rel=1e-5)


def test_frozen_bn_accepts_batchnorm_state_dict():
    bn = torch.nn.BatchNorm2d(4)
    frozen = FrozenBatchNorm2d(4)
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked dropped
    assert set(frozen.state_dict()) == {"weight", "bias", "running_mean", "running_var"}


BN_CASES = ["bn_psp_frozen", "bn_psp_eps_inplace", "batchnorm_global", "batchnorm_factor0", "batchnorm_eps_factor"]


@pytest.mark.parametrize("case", BN_CASES)
def test_bn_layers_match_caffe(case):
    from segconvert.formats.caffemodel import read_caffemodel
    from segconvert.formats.prototxt import read_prototxt

    root = fixture_path("caffe", "layers", case)
    net = read_prototxt(root / "net.prototxt")
    blobs = {layer.name: layer.blobs for layer in read_caffemodel(root / "weights.caffemodel").layers}
    outputs = np.load(root / "outputs.npz")
    values = {"data": np.load(root / "input.npy")}
    for layer in net.layer:  # feed the BN layer the stored value of its bottom (in-place chains included)
        if layer.type in ("BN", "BatchNorm"):
            break
        values[layer.top[0]] = outputs[f"{layer.name}/0"]
    assert layer.type in ("BN", "BatchNorm")
    if layer.type == "BN":
        eps = layer.bn_param.eps if layer.bn_param.HasField("eps") else 1e-5
        params = psp_bn_to_params(blobs[layer.name])
    else:
        eps = layer.batch_norm_param.eps if layer.batch_norm_param.HasField("eps") else 1e-5
        params = caffe_bn_scale_to_params(blobs[layer.name])
    bn = FrozenBatchNorm2d(params["weight"].shape[0], eps)
    bn.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    want = outputs[f"{layer.name}/0"]
    got = bn(torch.from_numpy(values[layer.bottom[0]])).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * max(1.0, float(np.abs(want).max())))


# ---------------------------------------------------------------------------- pitfall 6, 7, 8: Interp


def _numpy_interp(x: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """SPEC 2.1 reference: r = (in-1)/(out-1) in float32, i0 = floor(r*i), i1 = i0+1 unless at the edge."""

    def axis(n_in: int, n_out: int):
        r = np.float32((n_in - 1) / (n_out - 1)) if n_out > 1 else np.float32(0)
        src = r * np.arange(n_out, dtype=np.float32)
        i0 = np.floor(src).astype(int)
        i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
        return i0, i1, (src - i0).astype(np.float32)

    h0, h1, lh = axis(x.shape[-2], oh)
    w0, w1, lw = axis(x.shape[-1], ow)
    top = x[..., h0, :] * (1 - lh)[:, None] + x[..., h1, :] * lh[:, None]
    return top[..., w0] * (1 - lw) + top[..., w1] * lw


@pytest.mark.parametrize("hin,hout", [(49, 65), (33, 65), (2, 60), (1, 60), (3, 90), (65, 513), (129, 97)])
def test_interp_matches_reference_formula(hin, hout):
    g = torch.Generator().manual_seed(hin * 1000 + hout)
    x = torch.randn(1, 3, hin, hin + 2, generator=g)
    y = Interp(height=hout, width=hout + 1)(x)
    np.testing.assert_allclose(y.numpy(), _numpy_interp(x.numpy(), hout, hout + 1), atol=1e-6)
    assert (
        not np.allclose(
            F.interpolate(x, size=(hout, hout + 1), mode="bilinear", align_corners=False).numpy(),
            y.numpy(),
            atol=1e-3,
        )
        or hin == 1
    )  # align_corners=False is a different resize


def test_interp_size_rules():
    assert interp_size(321, 321, shrink_factor=4, zoom_factor=3) == (241, 241)
    assert interp_size(31, 31, zoom_factor=4, shrink_factor=3) == (41, 41)
    assert interp_size(65, 65, zoom_factor=8) == (513, 513)
    assert interp_size(321, 321, shrink_factor=2) == (161, 161)
    assert interp_size(21, 21, zoom_factor=2) == (41, 41)
    # presence order: shrink-only / zoom-only win over height+width; height+width over shrink+zoom
    assert interp_size(11, 13, zoom_factor=2, height=5, width=5) == (21, 25)
    assert interp_size(11, 13, shrink_factor=2, height=5, width=5) == (6, 7)
    assert interp_size(11, 13, shrink_factor=2, zoom_factor=2, height=5, width=4) == (5, 4)
    # negative pads crop before the size rule
    assert interp_size(11, 13, zoom_factor=2, pad_beg=-1, pad_end=-2) == (15, 19)
    with pytest.raises(ValueError):
        interp_size(11, 13)
    with pytest.raises(ValueError):
        interp_size(11, 13, zoom_factor=2, pad_beg=1)
    x = torch.arange(30.0).reshape(1, 1, 5, 6)
    assert torch.equal(Interp(height=4, width=5, pad_beg=-1)(x), x[..., 1:, 1:])


def test_label_shrink_is_exact_subsample():
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 21, (2, 321, 321), generator=g)
    label[label == 20] = 255
    assert torch.equal(shrink_label(label, 8), label[:, ::8, ::8])
    assert torch.equal(shrink_label(label, 16), label[:, ::16, ::16])
    x = torch.randn(1, 2, 321, 321, generator=g)
    assert torch.equal(Interp(shrink_factor=8)(x), x[..., ::8, ::8])


# ------------------------------------------------------------------------------------ TF pieces


def test_tf_same_pads():
    assert tf_same_pads(50, 3, 2) == (0, 1)
    assert tf_same_pads(49, 3, 2) == (1, 1)
    assert tf_same_pads(13, 4, 4) == (1, 2)  # PSP pool3 on a 13x13 map (tf/README)
    assert tf_same_pads(13, 6, 6) == (2, 3)
    assert tf_same_pads(12, 6, 6) == (0, 0)
    assert conv2d_same_pads(7) == (3, 3)
    assert conv2d_same_pads(3, 2) == (2, 2)
    assert conv2d_same_pads(4) == (1, 2)
    assert SamePad2d(3, 2).pads(50, 49) == (1, 1, 0, 1)
    assert isinstance(conv2d_same(4, 4, 3, 2), torch.nn.Conv2d) and conv2d_same(4, 4, 3, 2).padding == (1, 1)
    asym = conv2d_same(1, 1, 4, 2)
    assert asym(torch.zeros(1, 1, 10, 10)).shape[-2:] == (5, 5)
    assert Conv2dSame(1, 1, 3, 2)(torch.zeros(1, 1, 50, 49)).shape[-2:] == (25, 25)


def _nhwc(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))


@pytest.mark.parametrize("npz", ["outputs.npz", "outputs_alt.npz"])
def test_tf_same_max_pool_matches_tf(npz):
    """slim ``max_pool2d(3, 2, 'SAME')``: 49x51 pads 1/1, 50x52 pads 0/1 (real TF outputs)."""
    d = np.load(fixture_path("tf", "slim_resnet_v1_50_os8") / npz)
    got = TFSamePool2d("max", 3, 2)(_nhwc(d["resnet_v1_50/conv1"]))
    want = _nhwc(d["resnet_v1_50/pool1"])
    assert got.shape == want.shape
    assert torch.equal(got, want)


@pytest.mark.parametrize("npz", ["outputs.npz", "outputs_alt.npz"])
def test_tf_same_avg_pool_and_tf1_resize_match_tf(npz):
    d = np.load(fixture_path("tf", "pspnet_slim_psp_head") / npz)
    feat = _nhwc(d["resnet_v1_50/block4"])
    h, w = feat.shape[-2:]
    for r in (6, 3, 2, 1):
        k = h // r
        pooled = TFSamePool2d("avg", k, k)(feat)
        want = _nhwc(d[f"resnet_v1_50/psp/pool{r}/avg_pool"])
        np.testing.assert_allclose(pooled.numpy(), want.numpy(), rtol=0, atol=2e-6 * float(want.abs().max()))
        up = resize_bilinear_tf1_legacy(_nhwc(d[f"resnet_v1_50/psp/pool{r}"]), (h, w))
        want = _nhwc(d[f"resnet_v1_50/psp/pool{r}/resize"])
        np.testing.assert_allclose(up.numpy(), want.numpy(), rtol=0, atol=2e-6 * float(want.abs().max()))
    logits = _nhwc(d["resnet_v1_50/logits"])
    want = _nhwc(d["resnet_v1_50/up_sample"])
    up = resize(logits, want.shape[-2:], "tf1_legacy")
    np.testing.assert_allclose(up.numpy(), want.numpy(), rtol=0, atol=2e-6 * float(want.abs().max()))
    # the two other conventions differ visibly from TF1's legacy resize
    for mode in ("align_corners", "half_pixel"):
        assert float((resize(logits, want.shape[-2:], mode) - want).abs().max()) > 1e-2


def test_tf1_legacy_resize_reference_formula():
    x = torch.randn(1, 2, 5, 7)
    y = resize_bilinear_tf1_legacy(x, (12, 3)).numpy()
    xn = x.numpy()

    def axis(n_in, n_out):
        src = np.arange(n_out, dtype=np.float32) * np.float32(n_in / n_out)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    h0, h1, lh = axis(5, 12)
    w0, w1, lw = axis(7, 3)
    top = xn[..., h0, :] * (1 - lh)[:, None] + xn[..., h1, :] * lh[:, None]
    ref = top[..., w0] * (1 - lw) + top[..., w1] * lw
    np.testing.assert_allclose(y, ref, atol=1e-6)


def test_fixture_meta_lists_the_cases_we_test():
    """Guard against silently testing a subset: every pool/interp layer case in the fixture set is covered."""
    root = fixture_path("caffe", "layers")
    names = {p.name for p in root.iterdir() if p.is_dir()}
    assert {n for n in names if n.startswith("pool_")} == set(POOL_CASES)
    assert {n for n in names if n.startswith("interp_")} == set(INTERP_CASES)
    meta = json.loads((root / "pool_ave_k4s3_ceil_partial" / "meta.json").read_text())
    assert "ceil" in meta["description"]


def test_caffe_pool_clip_applies_to_both_axes_when_either_is_padded():
    """Caffe's pooling_layer.cpp clips the last window on both axes ``if (pad_h_ || pad_w_)``.

    W = 12, kernel_w 2, stride_w 3, pad_w 0: ceil(10 / 3) + 1 = 5 columns, but with pad_h = 1 the clip rule
    also runs on W: (5 - 1) * 3 = 12 >= 12 + 0, so Caffe keeps 4. Without pad_h it keeps 5.
    """
    x = torch.arange(2 * 7 * 12, dtype=torch.float32).reshape(1, 2, 7, 12)
    both = CaffePool2d("max", (3, 2), (2, 3), (1, 0))
    assert both.output_size(7, 12) == (4, 4)
    assert tuple(both(x).shape[-2:]) == (4, 4)
    alone = CaffePool2d("max", (3, 2), (2, 3), (0, 0))
    assert alone.output_size(7, 12) == (3, 5)
    # the kept columns start at 0, 3, 6, 9: max over columns {c, c+1} of the last row of each window
    y = both(x)
    assert y[0, 0, 0, :].tolist() == [13.0, 16.0, 19.0, 22.0]

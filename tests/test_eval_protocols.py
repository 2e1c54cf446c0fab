"""Protocol presets: window grids, scale rules, padding, fusion and MATLAB imresize, on hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from segconvert.errors import WeightsFileError
from segconvert.eval.protocols import (
    MS_SCALES,
    DeepLabMSC,
    MMSegSlide,
    Preprocessing,
    PSPNetMatlab,
    Runtime,
    Semseg,
    Whole,
    Window,
    forward_batch,
    get_protocol,
    mmcv_rescale_size,
    parse_scales,
    slide,
)
from segconvert.eval.resize import cv2_linear, matlab_contributions, matlab_imresize

LN3 = math.log(3.0)


def sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


class RampModel(nn.Module):
    """Two classes: logit0 = alpha * (column index inside the crop), logit1 = beta * input channel 0.

    Records every batch it receives so the tests can check padding and window contents.
    """

    def __init__(self, alpha: float = 0.0, beta: float = 0.0) -> None:
        super().__init__()
        self.alpha, self.beta = alpha, beta
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        n, _, h, w = x.shape
        ramp = torch.arange(w, dtype=x.dtype).view(1, 1, 1, w).expand(n, 1, h, w) * self.alpha
        return torch.cat([ramp, self.beta * x[:, :1]], dim=1)


class MeanModel(nn.Module):
    """logit0 = mean of the whole input crop (so it sees how much of the crop is image, not padding)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        m = x[:, :1].mean(dim=(2, 3), keepdim=True).expand(n, 1, h, w)
        return torch.cat([m, torch.zeros_like(m)], dim=1)


def rows(windows):
    return sorted({(w.y0, w.y1) for w in windows})


def cols(windows):
    return sorted({(w.x0, w.x1) for w in windows})


# ------------------------------------------------------------------------ window grids (pitfall #25)


def test_grids_on_cityscapes_1024x2048():
    (p,) = get_protocol("pspnet", "cityscapes").plan(1024, 2048)
    # long = 2048 + 1; short = round(2049/2048 * 1024 = 1024.5) = 1025 (half away from zero); stride ceil(713*2/3)
    assert p.resized == (1025, 2049) and p.padded == (1025, 2049) and p.pad == (0, 0, 0, 0)
    assert get_protocol("pspnet", "cityscapes").stride == 476
    assert rows(p.windows) == [(0, 713), (312, 1025)]
    assert cols(p.windows) == [(0, 713), (476, 1189), (952, 1665), (1336, 2049)]
    assert len(p.windows) == 8

    (s,) = get_protocol("semseg", "cityscapes").plan(1024, 2048)
    assert s.resized == (1024, 2048) and s.pad == (0, 0, 0, 0)  # no +1
    assert rows(s.windows) == [(0, 713), (311, 1024)]
    assert cols(s.windows) == [(0, 713), (476, 1189), (952, 1665), (1335, 2048)]

    (m,) = get_protocol("mmseg-slide", "cityscapes").plan(1024, 2048)
    # h_grids = (1024 - 769 + 512) // 513 + 1 = 2; w_grids = (2048 - 769 + 512) // 513 + 1 = 4
    assert m.resized == (1024, 2048) and m.padded == (1024, 2048)
    assert rows(m.windows) == [(0, 769), (255, 1024)]
    assert cols(m.windows) == [(0, 769), (513, 1282), (1026, 1795), (1279, 2048)]

    (d,) = get_protocol("deeplab-msc", "cityscapes").plan(1024, 2048)
    assert d.padded == (1025, 2049) and d.pad == (0, 1, 0, 1) and len(d.windows) == 1


def test_pspnet_multiscale_plans():
    plans = get_protocol("pspnet", "cityscapes", scales=MS_SCALES).plan(1024, 2048)
    sizes = {p.scale: p.resized for p in plans}
    # long = 2048 s + 1, short = round(long / 2)
    assert sizes[0.5] == (513, 1025) and sizes[0.75] == (769, 1537) and sizes[1.75] == (1793, 3585)
    p05 = plans[0]
    assert p05.padded == (713, 1025) and p05.pad == (0, 200, 0, 0)  # bottom only
    assert rows(p05.windows) == [(0, 713)] and cols(p05.windows) == [(0, 713), (312, 1025)]
    p175 = plans[-1]
    assert [y for y, _ in rows(p175.windows)] == [0, 476, 952, 1080]
    assert [x for x, _ in cols(p175.windows)] == [0, 476, 952, 1428, 1904, 2380, 2856, 2872]


def test_pspnet_and_deeplab_on_a_voc_sized_image():
    (p,) = get_protocol("pspnet", "voc").plan(375, 500)
    # long = 513, short = round(513/500*375 = 384.75) = 385; padded to 473 rows; stride 316
    assert p.resized == (385, 513) and p.padded == (473, 513) and p.pad == (0, 88, 0, 0)
    assert list(p.windows) == [Window(0, 473, 0, 473), Window(0, 473, 40, 513)]
    (d,) = get_protocol("deeplab-msc", "voc").plan(375, 500)
    assert d.padded == (513, 513) and d.pad == (0, 138, 0, 13)
    (s,) = get_protocol("semseg", "voc").plan(375, 500)
    # long 512 (no +1), short round(512/500*375 = 384); centred padding 89 -> 44 above, 45 below; stride 316
    assert s.resized == (384, 512) and s.pad == (44, 45, 0, 0) and cols(s.windows) == [(0, 473), (39, 512)]
    w = get_protocol("whole", "voc", scales=(0.5, 1.0), flip=True).plan(375, 500)
    assert [(p.resized, p.flip, p.windows) for p in w] == [
        ((188, 250), False, (Window(0, 188, 0, 250),)),
        ((188, 250), True, (Window(0, 188, 0, 250),)),
        ((375, 500), False, (Window(0, 375, 0, 500),)),
        ((375, 500), True, (Window(0, 375, 0, 500),)),
    ]


def test_scale_rounding_rules_differ():
    # MATLAB round is half away from zero, Python round half to even: 6/4*3 = 4.5
    assert PSPNetMatlab(base_size=5, crop=8).resized_size(3, 4, 1.0) == (5, 6)  # long 6, short round(4.5)=5
    assert Semseg(base_size=6, crop=8).resized_size(3, 4, 1.0) == (4, 6)  # long 6, short round(4.5)=4
    assert Semseg(base_size=5, crop=8).resized_size(4, 4, 0.5) == (2, 2)  # round(2.5) = 2


def test_mmseg_rescale_and_clipped_windows():
    assert mmcv_rescale_size(375, 500, (2048, 512)) == (512, 683)
    assert mmcv_rescale_size(1024, 2048, (2048, 1024)) == (1024, 2048)
    (p,) = MMSegSlide(crop=512, stride=341, resize_scale=None).plan(300, 700)
    # smaller than the crop in height: one clipped window row, no padding
    assert rows(p.windows) == [(0, 300)] and cols(p.windows) == [(0, 512), (188, 700)]


# ------------------------------------------------------------------------------------ MATLAB imresize


def test_matlab_imresize_known_values():
    up = matlab_imresize(torch.tensor([[0.0, 1.0]], dtype=torch.float64), (1, 4))
    assert up.tolist() == [[0.0, 0.25, 0.75, 1.0]]
    # shrinking antialiases: kernel 0.5*tri(0.5x) over 4 taps -> [0.5, 0.375, 0.125] after border clamping
    down = matlab_imresize(torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64), (1, 2))
    assert down.tolist() == [[1.625, 3.375]]
    w, idx = matlab_contributions(4, 2)
    assert np.allclose(w[0][w[0] > 0], [0.125, 0.375, 0.375, 0.125]) and idx[0][w[0] > 0].tolist() == [0, 0, 1, 2]
    without = matlab_imresize(torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64), (1, 2), antialias=False)
    assert without.tolist() == [[1.5, 3.5]]


def test_matlab_imresize_uint8_rounds_after_each_dimension():
    # columns first (scale 1.5 < 2): [0, 1] -> 3 columns: u = x/1.5 + 0.5*(1 - 1/1.5) -> [0, 0.5, 1] -> uint8 [0,1,1]
    # (0.5 rounds away from zero); then rows 1 -> 2 copy. Without the intermediate rounding the middle is 0.5.
    x = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    assert matlab_imresize(x, (2, 3), uint8=True).tolist() == [[0.0, 1.0, 1.0], [0.0, 1.0, 1.0]]
    assert matlab_imresize(x, (2, 3)).tolist() == [[0.0, 0.5, 1.0], [0.0, 0.5, 1.0]]


def test_matlab_imresize_boundary_mirror_vs_clamp():
    """Shrink 4 -> 1 (scale 1/4): u = 2.5, kernel width 8, taps at 1-based -1..6 with weights
    [1, 3, 5, 7, 7, 5, 3, 1] / 32. On [1, 0, 0, 0] the clamped taps -1, 0 read x(1) (3 + 1 + 5 = 9/32), the
    mirrored ones read x(2), x(1) (3 + 5 = 8/32)."""
    x = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    assert matlab_imresize(x, (1, 1), boundary="replicate").item() == 9 / 32
    assert matlab_imresize(x, (1, 1), boundary="symmetric").item() == 8 / 32
    w, idx = matlab_contributions(4, 1, boundary="symmetric")
    assert (w[0] * 32).tolist() == [1, 3, 5, 7, 7, 5, 3, 1] and idx[0].tolist() == [1, 0, 0, 1, 2, 3, 3, 2]
    # at scale >= 1/2 no tap lands two pixels outside: both rules agree (the VOC / Cityscapes scales)
    for n_in, n_out in ((500, 257), (2048, 1025), (375, 193), (100, 101)):
        a = matlab_contributions(n_in, n_out, boundary="symmetric")
        b = matlab_contributions(n_in, n_out, boundary="replicate")
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert get_protocol("pspnet", "ade20k").matlab_boundary == "symmetric"
    assert get_protocol("pspnet", "ade20k", matlab_boundary="replicate").matlab_boundary == "replicate"
    with pytest.raises(ValueError, match="matlab_boundary"):
        get_protocol("pspnet", "ade20k", matlab_boundary="zero")


def test_matlab_imresize_single_maps_accumulate_in_double_round_each_pass():
    """A single-precision score map: each pass is a double sum of single inputs, stored as single (imresizemex)."""
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.random((2, 7, 9), dtype=np.float32) * 1000)
    out = matlab_imresize(x, (11, 4))
    assert out.dtype == torch.float32
    # reference with dense matrices: columns shrink (4/9 < 11/7) first, then rows
    wc, ic = matlab_contributions(9, 4)
    wr, ir = matlab_contributions(7, 11)
    mc, mr = np.zeros((4, 9)), np.zeros((11, 7))
    for m, w, idx in ((mc, wc, ic), (mr, wr, ir)):
        for o in range(m.shape[0]):
            np.add.at(m[o], idx[o], w[o])
    step1 = (x.double().numpy() @ mc.T).astype(np.float32)
    ref = np.einsum("rk,ckw->crw", mr, step1.astype(np.float64)).astype(np.float32)
    np.testing.assert_allclose(out.numpy(), ref, rtol=2e-7, atol=0)


def test_cv2_linear_is_opencv_channels_and_dtypes():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3, 37, 50)).astype(np.float64)  # an 8-bit image held as float64
    ours = cv2_linear(torch.from_numpy(img), (23, 71), uint8=True)
    ref = cv2.resize(img.transpose(1, 2, 0).astype(np.uint8), (71, 23), interpolation=cv2.INTER_LINEAR)
    assert ours.dtype == torch.float64 and np.array_equal(ours.numpy(), ref.transpose(2, 0, 1))
    scores = rng.random((150, 9, 8))  # semseg resizes all class maps in one call (float64)
    ref = cv2.resize(np.ascontiguousarray(scores.transpose(1, 2, 0)), (13, 5), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(cv2_linear(torch.from_numpy(scores), (5, 13)).numpy(), ref.transpose(2, 0, 1))
    many = rng.random((600, 9, 8))  # more channels than one cv2 call takes (512): split, resized, rejoined
    out = cv2_linear(torch.from_numpy(many), (5, 13)).numpy()
    for lo, hi in ((0, 512), (512, 600)):
        ref = cv2.resize(np.ascontiguousarray(many[lo:hi].transpose(1, 2, 0)), (13, 5), interpolation=cv2.INTER_LINEAR)
        assert np.array_equal(out[lo:hi], ref.reshape(5, 13, -1).transpose(2, 0, 1))


def test_cv2_linear_fallback_without_opencv(monkeypatch):
    """Without OpenCV the resize is the half-pixel bilinear in float (uint8 rounded), and describe() says so."""
    import segconvert.eval.resize as resize

    monkeypatch.setattr(resize, "_cv2", lambda: None)
    x = torch.tensor([[[0.0, 10.0]]], dtype=torch.float64)
    # half-pixel centres, 2 -> 4: sources -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped): 0, 2.5, 7.5, 10
    assert resize.cv2_linear(x, (1, 4)).flatten().tolist() == [0.0, 2.5, 7.5, 10.0]
    assert resize.cv2_linear(x, (1, 4), uint8=True).flatten().tolist() == [0.0, 3.0, 8.0, 10.0]
    assert get_protocol("semseg", "voc").describe()["resize_backend"] == "torch"


# --------------------------------------------------------------------------------------------- fusion

WINS = (Window(0, 4, 0, 4), Window(0, 4, 1, 5))  # crop 4 on a 4x5 input: columns covered 1, 2, 2, 2, 1 times


def _p0(scores: torch.Tensor) -> list[float]:
    return scores[0, 0].tolist()


def test_slide_pspnet_flip_sums_logits_before_softmax():
    x = torch.zeros(3, 4, 5)
    out = slide(RampModel(alpha=LN3), x, WINS, Runtime(batch_size=4), "psp", flip=True)
    # alpha*j + alpha*(3-j) = 3 ln 3 everywhere -> softmax p0 = 27/28 in every window
    assert _p0(out) == pytest.approx([27 / 28] * 5, abs=1e-6)


def test_slide_semseg_flip_averages_softmaxes():
    out = slide(RampModel(alpha=LN3), torch.zeros(3, 4, 5), WINS, Runtime(batch_size=4), "semseg", flip=True)
    q0 = (1 / 2 + 27 / 28) / 2  # j = 0 or 3: (sigma(0) + sigma(3 ln 3)) / 2
    q1 = (3 / 4 + 9 / 10) / 2  # j = 1 or 2
    assert _p0(out) == pytest.approx([q0, (q1 + q0) / 2, q1, (q0 + q1) / 2, q0], abs=1e-6)


def test_slide_probabilities_and_logits_averaged_by_count():
    probs = slide(RampModel(alpha=LN3), torch.zeros(3, 4, 5), WINS, Runtime(batch_size=1), "softmax", flip=False)
    assert _p0(probs) == pytest.approx([1 / 2, 5 / 8, 33 / 40, 261 / 280, 27 / 28], abs=1e-6)
    logits = slide(RampModel(alpha=2.0), torch.zeros(3, 4, 5), WINS, Runtime(batch_size=3), "logits", flip=False)
    assert _p0(logits) == pytest.approx([0.0, 1.0, 3.0, 5.0, 6.0], abs=1e-6)


def test_slide_batching_does_not_change_results():
    x = torch.randn(3, 9, 11)
    wins = tuple(Window(y, y + 5, xx, xx + 5) for y in (0, 4) for xx in (0, 3, 6))
    model = nn.Conv2d(3, 4, 3, padding=1).eval()
    a = slide(model, x, wins, Runtime(batch_size=1), "psp", flip=True)
    b = slide(model, x, wins, Runtime(batch_size=12), "psp", flip=True)
    assert torch.allclose(a, b, atol=1e-6)


PREP = Preprocessing("RGB", (10.0, 10.0, 10.0))


def test_pspnet_predict_pads_bottom_right_with_mean_and_sums_flips():
    img = np.full((3, 4, 3), 20, np.uint8)  # constant image: every MATLAB resize keeps it constant
    model = RampModel(alpha=0.0, beta=LN3 / 20)
    scores = PSPNetMatlab(base_size=4, crop=6).predict(model, img, PREP, Runtime())
    # long 5, short round(5/4*3) = 4 -> 4x5 image padded to 6x6; one crop; logit1 = beta*(10 + 10) = ln 3
    x = model.inputs[0]
    assert x.shape == (2, 3, 6, 6)  # plain + flipped crop in one batch
    assert torch.all(x[0, :, :4, :5] == 10) and torch.all(x[0, :, 4:, :] == 0) and torch.all(x[0, :, :, 5:] == 0)
    assert scores.shape == (2, 3, 4)
    assert torch.allclose(scores[0], torch.full((3, 4), 0.25), atol=1e-6)
    assert torch.allclose(scores.sum(0), torch.ones(3, 4), atol=1e-6)


def test_pspnet_predict_averages_scales():
    img = np.full((3, 4, 3), 20, np.uint8)
    scores = PSPNetMatlab(base_size=4, crop=12, scales=(1.0, 2.0)).predict(MeanModel(), img, PREP, Runtime())
    # s=1: 4x5 image in a 12x12 crop, mean 10*20/144; s=2: long 9, short round(6.75)=7, mean 10*63/144.
    # flip doubles the (symmetric) logit: p0 = sigmoid(2*mean); the two scales are averaged.
    expected = (sig(2 * 10 * 20 / 144) + sig(2 * 10 * 63 / 144)) / 2
    assert torch.allclose(scores[0], torch.full((3, 4), expected, dtype=torch.float32), atol=1e-5)


def test_semseg_predict_pads_centred():
    img = np.full((3, 4, 3), 20, np.uint8)
    model = RampModel()
    Semseg(base_size=4, crop=5).predict(model, img, PREP, Runtime())
    (x,) = model.inputs
    # no resize (long side = base); pad_h 2 -> top 1, bottom 1; pad_w 1 -> left 0, right 1
    assert torch.all(x[0, :, 1:4, :4] == 10)
    assert torch.all(x[0, :, 0] == 0) and torch.all(x[0, :, 4] == 0) and torch.all(x[0, :, :, 4] == 0)


def test_deeplab_msc_pads_to_crop_and_crops_back():
    img = np.full((5, 7, 3), 30, np.uint8)
    model = RampModel(alpha=1.0, beta=0.5)
    scores = DeepLabMSC(crop=9).predict(model, img, PREP, Runtime())
    (x,) = model.inputs
    assert x.shape == (1, 3, 9, 9)  # one forward, no flip
    assert torch.all(x[0, :, :5, :7] == 20) and torch.all(x[0, :, 5:] == 0) and torch.all(x[0, :, :, 7:] == 0)
    assert scores.shape == (2, 5, 7)
    assert scores[0, 0].tolist() == [float(j) for j in range(7)] and torch.all(scores[1] == 10)
    with pytest.raises(ValueError, match="no extra scales"):
        DeepLabMSC(scales=(0.5, 1.0)).plan(5, 7)


def test_whole_flip_averages_softmax():
    img = np.zeros((2, 4, 3), np.uint8)
    scores = Whole(flip=True).predict(RampModel(alpha=LN3), img, Preprocessing(), Runtime())
    q0, q1 = (1 / 2 + 27 / 28) / 2, (3 / 4 + 9 / 10) / 2
    assert scores[0, 0].tolist() == pytest.approx([q0, q1, q1, q0], abs=1e-6)


def test_mmseg_single_pass_returns_count_averaged_logits():
    img = np.zeros((4, 5, 3), np.uint8)
    out = MMSegSlide(crop=4, stride=1, resize_scale=None).predict(RampModel(alpha=2.0), img, Preprocessing(), Runtime())
    # windows at x0 = 0, 1 (grid (5-4+0)//1+1 = 2): logits averaged, not probabilities
    assert out[0, 0].tolist() == pytest.approx([0.0, 1.0, 3.0, 5.0, 6.0])


def test_model_must_return_input_resolution():
    class Down(nn.Module):
        def forward(self, x):
            return x[:, :2, ::2, ::2]

    with pytest.raises(WeightsFileError, match="input resolution"):
        Whole().predict(Down(), np.zeros((4, 4, 3), np.uint8), Preprocessing(), Runtime())


def test_mmseg_tta_flip_averages_softmaxes():
    img = np.zeros((2, 4, 3), np.uint8)
    proto = MMSegSlide(crop=8, stride=4, resize_scale=None, flip=True)
    assert [p.flip for p in proto.plan(2, 4)] == [False, True]
    scores = proto.predict(RampModel(alpha=LN3), img, Preprocessing(), Runtime())
    # plain: logit0 = ln3 * j; flipped image, un-flipped logits: ln3 * (3 - j); softmaxes averaged
    q0, q1 = (1 / 2 + 27 / 28) / 2, (3 / 4 + 9 / 10) / 2
    assert scores[0, 0].tolist() == pytest.approx([q0, q1, q1, q0], abs=1e-6)


# --------------------------------------------------------------------------- runtime (GPU flags on CPU)


def test_runtime_flags_follow_the_device():
    """The CUDA choices are plain properties: checked here without a GPU."""
    gpu = Runtime(torch.device("cuda"))
    assert gpu.memory_format == torch.channels_last and gpu.autocast_dtype == torch.float16
    assert gpu.crops_per_forward == 8 and gpu.use_amp
    assert Runtime(torch.device("cuda"), amp=False).autocast_dtype is None
    assert Runtime(torch.device("cuda"), channels_last=False).memory_format == torch.contiguous_format
    cpu = Runtime()
    assert cpu.memory_format == torch.contiguous_format and cpu.autocast_dtype is None
    assert cpu.crops_per_forward == 1 and not cpu.use_amp
    assert Runtime(amp=True).autocast_dtype == torch.bfloat16  # explicit opt-in on CPU
    assert Runtime(torch.device("mps"), amp=True).autocast_dtype is None


class Probe(nn.Module):
    """A 1x1 conv that records the layout of its input and the autocast state it ran under."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.seen: list[tuple[bool, bool, torch.dtype]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        self.seen.append((channels_last, torch.is_autocast_enabled("cpu"), out.dtype))
        return out


def test_forward_batch_runs_channels_last_and_autocast():
    """The code path CUDA takes (memory format + autocast + float32 result), exercised on CPU with bfloat16."""
    x = torch.randn(2, 3, 5, 6)
    probe = Probe()
    ref = forward_batch(probe, x, Runtime())
    out = forward_batch(probe, x, Runtime(amp=True, channels_last=True))
    assert probe.seen == [(False, False, torch.float32), (True, True, torch.bfloat16)]
    assert ref.dtype == out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=0.05) and not torch.equal(out, ref)


def test_evaluate_puts_the_model_in_the_runtime_layout(tmp_path):
    from segconvert.eval.datasets import get_dataset
    from segconvert.eval.runner import evaluate

    root = tmp_path / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    Image.fromarray(np.zeros((6, 7, 3), np.uint8)).save(root / "JPEGImages" / "a.jpg")
    Image.fromarray(np.zeros((6, 7), np.uint8)).save(root / "SegmentationClass" / "a.png")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("a\n")
    model = nn.Conv2d(3, 21, 1)
    res = evaluate(model, get_dataset("voc", tmp_path), Whole(), device="cpu", channels_last=True, amp=True,
                   preprocessing=Preprocessing(), progress=False)  # fmt: skip
    assert model.weight.is_contiguous(memory_format=torch.channels_last)
    assert res.info["runtime"] == {"crops_per_forward": 1, "channels_last": True, "autocast": "bfloat16"}


# ------------------------------------------------------------------------------------- preprocessing


def test_preprocessing_order_mean_std_scale():
    rgb = torch.tensor([10.0, 20.0, 30.0]).view(3, 1, 1)
    bgr = Preprocessing("BGR", (1.0, 2.0, 3.0), (2.0, 2.0, 2.0), 1.0).normalize(rgb)
    assert bgr.flatten().tolist() == [14.5, 9.0, 3.5]  # (30-1)/2, (20-2)/2, (10-3)/2
    scaled = Preprocessing("RGB", (0.5, 0.5, 0.5), None, 1 / 10).normalize(rgb)
    assert scaled.flatten().tolist() == pytest.approx([0.5, 1.5, 2.5])
    meta = {"preprocessing": {"channel_order": "BGR", "mean": [104.0, 117.0, 123.0], "std": None, "scale": 1.0}}
    m = nn.Identity()
    m.segconvert_meta = meta  # type: ignore[attr-defined]
    assert Preprocessing.from_model(m) == Preprocessing("BGR", (104.0, 117.0, 123.0), None, 1.0)


def test_parse_scales_and_presets():
    assert parse_scales("ss") == (1.0,) and parse_scales("ms") == MS_SCALES
    assert parse_scales("0.5,1") == (0.5, 1.0)
    with pytest.raises(ValueError):
        parse_scales("big")
    p = get_protocol("pspnet", "ade20k", scales=(1.0,), flip=False)
    assert (p.base_size, p.crop, p.flip) == (512, 473, False)
    assert get_protocol("psp", "cityscapes").crop == 713

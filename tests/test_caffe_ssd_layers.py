"""SSD-fork layers (weiliu89/caffe, branch ssd) one by one: against OpenCV dnn 4.x and hand-derived values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segconvert.converters.caffe_generic import convert_caffe_generic
from segconvert.graph import load_net
from segconvert.reference_models.caffe_generic import CaffeGenericNet
from segconvert.reference_models.caffe_ssd_ops import DetectionOutput, Normalize, Permute, PriorBox
from tests.caffe_ssd_cases import conv, layer, net_text, opencv_outputs, write_net

pytest.importorskip("cv2")


def _generic(proto, model):
    conv_ = convert_caffe_generic(load_net(proto, model))
    m = CaffeGenericNet(**conv_.config)
    m.load_state_dict(conv_.state_dict)
    return m.eval()


def _run_both(tmp_path, body, names, shape=(1, 3, 8, 10), seed=0):
    proto, model = write_net(tmp_path, net_text("t", shape, body), seed=seed)
    x = np.random.default_rng(seed + 1).uniform(-2, 2, shape).astype(np.float32)
    ours = _generic(proto, model).layer_outputs(torch.from_numpy(x))
    theirs = opencv_outputs(proto, model, x, names)
    return [(ours[f"{n}/0"].numpy(), t) for n, t in zip(names, theirs, strict=True)]


@pytest.mark.parametrize("across,shared", [(True, True), (False, False), (False, True)])
def test_normalize_against_opencv(tmp_path, across, shared):
    norm = (
        f"  norm_param {{\n    across_spatial: {str(across).lower()}\n    channel_shared: {str(shared).lower()}\n  }}\n"
    )
    body = conv("c", "data", 6) + layer("n", "Normalize", ["c"], body=norm)
    ((ours, cv),) = _run_both(tmp_path, body, ["n"])
    np.testing.assert_allclose(ours, cv, rtol=1e-5, atol=1e-6)


def test_normalize_across_spatial_per_channel_scale():
    """across_spatial with a scale per channel (OpenCV 4.x asserts on it): numpy, float64, as the fork's formula."""
    x = np.random.default_rng(3).standard_normal((2, 3, 4, 5)).astype(np.float32)
    m = Normalize(3, across_spatial=True, channel_shared=False, eps=1e-10)
    m.weight.data = torch.tensor([0.5, 2.0, -1.0])
    norm = np.sqrt((x.astype(np.float64) ** 2).reshape(2, -1).sum(1) + 1e-10).reshape(2, 1, 1, 1)
    want = x / norm * np.array([0.5, 2.0, -1.0]).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(m(torch.from_numpy(x)).detach().numpy(), want, rtol=1e-6, atol=1e-7)


def test_normalize_hand_derived():
    x = torch.tensor([[[[3.0]], [[4.0]]]])  # one pixel, channels 3 and 4: norm 5
    m = Normalize(2, across_spatial=False, channel_shared=False, eps=0.0)
    m.weight.data = torch.tensor([10.0, 20.0])
    assert m(x).flatten().tolist() == pytest.approx([6.0, 16.0])
    x = torch.tensor([[[[1.0, 2.0]], [[2.0, 4.0]]]])  # across spatial: sqrt(1 + 4 + 4 + 16) = 5
    m = Normalize(2, across_spatial=True, channel_shared=True, eps=0.0)
    m.weight.data = torch.tensor([5.0])
    assert m(x).flatten().tolist() == pytest.approx([1.0, 2.0, 2.0, 4.0])
    # eps is added under the square root, as the fork does (sqrt(0 + 1) = 1)
    m = Normalize(1, across_spatial=True, channel_shared=True, eps=1.0)
    assert m(torch.zeros(1, 1, 1, 1) + 0.0).item() == 0.0 and m(torch.ones(1, 1, 1, 1)).item() == pytest.approx(
        1 / 2**0.5
    )


@pytest.mark.parametrize("order", [[0, 2, 3, 1], [0, 3, 1, 2], [0, 1, 3, 2]])
def test_permute_against_opencv(tmp_path, order):
    orders = "".join(f"    order: {o}\n" for o in order)
    body = conv("c", "data", 4) + layer("p", "Permute", ["c"], body=f"  permute_param {{\n{orders}  }}\n")
    ((ours, cv),) = _run_both(tmp_path, body, ["p"])
    assert ours.shape == cv.shape
    np.testing.assert_allclose(ours, cv, rtol=1e-5, atol=1e-5)


def test_permute_appends_unlisted_axes():
    x = torch.arange(24.0).reshape(1, 2, 3, 4)
    assert Permute((0, 3)).forward(x).shape == (1, 4, 2, 3)  # 1, 2 follow in their order
    assert torch.equal(Permute((0, 2, 3, 1))(x), x.permute(0, 2, 3, 1))


# ``clip: false`` is written out: OpenCV defaults to clipping, the fork does not. Sizes are integers and the image
# size comes from the data blob: OpenCV neither truncates min_size nor reads img_h / img_w (hand-derived below).
_PRIORS = {
    "min_max_flip": "min_size: 4.0 max_size: 9.0 aspect_ratio: 2.0 flip: true variance: 0.1 clip: false",
    "two_sizes_clip": "min_size: 3.0 min_size: 5.0 max_size: 6.0 max_size: 8.0 aspect_ratio: 3.0 clip: true "
    "variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2",
    "step_offset_noflip": "min_size: 5.0 aspect_ratio: 2.0 aspect_ratio: 0.5 flip: false step: 3.0 offset: 0.25 "
    "clip: false variance: 0.1 variance: 0.2 variance: 0.3 variance: 0.4",
}


@pytest.mark.parametrize("case", list(_PRIORS))
def test_priorbox_against_opencv(tmp_path, case):
    body = conv("c", "data", 4, s=2) + layer(
        "pb", "PriorBox", ["c", "data"], body=f"  prior_box_param {{ {_PRIORS[case]} }}\n"
    )
    ((ours, cv),) = _run_both(tmp_path, body, ["pb"], shape=(1, 3, 10, 14))
    assert ours.shape == cv.shape
    np.testing.assert_allclose(ours, cv, rtol=0, atol=2e-7)


def test_priorbox_hand_derived():
    # 2x2 feature map of a 100x100 image: step 50, centres 25 and 75; min 30 (square), sqrt(30 * 60), ratio 2 and 1/2
    m = PriorBox(min_sizes=(30.0,), max_sizes=(60.0,), aspect_ratios=(2.0,), flip=True, variance=(0.1, 0.1, 0.2, 0.2))
    out = m(torch.zeros(1, 1, 2, 2), torch.zeros(1, 3, 100, 100))
    assert out.shape == (1, 2, 2 * 2 * 4 * 4) and m.num_priors == 4
    boxes = out[0, 0].reshape(2, 2, 4, 4).double()
    side = 1800**0.5
    w2, h2 = 30 * 2**0.5, 30 / 2**0.5
    expect_cell00 = [
        [(25 - 15) / 100, (25 - 15) / 100, (25 + 15) / 100, (25 + 15) / 100],
        [(25 - side / 2) / 100, (25 - side / 2) / 100, (25 + side / 2) / 100, (25 + side / 2) / 100],
        [(25 - w2 / 2) / 100, (25 - h2 / 2) / 100, (25 + w2 / 2) / 100, (25 + h2 / 2) / 100],
        [(25 - h2 / 2) / 100, (25 - w2 / 2) / 100, (25 + h2 / 2) / 100, (25 + w2 / 2) / 100],
    ]
    np.testing.assert_allclose(boxes[0, 0].numpy(), expect_cell00, atol=1e-7)
    # cell (row 1, column 0): y centre 75, x centre 25
    assert boxes[1, 0, 0].tolist() == pytest.approx([0.10, 0.60, 0.40, 0.90], abs=1e-7)
    assert out[0, 1].reshape(-1, 4)[5].tolist() == pytest.approx([0.1, 0.1, 0.2, 0.2])
    # clip keeps [0, 1]; the fork truncates sizes to integers (7.9 -> 7)
    m = PriorBox(min_sizes=(7.9,), clip=True)
    out = m(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 4, 4))[0, 0]
    assert out.tolist() == [0.0, 0.0, 1.0, 1.0]
    assert m(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 4, 4))[0, 1].tolist() == pytest.approx([0.1] * 4)  # default
    assert PriorBox(min_sizes=(7.9,))(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 14, 14))[
        0, 0, 0
    ].item() == pytest.approx((7 - 3.5) / 14)


def test_priorbox_img_size_step_and_repeated_ratio_hand_derived():
    p = PriorBox(min_sizes=(7.5,), aspect_ratios=(2.0, 2.0), flip=True, img_h=20, img_w=24, step_h=2.5, step_w=3.0)
    assert p.num_priors == 3  # ratios 1, 2, 1/2: the repeated 2 is dropped
    out = p(torch.zeros(1, 1, 2, 3))[0, 0].reshape(2, 3, 3, 4).double()
    w, h = 7 * 2**0.5, 7 / 2**0.5  # min_size truncated to 7 as the fork's ``int min_size_``
    cx, cy = (2 + 0.5) * 3.0, (1 + 0.5) * 2.5  # cell (row 1, column 2)
    want = [[(cx - 3.5) / 24, (cy - 3.5) / 20, (cx + 3.5) / 24, (cy + 3.5) / 20]]
    want += [[(cx - w / 2) / 24, (cy - h / 2) / 20, (cx + w / 2) / 24, (cy + h / 2) / 20]]
    want += [[(cx - h / 2) / 24, (cy - w / 2) / 20, (cx + h / 2) / 24, (cy + w / 2) / 20]]
    np.testing.assert_allclose(out[1, 2].numpy(), want, atol=1e-7)


def test_detection_output_hand_derived():
    # three priors, two classes (+ background 0); zero offsets decode to the priors themselves (CENTER_SIZE)
    priors = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.05, 0.05, 0.55, 0.55], [0.5, 0.5, 1.0, 1.0]])
    var = torch.full((3, 4), 0.1)
    prior = torch.stack([priors.reshape(-1), var.reshape(-1)]).unsqueeze(0)
    loc = torch.zeros(1, 12)
    conf = torch.tensor([[[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6]]]).reshape(1, 9)
    m = DetectionOutput(3, nms_threshold=0.45, code_type="CENTER_SIZE", confidence_threshold=0.2)
    out = m(loc, conf, prior)[0, 0]
    # class 1: prior 0 (0.8) suppresses prior 1 (IoU 0.2025 / 0.2975 = 0.68 > 0.45), prior 2 (0.3) stays;
    # class 2: prior 2
    np.testing.assert_allclose(out[:, :3].numpy(), [[0, 1, 0.8], [0, 1, 0.3], [0, 2, 0.6]], atol=1e-7)
    np.testing.assert_allclose(out[:, 3:].numpy(), priors[[0, 2, 2]].numpy(), atol=1e-7)
    # keep_top_k keeps the best overall, rows still grouped by label
    m.keep_top_k = 2
    np.testing.assert_allclose(m(loc, conf, prior)[0, 0, :, :3].numpy(), [[0, 1, 0.8], [0, 2, 0.6]], atol=1e-7)
    # nothing above the threshold: one row of -1 per image with the image index
    m.confidence_threshold = 0.95
    assert m(loc, conf, prior)[0, 0].tolist() == [[0, -1, -1, -1, -1, -1, -1]]
    # CORNER code: prior + variance * offset
    m = DetectionOutput(3, code_type="CORNER", confidence_threshold=0.5)
    loc = torch.tensor([1.0, 2.0, 3.0, 4.0] + [0.0] * 8).reshape(1, 12)
    row = m(loc, conf, prior)[0, 0, 0]
    assert row[3:].tolist() == pytest.approx([0.1, 0.2, 0.8, 0.9])


def test_detection_output_per_class_locations_top_k_and_eta():
    boxes = torch.tensor([[0.0, 0.0, 0.6, 0.5], [0.2, 0.0, 0.6, 0.5], [0.7, 0.7, 0.9, 0.9]])
    prior = torch.stack([boxes.reshape(-1), torch.full((12,), 0.5)]).unsqueeze(0)
    conf = torch.tensor([[0.0, 0.9, 0.1], [0.0, 0.8, 0.2], [0.0, 0.3, 0.7]]).reshape(1, 9)
    # IoU(prior 0, prior 1) = 0.2 / 0.3 = 0.667: kept under threshold 0.7, suppressed once eta 0.5 lowers it to 0.35
    m = DetectionOutput(3, nms_threshold=0.7, code_type="CORNER", confidence_threshold=0.05)
    loc = torch.zeros(1, 12)
    got = m(loc, conf, prior)[0, 0]
    assert got[got[:, 1] == 1][:, 2].tolist() == pytest.approx([0.9, 0.8, 0.3])
    m.eta = 0.5
    got = m(loc, conf, prior)[0, 0]
    assert got[got[:, 1] == 1][:, 2].tolist() == pytest.approx([0.9, 0.3])
    # nms top_k 1: one candidate per class
    m = DetectionOutput(3, nms_threshold=0.7, top_k=1, code_type="CORNER", confidence_threshold=0.05)
    got = m(loc, conf, prior)[0, 0]
    assert got[:, 1].tolist() == [1, 2] and got[:, 2].tolist() == pytest.approx([0.9, 0.7])
    # share_location false: one box per prior and class, offsets of the class (CORNER: prior + variance * offset)
    loc = torch.zeros(1, 3, 3, 4)
    loc[0, 2, 2] = torch.tensor([0.1, 0.2, 0.2, 0.0])  # prior 2, class 2
    m = DetectionOutput(3, share_location=False, code_type="CORNER", confidence_threshold=0.5)
    (row,) = m(loc.reshape(1, -1), conf, prior)[0, 0].tolist()[-1:]
    assert row[:3] == pytest.approx([0, 2, 0.7]) and row[3:] == pytest.approx([0.75, 0.8, 1.0, 0.9])
    # CORNER_SIZE: offsets scaled by the prior's width / height
    m = DetectionOutput(3, code_type="CORNER_SIZE", confidence_threshold=0.75, variance_encoded_in_target=True)
    loc = torch.tensor([0.5, 0.0, 0.0, 1.0] + [0.0] * 8).reshape(1, 12)
    (row,) = m(loc, conf, prior)[0, 0].tolist()
    assert row[3:] == pytest.approx([0.3, 0.0, 0.6, 1.0])

"""DeepLab ImageSegData semantics on hand-built images: scale, pad colours, crop window, mirror, label nearest."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from segconvert.errors import DatasetError
from segconvert.train.data_imageseg import (
    ImageSegData,
    ImageSegStream,
    ImageSegTransform,
    read_seg_list,
    resize_bilinear_u8,
    resize_nearest,
)

MEAN = (104.008, 116.669, 122.675)


def ramp(h: int, w: int) -> np.ndarray:
    """uint8 BGR image whose pixel values encode their position."""
    y, x = np.mgrid[:h, :w]
    return np.stack([(y * 7 + x * 3) % 256, (y * 11 + x) % 256, (x * 13 + y) % 256], -1).astype(np.uint8)


def blocks(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[:h, :w]
    return ((y // 3) * 5 + x // 4).astype(np.uint8) % 21


def test_downscale_half_is_the_rounded_2x2_mean_and_label_takes_even_pixels():
    img, lab = ramp(20, 30), blocks(20, 30)
    t = ImageSegTransform(scale_factors=(0.5,))
    data, label, draw = t(img, lab, np.random.default_rng(0))
    assert draw.scale == 0.5 and data.shape == (3, 10, 15) and label.shape == (1, 10, 15)
    s = img.astype(np.int64)
    hand = (s[0::2, 0::2] + s[1::2, 0::2] + s[0::2, 1::2] + s[1::2, 1::2] + 2) // 4  # OpenCV's fixed point
    np.testing.assert_array_equal(data.transpose(1, 2, 0), hand.astype(np.float32))
    np.testing.assert_array_equal(label[0], lab[0::2, 0::2].astype(np.float32))


def test_upscale_size_truncates_and_label_is_nearest_floor():
    img, lab = ramp(7, 9), blocks(7, 9)
    t = ImageSegTransform(scale_factors=(1.5,))
    data, label, _ = t(img, lab, np.random.default_rng(0))
    assert data.shape == (3, 10, 13)  # int(7 * 1.5) = 10, int(9 * 1.5) = 13
    yi = [int(np.floor(y / 1.5)) for y in range(10)]
    xi = [int(np.floor(x / 1.5)) for x in range(13)]
    np.testing.assert_array_equal(label[0], lab[np.ix_(yi, xi)].astype(np.float32))
    assert set(np.unique(label)) <= set(np.unique(lab).astype(np.float32))  # nearest: no blended classes


def test_bilinear_matches_opencv_bit_for_bit():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(3)
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(2, 90, 2))
        f = float(rng.choice([0.5, 0.75, 1.25, 1.5]))
        nh, nw = int(np.float32(h) * np.float32(f)), int(np.float32(w) * np.float32(f))
        if min(nh, nw) < 1:
            continue
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        np.testing.assert_array_equal(resize_bilinear_u8(img, nh, nw), cv2.resize(img, (nw, nh)))
        lab = rng.integers(0, 21, (h, w), dtype=np.uint8)
        np.testing.assert_array_equal(resize_nearest(lab, nh, nw), cv2.resize(lab, (nw, nh), interpolation=0))


def test_pad_bottom_right_with_mean_and_ignore_then_crop():
    img, lab = ramp(5, 6), blocks(5, 6)
    t = ImageSegTransform(crop_size=(9, 8), mean_value=MEAN, train=True)
    for seed in range(20):
        data, label, d = t(img, lab, np.random.default_rng(seed))
        assert (d.h_off, d.w_off) == (0, 0)  # padded to exactly the crop: only one window
        assert data.shape == (3, 9, 8)
        want = img.astype(np.float32) - np.asarray(MEAN, np.float32)
        np.testing.assert_array_equal(data[:, :5, :6], want.transpose(2, 0, 1))
        assert (data[:, 5:, :] == 0).all() and (data[:, :, 6:] == 0).all()  # mean pixel - mean = 0 exactly
        np.testing.assert_array_equal(label[0, :5, :6], lab.astype(np.float32))
        assert (label[0, 5:, :] == 255).all() and (label[0, :, 6:] == 255).all()


def test_random_crop_window_covers_every_offset_and_test_phase_takes_the_centre():
    img, lab = ramp(12, 10), blocks(12, 10)
    t = ImageSegTransform(crop_size=(5, 4), mean_value=MEAN)
    seen = set()
    for seed in range(400):
        data, label, d = t(img, lab, np.random.default_rng(seed))
        window = img[d.h_off : d.h_off + 5, d.w_off : d.w_off + 4].astype(np.float32) - np.float32(MEAN)
        np.testing.assert_array_equal(data, window.transpose(2, 0, 1))
        np.testing.assert_array_equal(label[0], lab[d.h_off : d.h_off + 5, d.w_off : d.w_off + 4])
        seen.add((d.h_off, d.w_off))
    assert seen == {(h, w) for h in range(8) for w in range(7)}
    centre = ImageSegTransform(crop_size=(5, 4), mean_value=MEAN, train=False)
    _, _, d = centre(img, lab, np.random.default_rng(0))
    assert (d.h_off, d.w_off) == (3, 3)


def test_mirror_flips_image_and_label_together_about_half_the_time():
    img, lab = ramp(6, 7), blocks(6, 7)
    t = ImageSegTransform(mean_value=MEAN, mirror=True)
    flips = 0
    for seed in range(200):
        data, label, d = t(img, lab, np.random.default_rng(seed))
        src = img[:, ::-1] if d.mirror else img
        np.testing.assert_array_equal(data, (src.astype(np.float32) - np.float32(MEAN)).transpose(2, 0, 1))
        np.testing.assert_array_equal(label[0], (lab[:, ::-1] if d.mirror else lab).astype(np.float32))
        flips += d.mirror
    assert 70 < flips < 130


def test_scale_factor_drawn_uniformly_from_the_list():
    t = ImageSegTransform(scale_factors=(0.5, 0.75, 1.0, 1.25, 1.5))
    img, lab = ramp(8, 8), blocks(8, 8)
    counts: dict[float, int] = {}
    for seed in range(500):
        data, _, d = t(img, lab, np.random.default_rng(seed))
        assert data.shape[1] == int(8 * d.scale)
        counts[d.scale] = counts.get(d.scale, 0) + 1
    assert set(counts) == {0.5, 0.75, 1.0, 1.25, 1.5}
    assert all(60 < c < 140 for c in counts.values())


def _write_list(tmp_path, n=5, size=(11, 13)):
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    lines = []
    for i in range(n):
        rgb = (ramp(*size).astype(int) + 40 * i) % 256
        Image.fromarray(rgb.astype(np.uint8)).save(tmp_path / "img" / f"{i}.png")
        Image.fromarray(blocks(*size) + i).save(tmp_path / "lab" / f"{i}.png")
        lines.append(f"/img/{i}.png /lab/{i}.png")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return tmp_path / "list.txt"


def test_list_file_reads_bgr_and_index_labels_with_root_prefix(tmp_path):
    src = _write_list(tmp_path)
    items = read_seg_list(src, str(tmp_path))
    assert items[2] == (tmp_path / "img/2.png", tmp_path / "lab/2.png")
    ds = ImageSegData.from_list(src, str(tmp_path), ImageSegTransform(), shuffle=False)
    data, label, _ = ds.sample(2)
    rgb = np.asarray(Image.open(tmp_path / "img/2.png"))
    np.testing.assert_array_equal(data, rgb[..., ::-1].transpose(2, 0, 1).astype(np.float32))  # BGR
    np.testing.assert_array_equal(label[0], blocks(11, 13) + 2)
    with pytest.raises(DatasetError, match="not found"):
        ImageSegData.from_list(src, str(tmp_path / "nope"), ImageSegTransform())


def test_stream_is_seeded_and_independent_of_worker_count(tmp_path):
    src = _write_list(tmp_path)
    t = ImageSegTransform(crop_size=(9, 9), mean_value=MEAN, scale_factors=(0.75, 1.0, 1.5), mirror=True)

    def batches(workers, seed=7, start=0, n=6):
        ds = ImageSegData.from_list(src, str(tmp_path), t, seed=seed)
        s = ImageSegStream(ds, batch_size=2, num_workers=workers, position=start)
        return [s.next_batch() for _ in range(n)], s

    one, s1 = batches(0)
    two, _ = batches(2)
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a["data"], b["data"]) and torch.equal(a["label"], b["label"])
    assert s1.state_dict()["position"] == 12
    resumed, _ = batches(0, start=6, n=3)  # resume from the position: the same items
    for a, b in zip(one[3:], resumed, strict=True):
        assert torch.equal(a["data"], b["data"])
    other, _ = batches(0, seed=8)
    assert any(not torch.equal(a["data"], b["data"]) for a, b in zip(one, other, strict=True))
    ds = ImageSegData.from_list(src, str(tmp_path), t, seed=7)
    epoch0 = sorted(ds.image_index(k) for k in range(5))
    assert epoch0 == list(range(5))  # every image once per epoch
    assert [ds.image_index(k) for k in range(5)] != [ds.image_index(k) for k in range(5, 10)]

"""Datasets in their released layouts, label-ID traps, and the `eval` / `score` commands end to end.

Small datasets are built here in tmp_path in the real folder layouts; the PASCAL VOC tests also use the real
VOC 2012 image and its palette label in shared/fixtures/real/voc_sample.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from segconvert.errors import DatasetError
from segconvert.eval.datasets import ADE20KDataset, CityscapesDataset, VOCDataset, get_dataset
from segconvert.eval.labels import CITYSCAPES_TRAIN_LABELS
from segconvert.eval.palettes import voc_palette
from segconvert.testing import fixture_path
from tests.cli_runner import run_cli

# ------------------------------------------------------------------------------------------- helpers


class KnownMapModel(nn.Module):
    """Returns one-hot logits of a fixed label map placed at the top-left of its input (0 elsewhere)."""

    def __init__(self, label_map: np.ndarray, num_classes: int, meta: dict | None = None) -> None:
        super().__init__()
        self.register_buffer("map", torch.as_tensor(label_map.astype(np.int64)))
        self.num_classes = num_classes
        self.segconvert_meta = meta or {
            "arch": "test",
            "preprocessing": {"channel_order": "RGB", "mean": [0.0, 0.0, 0.0], "std": None, "scale": 1.0},
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        full = torch.zeros(h, w, dtype=torch.int64)
        mh, mw = min(h, self.map.shape[0]), min(w, self.map.shape[1])
        full[:mh, :mw] = self.map[:mh, :mw]
        return nn.functional.one_hot(full, self.num_classes).permute(2, 0, 1).float().expand(n, -1, -1, -1)


class ColorClassifier(nn.Module):
    """Class k where the red channel is nearest to 10*k: a model whose prediction is encoded in the image."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.segconvert_meta = {
            "arch": "test",
            "preprocessing": {"channel_order": "RGB", "mean": [0.0, 0.0, 0.0], "std": None, "scale": 1.0},
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centres = 10.0 * torch.arange(self.num_classes, dtype=x.dtype).view(1, -1, 1, 1)
        return -((x[:, :1] - centres) ** 2)


def eval_args(weights: Path, dataset: str, root: Path, *extra: object) -> list[str]:
    """``segconvert eval`` arguments (every extra converted to str)."""
    return ["eval", str(weights), "--dataset", dataset, "--root", str(root), *map(str, extra)]


def voc_sample_root(tmp_path: Path, name: str = "2011_003078") -> tuple[Path, np.ndarray, np.ndarray]:
    """A VOCdevkit with the real sample image and its palette label (val = that one image)."""
    src = fixture_path("real", "voc_sample")
    data = np.load(src / "data.npz")
    root = tmp_path / "VOCdevkit" / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    Image.fromarray(data["rgb"]).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
    shutil.copy(src / "class_label_derived.png", root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text(f"{name}\n")
    label = np.asarray(Image.open(src / "class_label_derived.png"))
    return tmp_path, data["rgb"], label


def cityscapes_root(tmp_path: Path, n: int = 2, h: int = 32, w: int = 64, seed: int = 0):
    """Cityscapes layout whose images encode their (trainId) prediction in the red channel (see ColorClassifier).

    Returns root and a list of (trainId prediction the model will make, labelId ground truth, instanceIds).
    """
    rng = np.random.default_rng(seed)
    tid_to_lid = np.full(256, 0, np.uint8)
    for lab in CITYSCAPES_TRAIN_LABELS:
        tid_to_lid[lab.train_id] = lab.id
    out = []
    for i in range(n):
        city = ("aachen", "lindau")[i % 2]
        stem = f"{city}_{i:06d}_000019"
        pred = np.repeat(np.repeat(rng.integers(0, 19, size=(h // 8, w // 8)), 8, 0), 8, 1).astype(np.uint8)
        gt = tid_to_lid[pred].copy()
        gt[:4] = 1  # ego vehicle (ignored) on the top rows
        gt[-8:, :8] = tid_to_lid[(pred[-8:, :8] + 1) % 19]  # one wrong block
        inst = gt.astype(np.uint16)
        inst[(gt == 26)] = 26000  # all car pixels: one instance
        img = np.zeros((h, w, 3), np.uint8)
        img[..., 0] = pred * 10
        for sub, arr in (("leftImg8bit", img), ("gtFine", None)):
            (tmp_path / sub / "val" / city).mkdir(parents=True, exist_ok=True)
            if arr is not None:
                Image.fromarray(arr).save(tmp_path / sub / "val" / city / f"{stem}_leftImg8bit.png")
        gdir = tmp_path / "gtFine" / "val" / city
        Image.fromarray(gt).save(gdir / f"{stem}_gtFine_labelIds.png")
        Image.fromarray(inst).save(gdir / f"{stem}_gtFine_instanceIds.png")
        out.append((stem, city, pred, gt, inst))
    return tmp_path, out


# ---------------------------------------------------------------------------------------------- VOC


def test_voc_real_sample_palette_png_reads_as_indices(tmp_path):
    """Pitfall #22: the palette PNG yields class indices {0..20, 255}, not colours."""
    root, rgb, label = voc_sample_root(tmp_path)
    ds = get_dataset("voc", root)
    assert ds.root.name == "VOC2012" and len(ds) == 1
    t = ds.load_target(0)
    assert set(np.unique(t.label).tolist()) == {0, 5, 9, 11, 15}
    assert np.array_equal(t.label, label)
    assert ds.load_image(0).shape == rgb.shape
    # the sample's palette is the VOC colour map
    pal = np.array(Image.open(fixture_path("real", "voc_sample", "class_label_derived.png")).getpalette()[:63])
    assert np.array_equal(pal.reshape(21, 3), voc_palette(21))


def test_voc_label_resaved_as_rgb_is_rejected(tmp_path):
    root, _, _ = voc_sample_root(tmp_path)
    lab = root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2011_003078.png"
    Image.open(lab).convert("RGB").save(lab)
    with pytest.raises(DatasetError, match="colour image"):
        get_dataset("voc", root).load_target(0)
    Image.open(lab).convert("L").save(lab)  # colours flattened to grey levels
    with pytest.raises(DatasetError, match="outside 0..20"):
        get_dataset("voc", root).load_target(0)


def test_voc_palette_label_with_foreign_indices_is_rejected(tmp_path):
    root, _, label = voc_sample_root(tmp_path)
    lab = root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2011_003078.png"
    bad = label.copy()
    bad[:2, :2] = 40
    im = Image.fromarray(bad).convert("P")  # 'L' -> 'P' keeps the values as indices
    im.putpalette(Image.open(fixture_path("real", "voc_sample", "class_label_derived.png")).getpalette())
    im.save(lab)
    assert Image.open(lab).mode == "P"
    with pytest.raises(DatasetError, match=r"palette label holds values \[40\] outside 0..20/255"):
        get_dataset("voc", root).load_target(0)


def test_voc_wrong_root_and_missing_split(tmp_path):
    with pytest.raises(DatasetError, match="JPEGImages/, SegmentationClass/"):
        get_dataset("voc", tmp_path)
    root, _, _ = voc_sample_root(tmp_path)
    with pytest.raises(DatasetError, match=r"train_aug\.txt.*available: val"):
        VOCDataset(root / "VOCdevkit", "train_aug")


def test_voc_train_aug_two_column_list(tmp_path):
    root, _, label = voc_sample_root(tmp_path)
    voc = root / "VOCdevkit" / "VOC2012"
    (voc / "SegmentationClassAug").mkdir()
    Image.fromarray(label).convert("L").save(voc / "SegmentationClassAug" / "2011_003078.png")
    (voc / "ImageSets" / "Segmentation" / "train_aug.txt").write_text(
        "/JPEGImages/2011_003078.jpg /SegmentationClassAug/2011_003078.png\n"
    )
    ds = VOCDataset(voc, "train_aug")
    assert ds.samples[0].label.parent.name == "SegmentationClassAug"
    assert np.array_equal(ds.load_target(0).label, label)


def test_eval_cli_on_real_voc_sample_with_known_map(tmp_path, capsys, monkeypatch):
    root, _, label = voc_sample_root(tmp_path)
    pred = label.copy()
    pred[label == 15] = 0  # person predicted as background
    model = KnownMapModel(pred, 21)
    monkeypatch.setattr("segconvert.eval.runner.load_weights", lambda path, device: model)
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    out_dir = tmp_path / "pred"
    code, out, err = run_cli(
        *eval_args(
            weights, "voc", root, "--protocol", "deeplab-msc", "--save-pred", out_dir, "--json", "--device", "cpu"
        )
    )
    assert code == 0, err
    res = json.loads(out)
    counts = {c: int((label == c).sum()) for c in (0, 5, 9, 11, 15)}
    iou = {c["name"]: c["iou"] for c in res["classes"]}
    assert iou["background"] == pytest.approx(counts[0] / (counts[0] + counts[15]))
    assert iou["person"] == 0.0 and iou["bottle"] == 1.0 and iou["chair"] == 1.0 and iou["diningtable"] == 1.0
    assert iou["aeroplane"] is None  # absent from GT and prediction: NaN, skipped by mIoU
    expected = (counts[0] / (counts[0] + counts[15]) + 0 + 1 + 1 + 1) / 5
    assert res["metrics"]["mIoU"] == pytest.approx(expected)
    assert res["metrics"]["aAcc"] == pytest.approx(1 - counts[15] / label.size)
    assert res["protocol"]["name"] == "deeplab-msc" and res["protocol"]["crop"] == 513
    # --save-pred: index PNG, palette PNG with the VOC colours, overlay
    saved = np.asarray(Image.open(out_dir / "labels" / "2011_003078.png"))
    assert np.array_equal(saved, pred)
    color = Image.open(out_dir / "color" / "2011_003078.png")
    assert color.mode == "P" and np.array_equal(np.asarray(color), pred)
    assert np.array_equal(np.array(color.getpalette()[:63]).reshape(21, 3), voc_palette(21))
    assert Image.open(out_dir / "overlay" / "2011_003078.png").size == (500, 375)
    # the saved predictions score identically through `segconvert score`
    code, out2, err2 = run_cli(
        *["score", "--dataset", "voc", "--root", str(root), "--pred", str(out_dir / "labels"), "--json"]
    )
    assert code == 0, err2
    assert json.loads(out2)["metrics"] == res["metrics"]
    # a colourised (RGB) prediction is refused, never decoded as colours
    Image.open(out_dir / "color" / "2011_003078.png").convert("RGB").save(out_dir / "labels" / "2011_003078.png")
    code, _, err3 = run_cli("score", "--dataset", "voc", "--root", str(root), "--pred", str(out_dir / "labels"))
    assert code == 2 and "RGB colour image" in err3


def test_eval_cli_table_and_progress(tmp_path, capsys, monkeypatch):
    root, _, label = voc_sample_root(tmp_path)
    monkeypatch.setattr("segconvert.eval.runner.load_weights", lambda p, d: KnownMapModel(label, 21))
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    code, out, err = run_cli(
        *["eval", str(weights), "--dataset", "voc", "--root", str(root), "--protocol", "whole", "--device", "cpu"]
    )
    assert code == 0, err
    assert "classes          IoU%      Acc%" in out and "Score Average : 100.00" in out
    assert "mIoU 100.00" in out and "protocol whole ss" in out
    assert re.search(r"1/1 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+img/s\]", err), err  # tqdm: elapsed<ETA, images/s


def two_image_voc(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """The real VOC sample under two names (val = both), for --limit."""
    root, _, label = voc_sample_root(tmp_path)
    voc = root / "VOCdevkit" / "VOC2012"
    shutil.copy(voc / "JPEGImages" / "2011_003078.jpg", voc / "JPEGImages" / "2011_003079.jpg")
    shutil.copy(voc / "SegmentationClass" / "2011_003078.png", voc / "SegmentationClass" / "2011_003079.png")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2011_003078\n2011_003079\n")
    return root, label


def test_eval_cli_scales_flip_limit_device(tmp_path, capsys, monkeypatch):
    """--scales / --flip / --no-flip / --limit / --device end to end: what ran is in the JSON."""
    root, label = two_image_voc(tmp_path)
    calls: list[tuple[int, int]] = []

    class Recording(KnownMapModel):
        def forward(self, x):
            calls.append(tuple(x.shape[-2:]))
            return super().forward(x)

    monkeypatch.setattr("segconvert.eval.runner.load_weights", lambda p, d: Recording(label, 21))
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    base = ["eval", str(weights), "--dataset", "voc", "--root", str(root), "--json", "--quiet"]
    code, out, err = run_cli(*base, "--protocol", "whole", "--scales", "0.5,1", "--flip", "--limit", "1")
    assert code == 0, err
    res = json.loads(out)
    assert res["num_images"] == 1 and res["device"] == "cpu"
    assert res["protocol"]["scales"] == [0.5, 1.0] and res["protocol"]["flip"] is True
    assert calls == [(188, 250), (188, 250), (375, 500), (375, 500)]  # 2 scales x (plain, flipped), one image
    calls.clear()
    code, out, err = run_cli(*base, "--protocol", "pspnet", "--crop", "600", "--no-flip", "--device", "cpu")
    assert code == 0, err
    res = json.loads(out)
    assert res["num_images"] == 2 and res["protocol"]["flip"] is False and res["protocol"]["crop"] == 600
    assert calls == [(600, 600), (600, 600)]  # one 600x600 window per image (long side 513), no flipped pass
    if not torch.cuda.is_available():
        code, _, err = run_cli(*base, "--device", "cuda")
        assert code == 2 and "CUDA is not available" in err
    code, _, err = run_cli(*base, "--protocol", "deeplab-msc", "--scales", "ms")
    assert code == 2 and "no extra scales" in err


def test_eval_cli_class_count_mismatch(tmp_path, capsys, monkeypatch):
    root, _, label = voc_sample_root(tmp_path)
    monkeypatch.setattr("segconvert.eval.runner.load_weights", lambda p, d: KnownMapModel(label, 19))
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    code, _, err = run_cli("eval", str(weights), "--dataset", "voc", "--root", str(root), "--quiet")
    assert code == 2 and "model predicts 19 classes but voc has 21" in err


def test_eval_cli_wrong_root_is_one_line(tmp_path, capsys):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    code, out, err = run_cli("eval", str(weights), "--dataset", "cityscapes", "--root", str(tmp_path))
    assert code == 2
    assert err.startswith("error: ") and "leftImg8bit/val" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------- Cityscapes


def test_cityscapes_eval_save_and_score_labelids(tmp_path, capsys, monkeypatch):
    root, items = cityscapes_root(tmp_path / "cs")
    monkeypatch.setattr("segconvert.eval.runner.load_weights", lambda p, d: ColorClassifier(19))
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    code, out, err = run_cli(
        *[
            "eval",
            str(weights),
            "--dataset",
            "cityscapes",
            "--root",
            str(root),
            "--protocol",
            "whole",
            "--save-pred",
            str(tmp_path / "out"),
            "--json",
            "--quiet",
        ]
    )
    assert code == 0, err
    res = json.loads(out)
    for stem, city, pred, _gt, _ in items:
        saved = np.asarray(Image.open(tmp_path / "out" / "labels" / city / f"{stem}_leftImg8bit.png"))
        lid = np.array([lab.id for lab in CITYSCAPES_TRAIN_LABELS], np.uint8)[pred]
        assert np.array_equal(saved, lid)  # labelIds, as the official evaluator expects
    stem, city, pred, _, _ = items[0]
    color = Image.open(tmp_path / "out" / "color" / city / f"{stem}_leftImg8bit.png")
    rgb = np.asarray(color.convert("RGB"))
    colours = {lab.train_id: lab.color for lab in CITYSCAPES_TRAIN_LABELS}
    assert color.mode == "P" and all(tuple(rgb[y, x]) == colours[pred[y, x]] for y, x in ((0, 0), (20, 40)))
    assert Image.open(tmp_path / "out" / "overlay" / city / f"{stem}_leftImg8bit.png").mode == "RGB"
    # every pixel right except one 8x8 block per image (and the ignored ego-vehicle rows)
    assert res["metrics"]["aAcc"] == pytest.approx(1 - 2 * 64 / (2 * (32 * 64 - 4 * 64)))
    assert res["metrics"]["iIoU"] is not None and res["categories"][0]["name"] == "flat"
    code, out2, err2 = run_cli(
        *[
            "score",
            "--dataset",
            "cityscapes",
            "--root",
            str(root),
            "--pred",
            str(tmp_path / "out" / "labels"),
            "--json",
            "--quiet",
        ]
    )
    assert code == 0, err2
    assert json.loads(out2)["metrics"] == res["metrics"]


def test_cityscapes_trainids_given_where_labelids_expected(tmp_path, capsys):
    """Pitfall #23: trainId predictions sent to the labelId scorer are refused with a clear message."""
    root, items = cityscapes_root(tmp_path / "cs")
    pred_dir = tmp_path / "train_preds"
    for stem, city, pred, _, _ in items:
        (pred_dir / city).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pred).save(pred_dir / city / f"{stem}_leftImg8bit.png")
    score = ["score", "--dataset", "cityscapes", "--root", str(root), "--pred", str(pred_dir)]
    code, out, err = run_cli(*score)
    assert code == 2 and "look like trainIds" in err and "--pred-ids trainIds" in err
    code, out, err = run_cli(*score, "--pred-ids", "trainIds", "--json", "--quiet")
    assert code == 0, err
    as_train = json.loads(out)["metrics"]
    # explicitly forced labelIds: scored (badly), with a warning
    code, out, err = run_cli(*score, "--pred-ids", "labelIds", "--json", "--quiet")
    assert code == 0 and "warning:" in err and json.loads(out)["metrics"]["mIoU"] < as_train["mIoU"] - 0.3


def test_cityscapes_labelids_given_as_trainids_and_missing_prediction(tmp_path, capsys):
    root, items = cityscapes_root(tmp_path / "cs")
    pred_dir = tmp_path / "p"
    stem, city, _, gt, _ = items[0]
    pred_dir.mkdir()
    Image.fromarray(gt).save(pred_dir / f"{stem}_leftImg8bit.png")
    code, _, err = run_cli(
        *["score", "--dataset", "cityscapes", "--root", str(root), "--pred", str(pred_dir), "--pred-ids", "trainIds"]
    )
    assert code == 2 and "no prediction for 1 of 2" in err and items[1][0] in err
    Image.fromarray(items[1][3]).save(pred_dir / f"{items[1][0]}_leftImg8bit.png")
    code, _, err = run_cli(
        *["score", "--dataset", "cityscapes", "--root", str(root), "--pred", str(pred_dir), "--pred-ids", "trainIds"]
    )
    assert code == 2 and "look like labelIds" in err


def test_cityscapes_labeltrainids_ground_truth(tmp_path):
    root, items = cityscapes_root(tmp_path / "cs", n=1)
    stem, city, pred, gt, _ = items[0]
    gdir = root / "gtFine" / "val" / city
    lid_png = gdir / f"{stem}_gtFine_labelIds.png"
    lid_png.unlink()
    lut = np.full(256, 255, np.uint8)
    for lab in CITYSCAPES_TRAIN_LABELS:
        lut[lab.id] = lab.train_id
    Image.fromarray(lut[gt]).save(gdir / f"{stem}_gtFine_labelTrainIds.png")
    ds = CityscapesDataset(root)
    t = ds.load_target(0)
    expected = gt.copy()
    expected[lut[gt] == 255] = 0  # ignored ids come back as 'unlabeled'
    assert np.array_equal(t.label, expected) and t.instance is not None


# -------------------------------------------------------------------------------------------- ADE20K


def ade_root(tmp_path: Path, ann: np.ndarray) -> Path:
    base = tmp_path / "ADEChallengeData2016"
    (base / "images" / "validation").mkdir(parents=True)
    (base / "annotations" / "validation").mkdir(parents=True)
    Image.fromarray(np.zeros((*ann.shape, 3), np.uint8)).save(base / "images" / "validation" / "ADE_val_00000001.jpg")
    Image.fromarray(ann).save(base / "annotations" / "validation" / "ADE_val_00000001.png")
    return tmp_path


def test_ade_reduce_zero_label_once(tmp_path):
    """Pitfall #24: labels end in {0..149, 255}; an already reduced annotation (with 255) is refused."""
    ann = np.array([[0, 1, 2], [150, 150, 0]], np.uint8)
    ds = get_dataset("ade20k", ade_root(tmp_path, ann))
    assert ds.load_target(0).label.tolist() == [[255, 0, 1], [149, 149, 255]]
    reduced = ADE20KDataset(tmp_path)
    Image.fromarray(ds.load_target(0).label).save(reduced.samples[0].label)
    with pytest.raises(DatasetError, match="already reduced"):
        reduced.load_target(0)


def test_ade_score_one_and_zero_based(tmp_path, capsys):
    ann = np.array([[0, 1, 2, 2], [150, 150, 1, 1]], np.uint8)
    root = ade_root(tmp_path / "ade", ann)
    one = tmp_path / "one"
    one.mkdir()
    Image.fromarray(np.array([[5, 1, 2, 2], [150, 150, 1, 2]], np.uint8)).save(one / "ADE_val_00000001.png")
    code, out, err = run_cli("score", "--dataset", "ade20k", "--root", str(root), "--pred", str(one), "--json")
    assert code == 0, err
    iou = {c["name"]: c["iou"] for c in json.loads(out)["classes"]}
    # class 0 (wall, ann 1): TP 2, FN 1; class 1 (building, ann 2): TP 2, FP 1; class 149 (flag): TP 2
    assert iou["wall"] == pytest.approx(2 / 3) and iou["building"] == pytest.approx(2 / 3) and iou["flag"] == 1.0
    zero = tmp_path / "zero"
    zero.mkdir()
    Image.fromarray(np.array([[4, 0, 1, 1], [149, 149, 0, 1]], np.uint8)).save(zero / "ADE_val_00000001.png")
    code, out2, _ = run_cli(
        *[
            "score",
            "--dataset",
            "ade20k",
            "--root",
            str(root),
            "--pred",
            str(zero),
            "--pred-ids",
            "zero-based",
            "--json",
        ]
    )
    assert code == 0 and json.loads(out2)["metrics"] == json.loads(out)["metrics"]
    # zero-based predictions scored as the default one-based: scored (0 = 'other' is never right), with a warning
    code, out3, err3 = run_cli("score", "--dataset", "ade20k", "--root", str(root), "--pred", str(zero), "--json")
    assert code == 0 and "warning:" in err3 and "--pred-ids zero-based" in err3
    assert json.loads(out3)["metrics"]["mIoU"] < json.loads(out)["metrics"]["mIoU"]
    code, _, err = run_cli(
        *["score", "--dataset", "ade20k", "--root", str(root), "--pred", str(one), "--pred-ids", "trainIds"]
    )
    assert code == 2 and "does not apply to ade20k" in err


def test_ade_eval_save_pred_one_based_and_score_back(tmp_path, capsys, monkeypatch):
    ann = np.array([[0, 1, 2, 2], [150, 150, 1, 1]], np.uint8)
    root = ade_root(tmp_path / "ade", ann)
    pred = np.array([[4, 0, 1, 1], [149, 149, 0, 1]])  # zero-based: the reduced annotation with one error
    monkeypatch.setattr("segconvert.eval.runner.load_weights", lambda p, d: KnownMapModel(pred, 150))
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    code, out, err = run_cli("eval", str(weights), "--dataset", "ade20k", "--root", str(root), "--protocol", "whole",
         "--save-pred", str(tmp_path / "out"), "--json", "--quiet")  # fmt: skip
    assert code == 0, err
    res = json.loads(out)
    saved = np.asarray(Image.open(tmp_path / "out" / "labels" / "ADE_val_00000001.png"))
    assert saved.tolist() == (pred + 1).tolist()  # SceneParsing format: class v written as v + 1
    iou = {c["name"]: c["iou"] for c in res["classes"]}
    # reduced GT [[255, 0, 1, 1], [149, 149, 0, 0]]: wall TP 2 FN 1 (pred 1 at (1, 3)); building TP 2 FP 1
    assert iou["wall"] == pytest.approx(2 / 3) and iou["building"] == pytest.approx(2 / 3) and iou["flag"] == 1.0
    code, out2, err2 = run_cli(
        *["score", "--dataset", "ade20k", "--root", str(root), "--pred", str(tmp_path / "out" / "labels"), "--json"]
    )
    assert code == 0, err2
    assert json.loads(out2)["metrics"] == res["metrics"]


def test_ade_wrong_layout(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match=r"annotations/validation/\*\.png"):
        ADE20KDataset(tmp_path)


def test_eval_cli_with_a_converted_weights_file(tmp_path, capsys):
    """Through the real store: load_model rebuilds the net; crop and preprocessing come from its metadata."""
    from segconvert.eval.resize import matlab_imresize
    from segconvert.reference_models import create_model
    from segconvert.weights.store import save_converted

    torch.manual_seed(0)
    small = dict(stem_widths=[4, 4, 8], widths=[4, 8, 8, 8], out_widths=[8, 8, 16, 16], ppm_width=4, head_width=8)
    model = create_model("pspnet50", num_classes=21, input_size=[65, 65], **small).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.5)
    prep = {"channel_order": "BGR", "mean": [103.939, 116.779, 123.68], "std": None, "scale": 1.0}
    meta = {"arch": "pspnet50", "config": model.config, "num_classes": 21, "input_size": [65, 65],
            "preprocessing": prep, "source": {"format": "caffe", "files": []}}  # fmt: skip
    weights = save_converted(tmp_path / "tiny.safetensors", model.state_dict(), meta)
    root, rgb, label = voc_sample_root(tmp_path / "voc")
    code, out, err = run_cli(*eval_args(weights, "voc", root, "--base-size", 64, "--device", "cpu",
                                        "--save-pred", tmp_path / "pred", "--json", "--quiet"))  # fmt: skip
    assert code == 0, err
    res = json.loads(out)
    assert res["protocol"]["name"] == "pspnet" and res["protocol"]["crop"] == 65  # default for a Caffe PSPNet
    # the same prediction by hand: long 65, short round(65/500*375 = 48.75) = 49, pad to 65x65, flip-sum, softmax
    img = np.asarray(Image.open(root / "VOCdevkit/VOC2012/JPEGImages/2011_003078.jpg"), dtype=np.float64)
    x = matlab_imresize(torch.from_numpy(img).permute(2, 0, 1), (49, 65), uint8=True).float()
    x = x.flip(0) - torch.tensor(prep["mean"]).view(3, 1, 1)
    x = torch.nn.functional.pad(x, (0, 0, 0, 16))[None]
    with torch.no_grad():
        s = torch.softmax(model(x) + model(x.flip(-1)).flip(-1), 1)[0, :, :49, :65]
    expected = matlab_imresize(s, (375, 500)).argmax(0).numpy()
    saved = np.asarray(Image.open(tmp_path / "pred" / "labels" / "2011_003078.png"))
    assert (saved == expected).mean() > 0.999  # float32 summation order may flip rare near-ties

"""The zoo manifest (published scores with their settings, the traps) and `segconvert zoo` / `reproduce`."""

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

from segconvert.eval.protocols import PROTOCOLS, get_protocol
from segconvert.testing import fixture_path
from segconvert.weights import zoo
from tests.cli_runner import run_cli


def _score(entry, value):
    (s,) = [s for s in entry["scores"] if s["value"] == value]
    return s


def test_every_entry_is_valid_and_uses_known_protocols():
    names = zoo.names()
    assert len(names) == len(set(names))
    for e in zoo.entries():
        assert zoo.validate(e) == [], e["name"]
        if e["protocol"]:
            assert e["protocol"]["name"] in PROTOCOLS
            p = get_protocol(
                e["protocol"]["name"], e["dataset"], **{k: v for k, v in e["protocol"].items() if k != "name"}
            )
            assert p.crop == e["input_size"][0]
        for f in e["files"]:
            assert f["checksums"] is None  # none of these sources publishes a checksum


def test_published_numbers_and_their_settings():
    """SPEC section 7, with the settings that make them comparable or not (pitfall #26)."""
    dl = zoo.get_entry("deeplabv2_resnet101_msc_voc12")
    s = _score(dl, 76.35)
    assert (s["split"], s["crf"], s["protocol"], s["comparable"]) == ("val", False, "deeplab-msc", True)
    crf = _score(dl, 77.69)
    assert crf["crf"] is True and crf["comparable"] is False
    assert _score(dl, 75.54)["comparable"] and _score(dl, 79.7)["split"] == "test"
    assert not _score(dl, 78.48)["comparable"]  # per-image mIoU

    voc = zoo.get_entry("pspnet101_voc2012")
    t = _score(voc, 85.41)
    assert t["split"] == "test" and t["setting"] == "ms" and not t["comparable"]
    assert not any(s["comparable"] for s in voc["scores"])

    ade = zoo.get_entry("pspnet50_ade20k")
    assert [(s["metric"], s["value"], s["setting"]) for s in ade["scores"] if s["comparable"]] == [
        ("mIoU", 41.68, "ss"),
        ("aAcc", 80.04, "ss"),
        ("mIoU", 42.78, "ms"),
        ("aAcc", 80.76, "ms"),
    ]
    assert ade["protocol"] == {"name": "pspnet", "base_size": 512, "crop": 473}
    assert ade["preprocessing"]["channel_order"] == "BGR" and ade["preprocessing"]["std"] is None

    cs = zoo.get_entry("pspnet101_cityscapes")
    ss = [s for s in cs["scores"] if s["comparable"] and s["setting"] == "ss"]
    assert {(s["metric"], s["value"]) for s in ss} == {("mIoU", 79.70), ("aAcc", 96.38)}
    assert all(s["flip"] and s["scales"] == [1.0] for s in ss)
    assert _score(cs, 80.91)["scales"] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    assert cs["protocol"]["base_size"] == 2048 and cs["input_size"] == [713, 713]

    semseg = zoo.get_entry("semseg_pspnet101_ade20k")
    assert _score(semseg, 43.10)["flip"] is True and semseg["protocol"]["name"] == "semseg"


# SPEC section 7, copied by hand: (zoo entry, metric, value, split, setting, flip, crf, comparable)
SPEC_TABLE = [
    ("deeplabv2_resnet101_msc_voc12", "mIoU", 76.35, "val", "ss", False, False, True),
    ("deeplabv2_resnet101_msc_voc12", "mIoU", 77.69, "val", "ss", False, True, False),
    ("deeplabv2_resnet101_msc_voc12", "mIoU", 79.7, "test", "ss", False, True, False),
    ("deeplabv2_resnet101_msc_voc12", "mIoU", 75.54, "val", "ss", False, False, True),
    ("deeplabv2_resnet101_msc_voc12", "mIoU", 74.39, "val", "ss", False, False, False),
    ("deeplabv2_resnet101_msc_voc12", "mIoU", 78.48, "val", "ss", False, False, False),
    ("kazuto1011_deeplabv2_resnet101_msc_vocaug", "mIoU", 76.65, "val", "ss", False, False, False),
    ("kazuto1011_deeplabv2_resnet101_msc_vocaug", "mIoU", 77.93, "val", "ss", False, True, False),
    ("pspnet50_ade20k", "mIoU", 41.68, "val", "ss", True, False, True),
    ("pspnet50_ade20k", "aAcc", 80.04, "val", "ss", True, False, True),
    ("pspnet50_ade20k", "mIoU", 42.78, "val", "ms", True, False, True),
    ("pspnet50_ade20k", "aAcc", 80.76, "val", "ms", True, False, True),
    ("pspnet101_cityscapes", "mIoU", 79.70, "val", "ss", True, False, True),
    ("pspnet101_cityscapes", "aAcc", 96.38, "val", "ss", True, False, True),
    ("pspnet101_cityscapes", "mIoU", 80.91, "val", "ms", True, False, True),
    ("pspnet101_cityscapes", "aAcc", 96.59, "val", "ms", True, False, True),
    ("pspnet101_voc2012", "mIoU", 85.41, "test", "ms", True, False, False),
    ("pspnet101_voc2012", "mIoU", 91.0, "val", "ss", True, False, False),
    ("pspnet101_voc2012", "mIoU", 88.1, "val", "ss", True, False, False),
    ("pspnet101_voc2012", "mIoU", 88.6, "val", "ms", True, False, False),
    ("semseg_pspnet50_ade20k", "mIoU", 41.89, "val", "ss", True, False, True),
    ("semseg_pspnet50_ade20k", "mIoU", 42.84, "val", "ms", True, False, True),
    ("semseg_pspnet101_ade20k", "mIoU", 43.10, "val", "ss", True, False, True),
    ("semseg_pspnet101_ade20k", "mIoU", 44.15, "val", "ms", True, False, True),
    ("semseg_pspnet50_voc", "mIoU", 77.05, "val", "ss", True, False, True),
    ("semseg_pspnet50_voc", "mIoU", 78.02, "val", "ms", True, False, True),
    ("semseg_pspnet101_voc", "mIoU", 79.07, "val", "ss", True, False, True),
    ("semseg_pspnet101_voc", "mIoU", 79.63, "val", "ms", True, False, True),
    ("semseg_pspnet50_cityscapes", "mIoU", 77.30, "val", "ss", True, False, True),
    ("semseg_pspnet50_cityscapes", "mIoU", 78.38, "val", "ms", True, False, True),
    ("semseg_pspnet101_cityscapes", "mIoU", 78.63, "val", "ss", True, False, True),
    ("semseg_pspnet101_cityscapes", "mIoU", 79.29, "val", "ms", True, False, True),
    ("pspnet101_cityscapes", "mIoU", 76.99, "val", "ss", False, False, False),
    ("pspnet101_cityscapes", "mIoU", 77.23, "val", "ss", True, False, False),
    ("pspnet50_ade20k", "mIoU", 40.00, "val", "ss", False, False, False),
    ("pspnet50_ade20k", "mIoU", 40.67, "val", "ss", True, False, False),
]


@pytest.mark.parametrize("row", SPEC_TABLE, ids=lambda r: f"{r[0]}-{r[2]}")
def test_every_spec_number_is_in_the_zoo_with_its_setting(row):
    name, metric, value, split, setting, flip, crf, comparable = row
    hits = [s for s in zoo.get_entry(name)["scores"] if s["value"] == value and s["metric"] == metric]
    assert len(hits) == 1, (name, value)
    s = hits[0]
    assert (s["split"], s["setting"], s["flip"], s["crf"], s["comparable"]) == (split, setting, flip, crf, comparable)
    assert s["source"] and (s["comparable"] or s["note"])  # every exclusion says why


def test_kazuto_weights_are_listed_but_not_reproducible(tmp_path, capsys):
    e = zoo.get_entry("kazuto1011_deeplabv2_resnet101_msc_vocaug")
    assert e["files"][0]["name"] == "deeplabv2_resnet101_msc-vocaug-20000.pth" and e["protocol"] is None
    w = tmp_path / "w.pth"
    w.write_bytes(b"x")
    code, _, err = run_cli("reproduce", e["name"], "--root", str(tmp_path), "--weights", str(w))
    assert code == 2 and "nothing to reproduce" in err and "align_corners=False" in err


def test_split_scores_explains_exclusions():
    cs = zoo.get_entry("pspnet101_cityscapes")
    same, other = zoo.split_scores(cs, protocol="pspnet", setting="ms", flip=True)
    assert {s["value"] for s in same} == {80.91, 96.59}
    reasons = {s["value"]: why for s, why in other}
    assert "ss" in reasons[79.70] and "TF port" in reasons[76.99]
    same, _ = zoo.split_scores(cs, protocol="pspnet", setting="ss", flip=False)
    assert same == []  # the published numbers include flip


def test_zoo_cli(capsys):
    code, out, err = run_cli("zoo")
    assert code == 0, err
    assert "pspnet101_cityscapes" in out and "79.70" in out and "[not comparable]" in out
    code, out, _ = run_cli("zoo", "--json")
    assert {e["name"] for e in json.loads(out)} == set(zoo.names())
    code, out, _ = run_cli("zoo", "pspnet50_ade20k", "--json")
    assert json.loads(out)["files"][0]["name"] == "pspnet50_ADE20K.caffemodel"
    code, out, _ = run_cli("zoo", "pspnet50_ade20k")  # a table for people, not JSON
    assert code == 0 and not out.lstrip().startswith("{")
    assert "pspnet50_ADE20K.caffemodel" in out and "41.68" in out and "std None" not in out
    code, _, err = run_cli("zoo", "nope")
    assert code == 2 and "unknown zoo entry" in err


class KnownMap(nn.Module):
    def __init__(self, label_map: np.ndarray, meta: dict) -> None:
        super().__init__()
        self.register_buffer("map", torch.as_tensor(label_map.astype(np.int64)))
        self.segconvert_meta = meta

    def forward(self, x):
        n, _, h, w = x.shape
        full = torch.zeros(h, w, dtype=torch.int64)
        full[: self.map.shape[0], : self.map.shape[1]] = self.map
        return nn.functional.one_hot(full, 21).permute(2, 0, 1).float().expand(n, -1, -1, -1)


def _voc(tmp_path: Path) -> tuple[Path, np.ndarray]:
    src = fixture_path("real", "voc_sample")
    root = tmp_path / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    Image.fromarray(np.load(src / "data.npz")["rgb"]).save(root / "JPEGImages" / "s.jpg")
    shutil.copy(src / "class_label_derived.png", root / "SegmentationClass" / "s.png")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("s\n")
    return root, np.asarray(Image.open(src / "class_label_derived.png"))


def test_reproduce_prints_ours_vs_published(tmp_path, capsys, monkeypatch):
    root, label = _voc(tmp_path)
    entry = zoo.get_entry("deeplabv2_resnet101_msc_voc12")
    pred = label.copy()
    pred[label == 15] = 0
    meta = {"arch": "deeplabv2_resnet101", "preprocessing": entry["preprocessing"]}
    seen = []

    def fake_load(path, device):
        seen.append(path)
        return KnownMap(pred, meta)

    monkeypatch.setattr("segconvert.eval.runner.load_weights", fake_load)
    w = tmp_path / "w.safetensors"
    w.write_bytes(b"x")
    base = ["reproduce", "deeplabv2_resnet101_msc_voc12", "--root", str(root), "--weights", str(w), "--device", "cpu"]
    code, out, err = run_cli(*base, "--json", "--quiet")
    assert code == 0, err
    res = json.loads(out)
    n0, n15 = int((label == 0).sum()), int((label == 15).sum())
    ours = 100 * (n0 / (n0 + n15) + 0 + 1 + 1 + 1) / 5
    rows = {r["published"]: r for r in res["comparison"]}
    assert set(rows) == {76.35, 75.54}
    assert rows[76.35]["ours"] == pytest.approx(ours) and rows[76.35]["diff"] == pytest.approx(ours - 76.35)
    assert {n["value"] for n in res["not_comparable"]} == {77.69, 79.7, 78.48, 74.39}
    assert res["protocol"]["name"] == "deeplab-msc" and seen == [str(w)]
    code, out, err = run_cli(*base, "--quiet")
    assert code == 0
    assert ours == pytest.approx(70.0, abs=1e-3)  # (1/2 + 0 + 1 + 1 + 1) / 5: background and person halve each other
    assert re.search(r"mIoU\s+76\.35\s+70\.00\s+-6\.35\s+kazuto1011/deeplab-pytorch", out)
    assert re.search(r"mIoU\s+75\.54\s+70\.00\s+-5\.54\s+isht7", out)
    assert "not compared: mIoU 77.69" in out and "includes DenseCRF" in out


class ConstantClass(nn.Module):
    """Predicts ``cls`` everywhere; records the input shape of every forward."""

    def __init__(self, cls: int, num_classes: int, meta: dict) -> None:
        super().__init__()
        self.cls, self.num_classes, self.segconvert_meta = cls, num_classes, meta
        self.sizes: list[tuple[int, ...]] = []

    def forward(self, x):
        self.sizes.append(tuple(x.shape))
        out = torch.zeros(x.shape[0], self.num_classes, *x.shape[-2:])
        out[:, self.cls] = 1.0
        return out


def _reproduce_json(name, root, model, tmp_path, capsys, monkeypatch, *extra):
    monkeypatch.setattr("segconvert.eval.runner.load_weights", lambda p, d: model)
    w = tmp_path / "w.safetensors"
    w.write_bytes(b"x")
    code, out, err = run_cli("reproduce", name, "--root", str(root), "--weights", str(w), *extra, "--json")
    assert code == 0, err
    return json.loads(out)


def test_reproduce_pspnet_runs_the_official_matlab_protocol(tmp_path, capsys, monkeypatch):
    """`reproduce pspnet50_ade20k`: MATLAB preset, base 512 (+1), crop 473, flip, compared with 41.68 / 80.04."""
    base_dir = tmp_path / "ADEChallengeData2016"
    for sub in ("images/validation", "annotations/validation"):
        (base_dir / sub).mkdir(parents=True)
    ann = np.ones((100, 150), np.uint8)  # wall (class 0) ...
    ann[:, 100:] = 2  # ... and building (class 1) on the right third
    Image.fromarray(np.zeros((100, 150, 3), np.uint8)).save(base_dir / "images/validation/ADE_val_00000001.jpg")
    Image.fromarray(ann).save(base_dir / "annotations/validation/ADE_val_00000001.png")
    entry = zoo.get_entry("pspnet50_ade20k")
    model = ConstantClass(1, 150, {"arch": "pspnet50", "preprocessing": entry["preprocessing"]})
    res = _reproduce_json("pspnet50_ade20k", tmp_path, model, tmp_path, capsys, monkeypatch, "--quiet")
    assert res["protocol"]["name"] == "pspnet" and res["protocol"]["flip"] is True
    assert (res["protocol"]["base_size"], res["protocol"]["crop"], res["protocol"]["scales"]) == (512, 473, [1.0])
    # long side 513, short round(513/150*100 = 342) -> one 473 window row, columns at 0 and 40; plain + flipped
    assert model.sizes == [(2, 3, 473, 473), (2, 3, 473, 473)]
    rows = {r["published"]: r for r in res["comparison"]}
    assert set(rows) == {41.68, 80.04}
    assert rows[41.68]["ours"] == pytest.approx(100 * (0 + 1 / 3) / 2)  # wall IoU 0, building IoU 1/3
    assert rows[80.04]["ours"] == pytest.approx(100 / 3)
    assert rows[41.68]["diff"] == pytest.approx(rows[41.68]["ours"] - 41.68)


@pytest.mark.slow
def test_reproduce_semseg_ms_runs_six_scales(tmp_path, capsys, monkeypatch):
    """`reproduce semseg_pspnet50_voc --setting ms`: semseg preset with its six scales, vs 78.02 / 85.80 / 95.13."""
    root, label = _voc(tmp_path)
    entry = zoo.get_entry("semseg_pspnet50_voc")
    model = ConstantClass(0, 21, {"arch": "pspnet50", "preprocessing": entry["preprocessing"]})
    res = _reproduce_json("semseg_pspnet50_voc", root, model, tmp_path, capsys, monkeypatch, "--setting", "ms")
    assert res["protocol"]["name"] == "semseg" and res["protocol"]["scales"] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    # 500x375 -> 256x192, 384x288, 512x384, 640x480, 768x576, 896x672 (no +1): 1, 1, 1x2, 2x2, 2x2, 2x3 windows
    assert model.sizes == [(2, 3, 473, 473)] * 18  # each a plain + flipped pair
    assert {r["published"] for r in res["comparison"]} == {78.02, 85.80, 95.13}
    n0 = int((label == 0).sum())
    aacc = {r["published"]: r["ours"] for r in res["comparison"]}[95.13]
    assert aacc == pytest.approx(100 * n0 / int((label != 255).sum()))


def test_reproduce_refuses_test_server_target(tmp_path, capsys):
    w = tmp_path / "w.pth"
    w.write_bytes(b"x")
    code, _, err = run_cli(
        *["reproduce", "pspnet101_voc2012", "--root", str(tmp_path), "--weights", str(w), "--setting", "ms"]
    )
    assert code == 2 and "TEST SERVER" in err and "--allow-noncomparable" in err
    code, _, err = run_cli("reproduce", "slim_resnet_v1_50_imagenet", "--root", str(tmp_path), "--weights", str(w))
    assert code == 2 and "nothing to reproduce" in err


def test_zoo_configs_build_with_the_model_registry():
    from segconvert.reference_models import PRESETS, get_config

    for e in zoo.entries():
        cfg = get_config(e["arch"], **e["config"])
        assert cfg["num_classes"] == e["num_classes"] or (e["arch"] == "resnet" and cfg["num_classes"] == 1000)
        if e["input_size"] and "input_size" in cfg:
            assert cfg["input_size"] == e["input_size"], e["name"]
    for name in ("pspnet50_ade20k", "pspnet101_voc2012", "pspnet101_cityscapes"):
        assert PRESETS[name]["preprocessing"] == zoo.get_entry(name)["preprocessing"]
        assert get_config(name) == get_config(zoo.get_entry(name)["arch"], **zoo.get_entry(name)["config"])

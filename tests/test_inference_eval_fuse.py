"""`segconvert eval` with the fused model vs `--no-fuse` vs the plain module scored by hand, on a tiny VOC set."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import segconvert
from segconvert.eval.datasets import read_image
from segconvert.eval.protocols import Preprocessing, Runtime, get_protocol
from segconvert.testing import fixture_path
from tests.cli_runner import run_cli

CASE = "deeplab_v2_resnet101_single"  # 97x97 input, ResNet-101 depth, widths / 8; 21 classes
CROPS = ((slice(100, 190), slice(150, 270)), (slice(230, 330), slice(300, 420)))  # two 90x120 / 100x120 images
MARGIN = 1e-4  # relative top-2 gap under which fused and unfused float32 sums may order the classes differently


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ef")
    src = fixture_path("caffe", CASE)
    weights = tmp / "dl.safetensors"
    code, _, err = run_cli("caffe2torch", src / "net.prototxt", src / "weights.caffemodel", "-o", weights)
    assert code == 0, err
    sample = fixture_path("real", "voc_sample")
    rgb = np.load(sample / "data.npz")["rgb"]
    label = np.asarray(Image.open(sample / "class_label_derived.png"))
    voc = tmp / "voc" / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    names = []
    for i, (rows, cols) in enumerate(CROPS):
        name = f"2011_00{i}"
        names.append(name)
        Image.fromarray(rgb[rows, cols]).save(voc / "JPEGImages" / f"{name}.jpg", quality=95)
        gt = Image.fromarray(label[rows, cols], mode="P")
        gt.putpalette(Image.open(sample / "class_label_derived.png").getpalette())
        gt.save(voc / "SegmentationClass" / f"{name}.png")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("".join(n + "\n" for n in names))
    return weights, tmp / "voc", voc, names


def _eval(weights, root, out, *extra):
    code, stdout, err = run_cli(
        "eval", weights, "--dataset", "voc", "--root", root, "--device", "cpu", "--json", "--quiet",
        "--save-pred", out, *extra,
    )  # fmt: skip
    assert code == 0, err
    return json.loads(stdout)


def _by_hand(weights, voc, names):
    """The plain module (no fusion), the deeplab-msc protocol and a numpy confusion matrix: no runner, no CLI."""
    model = segconvert.load_model(weights).eval()
    proto = get_protocol("deeplab-msc", "voc", crop=97)
    prep, rt = Preprocessing.from_model(model), Runtime(torch.device("cpu"))
    conf = np.zeros((21, 21), np.int64)
    preds, gaps = [], []
    for name in names:
        with torch.no_grad():
            scores = proto.predict(model, read_image(voc / "JPEGImages" / f"{name}.jpg"), prep, rt)
        top2 = scores.topk(2, dim=0).values
        gaps.append(((top2[0] - top2[1]) / scores.abs().amax()).numpy())
        pred = scores.argmax(0).numpy()
        preds.append(pred)
        gt = np.asarray(Image.open(voc / "SegmentationClass" / f"{name}.png")).astype(np.int64)
        ok = gt != 255
        conf += np.bincount(gt[ok] * 21 + pred[ok], minlength=21 * 21).reshape(21, 21)
    return conf, preds, gaps


def test_no_fuse_eval_is_the_plain_module_exactly_and_fused_eval_agrees_off_ties(setup, tmp_path):
    weights, root, voc, names = setup
    conf, preds, gaps = _by_hand(weights, voc, names)
    assert conf.sum() > 15000 and len(np.unique(np.concatenate([p.ravel() for p in preds]))) > 1

    plain = _eval(weights, root, tmp_path / "plain", "--no-fuse")
    assert plain["protocol"]["name"] == "deeplab-msc" and plain["fused_layers"] == 0
    got = np.array(plain["confusion_matrix"])
    assert got[:, 21:].sum() == 0  # no void predictions
    assert np.array_equal(got[:, :21], conf)  # --no-fuse: today's numbers, bit for bit
    for name, pred in zip(names, preds, strict=True):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "plain" / "labels" / f"{name}.png")), pred)

    fused = _eval(weights, root, tmp_path / "fused", "--check")  # verified against the plain module at load
    assert fused["fused_layers"] > 100  # every BatchNorm + Scale of the ResNet-101 folded
    assert fused["runtime"]["channels_last"] is True  # the inference form's layout, on the CPU too
    _agrees_off_ties(fused, tmp_path / "fused", names, preds, gaps, conf, got)


def _agrees_off_ties(result, out, names, preds, gaps, conf, got) -> None:
    """Labels equal the unfused ones except at argmax near-ties; the confusion matrix moves only by those."""
    fconf = np.array(result["confusion_matrix"])
    n_close = 0
    for name, pred, gap in zip(names, preds, gaps, strict=True):
        flab = np.asarray(Image.open(out / "labels" / f"{name}.png"))
        differ = flab != pred
        close = gap <= MARGIN
        n_close += int(close.sum())
        assert not (differ & ~close).any()  # every changed pixel is an argmax near-tie of the unfused scores
    assert n_close <= 0.01 * conf.sum()  # near-ties are rare, so the comparison says something
    if n_close == 0:
        assert np.array_equal(fconf, got)
    else:  # only near-tie pixels may move between cells
        assert np.abs(fconf - got).sum() <= 2 * n_close
    assert fconf.sum() == got.sum()


def test_nchw_fused_eval_agrees_with_the_plain_module_off_ties(setup, tmp_path):
    weights, root, voc, names = setup
    conf, preds, gaps = _by_hand(weights, voc, names)
    got = np.array(_eval(weights, root, tmp_path / "plain", "--no-fuse")["confusion_matrix"])
    nchw = _eval(weights, root, tmp_path / "nchw", "--no-channels-last")
    assert nchw["runtime"]["channels_last"] is False and nchw["fused_layers"] > 100
    _agrees_off_ties(nchw, tmp_path / "nchw", names, preds, gaps, conf, got)

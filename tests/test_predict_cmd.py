"""`segconvert predict` on the real VOC sample image and on a folder: files, palette, label map vs eval's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import segconvert
from segconvert.eval.palettes import voc_palette
from segconvert.eval.protocols import Preprocessing, Runtime, get_protocol
from segconvert.testing import fixture_path
from tests.cli_runner import run_cli


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("p")
    root = fixture_path("caffe", "deeplab_v2_resnet101_single")  # 21 classes: VOC palette
    w = tmp / "dl.safetensors"
    assert run_cli("caffe2torch", root / "net.prototxt", root / "weights.caffemodel", "-o", w)[0] == 0
    rgb = np.load(fixture_path("real", "voc_sample", "data.npz"))["rgb"]
    folder = tmp / "imgs"
    folder.mkdir()
    Image.fromarray(rgb).save(folder / "a.png")
    Image.fromarray(rgb[:200, :300]).save(folder / "b.png")
    return w, rgb, folder, tmp


def test_predict_folder_writes_labels_color_overlay_matching_the_protocol(setup):
    w, rgb, folder, tmp = setup
    out = tmp / "out"
    code, stdout, err = run_cli("predict", w, folder, "-o", out, "--show", "--quiet", "--device", "cpu")
    assert code == 0, err
    for stem, img in (("a", rgb), ("b", rgb[:200, :300])):
        lab = np.asarray(Image.open(out / "labels" / f"{stem}.png"))
        color = Image.open(out / "color" / f"{stem}.png")
        assert lab.shape == img.shape[:2] and color.mode == "P"
        assert np.array_equal(np.array(color.getpalette()[:63]).reshape(21, 3), voc_palette(21))
        assert np.array_equal(np.asarray(color), lab)
        assert np.asarray(Image.open(out / "overlay" / f"{stem}.png")).shape == img.shape
        # the label map is eval's deeplab-msc protocol (crop = the weights' input size 97) on the fused model
        model = segconvert.load_model(w, fuse=True)
        prep = Preprocessing.from_model(model)
        scores = get_protocol("deeplab-msc", "voc", crop=97).predict(model, img, prep, Runtime())
        assert np.array_equal(lab, scores.argmax(0).numpy().astype(np.uint8))
    assert "classes" in stdout and "%" in stdout
    assert np.array_equal(
        segconvert.predict(segconvert.load_model(w, fuse=True), rgb), np.asarray(Image.open(out / "labels" / "a.png"))
    )


def test_predict_refuses_a_net_that_takes_no_image(tmp_path):
    case = fixture_path("caffe", "layers", "conv_group2")  # input 1x4x11x13
    w = tmp_path / "g.safetensors"
    assert run_cli("caffe2torch", case / "net.prototxt", case / "weights.caffemodel", "-o", w)[0] == 0
    code, _, err = run_cli(
        "predict", w, fixture_path("real", "voc_sample", "class_label_derived.png"), "-o", tmp_path / "o"
    )
    assert code == 2 and "3-channel image" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_benchmark_command_json(setup):
    import json

    w = setup[0]
    code, out, err = run_cli("benchmark", w, "--runs", "2", "--warmup", "1", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["input_shapes"] == [[1, 3, 513, 513]] or res["input_shapes"][0][:2] == [1, 3]
    assert res["median_ms"] > 0 and res["images_per_second"] > 0 and res["settings"]["fused"] is True
    assert res["settings"]["flush_denormal"] is True  # the default, as TensorFlow's CPU runtime
    assert res["settings"]["channels_last"] is True  # the inference form's layout
    assert (torch.tensor([1e-39]) * 3.0).item() != 0  # the command reset this (the test's) thread afterwards
    code, out, err = run_cli("benchmark", w, "--runs", "1", "--warmup", "0", "--json", "--keep-denormal")
    assert code == 0 and json.loads(out)["settings"]["flush_denormal"] is False, err
    code, out, err = run_cli("benchmark", w, "--runs", "1", "--warmup", "0", "--json", "--no-fuse")
    assert code == 0 and json.loads(out)["settings"]["channels_last"] is False, err  # the plain module: NCHW

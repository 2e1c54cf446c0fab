"""Real third-party Caffe files (MTCNN det1/det2/det3) through the generic path: OpenCV dnn and face behaviour.

The nets (fixtures/real/README.md) take (x - 127.5) / 128 RGB images transposed to (W, H). The face positions
below were read off the shipped 320x240 test image by eye: pupils at (117, 77) and (194, 84), nose tip at
(150, 130), the face inside x 75..235, y 25..215. MTCNN's published stage thresholds are 0.6 / 0.7 / 0.7.
"""

from __future__ import annotations

import importlib.util
import sys

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segconvert.converters.caffe_codegen import emit_source
from segconvert.converters.caffe_generic import convert_caffe_generic
from segconvert.graph import load_net
from segconvert.testing import fixture_path

FACE_BOX = (75, 25, 235, 215)  # x0, y0, x1, y1
LEFT_EYE, RIGHT_EYE, NOSE = (117, 77), (194, 84), (150, 130)
FACE_CROP = (70, 40, 240, 210)  # a square around the face
BACKGROUND_CROPS = [(240, 0, 320, 80), (0, 0, 70, 70)]  # plain wall, top right and top left


@pytest.fixture(scope="module")
def mtcnn():
    root = fixture_path("real", "mtcnn_caffe")
    with h5py.File(root / "test_image.hdf5", "r") as f:
        image = f["image"][()].astype(np.float32)  # (3, 240, 320) RGB
    convs = {n: convert_caffe_generic(load_net(root / f"{n}.prototxt", root / f"{n}.caffemodel")) for n in NAMES}
    models = {n: c.build_model() for n, c in convs.items()}
    return root, image, convs, models


NAMES = ("det1", "det2", "det3")


def _blob(chw: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(((chw - 127.5) / 128.0).transpose(0, 2, 1)[None].copy())


def _resize(chw: np.ndarray, h: int, w: int) -> np.ndarray:
    t = F.interpolate(torch.from_numpy(chw)[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return t[0].numpy()


def _crop(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    x0, y0, x1, y1 = box
    return _resize(np.ascontiguousarray(image[:, y0:y1, x0:x1]), size, size)


def _run(model, x: torch.Tensor) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = model(x)
    return {k: v.numpy() for k, v in zip(model.output_names, out, strict=True)}


def test_conversion_of_the_published_files(mtcnn):
    root, _, convs, models = mtcnn
    assert convs["det1"].config["inputs"] == [{"name": "data", "shape": [1, 3, 12, 12]}]  # legacy input_dim
    assert models["det1"].output_names == ["conv4-2", "prob1"]  # Caffe's order: sorted blob names
    assert models["det3"].output_names == ["conv6-2", "conv6-3", "prob1"]
    assert isinstance(models["det1"].conv4_1, torch.nn.Conv2d) and isinstance(models["det1"].PReLU1, torch.nn.PReLU)
    # det2.caffemodel holds conv5-3, which det2.prototxt does not have: ignored, and said so
    assert "ignored weights of layer conv5-3 (not in prototxt)" in convs["det2"].notes
    assert not [k for k in convs["det2"].state_dict if k.startswith("conv5_3")]
    for name in NAMES:
        net = load_net(root / f"{name}.prototxt", root / f"{name}.caffemodel")
        assert len(convs[name].state_dict) == sum(len(layer.blobs) for layer in net.layers)


def test_matches_opencv_dnn(mtcnn):
    cv2 = pytest.importorskip("cv2")
    root, image, _, models = mtcnn
    inputs = {
        "det1": [_blob(_resize(image, round(240 * s), round(320 * s))) for s in (0.08, 0.15, 0.3)],  # PNet pyramid
        "det2": [_blob(_crop(image, box, 24)) for box in [FACE_CROP, *BACKGROUND_CROPS]],
        "det3": [_blob(_crop(image, box, 48)) for box in [FACE_CROP, *BACKGROUND_CROPS]],
    }
    for name, blobs in inputs.items():
        reference = cv2.dnn.readNetFromCaffe(str(root / f"{name}.prototxt"), str(root / f"{name}.caffemodel"))
        for x in blobs:
            ours = _run(models[name], x)
            reference.setInput(x.numpy())
            theirs = dict(zip(models[name].output_names, reference.forward(models[name].output_names), strict=True))
            for blob, value in ours.items():
                assert value.shape == theirs[blob].shape, (name, blob)
                # OpenCV's own float32 rounding reaches ~1.2e-5 of max|out| on PNet (vs a float64 run); ours ~6e-7
                assert np.abs(value - theirs[blob]).max() <= 5e-5 * np.abs(theirs[blob]).max(), (name, blob)


def test_pnet_finds_the_face(mtcnn):
    _, image, _, models = mtcnn
    best = 0.0
    for s in (0.06, 0.08, 0.1, 0.15, 0.2, 0.3):  # 12 px windows of 200 .. 40 image pixels
        prob = _run(models["det1"], _blob(_resize(image, round(240 * s), round(320 * s))))["prob1"][0, 1]
        best = max(best, float(prob.max()))
        for i, j in np.argwhere(prob >= 0.9):  # map axes are (x, y): the input is transposed
            x0, y0, x1, y1 = 2 * i / s, 2 * j / s, (2 * i + 12) / s, (2 * j + 12) / s
            overlap = max(0.0, min(x1, FACE_BOX[2]) - max(x0, FACE_BOX[0]))
            overlap *= max(0.0, min(y1, FACE_BOX[3]) - max(y0, FACE_BOX[1]))
            assert overlap > 0.5 * (x1 - x0) * (y1 - y0), f"confident window off the face at scale {s}"
    assert best >= 0.9


def test_rnet_onet_accept_the_face_and_place_landmarks(mtcnn):
    _, image, _, models = mtcnn
    for name, size in (("det2", 24), ("det3", 48)):
        assert _run(models[name], _blob(_crop(image, FACE_CROP, size)))["prob1"][0, 1] >= 0.7
        for box in BACKGROUND_CROPS:
            assert _run(models[name], _blob(_crop(image, box, size)))["prob1"][0, 1] < 0.3
    points = _run(models["det3"], _blob(_crop(image, FACE_CROP, 48)))["conv6-3"][0]  # x1..x5, y1..y5 in [0, 1]
    x0, y0, x1, y1 = FACE_CROP
    xs, ys = x0 + points[:5] * (x1 - x0), y0 + points[5:] * (y1 - y0)
    for k, (px, py) in enumerate((LEFT_EYE, RIGHT_EYE, NOSE)):
        assert abs(xs[k] - px) <= 10 and abs(ys[k] - py) <= 10, (k, xs[k], ys[k])


def test_emitted_onet_equals_the_in_memory_model(mtcnn, tmp_path):
    _, image, convs, models = mtcnn
    path = tmp_path / "onet_emitted.py"
    path.write_text(emit_source(convs["det3"].config, "ONet"))
    spec = importlib.util.spec_from_file_location("onet_emitted", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["onet_emitted"] = module
    spec.loader.exec_module(module)
    onet = module.ONet().eval()
    onet.load_state_dict(convs["det3"].state_dict)
    x = _blob(_crop(image, FACE_CROP, 48))
    with torch.no_grad():
        for a, b in zip(onet(x), models["det3"](x), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)

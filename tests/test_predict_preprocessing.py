"""`segconvert predict --mean/--std/--bgr/--rgb` on a generic Caffe net that records no preprocessing.

The net is one hand-built 1x1 convolution: class 0 scores input channel 0, class 1 a constant 10, so the label
of a pixel is 0 exactly where (channel0 - mean0) / std0 > 10: hand-derived from the options.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.caffe_bytes import blob, layer
from tests.cli_runner import run_cli

PROTOTXT = """name: "onebyone"
input: "data"
input_dim: 1
input_dim: 3
input_dim: 8
input_dim: 8
layer { name: "score" type: "Convolution" bottom: "data" top: "score"
  convolution_param { num_output: 2 kernel_size: 1 } }
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pp")
    w = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # out0 = in0, out1 = 0 * in
    model = layer("score", "Convolution", [blob(w, shape=[2, 3, 1, 1]), blob([0.0, 10.0], shape=[2])])
    (tmp / "net.prototxt").write_text(PROTOTXT)
    (tmp / "net.caffemodel").write_bytes(model)
    weights = tmp / "g.safetensors"
    code, _, err = run_cli("caffe2torch", tmp / "net.prototxt", tmp / "net.caffemodel", "-o", weights)
    assert code == 0, err
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(8, 8, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp / "img.png")
    return weights, tmp / "img.png", rgb.astype(np.float64), tmp


@pytest.mark.parametrize(
    "opts, channel, mean, std",
    [
        (["--bgr", "--mean", "100.5,0,0"], 2, 100.5, 1.0),  # blue first
        (["--rgb", "--mean", "100.5,0,0"], 0, 100.5, 1.0),
        (["--rgb", "--mean", "20.5,0,0", "--std", "4,1,1"], 0, 20.5, 4.0),
    ],
)
def test_predict_options_give_a_generic_net_its_normalisation(setup, opts, channel, mean, std):
    weights, image, rgb, tmp = setup
    out = tmp / f"out{'_'.join(opts)}"
    code, _, err = run_cli("predict", weights, image, "-o", out, "--quiet", "--device", "cpu", *opts)
    assert code == 0, err
    expected = np.where((rgb[..., channel] - mean) / std > 10, 0, 1)
    assert 0 < expected.sum() < expected.size  # both classes occur
    assert np.array_equal(np.asarray(Image.open(out / "labels" / "img.png")), expected)


def test_predict_without_options_names_the_missing_preprocessing(setup):
    weights, image, _, tmp = setup
    code, _, err = run_cli("predict", weights, image, "-o", tmp / "none", "--quiet")
    assert code == 2 and "preprocessing" in err and "--mean" in err and len(err.strip().splitlines()) == 1
    assert not (tmp / "none").exists()


def test_predict_and_eval_share_the_option_definitions():
    from segconvert.commands.evaluate import eval_cmd
    from segconvert.commands.predict import predict

    def opts(cmd):
        return {p.name: (p.opts, p.secondary_opts, p.help) for p in cmd.params if p.name in ("mean", "std", "bgr")}

    assert opts(predict) == opts(eval_cmd) and len(opts(predict)) == 3

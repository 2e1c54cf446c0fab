"""Training from Caffe's fillers (no caffemodel): each filler's distribution, checked statistically against the
parameters Caffe's ``filler.hpp`` derives (bounds, means, standard deviations, fan-in / fan-out), the constant
and bilinear fillers exactly, the layers' defaults, and ``segconvert train --solver`` without weights."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from segconvert.formats.caffe_schema import message_class
from segconvert.graph import load_net
from segconvert.testing import fixture_path
from segconvert.train.build import trainer_from_solver
from segconvert.train.fillers import FillerError, fill, fill_net
from tests.cli_runner import run_cli


def filler(**fields):
    msg = message_class("FillerParameter")()
    for k, v in fields.items():
        setattr(msg, k, v)
    return msg


RNG = np.random.default_rng(0)
Z = 6  # how many standard errors a sample statistic may miss by


def test_constant_and_bilinear_are_exact():
    assert np.array_equal(fill(filler(type="constant", value=0.7), (3, 2), RNG), np.full((3, 2), np.float32(0.7)))
    assert np.array_equal(fill(filler(), (4,), RNG), np.zeros(4, np.float32))  # Caffe's default: constant 0
    # kernel 4 (factor 2): f = 2, c = 3/4, 1 - |x/f - c| = 1/4, 3/4, 3/4, 1/4
    k4 = fill(filler(type="bilinear"), (2, 1, 4, 4), RNG)
    axis = np.array([0.25, 0.75, 0.75, 0.25], np.float32)
    assert k4.dtype == np.float32 and np.array_equal(k4[1, 0], np.outer(axis, axis))
    assert np.array_equal(k4[0], k4[1])
    # kernel 3: f = 2, c = 1/2 -> 1/2, 1, 1/2
    k3 = fill(filler(type="bilinear"), (1, 1, 3, 3), RNG)
    assert np.array_equal(k3[0, 0], np.outer([0.5, 1, 0.5], [0.5, 1, 0.5]).astype(np.float32))
    with pytest.raises(FillerError, match="square 4-D"):
        fill(filler(type="bilinear"), (1, 1, 3, 4), RNG)


def test_gaussian_uniform_and_sparse():
    x = fill(filler(type="gaussian", mean=0.3, std=2.0), (400, 25), RNG).astype(np.float64)
    assert abs(x.mean() - 0.3) < Z * 2.0 / math.sqrt(x.size)
    assert abs(x.std() - 2.0) < Z * 2.0 / math.sqrt(2 * x.size)
    u = fill(filler(type="uniform", min=-1.0, max=3.0), (100, 100), RNG).astype(np.float64)
    assert u.min() >= -1 and u.max() <= 3 and u.min() < -0.99 and u.max() > 2.99
    assert abs(u.mean() - 1.0) < Z * math.sqrt(16 / 12 / u.size) and abs(u.var() - 16 / 12) < 0.05
    s = fill(filler(type="gaussian", std=1.0, sparse=5), (20, 500), RNG)
    kept = float((s != 0).mean())  # each value kept with probability sparse / shape[0] = 0.25
    assert abs(kept - 0.25) < Z * math.sqrt(0.25 * 0.75 / s.size)
    with pytest.raises(FillerError, match="sparse is not supported by the xavier filler"):
        fill(filler(type="xavier", sparse=3), (4, 4), RNG)


@pytest.mark.parametrize(("norm", "n"), [(0, 20 * 9), (1, 50 * 9), (2, (20 * 9 + 50 * 9) / 2)])
def test_xavier_and_msra_follow_the_variance_norm(norm, n):
    shape = (50, 20, 3, 3)  # fan_in = count / shape[0] = 180, fan_out = count / shape[1] = 450
    x = fill(filler(type="xavier", variance_norm=norm), shape, RNG).astype(np.float64)
    bound = math.sqrt(3 / n)
    assert np.abs(x).max() <= bound * (1 + 1e-6) and np.abs(x).max() > 0.99 * bound
    assert abs(x.var() / (bound**2 / 3) - 1) < Z * math.sqrt(0.8 / x.size)  # var of U(-a, a) = a^2 / 3
    m = fill(filler(type="msra", variance_norm=norm), shape, RNG).astype(np.float64)
    std = math.sqrt(2 / n)
    assert abs(m.mean()) < Z * std / math.sqrt(m.size) and abs(m.std() / std - 1) < Z / math.sqrt(2 * m.size)


def test_positive_unitball_rows_sum_to_one():
    x = fill(filler(type="positive_unitball"), (10, 3, 4), RNG)
    assert x.min() >= 0 and x.max() <= 1
    assert np.allclose(x.reshape(10, -1).sum(1, dtype=np.float64), 1, atol=1e-6)
    assert x.reshape(10, -1).std(1).min() > 0  # not constant


NET = """name: "defaults"
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "c" param { name: "shared_w" } param { name: "shared_b" }
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "msra" } } }
layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" }
layer { name: "sc" type: "Scale" bottom: "c" top: "c" scale_param { bias_term: true } }
layer { name: "pr" type: "PReLU" bottom: "c" top: "c" }
layer { name: "conv_b" type: "Convolution" bottom: "data" top: "d" param { name: "shared_w" } param { name: "shared_b" }
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "msra" } } }
layer { name: "up" type: "Deconvolution" bottom: "c" top: "u" param { lr_mult: 0 }
  convolution_param { num_output: 4 group: 4 kernel_size: 4 stride: 2 pad: 1 bias_term: false
                      weight_filler { type: "bilinear" } } }
"""


def test_layer_defaults_shapes_and_shared_params(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    net = load_net(path, phase="TRAIN")
    fill_net(net, seed=3)
    conv, bn, sc, pr, conv_b, up = (net.layer(n) for n in ("conv", "bn", "sc", "pr", "conv_b", "up"))
    assert [b.shape for b in conv.blobs] == [(4, 3, 3, 3), (4,)] and np.array_equal(conv.blobs[1], np.zeros(4))
    assert [b.tolist() for b in bn.blobs] == [[0.0] * 4, [0.0] * 4, [0.0]]  # Caffe's BatchNorm starts at 0
    assert np.array_equal(sc.blobs[0], np.ones(4)) and np.array_equal(sc.blobs[1], np.zeros(4))
    assert np.array_equal(pr.blobs[0], np.full(4, np.float32(0.25)))
    assert conv_b.shared_from == "conv" and conv_b.blobs[0] is conv.blobs[0]
    assert up.blobs[0].shape == (4, 1, 4, 4) and up.blobs[0][0, 0, 1, 1] == np.float32(0.5625)
    again = load_net(path, phase="TRAIN")
    fill_net(again, seed=3)
    assert np.array_equal(again.layer("conv").blobs[0], conv.blobs[0])  # seeded
    other = load_net(path, phase="TRAIN")
    fill_net(other, seed=4)
    assert not np.array_equal(other.layer("conv").blobs[0], conv.blobs[0])


@pytest.fixture
def work(tmp_path):
    dst = tmp_path / "case"
    shutil.copytree(fixture_path("caffe_train", "sgd_step_policy"), dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    net = dst / "train.prototxt"
    text = net.read_text().replace(
        "convolution_param { num_output: 8 kernel_size: 3 pad: 1 }",
        'convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "msra" } '
        'bias_filler { type: "gaussian" std: 0.1 } }',
    )
    text = text.replace("bias_term: false }", 'bias_term: false weight_filler { type: "xavier" } }')
    fc8 = 'num_output: 5 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.01 } }'
    text = text.replace("num_output: 5 kernel_size: 3 pad: 1 }", fc8)
    assert text.count("_filler") == 4
    net.write_text(text)
    return dst


def test_solver_trains_from_fillers_seeded_by_random_seed(work, tmp_path):
    solver = work / "solver.prototxt"
    a = trainer_from_solver(solver)
    assert a.net.arch_path.startswith("generic (fillers")
    w0 = {k: a.net.blob(k).detach().clone() for k in ("conv1/0", "conv1/1", "conv2_dil2/0", "fc8/0", "fc8/1")}
    assert float(w0["conv1/0"].std()) == pytest.approx(math.sqrt(2 / 27), rel=0.25)  # msra: fan_in 3*3*3
    assert float(w0["conv2_dil2/0"].abs().max()) <= math.sqrt(3 / 72) and float(w0["fc8/1"].abs().max()) == 0
    b = trainer_from_solver(solver)
    assert all(np.array_equal(b.net.blob(k).detach().numpy(), v.numpy()) for k, v in w0.items())
    solver.write_text(solver.read_text().replace("random_seed:", "random_seed: 1\n#"))
    c = trainer_from_solver(solver)
    assert not np.array_equal(c.net.blob("conv1/0").detach().numpy(), w0["conv1/0"].numpy())
    losses = [r.loss for r in a.run(3)]
    assert all(np.isfinite(losses)) and losses[-1] != losses[0]
    code, out, err = run_cli("train", "--solver", solver, "-o", tmp_path / "out", "--max-iter", 2)
    assert code == 0 and (tmp_path / "out" / "final.safetensors").exists(), err


@pytest.mark.parametrize(
    ("old", "new", "key", "words"),
    [
        ('type: "msra"', 'type: "he_normal"', "convolution_param.weight_filler", "unknown filler type 'he_normal'"),
        ('type: "xavier"', 'type: "xavier" sparse: 2', "convolution_param.weight_filler", "sparse is not supported"),
        ('type: "gaussian" std: 0.1', 'type: "bogus"', "convolution_param.bias_filler", "unknown filler type"),
    ],
)
def test_bad_filler_is_one_line_naming_file_layer_and_field(work, tmp_path, old, new, key, words):
    net = work / "train.prototxt"
    net.write_text(net.read_text().replace(old, new, 1))
    code, _, err = run_cli("train", "--solver", work / "solver.prototxt", "-o", tmp_path / "out")
    layer = next(line for line in net.read_text().splitlines() if new in line)
    lineno = net.read_text().splitlines().index(layer)  # the layer's name line precedes its fillers' line
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{net}:" in err and f"key '{key}'" in err and words in err and "layer '" in err, err
    assert any(f"{net}:{n}:" in err for n in range(lineno - 2, lineno + 1)), err
    assert not (tmp_path / "out").exists()

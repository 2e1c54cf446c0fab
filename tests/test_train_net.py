"""Train-mode semantics of a Caffe net: BatchNorm batch statistics and Caffe's moving averages, Dropout,
loss_weight, lr_mult 0, Input-fed nets and data-position state, on small hand-written prototxts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segconvert.converters.caffe_generic import convert_caffe_generic
from segconvert.graph import load_net
from segconvert.reference_models.caffe_generic import CaffeGenericNet
from segconvert.train.caffe_net import CaffeTrainNet

NET = """
name: "t"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 4 dim: 2 dim: 3 dim: 3 } shape { dim: 4 dim: 1 dim: 3 dim: 3 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  param { lr_mult: 1 } param { lr_mult: 0 } convolution_param { num_output: 3 kernel_size: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" batch_norm_param { moving_average_fraction: 0.9 } }
layer { name: "drop" type: "Dropout" bottom: "conv" top: "conv" dropout_param { dropout_ratio: 0.5 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv" bottom: "label" top: "loss" loss_weight: 2 }
layer { name: "acc" type: "Accuracy" bottom: "conv" bottom: "label" top: "acc" }
"""


def train_net(tmp_path, text=NET) -> CaffeTrainNet:
    path = tmp_path / "train.prototxt"
    path.write_text(text)
    net = load_net(path, phase="TRAIN")
    conv = convert_caffe_generic(net, require_weights=False)
    torch.manual_seed(0)
    return CaffeTrainNet(net, CaffeGenericNet(**conv.config))


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "data": torch.randn(4, 2, 3, 3, generator=g),
        "label": torch.randint(0, 3, (4, 1, 3, 3), generator=g).float(),
    }


def test_batchnorm_batch_statistics_and_caffe_moving_average(tmp_path):
    net = train_net(tmp_path)
    spec = next(s for s in net.model.config["layers"] if s["name"] == "bn")
    assert spec["params"]["use_global_stats"] is False  # the TRAIN-phase default
    net.train()
    b = batch()
    conv = net.model.conv(b["data"]).detach()
    mean, var = conv.mean((0, 2, 3)), conv.var((0, 2, 3), unbiased=False)
    net(b)
    m = 4 * 3 * 3
    s = 0.9 * 1 + 1
    acc_mean, acc_var = mean + 0.9 * 0, m / (m - 1) * var + 0.9 * 1
    blobs = net.bn_blobs["bn"]
    torch.testing.assert_close(blobs[2], torch.tensor([s]))
    torch.testing.assert_close(blobs[0], acc_mean)
    torch.testing.assert_close(blobs[1], acc_var)
    torch.testing.assert_close(net.model.bn.running_mean, acc_mean / s)
    torch.testing.assert_close(net.model.bn.running_var, acc_var / s)
    # the normalisation itself uses the batch's own statistics
    y = net.model.bn(conv)
    torch.testing.assert_close(y, (conv - mean.reshape(1, -1, 1, 1)) / torch.sqrt(var.reshape(1, -1, 1, 1) + 1e-5))
    net.eval()
    before = [t.clone() for t in net.bn_blobs["bn"]]
    net(b)
    assert all(torch.equal(x, y) for x, y in zip(before, net.bn_blobs["bn"], strict=True))  # no update in eval


def test_dropout_loss_weight_metrics_and_frozen_bias(tmp_path):
    net = train_net(tmp_path)
    groups = net.param_groups()
    assert [g["name"] for g in groups] == ["conv/0"]  # conv/1 has lr_mult 0: not optimised
    assert net.model.conv.bias.requires_grad is False
    b = batch(1)
    net.eval()
    out = net(b)
    assert set(out.losses) == {"loss"} and "acc" in out.metrics and 0 <= out.metrics["acc"] <= 1
    torch.testing.assert_close(out.total, 2 * out.losses["loss"])
    torch.manual_seed(3)
    net.train()
    dropped = net.model.drop(torch.ones(4000))
    assert set(dropped.unique().tolist()) == {0.0, 2.0} and 0.45 < float((dropped == 0).float().mean()) < 0.55


def test_euclidean_and_sigmoid_losses_in_a_net(tmp_path):
    text = NET.split('layer { name: "bn"')[0] + (
        'layer { name: "l2" type: "EuclideanLoss" bottom: "conv" bottom: "target" top: "l2" loss_weight: 0.5 }\n'
    )
    text = text.replace('top: "label"', 'top: "target"').replace(
        "dim: 4 dim: 1 dim: 3 dim: 3", "dim: 4 dim: 3 dim: 3 dim: 3"
    )
    net = train_net(tmp_path, text)
    b = {"data": torch.randn(4, 2, 3, 3), "target": torch.randn(4, 3, 3, 3)}
    out = net(b)
    y = net.model.conv(b["data"])
    torch.testing.assert_close(out.losses["l2"], ((y - b["target"]) ** 2).sum() / 4 / 2)
    torch.testing.assert_close(out.total, 0.5 * out.losses["l2"])


def test_trainer_on_an_input_fed_net_and_state_roundtrip(tmp_path):
    from segconvert.train.data_hdf5 import InputSource
    from segconvert.train.engine import Trainer
    from segconvert.train.solver import parse_solver

    (tmp_path / "solver.prototxt").write_text("")
    train_net(tmp_path)  # writes train.prototxt
    solver = parse_solver(
        'net: "train.prototxt"\nbase_lr: 0.1\nlr_policy: "poly"\npower: 1\nmax_iter: 4\nmomentum: 0.9\niter_size: 2\n',
        tmp_path / "solver.prototxt",
    )
    batches = [{k: v.numpy() for k, v in batch(i).items()} for i in range(8)]

    def make():
        net = train_net(tmp_path)
        net.model.drop.p = 0.0  # deterministic
        return Trainer(net, solver, InputSource(lambda: iter(batches)))

    full = make()
    ref = [r.loss for r in full.run()]
    half = make()
    half.run(2)
    state = half.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    rest = [r.loss for r in resumed.run()]
    assert rest == ref[2:] and resumed.iteration == 4
    assert torch.equal(resumed.net.model.conv.weight, full.net.model.conv.weight)
    torch.testing.assert_close(resumed.net.model.bn.running_mean, full.net.model.bn.running_mean, rtol=0, atol=0)


def test_hdf5_source_wraps_and_shuffles_deterministically(tmp_path):
    h5py = pytest.importorskip("h5py")
    from segconvert.train.data_hdf5 import HDF5DataSource

    for i, n in enumerate((3, 2)):
        with h5py.File(tmp_path / f"f{i}.h5", "w") as fh:
            fh["data"] = np.arange(n, dtype=np.float32).reshape(n, 1) + 10 * i
    (tmp_path / "list.txt").write_text("f0.h5\nf1.h5\n")
    src = HDF5DataSource("list.txt", ["data"], 2, prototxt=tmp_path / "net.prototxt")
    rows = [src.next_batch()["data"][:, 0].tolist() for _ in range(4)]
    assert rows == [[0, 1], [2, 10], [11, 0], [1, 2]]  # in order, across files, wrapping around
    a = HDF5DataSource("list.txt", ["data"], 2, shuffle=True, seed=5, prototxt=tmp_path / "net.prototxt")
    b = HDF5DataSource("list.txt", ["data"], 2, shuffle=True, seed=5, prototxt=tmp_path / "net.prototxt")
    first = [a.next_batch()["data"].tolist() for _ in range(3)]
    state = a.state_dict()
    after = [a.next_batch()["data"].tolist() for _ in range(4)]
    assert first == [b.next_batch()["data"].tolist() for _ in range(3)]
    b.load_state_dict(state)
    assert after == [b.next_batch()["data"].tolist() for _ in range(4)]
    seen = sorted(v[0] for x in first + after[:2] for v in x)  # five batches of 2 = each of the 5 rows twice
    assert seen == sorted([0, 1, 2, 10, 11] * 2) and first != [[[0], [1]], [[2], [10]], [[11], [0]]]


@pytest.mark.parametrize("frozen", [True, False])
def test_pspnet_bn_trains_only_frozen(tmp_path, frozen):
    from segconvert.errors import ConversionError

    text = NET.split('layer { name: "bn"')[0] + (
        f'layer {{ name: "bn" type: "BN" bottom: "conv" top: "conv" bn_param {{ frozen: {str(frozen).lower()} }} }}\n'
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv" bottom: "label" top: "loss" }\n'
    )
    if not frozen:
        with pytest.raises(ConversionError) as err:
            train_net(tmp_path, text)
        line = next(i for i, t in enumerate(text.splitlines(), 1) if 'name: "bn"' in t)
        assert f"train.prototxt:{line}" in err.value.one_line() and "frozen: false" in err.value.one_line()
        return
    net = train_net(tmp_path, text)
    assert [g["name"] for g in net.param_groups()] == ["conv/0"]  # BN's four blobs are buffers: never updated
    before = {k: v.clone() for k, v in net.model.bn.state_dict().items()}
    net.train()
    net(batch()).total.backward()
    assert all(torch.equal(v, before[k]) for k, v in net.model.bn.state_dict().items())


def test_snapshot_of_batch_statistics_net_infers_with_the_moving_averages(tmp_path):
    """Training normalised with batch statistics; the snapshot runs as Caffe's TEST phase: the moving averages."""
    from segconvert.train.data_hdf5 import InputSource
    from segconvert.train.engine import Trainer
    from segconvert.train.snapshots import SnapshotHook
    from segconvert.train.solver import parse_solver
    from segconvert.weights.store import load_model

    (tmp_path / "solver.prototxt").write_text("")
    net = train_net(tmp_path)
    solver = parse_solver(
        'net: "train.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 2\n', tmp_path / "solver.prototxt"
    )
    hook = SnapshotHook(tmp_path / "out")
    trainer = Trainer(net, solver, InputSource([{k: v.numpy() for k, v in batch(i).items()} for i in range(2)]),
                      hooks=[hook])  # fmt: skip
    trainer.run()
    assert net.model.bn.use_global_stats is False
    model = load_model(tmp_path / "out" / "final.safetensors")
    assert model.bn.use_global_stats is True
    torch.testing.assert_close(model.bn.running_mean, net.bn_blobs["bn"][0] / net.bn_blobs["bn"][2])
    assert not torch.equal(model.bn.running_mean, torch.zeros(3))

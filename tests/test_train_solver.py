"""Solver parsing, Caffe's lr policies, the Caffe solvers' update rules and the loss layers, against hand-derived
values (Caffe's formulas from its sources, evaluated here in float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from segconvert.errors import CaffeFormatError
from segconvert.train.losses import (
    accuracy,
    euclidean_loss,
    seg_accuracy,
    sigmoid_cross_entropy_loss,
    softmax_with_loss,
)
from segconvert.train.optim import CaffeOptimizer, pytorch_form_difference
from segconvert.train.schedules import caffe_learning_rate, lr_schedule
from segconvert.train.solver import parse_solver

EVERY_FIELD = """
net: "net.prototxt"
test_iter: 5  test_interval: 100  test_compute_loss: true  test_initialization: false
base_lr: 0.001  display: 20  average_loss: 10  max_iter: 1000  iter_size: 4
lr_policy: "multistep"  gamma: 0.5  power: 0.75  stepsize: 300  stepvalue: 200  stepvalue: 600
momentum: 0.95  momentum2: 0.98  delta: 1e-6  rms_decay: 0.9
weight_decay: 0.0002  regularization_type: "L1"  clip_gradients: 35
snapshot: 50  snapshot_prefix: "snap/x"  snapshot_diff: false  snapshot_format: HDF5
solver_mode: GPU  device_id: 1  random_seed: 42  type: "Adam"  debug_info: false  snapshot_after_train: true
"""


def solver(text: str, tmp_path=None, net: bool = True):
    path = None
    if tmp_path is not None:
        (tmp_path / "net.prototxt").write_text('name: "n"\n')
        path = tmp_path / "solver.prototxt"
        path.write_text(text)
    return parse_solver(text, path)


def test_every_field_is_read(tmp_path):
    s = solver(EVERY_FIELD, tmp_path)
    assert s.net_path == tmp_path / "net.prototxt"  # relative to the solver (the cwd is elsewhere)
    assert (s.solver_type, s.lr_policy, s.regularization_type) == ("Adam", "multistep", "L1")
    assert s.test_iter == [5] and s.test_interval == 100 and s.stepvalue == [200, 600]
    assert s.iter_size == 4 and s.average_loss == 10 and s.snapshot == 50 and s.random_seed == 42
    assert s.momentum2 == pytest.approx(0.98) and s.delta == pytest.approx(1e-6) and s.rms_decay == pytest.approx(0.9)
    assert s.clip_gradients == 35 and s.snapshot_format == "HDF5" and s.solver_mode == "GPU"
    assert s.to_dict()["stepvalue"] == [200, 600]


def test_defaults_and_legacy_solver_type(tmp_path):
    s = solver('net: "net.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 3\nsolver_type: NESTEROV\n', tmp_path)
    assert s.solver_type == "Nesterov" and s.iter_size == 1 and s.clip_gradients == -1 and s.average_loss == 1
    assert s.regularization_type == "L2" and s.momentum2 == pytest.approx(0.999)


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ('net: "net.prototxt"\nbase_lr: 0.1\nwarmup: 3\n', 3, 'no field named "warmup"'),
        ('net: "net.prototxt"\nbase_lr: "fast"\n', 2, "float"),
        (
            'net: "net.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 3\ntype: "LBFGS"\n',
            5,
            "unknown solver type",
        ),
        ('net: "net.prototxt"\nbase_lr: 0.1\nlr_policy: "cosine"\nmax_iter: 3\n', 3, "unknown lr_policy"),
        ('net: "net.prototxt"\nbase_lr: 0.1\nlr_policy: "step"\nmax_iter: 3\n', 3, "needs gamma"),
        ('net: "gone.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 3\n', 1, "not found"),
        ('net: "net.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 3\nregularization_type: "L3"\n', 5, "L3"),
    ],
)
def test_bad_solver_names_file_and_line(tmp_path, text, line, words):
    with pytest.raises(CaffeFormatError) as err:
        solver(text, tmp_path)
    msg = err.value.one_line()
    assert msg.startswith(f"{tmp_path / 'solver.prototxt'}:{line}") and words in msg, msg


def _ns(**kw):
    base = dict(base_lr=0.01, gamma=0.1, power=0.75, stepsize=3, stepvalue=[2, 5], max_iter=8)
    return solver_like(**{**base, **kw})


class solver_like:  # noqa: N801 - a stand-in with the fields GetLearningRate reads
    def __init__(self, **kw):
        self.__dict__.update(kw)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("fixed", lambda i: 0.01),
        ("step", lambda i: 0.01 * 0.1 ** (i // 3)),
        ("exp", lambda i: 0.01 * 0.1**i),
        ("multistep", lambda i: 0.01 * 0.1 ** sum(i >= v for v in (2, 5))),
        ("inv", lambda i: 0.01 * (1 + 0.1 * i) ** -0.75),
        ("poly", lambda i: 0.01 * (1 - i / 8) ** 0.75),
        ("sigmoid", lambda i: 0.01 / (1 + math.exp(-0.1 * (i - 3)))),
    ],
)
def test_lr_policies_match_caffe_formulas(policy, expected):
    s = _ns(lr_policy=policy)
    got = lr_schedule(s, range(8))
    np.testing.assert_allclose(got, [expected(i) for i in range(8)], rtol=3e-7)
    assert got.dtype == np.float32


def test_poly_is_zero_at_max_iter_and_nan_beyond():
    s = _ns(lr_policy="poly", power=0.9, max_iter=12)
    assert caffe_learning_rate(s, 12) == 0.0 and math.isnan(caffe_learning_rate(s, 13))


def _reference_step(kind, w, g, h, rate, it, m=0.9, m2=0.999, delta=1e-8, rms=0.99):
    """Caffe's ComputeUpdateValue (sgd/nesterov/adagrad/rmsprop/adadelta/adam_solver.cpp) in float64."""
    if kind == "Nesterov":
        prev = h[0].copy()
        h[0] = m * h[0] + rate * g
        return (1 + m) * h[0] - m * prev
    if kind == "AdaGrad":
        h[0] = h[0] + g * g
        return rate * g / (np.sqrt(h[0]) + delta)
    if kind == "RMSProp":
        h[0] = rms * h[0] + (1 - rms) * g * g
        return rate * g / (np.sqrt(h[0]) + delta)
    if kind == "AdaDelta":
        h[0] = m * h[0] + (1 - m) * g * g
        u = g * np.sqrt((h[1] + delta) / (h[0] + delta))
        h[1] = m * h[1] + (1 - m) * u * u
        return rate * u
    t = it + 1
    h[0] = m * h[0] + (1 - m) * g
    h[1] = m2 * h[1] + (1 - m2) * g * g
    return rate * math.sqrt(1 - m2**t) / (1 - m**t) * h[0] / (np.sqrt(h[1]) + delta)


@pytest.mark.parametrize("kind", ["Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"])
def test_other_solvers_follow_caffe(kind):
    rng = np.random.default_rng(3)
    w0 = rng.normal(size=(4, 5)).astype(np.float32)
    grads = [rng.normal(size=(4, 5)).astype(np.float32) for _ in range(3)]
    rates = [0.01, 0.008, 0.005]
    p = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    opt = CaffeOptimizer(
        [{"params": [p], "lr_mult": 2.0, "decay_mult": 1.0}],
        solver_type=kind,
        momentum=0.9,
        weight_decay=0.001,
        iter_size=2,
        delta=1e-8,
    )
    w = w0.astype(np.float64)
    h = [np.zeros_like(w), np.zeros_like(w)]
    for it, (g, r) in enumerate(zip(grads, rates, strict=True)):
        p.grad = torch.from_numpy(g.copy())
        opt.step(r, it)
        gg = g.astype(np.float64) * 0.5 + 0.001 * w
        w = w - _reference_step(kind, w, gg, h, 2 * r, it)
    np.testing.assert_allclose(p.detach().numpy(), w, rtol=2e-5, atol=2e-6)


def test_l1_decay_clip_gradients_and_lr_mult_zero():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.0]))
    q = torch.nn.Parameter(torch.tensor([3.0]))
    opt = CaffeOptimizer(
        [{"params": [p]}, {"params": [q], "decay_mult": 0.0}],
        weight_decay=0.1,
        regularization_type="L1",
        clip_gradients=1.0,
        momentum=0.0,
    )
    p.grad, q.grad = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([4.0])  # global norm 5 -> scaled by 0.2
    opt.step(0.5)
    np.testing.assert_allclose(p.detach().numpy(), [1 - 0.5 * (0.6 + 0.1), -2 - 0.5 * (0 - 0.1), 0.0], rtol=1e-6)
    np.testing.assert_allclose(q.detach().numpy(), [3 - 0.5 * 0.8], rtol=1e-6)


def test_pytorch_form_differs_from_caffe_by_the_documented_amount_under_poly():
    """Same gradients, poly rates: Caffe-form minus PyTorch-form weights = pytorch_form_difference; equal while
    the rate is constant."""
    s = _ns(lr_policy="poly", power=0.9, max_iter=10, base_lr=0.1)
    rates = [caffe_learning_rate(s, i) for i in range(10)]
    grads = [0.5 + 0.1 * i for i in range(10)]
    final = {}
    for form in ("caffe", "pytorch"):
        p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float32))
        opt = CaffeOptimizer([p], momentum=0.9, form=form, arithmetic="float32")
        for r, g in zip(rates, grads, strict=True):
            p.grad = torch.tensor([g])
            opt.step(r)
        final[form] = float(p.detach())
    expected = pytorch_form_difference(rates, grads, 0.9)
    assert abs(expected) > 0.05  # not a rounding effect
    assert final["pytorch"] - final["caffe"] == pytest.approx(expected, rel=1e-5)
    flat = [0.1] * 10
    assert pytorch_form_difference(flat, grads, 0.9) == pytest.approx(0.0, abs=1e-12)


def test_softmax_with_loss_normalizations_and_ignore():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    lab = torch.tensor([[[0, 1], [255, 2]], [[255, 255], [1, 0]]], dtype=torch.float32).unsqueeze(1)
    logp = torch.log_softmax(x.detach(), 1)
    picks = [
        -logp[n, int(lab[n, 0, i, j]), i, j]
        for n in range(2)
        for i in range(2)
        for j in range(2)
        if lab[n, 0, i, j] != 255
    ]
    s = float(sum(picks))
    for mode, norm in (("VALID", 5), ("FULL", 8), ("BATCH_SIZE", 2), ("NONE", 1)):
        loss, count = softmax_with_loss(x, lab, ignore_label=255, normalization=mode)
        assert count == 5 and float(loss.detach()) == pytest.approx(s / norm, rel=1e-12)
    loss, _ = softmax_with_loss(x, lab, ignore_label=255)
    loss.backward()
    p = torch.softmax(x.detach(), 1)
    onehot = torch.zeros_like(p)
    for n in range(2):
        for i in range(2):
            for j in range(2):
                if lab[n, 0, i, j] != 255:
                    onehot[n, int(lab[n, 0, i, j]), i, j] = 1
    valid = (lab != 255).to(p.dtype)
    torch.testing.assert_close(x.grad, (p - onehot) * valid / 5)
    empty, count = softmax_with_loss(x, torch.full_like(lab, 255), ignore_label=255)
    assert count == 0 and float(empty.detach()) == 0.0


def test_other_losses_and_metrics():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    b = torch.tensor([[0.0, 2.0], [1.0, 4.0]])
    assert float(euclidean_loss(a, b)) == pytest.approx((1 + 4) / 2 / 2)
    x, t = torch.tensor([[0.5, -1.0]]), torch.tensor([[1.0, 0.0]])
    hand = -(math.log(1 / (1 + math.exp(-0.5))) + math.log(1 - 1 / (1 + math.exp(1.0))))
    assert float(sigmoid_cross_entropy_loss(x, t)) == pytest.approx(hand, rel=1e-6)
    scores = torch.tensor([[[[2.0, 0.0]], [[1.0, 3.0]]]])  # N=1, C=2, H=1, W=2: predictions 0, 1
    label = torch.tensor([[[[0.0, 0.0]]]])
    assert accuracy(scores, label) == 0.5 and accuracy(scores, label, top_k=2) == 1.0
    seg = seg_accuracy(scores, label)
    assert seg["pixel_accuracy"] == 0.5 and seg["mean_iou"] == 0.5

"""The solver's test phase (Caffe's ``Solver::TestAll``) against a hand computation in numpy.

A tiny HDF5 net, started from its fillers: InnerProduct -> BatchNorm (batch statistics in TRAIN, the moving
averages in TEST) -> ReLU -> Dropout -> InnerProduct -> SoftmaxWithLoss (loss_weight 2) + TEST-only Accuracy
layers. The reference re-runs each test's batches in float64 numpy from the weights the trainer held at that
iteration (BatchNorm from Caffe's three blobs: mean = blob0 / blob2, var = blob1 / blob2), reading the test
rows in Caffe's order (position carried over from test to test, wrapping).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from segconvert.train.build import trainer_from_solver
from segconvert.train.log import caffe_number
from tests.cli_runner import run_cli

NET = """name: "tp"
layer { name: "data" type: "HDF5Data" top: "data" top: "label" include { phase: TRAIN }
  hdf5_data_param { source: "train_h5.txt" batch_size: 4 } }
layer { name: "data" type: "HDF5Data" top: "data" top: "label" include { phase: TEST }
  hdf5_data_param { source: "test_h5.txt" batch_size: 3 } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.5 }
                        bias_filler { type: "constant" value: 0.1 } } }
layer { name: "bn1" type: "BatchNorm" bottom: "ip1" top: "ip1" }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "drop1" type: "Dropout" bottom: "ip1" top: "ip1" dropout_param { dropout_ratio: 0.25 } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" loss_weight: 2 }
layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy" include { phase: TEST } }
layer { name: "acc_top2" type: "Accuracy" bottom: "ip2" bottom: "label" top: "acc_top2"
  accuracy_param { top_k: 2 } include { phase: TEST stage: "top2" } }
"""
TEST_LINES = "test_iter: 3\ntest_interval: 2\ntest_compute_loss: true\n"
SOLVER = """net: "net.prototxt"
{test}base_lr: 0.2
lr_policy: "fixed"
momentum: 0.9
weight_decay: 0.001
max_iter: 5
display: 1
random_seed: 11
"""
N_TEST = 7  # rows of the test file: 3 tests x 3 passes x 3 rows wrap around it


def make_case(folder: Path, test: str = TEST_LINES) -> Path:
    rng = np.random.default_rng(5)
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", 24), ("test", N_TEST)):
        x = rng.normal(0, 1, (rows, 5)).astype(np.float32)
        y = rng.integers(0, 4, rows).astype(np.float32)
        with h5py.File(folder / f"{name}.h5", "w") as fh:
            fh["data"], fh["label"] = x, y
        (folder / f"{name}_h5.txt").write_text(f"{name}.h5\n")
    (folder / "net.prototxt").write_text(NET)
    (folder / "solver.prototxt").write_text(SOLVER.format(test=test))
    return folder / "solver.prototxt"


class Recorder:
    """The weights (and BatchNorm blobs) at iteration 0 and after every update."""

    def __init__(self) -> None:
        self.at: dict[int, dict[str, np.ndarray]] = {}

    def _take(self, trainer) -> None:
        blob = {"W1": "ip1/0", "b1": "ip1/1", "W2": "ip2/0", "b2": "ip2/1"}
        w = {k: trainer.net.blob(key).detach().double().numpy().copy() for k, key in blob.items()}
        w["bn"] = [b.double().numpy().copy() for b in trainer.net.bn_blobs["bn1"]]
        self.at[trainer.iteration] = w

    def on_train_start(self, trainer) -> None:
        self._take(trainer)

    def on_step_end(self, trainer, record) -> None:
        self._take(trainer)


def reference_test(w: dict, rows: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """One batch in float64: the loss (VALID: mean over the batch), top-1 and top-2 accuracy."""
    h = rows.astype(np.float64) @ w["W1"].T + w["b1"]
    acc0, acc1, s = w["bn"]
    factor = 0.0 if s[0] == 0 else 1.0 / s[0]
    h = (h - acc0 * factor) / np.sqrt(acc1 * factor + 1e-5)
    h = np.maximum(h, 0)  # Dropout is the identity in TEST
    z = h @ w["W2"].T + w["b2"]
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    lab = labels.astype(np.int64)
    order = np.argsort(-z, axis=1)
    return {
        # Caffe's -log(max(p, FLT_MIN)): at iteration 0 BatchNorm's blobs are 0 (var 0), the logits huge
        "loss": float(np.minimum(-logp[np.arange(len(lab)), lab], -np.log(np.finfo(np.float32).tiny)).mean()),
        "accuracy": float((order[:, 0] == lab).mean()),
        "acc_top2": float((order[:, :2] == lab[:, None]).any(1).mean()),
    }


def expected_tests(folder: Path, recorder: Recorder, iterations: list[int], test_iter: int = 3, batch: int = 3):
    with h5py.File(folder / "test.h5", "r") as fh:
        x, y = np.asarray(fh["data"]), np.asarray(fh["label"])
    pos, out = 0, {}
    for it in iterations:
        scores = []
        for _ in range(test_iter):
            idx = [(pos + j) % len(x) for j in range(batch)]
            pos = (pos + batch) % len(x)
            scores.append(reference_test(recorder.at[it], x[idx], y[idx]))
        out[it] = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
    return out


def test_test_phase_means_equal_a_numpy_computation(tmp_path):
    solver = make_case(tmp_path / "case")
    rec = Recorder()
    trainer = trainer_from_solver(solver, hooks=[rec])
    trainer.solver_test.stream = io.StringIO()
    trainer.run()
    results = trainer.solver_test.results
    assert [r["iter"] for r in results] == [0, 2, 4]  # test_initialization, then every 2; max_iter 5 is not one
    want = expected_tests(tmp_path / "case", rec, [0, 2, 4])
    for r in results:
        ref = want[r["iter"]]
        assert set(r["outputs"]) == {"accuracy", "loss"}  # acc_top2 only in stage top2
        assert r["outputs"]["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-6)
        assert r["outputs"]["loss"] == pytest.approx(ref["loss"], rel=2e-6)
        assert r["loss"] == pytest.approx(2 * ref["loss"], rel=2e-6)  # test_compute_loss: the weighted total
        assert r["loss_weights"] == {"loss": 2.0}
    # BatchNorm moved between the tests (batch statistics in training), so the test used the moving averages
    assert not np.allclose(rec.at[2]["bn"][0], rec.at[4]["bn"][0])
    lines = trainer.solver_test.lines
    r = results[1]
    acc, loss = np.float32(r["outputs"]["accuracy"]), np.float32(r["outputs"]["loss"])
    assert lines[4:8] == [
        "Iteration 2, Testing net (#0)",
        f"Test loss: {caffe_number(r['loss'])}",
        f"    Test net output #0: accuracy = {caffe_number(acc)}",
        f"    Test net output #1: loss = {caffe_number(loss)} (* 2 = {caffe_number(np.float32(2) * loss)} loss)",
    ]
    assert trainer.solver_test.stream.getvalue().splitlines() == lines


def _weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.net.model.state_dict().items()}


def test_test_batches_do_not_disturb_training(tmp_path):
    with_test = trainer_from_solver(make_case(tmp_path / "a"))
    with_test.solver_test.stream = None
    losses_a = [r.loss for r in with_test.run()]
    plain = trainer_from_solver(make_case(tmp_path / "b", test=""))
    assert plain.solver_test is None
    losses_b = [r.loss for r in plain.run()]
    assert losses_a == losses_b  # Dropout's torch RNG stream, data order, BatchNorm blobs: all untouched
    wa, wb = _weights(with_test), _weights(plain)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert all(torch.equal(a, b) for a, b in zip(with_test.net.bn_blobs["bn1"], plain.net.bn_blobs["bn1"], strict=True))


def test_two_test_nets_with_test_state_stages_and_no_initial_test(tmp_path):
    test = "test_iter: 3\ntest_iter: 2\ntest_interval: 5\ntest_initialization: false\ntest_state { }\n"
    test += 'test_state { stage: "top2" }\n'
    solver = make_case(tmp_path / "case", test=test)
    rec = Recorder()
    trainer = trainer_from_solver(solver, hooks=[rec])
    trainer.run()
    r0, r1 = trainer.solver_test.results
    assert (r0["iter"], r0["net"], r1["iter"], r1["net"]) == (5, 0, 5, 1)
    assert set(r0["outputs"]) == {"accuracy", "loss"} and set(r1["outputs"]) == {"acc_top2", "accuracy", "loss"}
    ref0 = expected_tests(tmp_path / "case", rec, [5], test_iter=3)[5]
    ref1 = expected_tests(tmp_path / "case", rec, [5], test_iter=2)[5]  # its own data source, from row 0
    for r, ref in ((r0, ref0), (r1, ref1)):
        for k, v in r["outputs"].items():
            assert v == pytest.approx(ref[k], rel=2e-6, abs=1e-6), (r["net"], k)
    assert trainer.solver_test.lines[-3].startswith("    Test net output #0: acc_top2 = ")


def test_cli_writes_test_records_and_prints_caffe_lines(tmp_path):
    solver = make_case(tmp_path / "case")
    code, out, err = run_cli("train", "--solver", solver, "-o", tmp_path / "out")
    assert code == 0, err
    rows = [json.loads(ln) for ln in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    tests = [r for r in rows if r.get("event") == "test"]
    assert [r["iter"] for r in tests] == [0, 2, 4]
    assert [r["iter"] for r in rows if "event" not in r] == [1, 2, 3, 4, 5]
    # the record of an iteration's test follows its training record
    assert [(r["iter"], r.get("event")) for r in rows[:4]] == [(0, "test"), (1, None), (2, None), (2, "test")]
    assert "Iteration 4, Testing net (#0)" in out.splitlines()
    api = trainer_from_solver(solver)
    api.run()
    assert [r["outputs"] for r in api.solver_test.results] == [r["outputs"] for r in tests]


def test_cli_resume_reads_the_same_test_batches(tmp_path):
    solver = make_case(tmp_path / "case")
    code, _, err = run_cli("train", "--solver", solver, "-o", tmp_path / "run", "--max-iter", 3,
                           "--checkpoint-every", 3)  # fmt: skip
    assert code == 0, err
    code, _, err = run_cli("train", "--resume", tmp_path / "run", "--max-iter", 5)
    assert code == 0, err
    code, _, err = run_cli("train", "--solver", solver, "-o", tmp_path / "whole")
    assert code == 0, err

    def log(folder):
        rows = [json.loads(ln) for ln in (folder / "train_log.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert log(tmp_path / "run") == log(tmp_path / "whole")


@pytest.mark.parametrize(
    ("test", "line", "words"),
    [
        ("test_iter: 3\n", 2, "positive test_interval"),
        ('test_iter: 3\ntest_interval: 2\ntest_state { }\ntest_state { stage: "x" }\n', 4, "test_state must be"),
        ('test_iter: 3\ntest_interval: 2\ntest_net: "net.prototxt"\ntest_net: "net.prototxt"\n', 2, "each test net"),
    ],
)
def test_bad_test_settings_name_the_solver_line(tmp_path, test, line, words):
    solver = make_case(tmp_path / "case", test=test)
    code, _, err = run_cli("train", "--solver", solver, "-o", tmp_path / "out")
    assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, err
    assert f"{solver}:{line}:" in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("how", ["test_net", "test_net_param"])
def test_explicit_test_nets_equal_the_generic_one(tmp_path, how):
    generic = trainer_from_solver(make_case(tmp_path / "generic"))
    generic.run()
    solver = make_case(tmp_path / "case")
    explicit = 'test_net: "net.prototxt"' if how == "test_net" else "test_net_param {\n" + NET + "}"
    text = solver.read_text().replace('net: "net.prototxt"', f'train_net: "net.prototxt"\n{explicit}')
    solver.write_text(text)
    trainer = trainer_from_solver(solver)
    trainer.run()
    assert [r["outputs"] for r in trainer.solver_test.results] == [r["outputs"] for r in generic.solver_test.results]

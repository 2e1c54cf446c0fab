"""``segconvert predict --workers N`` / ``--batch-memory MiB``: eval's decode workers and crop budget, same files.

The net is a hand-built Caffe net (3x3 conv, ReLU, 1x1 conv to 4 classes) with a fixed 16x16 input, so predict
slides 16x16 windows over each image at its own resolution: 12 windows (with --flip, 12 flip pairs) on 30x45.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.caffe_bytes import blob, layer
from tests.cli_runner import run_cli

PROTOTXT = """name: "small"
input: "data"
input_dim: 1
input_dim: 3
input_dim: 16
input_dim: 16
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
  convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "score" type: "Convolution" bottom: "c1" top: "score"
  convolution_param { num_output: 4 kernel_size: 1 } }
"""
SIZES = {"a": (30, 45), "b": (20, 20), "c/d": (40, 33), "e": (17, 50)}  # "c/d": a sub-folder's image
PREP = ("--mean", "120,110,100", "--std", "60,60,60", "--rgb", "--flip", "--quiet", "--device", "cpu")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pw")
    rng = np.random.default_rng(0)

    def w(*shape: int) -> list[float]:
        return [float(v) for v in rng.normal(0, 0.5, shape).ravel()]

    net = layer("c1", "Convolution", [blob(w(6, 3, 3, 3), shape=[6, 3, 3, 3]), blob(w(6), shape=[6])])
    net += layer("score", "Convolution", [blob(w(4, 6, 1, 1), shape=[4, 6, 1, 1]), blob(w(4), shape=[4])])
    (tmp / "net.prototxt").write_text(PROTOTXT)
    (tmp / "net.caffemodel").write_bytes(net)
    weights = tmp / "small.safetensors"
    code, _, err = run_cli("caffe2torch", tmp / "net.prototxt", tmp / "net.caffemodel", "-o", weights)
    assert code == 0, err
    folder = tmp / "imgs"
    for stem, (h, w_) in SIZES.items():
        (folder / stem).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w_, 3), dtype=np.uint8)).save(folder / f"{stem}.png")
    return weights, folder, tmp


def _files(out: Path) -> dict[str, bytes]:
    found = {str(f.relative_to(out)): f.read_bytes() for f in sorted(out.rglob("*.png"))}
    assert len(found) == 3 * len(SIZES)  # labels/, color/, overlay/ of every image
    return found


def _predict(setup, name: str, *opts: str) -> dict[str, bytes]:
    weights, folder, tmp = setup
    code, _, err = run_cli("predict", weights, folder, "-o", tmp / name, *PREP, *opts)
    assert code == 0, err
    return _files(tmp / name)


def test_two_workers_write_the_in_process_files_bit_for_bit_in_input_order(setup, monkeypatch):
    from segconvert.inference import predict as lib

    written: list[str] = []
    original = lib.write_prediction

    def record(pred, image, out_dir, stem, palette):
        written.append(stem)
        return original(pred, image, out_dir, stem, palette)

    monkeypatch.setattr(lib, "write_prediction", record)
    zero = _predict(setup, "w0", "--workers", "0")
    assert written == sorted(SIZES)
    written.clear()
    two = _predict(setup, "w2", "--workers", "2")
    assert written == sorted(SIZES)  # the DataLoader returns the images in input order
    assert zero == two
    labels = np.asarray(Image.open(setup[2] / "w0" / "labels" / "a.png"))
    assert labels.shape == SIZES["a"] and len(np.unique(labels)) > 1  # a real label map, not one class


def _patch_forward(monkeypatch, fn):
    import segconvert.eval.crops as crops
    import segconvert.eval.protocols as protocols

    monkeypatch.setattr(crops, "forward_batch", fn)  # the sliding window's
    monkeypatch.setattr(protocols, "forward_batch", fn)  # the one-forward protocols'


def test_a_budget_that_batches_several_crops_writes_the_one_crop_files(setup, monkeypatch):
    import segconvert.eval.batching as batching
    import segconvert.eval.protocols as protocols

    batches: list[int] = []
    forward = protocols.forward_batch

    def counted(model, x, rt):
        batches.append(int(x.shape[0]))
        return forward(model, x, rt)

    _patch_forward(monkeypatch, counted)
    one = _predict(setup, "m0", "--workers", "0")
    assert max(batches) == 2  # one flip pair per forward on the CPU
    batches.clear()
    monkeypatch.setattr(batching, "measure_forward_bytes", lambda model, crop, rt: 2**20)  # 1 MiB a crop
    budget = _predict(setup, "m6", "--workers", "0", "--batch-memory", "6")
    assert max(batches) == 6 and batches.count(6) >= 2  # 3 flip pairs per forward: several crops batched
    assert budget == one
    both = _predict(setup, "m6w2", "--workers", "2", "--batch-memory", "6")
    assert both == one


def test_the_inference_form_runs_nhwc_crops_by_default_and_writes_the_nchw_labels(setup, monkeypatch):
    layouts: list[bool] = []
    from segconvert.eval import crops

    forward = crops.forward_batch

    def seen(model, x, rt):  # the model's weights and the crops as the forward gets them
        w = next(model.parameters())
        layouts.append(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous())
        layouts.append(rt.memory_format == torch.channels_last)
        return forward(model, x, rt)

    _patch_forward(monkeypatch, seen)
    runs = {}
    for name, opts, nhwc in (
        ("cl_default", (), True),  # fused: the inference form is channels_last on the CPU too
        ("cl_off", ("--no-channels-last",), False),
        ("cl_plain", ("--no-fuse",), False),  # the plain module keeps today's CPU default
        ("cl_plain_on", ("--no-fuse", "--channels-last"), True),
    ):
        layouts.clear()
        runs[name] = _predict(setup, name, "--workers", "0", *opts)
        assert layouts and all(v == nhwc for v in layouts), name
    first = runs.pop("cl_default")
    assert all(r == first for r in runs.values())  # argmax of the same sums up to reduction order


@pytest.mark.parametrize(
    "opts, words",
    [
        (["--workers", "-1"], ["--workers", "-1"]),
        (["--workers", "two"], ["--workers", "not a number"]),
        (["--batch-memory", "0"], ["--batch-memory", "1 MiB"]),
        (["--batch-memory", "-5"], ["--batch-memory", "1 MiB"]),
        (["--batch-memory", "64", "--batch-size", "2"], ["--batch-size", "--batch-memory", "not both"]),
    ],
)
def test_bad_values_are_one_line_before_any_output(setup, tmp_path, opts, words):
    weights, folder, _ = setup
    out = tmp_path / "out"
    code, stdout, err = run_cli("predict", weights, folder, "-o", out, *PREP, *opts)
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert all(w in err for w in words), err
    assert not out.exists() and not stdout


def test_an_unreadable_image_in_a_worker_is_its_one_line_error(setup, tmp_path):
    weights, folder, _ = setup
    bad = tmp_path / "imgs"
    bad.mkdir()
    for name in ("a", "b", "c"):
        (bad / f"{name}.png").write_bytes((folder / "a.png").read_bytes())
    (bad / "b.png").write_bytes(b"not a png")
    code, _, err = run_cli("predict", weights, bad, "-o", tmp_path / "out", *PREP, "--workers", "2")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "cannot read image" in err and "b.png" in err and "Traceback" not in err


def test_predict_takes_the_eval_options_with_their_help():
    from segconvert.commands.evaluate import eval_cmd
    from segconvert.commands.predict import predict

    def opts(cmd):
        names = ("workers", "batch_memory", "channels_last")
        return {p.name: (p.opts, p.secondary_opts, p.help) for p in cmd.params if p.name in names}

    assert opts(predict) == opts(eval_cmd) and len(opts(predict)) == 3


def test_amp_takes_a_dtype_and_refuses_fp16_on_the_cpu_before_any_output(setup):
    weights, folder, tmp = setup
    code, _, err = run_cli("predict", weights, folder, "-o", tmp / "fp16", *PREP, "--amp", "fp16")
    assert code == 2 and "fp16" in err and "bf16" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp / "fp16").exists()
    seen: list[object] = []
    from segconvert.eval import crops

    forward = crops.forward_batch

    def record(model, x, rt):
        seen.append(rt.autocast_dtype)
        return forward(model, x, rt)

    import pytest as _pytest

    with _pytest.MonkeyPatch.context() as mp:
        _patch_forward(mp, record)
        bf16 = _predict(setup, "bf16", "--workers", "0", "--amp", "bf16")
        assert seen and set(seen) == {torch.bfloat16}
        seen.clear()
        off = _predict(setup, "off", "--workers", "0", "--amp", "off")
        assert seen and set(seen) == {None}
    assert off == _predict(setup, "fp32", "--workers", "0")  # off is the CPU default
    assert bf16.keys() == off.keys()


def test_compile_runs_the_compiled_inference_form_and_writes_the_same_labels(setup, monkeypatch):
    import segconvert.inference.prepare as prepare

    compiled: list[bool] = []
    real = torch.compile

    def spy(model, **kw):
        compiled.append(True)
        return real(model, backend="aot_eager", **kw)  # dynamo + AOT autograd graphs, no C++ build in CI

    monkeypatch.setattr(prepare.torch, "compile", spy)
    got = _predict(setup, "compiled", "--workers", "0", "--compile")
    assert compiled == [True]
    assert got == _predict(setup, "not_compiled", "--workers", "0")

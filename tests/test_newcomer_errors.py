"""Errors that name the real cause, --arch that does what it says, and the small things a new user trips on."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import segconvert
from segconvert.testing import fixture_path
from tests.cli_runner import run_cli

CAFFE = "deeplab_v2_resnet101_single"


def _caffe() -> tuple[Path, Path]:
    root = fixture_path("caffe", CAFFE)
    return root / "net.prototxt", root / "weights.caffemodel"


def _one_line(res, code: int = 2) -> str:
    assert res.returncode == code, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    err = res.stderr.strip()
    assert "\n" not in err and "Traceback" not in err and "Usage:" not in err, err
    return err


# ----------------------------------------------------------------------------------------------- --arch


def test_every_converter_lists_its_arch_values_in_help():
    from segconvert.commands.convert_caffe import caffe_arch_names
    from segconvert.commands.convert_tf import SLIM_ARCH_NAMES

    caffe_help = " ".join(run_cli("caffe2torch", "--help").stdout.split())
    for name in caffe_arch_names():
        assert name in caffe_help, name
    slim_help = " ".join(run_cli("slim2torch", "--help").stdout.split())
    for name in SLIM_ARCH_NAMES:
        assert name in slim_help, name


def test_unknown_arch_lists_the_known_ones_and_a_wrong_one_says_what_the_file_is(tmp_path):
    out = tmp_path / "o.safetensors"
    err = _one_line(run_cli("caffe2torch", *_caffe(), "-o", out, "--arch", "resnet_v1_50"))
    assert "unknown --arch 'resnet_v1_50'" in err and "pspnet101" in err and "pspnet50_ade20k" in err
    err = _one_line(run_cli("caffe2torch", *_caffe(), "-o", out, "--arch", "pspnet101_voc2012"))
    assert "deeplabv2_resnet101" in err  # a preset of the wrong family: says what the net is
    ckpt = fixture_path("tf", "slim_resnet_v1_50_os8") / "model.ckpt"
    err = _one_line(run_cli("slim2torch", ckpt, "-o", out, "--arch", "deeplabv2_resnet101"))
    assert "unknown --arch" in err and "resnet_v1_101" in err
    err = _one_line(run_cli("slim2torch", ckpt, "-o", out, "--arch", "resnet_v1_101"))
    assert "resnet_v1_50" in err
    assert not list(tmp_path.iterdir())


def test_slim_names_users_know_are_accepted(tmp_path):
    ckpt = fixture_path("tf", "slim_resnet_v1_50_os8") / "model.ckpt"
    out = tmp_path / "o.safetensors"
    res = run_cli("slim2torch", ckpt, "-o", out, "--arch", "resnet_v1_50", "--output-stride", "8")
    assert res.returncode == 0, res.stderr
    meta = segconvert.load_model(out).segconvert_meta
    assert meta["arch"] == "resnet" and meta["config"]["depth"] == 50
    assert "std None" not in res.stdout


def test_caffe_generic_arch_is_the_generic_path(tmp_path):
    case = fixture_path("caffe", "layers") / "conv_stride2"
    out = tmp_path / "g.safetensors"
    res = run_cli(
        "caffe2torch", case / "net.prototxt", case / "weights.caffemodel", "-o", out, "--arch", "caffe_generic"
    )
    assert res.returncode == 0, res.stderr
    assert segconvert.load_model(out).segconvert_meta["arch"] == "caffe_generic"
    assert "layers recognised as shared weights" not in res.stdout  # no "0 ... layers recognised" noise


# ---------------------------------------------------------------------------------------------- causes


def test_swapped_caffe_arguments_say_so(tmp_path):
    proto, model = _caffe()
    err = _one_line(run_cli("caffe2torch", model, proto, "-o", tmp_path / "o.safetensors"))
    assert "swapped" in err
    assert not list(tmp_path.iterdir())


def test_missing_file_is_the_one_line_rule_not_a_usage_block(tmp_path):
    proto, _ = _caffe()
    err = _one_line(run_cli("caffe2torch", proto, tmp_path / "none.caffemodel", "-o", tmp_path / "o.safetensors"))
    assert str(tmp_path / "none.caffemodel") in err and "no such file" in err
    assert "no such file" in _one_line(run_cli("inspect", tmp_path / "none.prototxt"))
    assert "no TF checkpoint found" in _one_line(run_cli("slim2torch", tmp_path / "none.ckpt", "-o", tmp_path / "o.sf"))
    assert "no such file" in _one_line(run_cli("verify", tmp_path / "none.safetensors"))
    err = _one_line(run_cli("eval", tmp_path / "none.safetensors", "--dataset", "voc", "--root", tmp_path))
    assert "no such file" in err


def _dangling_bottom(tmp_path: Path) -> Path:
    proto, _ = _caffe()
    text = proto.read_text()
    first = re.search(r'bottom: "res2a_branch1"', text)
    assert first is not None
    bad = tmp_path / "bad.prototxt"
    bad.write_text(text[: first.start()] + 'bottom: "nosuchblob"' + text[first.end() :])
    return bad


def test_a_bottom_nothing_produced_is_named_on_the_named_path_and_by_inspect(tmp_path):
    bad = _dangling_bottom(tmp_path)
    _, model = _caffe()
    out = tmp_path / "o.safetensors"
    err = _one_line(run_cli("caffe2torch", bad, model, "-o", out))
    assert "nosuchblob" in err and "nothing produced" in err and "layer 'bn2a_branch1'" in err
    assert not out.exists()
    res = run_cli("inspect", bad)
    assert res.returncode == 1
    assert "warning: layer 'bn2a_branch1' reads blob 'nosuchblob'" in " ".join(res.stdout.split())


@pytest.mark.parametrize(
    ("name", "expect"),
    [("weights.caffemodel", "caffe2torch"), ("m.onnx", "ONNX"), ("weights.h5", "keras2torch"), ("w.json", "JSON")],
)
def test_a_foreign_file_given_as_weights_says_what_it_is(tmp_path, name, expect):
    if name == "weights.caffemodel":
        path = _caffe()[1]
    elif name == "weights.h5":
        path = fixture_path("keras", "pspnet_keras_style") / "weights.h5"
    elif name == "m.onnx":
        onnx = pytest.importorskip("onnx")
        x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
        y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
        graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
        path = tmp_path / name
        onnx.save(onnx.helper.make_model(graph, producer_name="pytorch"), str(path))
    else:
        path = tmp_path / name
        path.write_text('{"arch": "pspnet50"}\n')
    with pytest.raises(segconvert.WeightsFileError, match=expect):
        segconvert.load_model(path)
    assert expect in _one_line(run_cli("verify", path))


def test_a_pth_under_a_safetensors_name_still_loads(tmp_path):
    """torch.load(path) reads a .safetensors *name* as safetensors; the content says it is a torch archive."""
    from segconvert.weights.store import save_converted

    pth = save_converted(tmp_path / "w.pth", {"w": torch.ones(2)}, {"arch": "resnet", "config": {}})
    renamed = tmp_path / "w.safetensors"
    shutil.copy(pth, renamed)
    from segconvert.weights.store import read_metadata

    assert read_metadata(renamed)["arch"] == "resnet"


def test_inspect_tells_formats_apart_by_content(tmp_path):
    ckpt = fixture_path("tf", "slim_resnet_v1_50_os8") / "resnet_v1_50.ckpt"
    cut = tmp_path / "cut.bin"  # a truncated V1 checkpoint, without its suffix
    cut.write_bytes(ckpt.read_bytes()[:5000])
    err = _one_line(run_cli("inspect", cut))
    assert "caffemodel" not in err and ("TensorFlow" in err or "checkpoint" in err), err
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "random.weights", "w") as f:
        f["a/b"] = [1.0, 2.0]
    err = _one_line(run_cli("inspect", tmp_path / "random.weights"))
    assert "Keras" in err and "caffemodel" not in err


# -------------------------------------------------------------------------------------------------- eval


class _NoForward(nn.Module):
    def __init__(self, meta: dict) -> None:
        super().__init__()
        self.segconvert_meta = meta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("a forward pass ran before the check")


def _voc(tmp_path: Path) -> Path:
    from tests.test_eval_datasets import voc_sample_root

    return voc_sample_root(tmp_path)[0]


_PRE = {"channel_order": "BGR", "mean": [104.0, 117.0, 123.0], "std": None, "scale": 1.0}


def test_eval_refuses_a_class_count_mismatch_before_any_forward(tmp_path, monkeypatch):
    meta = {"arch": "pspnet50", "num_classes": 150, "preprocessing": _PRE}
    monkeypatch.setattr("segconvert.eval.runner.load_weights", lambda p, d: _NoForward(meta))
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    err = _one_line(run_cli("eval", weights, "--dataset", "voc", "--root", _voc(tmp_path), "--device", "cpu"))
    assert "150 classes" in err and "21" in err


def test_eval_of_a_generic_conversion_says_which_preprocessing_is_missing(tmp_path, monkeypatch):
    meta = {"arch": "caffe_generic", "num_classes": None, "preprocessing": None}
    monkeypatch.setattr("segconvert.eval.runner.load_weights", lambda p, d: _NoForward(meta))
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    err = _one_line(run_cli("eval", weights, "--dataset", "voc", "--root", _voc(tmp_path), "--device", "cpu"))
    assert "mean" in err and "--mean" in err and "--bgr" in err


def test_eval_preprocessing_options_replace_the_recorded_ones():
    from segconvert.commands.evaluate import _preprocessing

    pre = _preprocessing("w", {"preprocessing": None}, "1,2,3", "4,5,6", "BGR")
    assert (pre.channel_order, pre.mean, pre.std) == ("BGR", (1.0, 2.0, 3.0), (4.0, 5.0, 6.0))
    pre = _preprocessing("w", {"preprocessing": _PRE}, None, None, "RGB")
    assert (pre.channel_order, pre.mean, pre.std) == ("RGB", (104.0, 117.0, 123.0), None)


# -------------------------------------------------------------------------------------------- small things


def test_dir_of_the_package_is_its_public_api():
    assert set(dir(segconvert)) == set(segconvert.__all__)
    assert "errors" not in dir(segconvert) and "TYPE_CHECKING" not in dir(segconvert)
    for name in segconvert.__all__:
        assert hasattr(segconvert, name), name


def test_inspect_table_fits_the_terminal_width(monkeypatch):
    proto, _ = _caffe()
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setattr("segconvert.commands.inspect_cmd._stdout_is_terminal", lambda: True)
    res = run_cli("inspect", proto)
    assert res.returncode == 0, res.stderr
    widths = [len(line) for line in res.stdout.splitlines()]
    assert max(widths) <= 100, max(widths)


def test_verify_without_a_runtime_gives_one_install_line(monkeypatch):
    from segconvert.parity.verify_common import RuntimeUse, VerifyResult

    result = VerifyResult(Path("w.safetensors"), "pspnet50", "synthetic")
    result.runtimes = [
        RuntimeUse("pycaffe", reason="not importable"),
        RuntimeUse("opencv-dnn", reason="not installed", install="opencv-python-headless"),
    ]
    result.unchecked = [(f"layer{i}", "no reference runtime available for it") for i in range(200)]
    lines = result.summary()
    assert sum("pip install" in line for line in lines) == 1
    assert len(lines) < 8, lines
    assert any("200 layers" in line for line in lines)


@pytest.mark.parity
def test_verify_without_tf_keras_says_what_to_install_instead_of_crashing_mid_graph(tmp_path, monkeypatch):
    """TF imports tf_keras lazily when slim's batch_norm builds: without it verify must say so, up front."""
    import sys

    import numpy as np

    pytest.importorskip("tensorflow")
    pytest.importorskip("tf_slim")
    from segconvert.commands.convert_tf import convert_slim_files
    from segconvert.parity.verify_tf import verify_tf_graph

    prefix = fixture_path("tf", "slim_resnet_v1_50_os8") / "model.ckpt"
    out = tmp_path / "r50.safetensors"
    convert_slim_files(prefix, out, output_stride=8)
    model = segconvert.load_model(out)
    monkeypatch.setitem(sys.modules, "tf_keras", None)  # what an install without tf_keras gives
    use, unchecked = verify_tf_graph(model, model.segconvert_meta, prefix, np.zeros((1, 3, 33, 33), np.float32))
    assert not use.used and "tf_keras" in use.reason and use.install == "'segconvert[parity]'"
    assert len(unchecked) == 1

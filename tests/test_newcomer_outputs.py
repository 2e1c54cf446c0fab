"""Unwritable outputs are refused before the work (one line, exit 2, no file); a failed --parity writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segconvert.testing import fixture_path
from tests.cli_runner import run_cli

CAFFE = "deeplab_v2_resnet101_single"


def _caffe_args() -> list[Path]:
    root = fixture_path("caffe", CAFFE)
    return [root / "net.prototxt", root / "weights.caffemodel"]


def _blocked(tmp_path: Path) -> dict[str, Path]:
    """Two unwritable places that stop root too: a read-only mount, and a path under a regular file."""
    (tmp_path / "plain").write_text("a file, not a folder\n")
    return {"sys": Path("/sys/segconvert-test"), "under-a-file": tmp_path / "plain" / "sub"}


def _one_line_exit_2(res, path: Path) -> None:
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    err = res.stderr.strip()
    assert "\n" not in err and "Traceback" not in err and str(path) in err, err


@pytest.mark.parametrize("where", ["sys", "under-a-file"])
def test_caffe2torch_unwritable_output_or_source_is_refused_and_writes_nothing(tmp_path, where):
    bad = _blocked(tmp_path)[where]
    res = run_cli("caffe2torch", *_caffe_args(), "-o", bad / "o.safetensors")
    _one_line_exit_2(res, bad / "o.safetensors")
    # --emit-source to an unwritable place: neither the weights nor the sidecar may appear
    out = tmp_path / "w.safetensors"
    res = run_cli("caffe2torch", *_caffe_args(), "-o", out, "--emit-source", bad / "net.py")
    _one_line_exit_2(res, bad / "net.py")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]


@pytest.mark.parametrize("where", ["sys", "under-a-file"])
def test_slim_demo_and_eval_outputs_are_checked_first(tmp_path, where):
    bad = _blocked(tmp_path)[where]
    ckpt = fixture_path("tf", "slim_resnet_v1_50_os8") / "model.ckpt"
    _one_line_exit_2(run_cli("slim2torch", ckpt, "-o", bad / "o.safetensors"), bad / "o.safetensors")
    _one_line_exit_2(run_cli("demo", "--out", bad / "demo"), bad / "demo")
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")  # never read: the output folder is checked first
    res = run_cli("eval", weights, "--dataset", "voc", "--root", tmp_path, "--save-pred", bad / "pred")
    _one_line_exit_2(res, bad / "pred")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "w.safetensors"]


def test_format_pth_under_a_safetensors_name_is_refused(tmp_path):
    out = tmp_path / "w.safetensors"
    res = run_cli("caffe2torch", *_caffe_args(), "-o", out, "--format", "pth")
    _one_line_exit_2(res, out)
    assert "name it .pth" in res.stderr and not list(tmp_path.iterdir())


def _bad_dump(tmp_path: Path) -> Path:
    root = fixture_path("caffe", CAFFE)
    dump = tmp_path / "dump"
    dump.mkdir()
    for name in ("input.npy", "meta.json"):
        (dump / name).symlink_to(root / name)
    np.savez(dump / "outputs.npz", **{k: v * 1.5 for k, v in np.load(root / "outputs.npz").items()})
    return dump


def test_failed_caffe_parity_writes_nothing_unless_kept(tmp_path):
    dump = _bad_dump(tmp_path)
    out = tmp_path / "out" / "x.safetensors"
    res = run_cli("caffe2torch", *_caffe_args(), "-o", out, "--parity", dump)
    assert res.returncode == 1 and "FIRST DIVERGENCE" in res.stdout, res.stdout[-2000:]
    assert "wrote nothing" in res.stdout and not out.exists() and not Path(f"{out}.json").exists()
    res = run_cli("caffe2torch", *_caffe_args(), "-o", out, "--parity", dump, "--keep-on-failure")
    assert res.returncode == 1 and out.exists()
    sidecar = Path(f"{out}.json").read_text()
    meta = json.loads(sidecar)
    assert meta["parity"]["ok"] is False and meta["parity"]["reference"] == "dump"
    assert str(tmp_path) not in sidecar  # no local absolute path in the metadata


def test_failed_slim_parity_writes_nothing_and_no_absolute_path(tmp_path):
    case = fixture_path("tf", "slim_resnet_v1_50_os8")
    dump = tmp_path / "tfdump"
    dump.mkdir()
    (dump / "input.npy").symlink_to(case / "input.npy")
    np.savez(dump / "outputs.npz", **{k: v * 1.5 for k, v in np.load(case / "outputs.npz").items()})
    out = tmp_path / "s.safetensors"
    args = ["slim2torch", case / "model.ckpt", "-o", out, "--output-stride", "8"]
    res = run_cli(*args, "--parity", dump)
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    assert not out.exists() and not Path(f"{out}.json").exists()
    res = run_cli(*args, "--parity", case)  # the real reference passes and is recorded by folder name only
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    sidecar = Path(f"{out}.json").read_text()
    assert json.loads(sidecar)["parity"]["reference"] == case.name and str(case.parent) not in sidecar


def test_demo_does_not_print_its_deleted_temp_folder(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    res = run_cli("demo", "--width-divisor", "16")
    assert res.returncode in (0, 1), res.stderr[-2000:]
    assert str(tmp_path) not in res.stdout and "--out DIR keeps it" in res.stdout
    assert "0 MSC copy layers" not in res.stdout and "std None" not in res.stdout

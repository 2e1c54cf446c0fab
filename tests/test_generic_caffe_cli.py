"""``segconvert caffe2torch --generic / --emit-source`` end to end (in process, through ``segconvert.cli.main``)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import segconvert
from segconvert.reference_models.caffe_generic import CaffeGenericNet
from segconvert.testing import fixture_path
from segconvert.weights.store import read_metadata
from tests.cli_runner import run_cli


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_non_segmentation_net_falls_back_to_generic(tmp_path, capsys):
    root = fixture_path("real", "mtcnn_caffe")
    out = tmp_path / "pnet.safetensors"
    args = [str(root / "det1.prototxt"), str(root / "det1.caffemodel"), "-o", str(out)]
    code, stdout, err = run_cli("caffe2torch", *args)
    assert code == 0, err
    assert "path: generic (not a DeepLab-v2 / PSPNet net" in stdout
    meta = read_metadata(out)
    assert meta["arch"] == "caffe_generic" and meta["preprocessing"] is None
    assert [layer["name"] for layer in meta["config"]["layers"]][:3] == ["conv1", "PReLU1", "pool1"]
    assert json.loads((tmp_path / "pnet.safetensors.json").read_text())["arch"] == "caffe_generic"
    model = segconvert.load_model(out)  # rebuilt from the metadata's config alone
    assert isinstance(model, CaffeGenericNet) and model.segconvert_meta["source"]["files"][0]["path"] == "det1.prototxt"
    # --emit-source alone also takes the generic path; the class is named after the net
    code, stdout, err = run_cli("caffe2torch", *args, "--emit-source", str(tmp_path / "pnet.py"))
    assert code == 0 and "path: generic (--emit-source)" in stdout and "class PNet" in stdout, err
    x = torch.randn(1, 3, 40, 30)  # fully convolutional: any input size
    with torch.no_grad():
        reg, prob = model(x)
    assert reg.shape == (1, 4, 15, 10) and torch.allclose(prob.sum(1), torch.ones(1, 15, 10))


def test_generic_with_emitted_source_on_a_named_net(tmp_path, capsys):
    case = fixture_path("caffe", "deeplab_v2_resnet101_single")
    args = [str(case / "net.prototxt"), str(case / "weights.caffemodel")]
    out, src = tmp_path / "a.safetensors", tmp_path / "deeplab_generic.py"
    opts = ["-o", str(out), "--emit-source", str(src), "--generic", "--class-name", "DeepLabV2"]
    code, stdout, err = run_cli("caffe2torch", *args, *opts)
    assert code == 0, err
    assert "path: generic (requested)" in stdout and f"wrote {src}: class DeepLabV2" in stdout
    meta = read_metadata(out)
    assert meta["arch"] == "caffe_generic" and meta["config"]["outputs"] == ["fc1_interp"]
    spec = importlib.util.spec_from_file_location("deeplab_generic", src)
    module = importlib.util.module_from_spec(spec)
    sys.modules["deeplab_generic"] = module
    spec.loader.exec_module(module)
    emitted = module.DeepLabV2().eval()
    emitted.load_state_dict(load_file(out))  # the written weights, unchanged
    x = torch.from_numpy(np.load(case / "input.npy"))
    with torch.no_grad():
        a, b = emitted(x), segconvert.load_model(out)(x)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))
    # deterministic: a second run writes the same bytes
    first = (_sha(out), _sha(src))
    code, _, _ = run_cli("caffe2torch", *args, *opts)
    assert code == 0 and (_sha(out), _sha(src)) == first
    # the named architecture stays the default when detected
    code, stdout, _ = run_cli("caffe2torch", *args, "-o", str(tmp_path / "b.safetensors"))
    assert (
        code == 0
        and "path: named architecture" in stdout
        and read_metadata(tmp_path / "b.safetensors")["arch"] == "deeplabv2_resnet101"
    )


def test_errors_are_one_line_and_leave_no_files(tmp_path, capsys):
    proto = tmp_path / "net.prototxt"
    proto.write_text(
        'name: "x"\ninput: "data"\ninput_dim: 1\ninput_dim: 1\ninput_dim: 4\ninput_dim: 4\n'
        'layer { name: "e" type: "Exp" bottom: "data" top: "e" }\n'
        'layer { name: "t" type: "Threshold" bottom: "e" top: "t" }\n'
    )
    weights = fixture_path("caffe", "layers", "absval", "weights.caffemodel")  # no layer of it is in this net
    out = tmp_path / "o.safetensors"
    code, _, err = run_cli(
        "caffe2torch", str(proto), str(weights), "-o", str(out), "--emit-source", str(tmp_path / "n.py")
    )
    assert code == 2 and err.count("\n") == 1 and "e (Exp)" in err and "t (Threshold)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.prototxt"]
    root = fixture_path("real", "mtcnn_caffe")
    args = [str(root / "det1.prototxt"), str(root / "det1.caffemodel"), "-o", str(out)]
    code, _, err = run_cli("caffe2torch", *args, "--generic", "--arch", "pspnet50")
    assert code == 2 and "--generic / --emit-source convert layer by layer" in err
    code, _, err = run_cli("caffe2torch", *args, "--emit-source", str(out))
    assert code == 2 and "--emit-source must differ" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.prototxt"]


@pytest.mark.parametrize("name", ["1net", "class"])
def test_bad_class_name(tmp_path, capsys, name):
    root = fixture_path("real", "mtcnn_caffe")
    args = [str(root / "det1.prototxt"), str(root / "det1.caffemodel"), "-o", str(tmp_path / "w.safetensors")]
    code, _, err = run_cli("caffe2torch", *args, "--emit-source", str(tmp_path / "n.py"), "--class-name", name)
    assert code == 2 and "not a Python identifier" in err and not list(tmp_path.iterdir())

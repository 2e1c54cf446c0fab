"""Emitted PyTorch source (``caffe2torch --emit-source``): standalone, readable, ruff-clean, and exact."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from segconvert.converters.caffe_codegen import emit_source
from segconvert.converters.caffe_generic import convert_caffe_generic
from segconvert.graph import load_net
from segconvert.reference_models import capture_outputs
from segconvert.testing import fixture_path, fixtures_required

from .test_generic_caffe import CASES


def _import(path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # a real module: classes pickle, inspect works
    spec.loader.exec_module(module)
    return module


def _emit(tmp_path, parts, class_name="Net"):
    case = fixture_path("caffe", *parts)
    conv = convert_caffe_generic(load_net(case / "net.prototxt", case / "weights.caffemodel"))
    name = "emitted_" + "_".join(parts)
    path = tmp_path / f"{name}.py"
    text = emit_source(conv.config, class_name, source="net.prototxt")
    path.write_text(text)
    model = getattr(_import(path, name), class_name)().eval()
    model.load_state_dict(conv.state_dict)  # strict: the same keys and shapes as CaffeGenericNet
    return case, conv, text, model


@pytest.mark.parametrize("parts", CASES, ids=["/".join(p) for p in CASES])
def test_emitted_source_matches_caffe_at_every_layer(tmp_path, parts):
    case, conv, _, model = _emit(tmp_path, parts)
    meta = json.loads((case / "meta.json").read_text())
    ref = np.load(case / "outputs.npz")
    x = torch.from_numpy(np.load(case / "input.npy"))
    # the generic tap map works on the emitted module: its attributes are the Caffe layers
    out, captured = capture_outputs(model, x, conv.tap_map)
    for layer, tap in conv.tap_map.items():
        want = ref[f"{tap.layer}/{tap.top_index}"]
        assert np.abs(captured[layer].numpy() - want).max() <= 1e-5 * max(np.abs(want).max(), 1e-6), layer
    outs = out if isinstance(out, tuple) else (out,)
    for blob, value in zip(conv.config["outputs"], outs, strict=True):
        last = [f"{lay['name']}/{i}" for lay in meta["layers"] for i, t in enumerate(lay["tops"]) if t == blob][-1]
        assert np.abs(value.numpy() - ref[last]).max() <= 1e-5 * max(np.abs(ref[last]).max(), 1e-6), blob


def test_emitted_files_import_only_torch_and_pass_ruff(tmp_path):
    for parts in CASES:
        case = fixture_path("caffe", *parts)
        conv = convert_caffe_generic(load_net(case / "net.prototxt", case / "weights.caffemodel"))
        text = emit_source(conv.config)
        (tmp_path / f"{'_'.join(parts)}.py").write_text(text)
        roots = set()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                roots.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                roots.add((node.module or "").split(".")[0])
        assert roots == {"torch"}, parts
    ruff = shutil.which("ruff")
    if ruff is None:
        if fixtures_required():
            pytest.fail("ruff is not on PATH")
        pytest.skip("ruff is not on PATH")
    for args in (
        ["check", "--isolated"],  # ruff's default rules
        ["check", "--isolated", "--select", "E,W,F,I,B,UP", "--line-length", "120", "--target-version", "py310"],
        ["format", "--isolated", "--check", "--line-length", "120"],
    ):
        res = subprocess.run([ruff, *args, str(tmp_path)], capture_output=True, text=True, check=False)
        assert res.returncode == 0, res.stdout + res.stderr


def _body(text: str, method: str) -> str:
    return text.split(f"    def {method}(")[-1]


def _flat(text: str) -> str:
    """The source with wrapped calls joined onto one line."""
    return re.sub(r",?\s+\)", ")", re.sub(r"\(\s+", "(", text))


def test_source_is_readable(tmp_path):
    # hyper-parameters are literal and complete (dilation, groups, ceil pooling are visible)
    _, _, text, _ = _emit(tmp_path, ("layers", "conv_dilation3_stride2"))
    assert "self.conv = nn.Conv2d(4, 5, kernel_size=3, stride=2, padding=1, dilation=3, groups=1, bias=True)" in text
    assert "class CaffePool2d" not in text  # helpers only when the net uses them
    _, _, text, _ = _emit(tmp_path, ("layers", "conv_rect"))
    assert "kernel_size=(3, 5), stride=(2, 1), padding=(1, 2)" in text
    _, _, text, _ = _emit(tmp_path, ("layers", "pool_max_k3s2p1"))
    assert 'self.pool = CaffePool2d("max", kernel_size=3, stride=2, pad=1)' in text
    _, _, text, _ = _emit(tmp_path, ("layers", "deconv_bilinear_group"))
    text = _flat(text)
    assert "nn.ConvTranspose2d(4, 4, kernel_size=4, stride=2, padding=1, dilation=1, groups=4, bias=False)" in text
    _, _, text, _ = _emit(tmp_path, ("layers", "interp_pad_neg_zoom2"))
    assert "self.interp = Interp(zoom_factor=2, pad_beg=-1, pad_end=-2)" in text
    _, _, text, _ = _emit(tmp_path, ("layers", "eltwise_sum_coeff"))
    assert 'Eltwise("sum", coeff=(0.5, -1.5))' in text
    # in place: the blob's variable is reassigned; Split is implicit (no statement, no attribute)
    _, _, text, _ = _emit(tmp_path, ("layers", "dropout_inplace"))
    assert "conv = self.conv(data)\n        conv = self.relu(conv)\n        conv = self.drop(conv)\n" in text
    _, _, text, _ = _emit(tmp_path, ("layers", "split_implicit"))
    forward = _body(text, "forward")
    assert "split" not in forward and "sum_ = self.sum(data, conv_b)" in forward  # builtins are not shadowed
    assert "sum2 = self.sum2(sum_, conv_a)" in forward
    _, _, text, _ = _emit(tmp_path, ("layers", "slice_axis1"))
    assert "s0, s1, s2 = self.slice(data)" in text and "Slice(axis=1, points=(1, 3), num_tops=3)" in text
    _, _, text, _ = _emit(tmp_path, ("layers", "innerproduct_axis2"))
    assert "self.ip = nn.Linear(143, 5, bias=True)" in text and "ip = self.ip(data.flatten(2))" in text


def test_mtcnn_source_names_and_class(tmp_path):
    root = fixture_path("real", "mtcnn_caffe")
    conv = convert_caffe_generic(load_net(root / "det2.prototxt", root / "det2.caffemodel"))
    text = emit_source(conv.config, "RNet", weights_file="rnet.safetensors")
    assert "class RNet(nn.Module):" in text and 'load_file("rnet.safetensors")' in text
    assert "self.conv5_1 = nn.Linear(128, 2, bias=True)" in text  # Caffe "conv5-1"
    assert "conv4 = self.conv4(conv3.flatten(1))" in text and "self.conv5_1(conv4)" in text  # already flat
    assert "return conv5_2, prob1" in text  # Caffe's output order (sorted by blob name)
    with pytest.raises(ValueError, match="not a Python identifier"):
        emit_source(conv.config, "1Net")


@pytest.mark.parametrize(
    "name", ["pspnet50_ade20k_473", pytest.param("deeplab_v2_resnet101_msc", marks=pytest.mark.slow)]
)
def test_emitted_networks_match_caffe(tmp_path, name):
    case, conv, text, model = _emit(tmp_path, (name,))
    meta = json.loads((case / "meta.json").read_text())
    final = meta["layers"][-1]["name"] + "/0"
    entry = next(o for o in meta["outputs"] if o["key"] == final)
    with torch.no_grad():
        out = model(torch.from_numpy(np.load(case / "input.npy"))).numpy()
    if entry["stored"] == "sampled":
        out = out[np.ix_(*entry["index"])]
    assert np.abs(out - np.load(case / "outputs.npz")[final]).max() <= 2e-3 * entry["stats"]["absmax"]
    if name.endswith("msc"):  # shared weights: the copies call the owner's attribute, no attribute of their own
        assert "self.conv1(data_res075)" in text and "self.conv1_res075 =" not in text


def test_emitted_pooling_clip_rule_on_both_axes(tmp_path):
    proto = tmp_path / "net.prototxt"  # as test_generic_caffe's hand case: 3x12 -> 3x4, not 3x5
    proto.write_text(
        'name: "t"\ninput: "data"\ninput_dim: 1\ninput_dim: 1\ninput_dim: 3\ninput_dim: 12\n'
        'layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: AVE kernel_h: 3 kernel_w: 2'
        " stride_h: 1 stride_w: 3 pad_h: 1 pad_w: 0 } }\n"
    )
    conv = convert_caffe_generic(load_net(proto))
    path = tmp_path / "pool_emitted.py"
    path.write_text(emit_source(conv.config))
    model = _import(path, "pool_emitted").Net()
    x = torch.arange(36, dtype=torch.float32).reshape(1, 1, 3, 12)
    out = model(x)
    assert out.shape == (1, 1, 3, 4)
    # AVE divides by the window clipped to H + pad = 4: rows [-1, 2) count 3 cells (one of padding), times 2 columns
    assert out[0, 0, 0, 0] == (x[0, 0, 0:2, 0:2].sum() / 6)
    torch.testing.assert_close(out, conv.build_model()(x))

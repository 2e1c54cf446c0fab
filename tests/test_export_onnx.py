"""ONNX export: Caffe-exact pooling and Interp in the graph, fixture nets in onnxruntime, dynamic sizes,
external data, atomic writes, and the ``export-onnx`` command."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from segconvert.commands.convert_caffe import caffe_preprocessing
from segconvert.converters import convert_caffe_net
from segconvert.export import onnx as onnx_export
from segconvert.export.onnx import ExportError, check_onnx, export_onnx, pool_plan
from segconvert.fileio import umask_mode
from segconvert.graph import load_net
from segconvert.graph.shapes import pool_geometry
from segconvert.parity.inputs import preprocess, synthetic_image
from segconvert.reference_models.ops import CaffePool2d
from segconvert.testing import fixture_path
from tests.caffe_cases import POOL_CASES

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _run(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: np.ascontiguousarray(x, np.float32)})[0]


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _pool_module(case: str) -> tuple[nn.Module, np.ndarray, np.ndarray]:
    d = fixture_path("caffe", "layers", case)
    x = np.load(d / "input.npy")
    layer = load_net(d / "net.prototxt").layer("pool")
    p = layer.param.pooling_param
    geo = pool_geometry(p, tuple(x.shape[2:]))
    mode = "max" if p.pool == 0 else "ave"
    pool = CaffePool2d(mode, geo["kernel"], geo["stride"], geo["pad"], global_pooling=p.global_pooling)
    return nn.Sequential(pool), x, np.load(d / "outputs.npz")["pool/0"]


@pytest.mark.parametrize("case", POOL_CASES)
def test_caffe_pooling_fixtures_exact_in_onnxruntime(case, tmp_path):
    model, x, ref = _pool_module(case)
    for dynamic in (False, True):
        res = export_onnx(model, tmp_path / "pool.onnx", x.shape, dynamic=dynamic)
        out = _run(res.path, x)
        assert out.shape == ref.shape
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6 * max(1.0, np.abs(ref).max()))
        graph = onnx.load(str(res.path)).graph
        pools = [n for n in graph.node if n.op_type in ("MaxPool", "AveragePool")]
        if "global" in case:
            assert not pools and res.pooling == {"global": 1}
            continue
        (node,) = pools
        a = _attrs(node)
        assert node.op_type == ("MaxPool" if "max" in case else "AveragePool")
        if node.op_type == "AveragePool":
            assert a["count_include_pad"] == 1
        if dynamic or not case.endswith("_clip"):
            assert a["ceil_mode"] == 1  # Caffe rounds up
        else:  # Caffe's clip rule: floor gives its size, and ONNX shape inference then agrees with onnxruntime
            assert a["ceil_mode"] == 0
            inferred = onnx.shape_inference.infer_shapes(onnx.load(str(res.path))).graph.output[0]
            assert [d.dim_value for d in inferred.type.tensor_type.shape.dim] == list(ref.shape)
        assert not [n for n in graph.node if n.op_type == "Pad"]


def test_pool_plan_rules():
    assert pool_plan((11, 13), (2, 2), (2, 2), (1, 1)) == "floor"  # clip case on both axes
    assert pool_plan((11, 13), (2, 2), (2, 2), (0, 0)) == "ceil"
    assert pool_plan((60, 60), (10, 10), (10, 10), (0, 0)) == "ceil"  # PSPNet pyramid pooling
    assert pool_plan((9, 9), (3, 3), (1, 1), (2, 2)) == "explicit"  # pad > kernel/2: PyTorch cannot
    assert pool_plan((8, 9), (3, 3), (3, 3), (1, 1)) == "explicit"  # clip on H, ceil needed on W


def test_pooling_geometries_against_the_eager_caffe_module(tmp_path):
    """Many geometries (all three plans) in onnxruntime, static and dynamic, against CaffePool2d."""
    rng = np.random.default_rng(0)
    plans = set()
    for mode in ("max", "ave"):
        for k, s, p in [
            (2, 2, 1),
            (3, 2, 1),
            (3, 1, 2),
            (4, 3, 0),
            (4, 3, 2),
            (5, 3, 2),
            (5, 2, 4),
            (3, 3, 1),
            (4, 3, 2),
        ]:
            for h, w in [(7, 8), (8, 9), (6, 13)]:
                model = nn.Sequential(CaffePool2d(mode, k, s, p))
                x = torch.from_numpy(rng.normal(size=(1, 2, h, w)).astype("f4"))
                plans.add(pool_plan((h, w), (k, k), (s, s), (p, p)))
                res = export_onnx(model, tmp_path / "p.onnx", x.shape)
                np.testing.assert_allclose(_run(res.path, x.numpy()), model(x).numpy(), atol=1e-6)
                if p <= k // 2 and not (p == 0 and s > k):
                    res = export_onnx(model, tmp_path / "d.onnx", x.shape, dynamic=True)
                    x2 = torch.from_numpy(rng.normal(size=(2, 2, h + 3, w + 6)).astype("f4"))
                    np.testing.assert_allclose(_run(res.path, x2.numpy()), model(x2).numpy(), atol=1e-6)
    assert plans == {"ceil", "floor", "explicit"}


def test_without_the_export_twins_caffe_ave_pooling_exports_wrong(tmp_path, monkeypatch):
    """Why the twins exist: the eager module's ``divisor_override`` is silently dropped by the exporter."""
    model = nn.Sequential(CaffePool2d("ave", 3, 2, 1))
    x = torch.randn(1, 2, 9, 9)
    monkeypatch.setattr(onnx_export, "_export_twins", lambda *a, **k: contextlib.nullcontext())
    res = export_onnx(model, tmp_path / "bad.onnx", x.shape)
    assert not np.allclose(_run(res.path, x.numpy()), model(x).numpy(), atol=1e-3)


# --------------------------------------------------------------------------------------- fixture nets

NETS = ["pspnet50_ade20k_473", "deeplab_v2_resnet101_single"]
SLOW_NETS = ["deeplab_v2_resnet101_msc", "pspnet101_voc2012_473", "pspnet101_cityscapes_713"]
_MODELS: dict[str, tuple] = {}


def _converted(case: str):
    if case not in _MODELS:
        d = fixture_path("caffe", case)
        net = load_net(d / "net.prototxt", d / "weights.caffemodel")
        conv = convert_caffe_net(net)
        _MODELS[case] = (d, net, conv.arch, conv.build_model())
    return _MODELS[case]


def _fixture_net_export(case: str, tmp_path) -> None:
    d, net, arch, model = _converted(case)
    x = np.load(d / "input.npy")
    res = export_onnx(model, tmp_path / f"{case}.onnx", x.shape)
    graph = onnx.load(str(res.path)).graph
    nodes = {}
    for n in graph.node:
        nodes.setdefault(n.op_type, []).append(n)
    # Interp -> Resize(align_corners, linear), one per Interp that changes the size; no other resampling
    interps = [layer for layer in net.layers if layer.type == "Interp"]
    resizing = [layer for layer in interps if layer.output_shapes[0] != net.blob_shapes.get(layer.bottoms[0])]
    assert len(nodes.get("Resize", [])) == len(resizing) > 0
    for n in nodes["Resize"]:
        a = _attrs(n)
        assert a["coordinate_transformation_mode"] == b"align_corners" and a["mode"] == b"linear"
    assert not {"Upsample", "GlobalAveragePool", "Pad"} & set(nodes)
    # Caffe ceil pooling as ceil_mode pooling; PSPNet's pyramid pooling stays fixed-kernel AveragePool
    (stem,) = [n for n in nodes["MaxPool"] if "stem" in n.name] if arch.startswith("psp") else nodes["MaxPool"][:1]
    assert _attrs(stem)["ceil_mode"] == 1 and _attrs(stem)["kernel_shape"] == [3, 3]
    if arch.startswith("pspnet"):
        feat = net.blob_shapes["conv5_3"][2]
        kernels = sorted(_attrs(n)["kernel_shape"][0] for n in nodes["AveragePool"])
        assert kernels == sorted(feat // b for b in (1, 2, 3, 6))
        for n in nodes["AveragePool"]:
            a = _attrs(n)
            assert a["strides"] == a["kernel_shape"] and a["ceil_mode"] == 1 and a["count_include_pad"] == 1
            assert a.get("pads", [0, 0, 0, 0]) == [0, 0, 0, 0]
    # numbers: onnxruntime against PyTorch (fixture input)
    check = check_onnx(res.path, model, x)
    assert check.ok, check.format()
    if check.float32_floor is None:
        assert check.rel <= 1e-4
    else:  # over 1e-4: the net amplifies float32 rounding; onnxruntime is no further from fp64 than PyTorch fp32
        assert check.rel_to_float64 <= check.float32_floor, check.format()
    # and against real Caffe's last layer (fixtures README: 2e-3 x absmax for two correct float32 runs)
    last = net.layers[-1].name
    import json

    entry = next(o for o in json.loads((d / "meta.json").read_text())["outputs"] if o["key"] == f"{last}/0")
    ours = _run(res.path, x)
    if entry["stored"] == "sampled":
        ours = ours[np.ix_(*entry["index"])]
    assert np.max(np.abs(ours - np.load(d / "outputs.npz")[f"{last}/0"])) <= 2e-3 * entry["stats"]["absmax"]


@pytest.mark.parametrize("case", NETS)
def test_fixture_net_exports_exactly(case, tmp_path):
    _fixture_net_export(case, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_NETS)
def test_fixture_net_exports_exactly_slow(case, tmp_path):
    _fixture_net_export(case, tmp_path)


def _image(h: int, w: int, arch: str, n: int = 1) -> np.ndarray:
    pre = caffe_preprocessing(arch)
    return np.concatenate([preprocess(synthetic_image(h, w, seed=i), pre) for i in range(n)])


def test_dynamic_deeplab_runs_at_other_sizes(tmp_path):
    d, net, arch, model = _converted("deeplab_v2_resnet101_single")
    res = export_onnx(model, tmp_path / "dyn.onnx", (1, 3, 97, 97), dynamic=True)
    assert res.checked_sizes == [(2, 3, 129, 129)]
    dims = onnx.load(str(res.path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]
    for h, w, n in [(97, 97, 1), (105, 121, 2), (65, 89, 1)]:
        check = check_onnx(res.path, model, _image(h, w, arch, n))
        assert check.ok and check.shape == [n, 21, h, w], check.format()


@pytest.mark.slow
def test_dynamic_deeplab_msc(tmp_path):
    d, net, arch, model = _converted("deeplab_v2_resnet101_msc")
    res = export_onnx(model, tmp_path / "dyn.onnx", (1, 3, 129, 129), dynamic=True)
    check = check_onnx(res.path, model, _image(161, 193, arch))
    assert check.ok, check.format()


def test_dynamic_refused_for_fixed_psp_kernels(tmp_path):
    _, _, _, model = _converted("pspnet50_ade20k_473")
    with pytest.raises(ExportError, match="fixed pyramid-pooling kernels"):
        export_onnx(model, tmp_path / "psp.onnx", (1, 3, 473, 473), dynamic=True)
    adaptive = type(model)(**{**model.config, "ppm_mode": "adaptive"})
    with pytest.raises(ExportError, match="adaptive pooling"):
        export_onnx(adaptive, tmp_path / "psp.onnx", (1, 3, 473, 473), dynamic=True)
    assert list(tmp_path.iterdir()) == []


def test_external_data_and_atomic_writes(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 4, 1), CaffePool2d("max", 3, 2, 1))
    x = torch.randn(1, 3, 17, 17)
    res = export_onnx(model, tmp_path / "m.onnx", x.shape, external_data_threshold=1000)
    assert res.data_path == tmp_path / "m.onnx.data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    proto = onnx.load(str(res.path), load_external_data=False)
    big = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert big and all(e.value == "m.onnx.data" for t in big for e in t.external_data if e.key == "location")
    assert res.data_path.stat().st_size >= sum(4 * p.numel() for p in model[0].parameters() if p.numel() >= 256)
    np.testing.assert_allclose(_run(res.path, x.numpy()), model(x).detach().numpy(), atol=1e-5)
    # under the threshold: one self-contained file
    res = export_onnx(model, tmp_path / "n.onnx", x.shape)
    assert res.data_path is None and not (tmp_path / "n.onnx.data").exists()
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in onnx.load(str(res.path)).graph.initializer)


def test_generic_caffe_nets_real_mtcnn(tmp_path):
    """Real third-party nets through the generic path: several outputs (det3), dynamic sizes (PNet, det1)."""
    from segconvert.converters.caffe_generic import convert_caffe_generic

    d = fixture_path("real", "mtcnn_caffe")
    rng = np.random.default_rng(0)
    for name, shape, dynamic in [("det3", (1, 3, 48, 48), False), ("det1", (1, 3, 12, 12), True)]:
        model = convert_caffe_generic(load_net(d / f"{name}.prototxt", d / f"{name}.caffemodel")).build_model()
        res = export_onnx(model, tmp_path / f"{name}.onnx", shape, dynamic=dynamic)
        sizes = [shape, (3, 3, 40, 52)] if dynamic else [shape]
        for size in sizes:
            x = ((rng.uniform(0, 255, size) - 127.5) / 128).astype("f4")
            check = check_onnx(res.path, model, x)
            assert check.ok and check.rel <= 1e-4, check.format()
        outputs = onnx.load(str(res.path)).graph.output
        assert len(outputs) == len(model.output_names)


class _Broken(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


def test_failures_are_typed_and_leave_nothing(tmp_path):
    with pytest.raises(ExportError, match="boom"):
        export_onnx(_Broken(), tmp_path / "b.onnx", (1, 3, 8, 8))
    with pytest.raises(ExportError, match="opset"):
        export_onnx(nn.ReLU(), tmp_path / "b.onnx", (1, 3, 8, 8), opset=9)
    with pytest.raises(ExportError, match="N,C,H,W"):
        export_onnx(nn.ReLU(), tmp_path / "b.onnx", (3, 8))  # N, C and at least one more axis (N,C,L for 1-D)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "b.onnx").write_bytes(b"not onnx")
    with pytest.raises(ExportError, match="onnxruntime cannot run"):
        check_onnx(tmp_path / "b.onnx", nn.ReLU(), np.zeros((1, 3, 4, 4), "f4"))


# ---------------------------------------------------------------------------------------------- CLI


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "segconvert.cli", *args], capture_output=True, text=True, timeout=600, check=False
    )


@pytest.fixture(scope="module")
def psp_weights(tmp_path_factory):
    from segconvert.commands.convert_caffe import convert_caffe_files

    d = fixture_path("caffe", "pspnet50_ade20k_473")
    out = tmp_path_factory.mktemp("w") / "psp.safetensors"
    convert_caffe_files(d / "net.prototxt", d / "weights.caffemodel", out)
    return out


def test_cli_exports_and_checks(psp_weights, tmp_path):
    res = _cli("export-onnx", str(psp_weights), "-o", str(tmp_path / "psp.onnx"), "--opset", "18")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "opset 18" in res.stdout and "5 Resize (align_corners)" in res.stdout
    assert "1 MaxPool + 4 AveragePool" in res.stdout
    line = next(li for li in res.stdout.splitlines() if li.startswith("onnxruntime"))
    assert line.endswith("-> OK") and "relative" in line
    assert onnx.load(str(tmp_path / "psp.onnx")).opset_import[0].version == 18


def test_cli_errors_are_one_line(psp_weights, tmp_path):
    for args, fragment in [
        (["--dynamic"], "fixed pyramid-pooling kernels"),
        (["--opset", "9"], "opset must be in 11..20"),
        (["--input-size", "0", "5"], "must be positive"),
    ]:
        res = _cli("export-onnx", str(psp_weights), "-o", str(tmp_path / "x.onnx"), *args)
        assert res.returncode == 2 and fragment in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    res = _cli("export-onnx", str(bad), "-o", str(tmp_path / "x.onnx"))
    assert res.returncode == 2 and "bad.safetensors" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_cli_exit_1_when_over_tolerance(tmp_path, monkeypatch, capsys):
    """A wrong export (twins disabled: Caffe AVE pooling averaged twice) fails the command's own check, exit 1,
    and no .onnx is left on disk. The model: the generic conversion of a one-layer Caffe fixture (AVE k3 s2 p1)."""
    from segconvert.cli import main
    from segconvert.converters.caffe_generic import convert_caffe_generic
    from segconvert.weights.store import save_converted

    d = fixture_path("caffe", "layers", "pool_ave_k3s2p1_pad")
    conv = convert_caffe_generic(load_net(d / "net.prototxt", d / "weights.caffemodel"))
    meta = {"arch": conv.arch, "config": conv.config, "input_size": None, "preprocessing": None}
    weights = save_converted(tmp_path / "pool.safetensors", conv.state_dict, meta)
    main(["export-onnx", str(weights), "-o", str(tmp_path / "good.onnx")])  # returns: exit status 0
    assert capsys.readouterr().out.rstrip().endswith("-> OK")
    monkeypatch.setattr(onnx_export, "_export_twins", lambda *a, **k: contextlib.nullcontext())
    with pytest.raises(SystemExit) as exc:
        main(["export-onnx", str(weights), "-o", str(tmp_path / "bad.onnx")])
    assert exc.value.code == 1
    out = capsys.readouterr().out
    assert "-> FAILED" in out and "not written" in out
    assert "the graph as written (onnxruntime optimizations off)" in out  # the fault is in the graph itself
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.onnx", "pool.safetensors", "pool.safetensors.json"]


def test_mixed_padding_pooling_exports_with_caffe_clip_on_both_axes(tmp_path):
    """pad_h 1, pad_w 0, kernel_w 2 < stride_w 3, W = 12: Caffe keeps 4 columns (clip on both axes)."""
    model = nn.Sequential(CaffePool2d("max", (3, 2), (2, 3), (1, 0))).eval()
    x = torch.randn(1, 2, 7, 12)
    assert tuple(model(x).shape[-2:]) == (4, 4)
    import onnxruntime as ort

    for dynamic in (False, True):  # padded on H, so ceil_mode's clip equals Caffe's on W at every size
        out = export_onnx(model, tmp_path / f"pool{dynamic}.onnx", (1, 2, 7, 12), dynamic=dynamic).path
        assert (out.stat().st_mode & 0o777) == umask_mode()  # not mkstemp's 0600
        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        for w in (12, 13) if dynamic else (12,):
            xw = torch.randn(1, 2, 7, w)
            np.testing.assert_array_equal(sess.run(None, {"input": xw.numpy()})[0], model(xw).numpy())


def test_the_pinned_onnx_writes_what_the_pinned_onnxruntime_loads():
    """A model built with onnx's own defaults (its newest IR and opset) loads and runs in onnxruntime."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"x": np.array([-1.0, 2.0], np.float32)})[0]
    assert out.tolist() == [0.0, 2.0]

"""``export-onnx`` on every converted family, at two input sizes each, through the command and onnxruntime:
Caffe named (DeepLab-v2) and generic (MTCNN), TF-Slim resnet_v1 at output stride 8 and 16 at odd and even sizes,
the three TF PSPNet layouts (PSPNet-TF-Reproduce, fast-semantic-segmentation, hellochick / PSPNet-Keras at two
crops) -- plus the command's own rules: nothing written on a failed check, one-line refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from segconvert.testing import fixture_path
from segconvert.weights.inputs import input_specs
from tests.cli_runner import run_cli

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _convert(tmp_path_factory, *args) -> object:
    out = tmp_path_factory.mktemp("w") / "model.safetensors"
    res = run_cli(*args, "-o", out)
    assert res.returncode == 0, res.stdout + res.stderr
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Each family's converted file, written by its converter command, made lazily (name -> path)."""
    cache: dict[str, object] = {}
    tf, caffe, keras = fixture_path("tf"), fixture_path("caffe"), fixture_path("keras", "pspnet_keras_style")
    recipes = {
        "caffe_deeplab": lambda: ("caffe2torch", *(caffe / "deeplab_v2_resnet101_single" / f for f in FILES)),
        "caffe_generic": lambda: (
            "caffe2torch",
            *(fixture_path("real", "mtcnn_caffe") / f"det1.{e}" for e in ("prototxt", "caffemodel")),
        ),
        "slim_os8": lambda: ("slim2torch", tf / "slim_resnet_v1_50_os8" / "model.ckpt", "--output-stride", "8"),
        "slim_os16": lambda: ("slim2torch", tf / "slim_resnet_v1_101_os16" / "model.ckpt", "--output-stride", "16"),
        "psp_tf_reproduce": lambda: (
            "slim2torch",
            tf / "pspnet_slim_psp_head" / "model.ckpt",
            "--stride-in",
            "3x3_last",
        ),
        "pspnet_keras_473": lambda: ("keras2torch", keras / "weights.h5"),
        "pspnet_keras_137": lambda: ("keras2torch", keras / "weights.h5", "--input-size", "137"),
        "pspnet_keras_89": lambda: ("keras2torch", keras / "weights.h5", "--input-size", "89"),
    }

    def get(name: str):
        if name not in cache:
            make = _fast_semantic if name == "fast_semantic" else lambda f: _convert(f, *recipes[name]())
            cache[name] = make(tmp_path_factory)
        return cache[name]

    return get


FILES = ("net.prototxt", "weights.caffemodel")


def _fast_semantic(tmp_path_factory):
    """fast-semantic-segmentation's PSPNet layout (TF VALID pyramid pooling, ReLU6, rates 4/16) as slim2torch
    writes it: the converter's config, width-reduced, random weights (no checkpoint fixture of that project)."""
    from segconvert.converters.slim import PSPMODULE_BINS, PSPMODULE_DILATIONS, PSPMODULE_PREPROCESSING
    from segconvert.reference_models import create_model
    from segconvert.weights.store import save_converted

    torch.manual_seed(0)
    model = create_model(
        "pspnet50", depth=50, stem="7x7", stride_in="3x3_last", padding="tf_same", stem_widths=[64],
        widths=[8, 16, 32, 64], out_widths=[32, 64, 128, 256], output_stride=8, dilations=PSPMODULE_DILATIONS,
        num_classes=5, input_size=None, ppm_bins=PSPMODULE_BINS, ppm_mode="tf_valid", ppm_width=16, head_width=16,
        resize="align_corners", head_act="relu6",
    )  # fmt: skip
    meta = {"arch": "pspnet50", "config": model.config, "input_size": None, "preprocessing": PSPMODULE_PREPROCESSING}
    return save_converted(tmp_path_factory.mktemp("w") / "fss.safetensors", model.state_dict(), meta)


# family -> two input sizes (None: the size the converted file records)
CASES = {
    "caffe_deeplab": [(65, 65), (49, 57)],  # DeepLab-v2 is defined at 8k+1
    "caffe_generic": [None, (40, 52)],
    "slim_os8": [(321, 321), (97, 101)],
    "slim_os16": [(96, 96), (97, 101)],
    "psp_tf_reproduce": [(97, 97), (96, 104)],
    "fast_semantic": [(161, 137), (96, 100)],
    # fixed pyramid-pooling kernels: each conversion is defined at its crop only, so the two sizes are two
    # conversions of the fixture's weights (89 and 137: hellochick's PSPNet-tensorflow crops them likewise)
    "pspnet_keras_89": [None],
    "pspnet_keras_137": [None],
}
PARAMS = [(f, s) for f, sizes in CASES.items() for s in sizes]


@pytest.mark.parametrize("family,size", PARAMS, ids=[f"{f}-{'x'.join(map(str, s)) if s else 'own'}" for f, s in PARAMS])
def test_family_round_trips_through_export_onnx(family, size, converted, tmp_path):
    weights = converted(family)
    meta = json.loads(open(f"{weights}.json").read())
    out = tmp_path / "m.onnx"
    res = run_cli("export-onnx", weights, "-o", out, *(("--input-size", *size) if size else ()))
    assert res.returncode == 0, res.stdout + res.stderr
    check_line = next(li for li in res.stdout.splitlines() if li.startswith("onnxruntime "))
    assert check_line.endswith("-> OK"), res.stdout
    (inp,) = onnx.load(str(out)).graph.input
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    want = list(size) if size else list(input_specs(meta)[0].shape[2:])
    assert dims[1:] == [3, *want]
    assert inp.name == input_specs(meta)[0].name  # the net's input name ("data" for Caffe), not a fixed one


@pytest.mark.slow
def test_pspnet_keras_at_its_473_crop(converted, tmp_path):
    """The issue's case: keras2torch of the fixture, export-onnx at its 473 input (onnxruntime refused the file)."""
    res = run_cli("export-onnx", converted("pspnet_keras_473"), "-o", tmp_path / "k.onnx")
    assert res.returncode == 0 and "input input 1x3x473x473" in res.stdout, res.stdout + res.stderr
    assert next(li for li in res.stdout.splitlines() if li.startswith("onnxruntime ")).endswith("-> OK")


def test_fast_semantic_graph_as_written_is_float32_exact(converted, tmp_path):
    """The random-weight fast-semantic-segmentation layout at 161x137 amplifies rounding: onnxruntime's default
    session (BN folded into convolutions in float32) lands 1.7e-4 from PyTorch, over the 1e-4 tolerance. The
    exported graph itself, run with onnxruntime's optimizations off, is no further from PyTorch float64 than
    PyTorch's own float32 is -- the export is exact and the command accepts it, saying why."""
    from segconvert.export.onnx_check import check_onnx
    from segconvert.weights.inputs import synthetic_inputs
    from segconvert.weights.store import load_model

    weights = converted("fast_semantic")
    res = run_cli("export-onnx", weights, "-o", tmp_path / "m.onnx", "--input-size", "161", "137")
    assert res.returncode == 0, res.stdout + res.stderr
    model = load_model(weights)
    check = check_onnx(tmp_path / "m.onnx", model, synthetic_inputs(input_specs(model.segconvert_meta), (161, 137)))
    assert check.ok, check.format()
    if check.unoptimized_rel is not None:  # the optimized session was over both float32 rules
        assert check.unoptimized_to_float64 <= check.float32_floor, check.format()
        assert check.rel <= 10 * check.tolerance and "the graph as written is exact" in res.stdout, res.stdout


def test_caffe_input_names_kept(converted):
    meta = json.loads(open(f"{converted('caffe_deeplab')}.json").read())
    assert [(i["name"], i["shape"], i["kind"]) for i in meta["inputs"]] == [("data", [1, 3, 97, 97], "image")]
    assert meta["inputs"][0]["preprocessing"]["channel_order"] == "BGR"


# ------------------------------------------------------------------------------------ the command's rules


def test_dynamic_on_a_tf_model_gives_the_real_refusal_first(converted, tmp_path):
    res = run_cli("export-onnx", converted("slim_os8"), "-o", tmp_path / "d.onnx", "--dynamic")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "TF SAME padding" in res.stderr and "--input-size" not in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_and_foreign_inputs_are_one_line(converted, tmp_path):
    weights = converted("slim_os8")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for target in ("/sys/segconvert-test.onnx", str(blocker / "m.onnx")):
        res = run_cli("export-onnx", weights, "-o", target, "--input-size", 33, 33)
        assert res.returncode == 2 and target in res.stderr and "Traceback" not in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    caffemodel = fixture_path("real", "mtcnn_caffe") / "det1.caffemodel"
    res = run_cli("export-onnx", caffemodel, "-o", tmp_path / "m.onnx")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "caffemodel" in res.stderr and "caffe2torch" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_progress_lines_on_big_models(converted, tmp_path, monkeypatch):
    from segconvert.commands import export

    monkeypatch.setattr(export, "BIG_MODEL_BYTES", 0)
    res = run_cli("export-onnx", converted("slim_os8"), "-o", tmp_path / "m.onnx", "--input-size", 33, 33)
    assert res.returncode == 0, res.stderr
    stages = [li for li in res.stderr.splitlines() if li.startswith("export-onnx: ")]
    assert [s.split()[1] for s in stages] == ["tracing", "comparing", "writing"], res.stderr


def test_verify_onnx_at_another_size_says_so(converted, tmp_path):
    """An ONNX file exported for 97x101 checked at 65x65: the report names the size, not the preprocessing."""
    weights = converted("slim_os8")
    out = tmp_path / "m.onnx"
    assert run_cli("export-onnx", weights, "-o", out, "--input-size", 97, 101).returncode == 0
    res = run_cli("verify", weights, "--onnx", out, "--input-size", 65, 65)
    assert res.returncode == 1
    assert "the ONNX graph takes input 1x3x97x101, the check input is 1x3x65x65" in res.stdout, res.stdout
    assert "BGR" not in res.stdout and "preprocessing" not in res.stdout
    res = run_cli("verify", weights, "--onnx", out, "--input-size", 97, 101)
    assert res.returncode == 0 and "result: OK" in res.stdout, res.stdout


def test_onnx_row_failures_do_not_blame_preprocessing():
    from segconvert.parity.report import LayerParity, ParityReport

    rep = ParityReport("onnxruntime")
    rep.rows.append(LayerParity("output", "ONNX", [1, 5, 41, 41], np.inf, 0.0, np.inf, 0.0, 1e-4, False,
                                "output shapes [[1, 5, 40, 40]] vs PyTorch [[1, 5, 41, 41]]"))  # fmt: skip
    assert "input size" in rep.likely_cause() and "BGR" not in rep.likely_cause()
    rep.rows[0] = LayerParity("output", "ONNX", [1, 5, 41, 41], 1.0, 2.0, 0.5, 0.9, 1e-4, False)
    assert "BGR" not in rep.likely_cause() and "export" in rep.likely_cause()

"""``segconvert verify`` on a TF-Slim checkpoint runs the checkpoint's own tf_slim graph in TensorFlow."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segconvert.weights.store import read_metadata, save_converted
from tests.cli_runner import run_cli

pytest.importorskip("tensorflow")
pytest.importorskip("tf_slim")


@pytest.fixture(scope="module")
def slim50(tmp_path_factory):
    """A random full-width TF-Slim resnet_v1_50 (output_stride 16) saved by TF's Saver, converted by slim2torch."""
    from segconvert.commands.convert_tf import convert_slim_files
    from segconvert.parity.tf_runtime import import_slim
    from tests.test_converters_slim import _load_all, _random_value

    tf, slim, resnet_v1 = import_slim()
    d = tmp_path_factory.mktemp("slim50")
    rng = np.random.default_rng(5)
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, 65, 65, 3])
        with slim.arg_scope(resnet_v1.resnet_arg_scope()):  # tf_slim's own resnet_v1_50 definition
            resnet_v1.resnet_v1_50(x, num_classes=None, is_training=False, global_pool=False, output_stride=16)
        with tf.compat.v1.Session(graph=g) as sess:
            variables = tf.compat.v1.global_variables()
            _load_all(sess, variables, lambda v: _random_value(v.op.name, v.shape.as_list(), rng))
            tf.compat.v1.train.Saver(variables).save(sess, str(d / "model.ckpt"), write_meta_graph=False)
    weights = d / "slim.safetensors"
    convert_slim_files(d / "model.ckpt", weights, output_stride=16)
    return d / "model.ckpt", weights


@pytest.mark.parity
@pytest.mark.filterwarnings("ignore:`layer.apply` is deprecated")
def test_verify_runs_the_slim_graph(slim50, tmp_path):
    ckpt, weights = slim50
    code, text, _ = run_cli("verify", weights, ckpt, "--input-size", "65", "65", "--json")
    assert code == 0, text[-3000:]
    out = json.loads(text)
    graph = next(r for r in out["runtimes"] if r["name"] == "tensorflow (graph)")
    tensors = next(r for r in out["runtimes"] if r["name"] == "tensorflow")
    assert graph["used"] and tensors["used"] and graph["version"] == tensors["version"]
    rows = graph["report"]["layers"]
    names = [r["name"] for r in rows]
    assert len(rows) > 20 and int(graph["what"].split()[0]) == len(rows)
    assert names[0] == "resnet_v1_50/conv1" and "resnet_v1_50/block3" in names and names[-1] == "net"
    assert all(r["ok"] for r in rows)
    # tolerance grows from 1e-4 (first layer) to the default 2e-3 (last)
    assert rows[0]["tolerance"] == pytest.approx(1e-4) and rows[-1]["tolerance"] == pytest.approx(2e-3)
    # only parameter-free identity shortcuts lack an end-point, and they are not reported as unchecked
    assert out["unchecked_layers"] == []
    assert "tf_slim resnet_v1 graph" in graph["report"]["source"]


@pytest.mark.parity
@pytest.mark.filterwarnings("ignore:`layer.apply` is deprecated")
def test_corrupted_bn_mean_fails_at_that_layer(slim50, tmp_path):
    ckpt, weights = slim50
    from safetensors.torch import load_file

    state = {k: v.clone() for k, v in load_file(str(weights)).items()}
    state["layer2.1.bn1.running_mean"][3] += 1.0
    bad = save_converted(tmp_path / "bad.safetensors", state, read_metadata(weights))
    code, text, _ = run_cli("verify", bad, ckpt, "--input-size", "65", "65", "--json")
    assert code == 1
    out = json.loads(text)
    graph = next(r for r in out["runtimes"] if r["name"] == "tensorflow (graph)")
    rows = graph["report"]["layers"]
    first_bad = next(r for r in rows if not r["ok"])
    assert first_bad["name"] == "resnet_v1_50/block2/unit_2/bottleneck_v1/conv1"
    before = rows[: rows.index(first_bad)]
    assert len(before) > 10 and all(r["ok"] for r in before)
    after = rows[rows.index(first_bad) + 1]  # the error propagates into the next conv
    assert after["name"] == "resnet_v1_50/block2/unit_2/bottleneck_v1/conv2" and not after["ok"]
    # the checkpoint-tensor check names the corrupted tensor itself
    assert out["first_failure"]["layer"] == "layer2.1.bn1.running_mean"
    code, text, _ = run_cli("verify", bad, ckpt, "--input-size", "65", "65")
    assert code == 1 and "tensorflow (graph)" in text and "result: FAILED" in text
    assert "resnet_v1_50/block2/unit_2/bottleneck_v1/conv1" in text


@pytest.mark.parity
def test_layout_without_graph_builder_says_so(slim50, tmp_path):
    """A holyseven-style conversion on an input that is not a multiple of 8: the graph runtime says why not."""
    ckpt, weights = slim50
    from segconvert.parity.tf_runtime import graph_unsupported

    meta = read_metadata(weights)
    assert graph_unsupported("resnet", meta["config"], {"s/conv1": "stem.relu1"}, (65, 65)) is None
    other = {**meta["config"], "stride_in": "3x3"}
    assert "first unit" in graph_unsupported("resnet", other, {"s/conv1": "stem.relu1"}, (65, 65))
    psp = {"s/conv1": "backbone.stem.relu1", "s/psp/concat": "ppm"}
    assert "multiple of 8" in graph_unsupported("pspnet50", other, psp, (65, 65))


@pytest.mark.parity
@pytest.mark.filterwarnings("ignore:`layer.apply` is deprecated")
def test_psp_head_fixture_runs_backbone_and_head(tmp_path):
    """The TF-written PSPNet-TF-Reproduce head fixture (slim backbone): backbone and head end-points are run."""
    from segconvert.commands.convert_tf import convert_slim_files
    from segconvert.testing import fixture_path

    ckpt = fixture_path("tf", "pspnet_slim_psp_head") / "model.ckpt"
    weights = tmp_path / "psp.safetensors"
    convert_slim_files(ckpt, weights, stride_in="3x3_last")
    code, text, _ = run_cli("verify", weights, ckpt, "--input-size", "97", "97", "--json")
    assert code == 0, text[-3000:]
    graph = next(r for r in json.loads(text)["runtimes"] if r["name"] == "tensorflow (graph)")
    names = [r["name"] for r in graph["report"]["layers"]]
    assert "psp head" in graph["report"]["source"]
    for key in ("resnet_v1_50/psp/pool6/avg_pool", "resnet_v1_50/psp/concat", "resnet_v1_50/logits"):
        assert key in names
    assert names[-1] == "resnet_v1_50/up_sample" and names.index("net") < names.index("resnet_v1_50/psp/concat")


@pytest.mark.parity
@pytest.mark.filterwarnings("ignore:`layer.apply` is deprecated")
@pytest.mark.parametrize("project", ["holyseven", "oandrienko"])
def test_pspnet_project_graphs(project, tmp_path):
    """PSPNet-TF-Reproduce (own backbone) and fast-semantic-segmentation checkpoints: verify runs their graphs."""
    from segconvert.commands.convert_tf import convert_slim_files
    from segconvert.parity.tf_runtime import holyseven_graph, import_slim, oandrienko_graph
    from tests.test_converters_slim import _oandrienko_value, _random_value, _run_and_save

    tf, slim, _ = import_slim()
    rng = np.random.default_rng(3)
    hw = (104, 104) if project == "holyseven" else (161, 137)
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, *hw, 3])
        if project == "holyseven":
            taps = holyseven_graph(tf, x, depth=50, filters=[32, 64, 128, 256], num_classes=5, image_size=104)
            value = _random_value
        else:
            taps = oandrienko_graph(tf, slim, x, base=[8, 16, 32, 64], psp_width=16, num_classes=5, aux=True)
            value = _oandrienko_value
        x_np = np.zeros((1, *hw, 3), np.float32)
        _run_and_save(tf, g, x, x_np, taps, rng, tmp_path / "model.ckpt", value=value)
    weights = tmp_path / "psp.safetensors"
    convert_slim_files(tmp_path / "model.ckpt", weights)
    code, text, _ = run_cli("verify", weights, tmp_path / "model.ckpt", "--input-size", *map(str, hw), "--json")
    assert code == 0, text[-3000:]
    out = json.loads(text)
    graph = next(r for r in out["runtimes"] if r["name"] == "tensorflow (graph)")
    names = [r["name"] for r in graph["report"]["layers"]]
    assert len(names) > 90 and out["unchecked_layers"] == []
    last = "resnet_v1_50/up_sample" if project == "holyseven" else "Predictions/Interp"
    assert names[-1] == last
    if project == "holyseven":  # not a multiple of 8: the project's graph cannot be built, and the report says so
        code, text, _ = run_cli("verify", weights, tmp_path / "model.ckpt", "--input-size", "97", "97", "--json")
        graph = next(r for r in json.loads(text)["runtimes"] if r["name"] == "tensorflow (graph)")
        assert not graph["used"] and "multiple of 8" in graph["reason"]


def test_evenly_within_keeps_first_and_last_under_the_budget():
    from segconvert.parity.report import evenly_within as _evenly_within

    keys = [f"k{i}" for i in range(10)]
    sizes = dict.fromkeys(keys, 100)
    assert _evenly_within(keys, sizes, None) == keys and _evenly_within(keys, sizes, 1000) == keys
    kept = _evenly_within(keys, sizes, 450)
    assert kept[0] == "k0" and kept[-1] == "k9" and sum(sizes[k] for k in kept) <= 450 and len(kept) == 4
    assert _evenly_within(keys, sizes, 10) == ["k0", "k9"]


@pytest.mark.parity
@pytest.mark.filterwarnings("ignore:`layer.apply` is deprecated")
def test_tf_end_points_are_thinned_to_a_memory_budget(slim50):
    """A small budget fetches an evenly spaced subset of the end-points (first and last kept) and says so."""
    from segconvert.converters.slim import convert_slim
    from segconvert.parity.tf_runtime import run_slim_checkpoint

    ckpt, _ = slim50
    conv = convert_slim(ckpt, output_stride=16)
    x = np.random.default_rng(0).normal(0, 50, (1, 65, 65, 3)).astype(np.float32)
    every, _ = run_slim_checkpoint(ckpt, "resnet", conv.config, conv.tap_map, x)
    budget = sum(v.nbytes for v in every.values()) // 4
    some, desc = run_slim_checkpoint(ckpt, "resnet", conv.config, conv.tap_map, x, max_bytes=budget)
    assert 2 <= len(some) < len(every) and sum(v.nbytes for v in some.values()) <= budget
    first, last = next(iter(every)), list(every)[-1]
    assert first in some and last in some and f"{len(some)} of {len(every)} end-points fetched" in desc
    for k, v in some.items():
        np.testing.assert_array_equal(v, every[k])

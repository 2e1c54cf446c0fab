"""keras2torch generic path: Keras 1 and 2.0-era file layouts, refusals (Lambda/custom), broken files."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.cli_runner import run_cli
from tests.keras_cases import randomize, tf_keras
from tests.test_keras_generic_cli import _keras_out, _ours


def _write_legacy_h5(path, config: dict, weights: dict[str, list[tuple[str, np.ndarray]]], version: str) -> None:
    """A full-model HDF5 as Keras 1 / 2.0 wrote it: model_config + model_weights/<layer>/<weight_name>."""
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"] = version
        f.attrs["backend"] = "tensorflow"
        g = f.create_group("model_weights")
        g.attrs["layer_names"] = np.array([n.encode() for n in weights])
        for layer, ws in weights.items():
            lg = g.create_group(layer)
            lg.attrs["weight_names"] = np.array([n.encode() for n, _ in ws])
            for n, a in ws:
                lg.create_dataset(n, data=a)


def _k1_conv(name, filters, stride, border, act, **extra):
    return {"class_name": "Convolution2D", "config": {"name": name, "nb_filter": filters, "nb_row": 3, "nb_col": 3,
            "border_mode": border, "subsample": [stride, stride], "dim_ordering": "tf", "activation": act,
            "bias": True, "init": "glorot_uniform", **extra}}  # fmt: skip


def test_keras1_sequential_and_functional_merge(tmp_path):
    """Keras 1 names (Convolution2D, nb_filter, border_mode, subsample, output_dim, Merge, running_std), checked
    against the same network built in tf_keras with the same weights."""
    K = tf_keras()
    L = K.layers
    rng = np.random.default_rng(0)
    w = {n: rng.normal(0, 0.3, s).astype(np.float32) for n, s in [("k1", (3, 3, 3, 4)), ("b1", (4,)),
         ("k2", (3, 3, 3, 4)), ("b2", (4,)), ("d", (5 * 5 * 8, 5)), ("db", (5,))]}  # fmt: skip
    bn = [rng.uniform(0.5, 1.5, 8), rng.normal(0, 0.3, 8), rng.normal(0, 0.5, 8), rng.uniform(0.5, 2, 8)]
    bn = [a.astype(np.float32) for a in bn]
    layers = [
        {
            "class_name": "InputLayer",
            "name": "input_1",
            "config": {"batch_input_shape": [None, 9, 9, 3], "name": "input_1"},
            "inbound_nodes": [],
        },  # fmt: skip
        {**_k1_conv("c1", 4, 2, "same", "relu"), "name": "c1", "inbound_nodes": [[["input_1", 0, 0]]]},
        {**_k1_conv("c2", 4, 2, "same", "linear"), "name": "c2", "inbound_nodes": [[["input_1", 0, 0]]]},
        {
            "class_name": "Merge",
            "name": "sum",
            "config": {"name": "sum", "mode": "sum"},
            "inbound_nodes": [[["c1", 0, 0], ["c2", 0, 0]]],
        },  # fmt: skip
        {
            "class_name": "Merge",
            "name": "cat",
            "config": {"name": "cat", "mode": "concat", "concat_axis": -1},
            "inbound_nodes": [[["sum", 0, 0], ["c2", 0, 0]]],
        },  # fmt: skip
        {
            "class_name": "BatchNormalization",
            "name": "bn",
            "config": {"name": "bn", "epsilon": 1e-3, "mode": 0, "axis": -1},
            "inbound_nodes": [[["cat", 0, 0]]],
        },  # fmt: skip
        {"class_name": "Flatten", "name": "flat", "config": {"name": "flat"}, "inbound_nodes": [[["bn", 0, 0]]]},
        {
            "class_name": "Dropout",
            "name": "drop",
            "config": {"name": "drop", "p": 0.5},
            "inbound_nodes": [[["flat", 0, 0]]],
        },  # fmt: skip
        {
            "class_name": "Dense",
            "name": "fc",
            "config": {"name": "fc", "output_dim": 5, "activation": "softmax", "bias": True},
            "inbound_nodes": [[["drop", 0, 0]]],
        },  # fmt: skip
    ]
    config = {"class_name": "Model", "config": {"name": "k1", "layers": layers, "input_layers": [["input_1", 0, 0]],
              "output_layers": [["fc", 0, 0]]}}  # fmt: skip
    weights = {"input_1": [], "c1": [("c1_W", w["k1"]), ("c1_b", w["b1"])],
               "c2": [("c2_W:0", w["k2"]), ("c2_b:0", w["b2"])], "sum": [], "cat": [],
               "bn": [("bn_gamma", bn[0]), ("bn_beta", bn[1]), ("bn_running_mean", bn[2]), ("bn_running_std", bn[3])],
               "flat": [], "drop": [], "fc": [("fc_W", w["d"]), ("fc_b", w["db"])]}  # fmt: skip
    h5 = tmp_path / "keras1.h5"
    _write_legacy_h5(h5, config, weights, "1.2.2")
    code, _, err = run_cli("keras2torch", h5, "-o", tmp_path / "o.safetensors")
    assert code == 0, err
    inp = K.Input((9, 9, 3))
    c1 = L.Conv2D(4, 3, strides=2, padding="same", activation="relu")
    c2 = L.Conv2D(4, 3, strides=2, padding="same")
    a, b = c1(inp), c2(inp)
    bnl = L.BatchNormalization(epsilon=1e-3)
    x = bnl(L.Concatenate()([L.Add()([a, b]), b]))
    fc = L.Dense(5, activation="softmax")
    ref = K.Model(inp, fc(L.Flatten()(x)))
    c1.set_weights([w["k1"], w["b1"]])
    c2.set_weights([w["k2"], w["b2"]])
    bnl.set_weights(bn)
    fc.set_weights([w["d"], w["db"]])
    x = rng.normal(size=(2, 9, 9, 3)).astype(np.float32)
    np.testing.assert_allclose(_ours(tmp_path / "o.safetensors", x)[0], _keras_out(ref, x)[0], atol=1e-6)


def test_keras20_sequential_list_config(tmp_path):
    """Issue 10: a 2.0-era full-model Sequential .h5 (model_config['config'] is a list of layers) converts."""
    K = tf_keras()
    L = K.layers
    m = K.Sequential([K.Input((10, 8, 3)), L.Conv2D(4, 3, strides=2, padding="same"), L.BatchNormalization(),
                      L.Activation("relu"), L.MaxPooling2D(), L.Flatten(), L.Dense(3)])  # fmt: skip
    randomize(m)
    h5 = tmp_path / "seq20.h5"
    m.save(h5)
    layers = json.loads(m.to_json())["config"]["layers"]
    layers = [x for x in layers if x["class_name"] != "InputLayer"]
    layers[0]["config"]["batch_input_shape"] = [None, 10, 8, 3]
    with h5py.File(h5, "a") as f:
        f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": layers})
        f.attrs["keras_version"] = "2.0.8"
    code, stdout, err = run_cli("keras2torch", h5, "-o", tmp_path / "o.safetensors")
    assert code == 0, err + stdout
    x = np.random.default_rng(1).normal(size=(2, 10, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(_ours(tmp_path / "o.safetensors", x)[0], _keras_out(m, x)[0], atol=1e-5)


def test_lambda_and_custom_layers_refused_in_one_message(tmp_path):
    K = tf_keras()
    L = K.layers

    class MyScale(L.Layer):
        def call(self, x):
            return x * 2.0

    inp = K.Input((6, 6, 3))
    x = L.Lambda(lambda t: t + 1.0, name="plus_one")(inp)
    x = MyScale(name="scale")(L.Conv2D(4, 1)(x))
    x = L.Lambda(lambda t: t * 3.0, name="times3")(x)
    m = K.Model(inp, L.UnitNormalization(name="unit")(x))
    h5 = tmp_path / "bad.h5"
    m.save(h5)
    out = tmp_path / "o.safetensors"
    code, stdout, err = run_cli("keras2torch", h5, "-o", out)
    assert code == 2
    line = err.strip()
    assert "\n" not in line and str(h5) in line
    for what in (
        "Lambda 'plus_one'",
        "Lambda 'times3'",
        "MyScale 'scale'",
        "UnitNormalization 'unit'",
        "4 unsupported layer",
    ):
        assert what in line
    assert line.count("code in the file is never run") == 3
    assert not out.exists() and not (tmp_path / "o.safetensors.json").exists()


@pytest.fixture
def small_h5(tmp_path):
    K = tf_keras()
    m = K.Sequential([K.Input((8, 8, 3)), K.layers.Conv2D(4, 3), K.layers.Dense(2)])
    h5 = tmp_path / "small.h5"
    m.save(h5)
    return h5


def _refused(tmp_path, *args):
    out = tmp_path / "o.safetensors"
    code, stdout, err = run_cli("keras2torch", *args, "-o", out)
    assert code == 2, stdout + err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not out.exists() and not list(tmp_path.glob("o.safetensors*"))
    return err


def test_truncated_and_corrupt_h5(tmp_path, small_h5):
    data = small_h5.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 2])
    assert "cut.h5" in _refused(tmp_path, cut)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 8)
    assert "junk.h5" in _refused(tmp_path, junk)


def test_model_config_that_does_not_parse(tmp_path, small_h5):
    with h5py.File(small_h5, "a") as f:
        f.attrs["model_config"] = '{"class_name": "Functional", "config": {"layers": [{"class_name": "Conv2D"'
    assert "model_config" in _refused(tmp_path, small_h5)
    with h5py.File(small_h5, "a") as f:  # valid JSON, not a model: a layer reads a tensor nothing produces
        f.attrs["model_config"] = json.dumps({"class_name": "Functional", "config": {"name": "m", "layers": [
            {"class_name": "Conv2D", "name": "c", "config": {"name": "c"}, "inbound_nodes": [[["ghost", 0, 0, {}]]]}],
            "input_layers": [], "output_layers": [["c", 0, 0]]}})  # fmt: skip
    err = _refused(tmp_path, small_h5)
    assert "model_config" in err and "ghost" in err


def test_weights_only_needs_config_and_unwritable_output(tmp_path, small_h5):
    K = tf_keras()
    m = K.models.load_model(small_h5, compile=False)
    w = tmp_path / "w.h5"
    m.save_weights(w)
    assert "--config" in _refused(tmp_path, w, "--generic")
    code, _, err = run_cli("keras2torch", small_h5, "-o", "/sys/o.safetensors")
    assert code == 2 and "/sys/o.safetensors" in err and err.count("\n") == 1


def test_output_paths_are_checked_before_the_input_is_read(tmp_path):
    """Unwritable weights, sidecar or --emit-source: one line naming that path, exit 2, before any conversion (a
    corrupt input is not even opened, so the output path is what gets reported)."""
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 8)
    code, _, err = run_cli("keras2torch", junk, "-o", "/sys/x.safetensors")
    assert code == 2 and err.count("\n") == 1 and "/sys/x.safetensors" in err and "junk.h5" not in err, err
    assert not Path("/sys/x.safetensors").exists()
    blocker = tmp_path / "plain.txt"
    blocker.write_text("a regular file")
    out = tmp_path / "o.safetensors"
    code, _, err = run_cli("keras2torch", junk, "-o", out, "--emit-source", blocker / "net.py")
    assert code == 2 and err.count("\n") == 1 and str(blocker / "net.py") in err and "junk.h5" not in err, err
    (tmp_path / "o.safetensors.json").mkdir()  # the sidecar path is a folder
    code, _, err = run_cli("keras2torch", junk, "-o", out)
    assert code == 2 and err.count("\n") == 1 and "o.safetensors.json" in err and "junk.h5" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.h5", "o.safetensors.json", "plain.txt"]


def test_dot_beyond_3d_is_refused(tmp_path):
    K = tf_keras()
    inp = K.Input((4, 5, 3))
    m = K.Model(inp, K.layers.Dot(axes=-1, name="dot4d")([inp, K.layers.Conv2D(3, 1)(inp)]))
    h5 = tmp_path / "dot.h5"
    m.save(h5)
    err = _refused(tmp_path, h5)
    assert "Dot 'dot4d'" in err and "2-D / 3-D" in err

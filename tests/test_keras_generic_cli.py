"""``segconvert keras2torch`` on the generic path: every file layout, load_model, --emit-source, verify, errors."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from segconvert.testing import fixture_path
from tests.cli_runner import run_cli
from tests.keras_cases import keras3, randomize, save, tf_keras


def _keras_out(model, x):
    out = model(x, training=False)
    return [np.asarray(o) for o in (out if isinstance(out, list | tuple) else [out])]


def _ours(path: Path, x: np.ndarray) -> list[np.ndarray]:
    from segconvert import load_model

    m = load_model(path)
    t = torch.from_numpy(x)
    if m.config["inputs"][0]["layout"] == "nc":
        t = t.movedim(-1, 1)
    with torch.no_grad():
        out = m(t)
    outs = out if isinstance(out, tuple) else (out,)
    return [np.moveaxis(o.numpy(), 1, -1) if o.dim() >= 3 else o.numpy() for o in outs]


def _nested_shared(K):
    """Two inputs, two outputs, a shared layer (two calls) and a nested backbone model."""
    L = K.layers
    b_in = K.Input((16, 16, 3))
    b = L.Conv2D(6, 3, strides=2, padding="same", name="b_conv")(b_in)
    b = L.ReLU(name="b_relu")(L.BatchNormalization(name="b_bn")(b))
    backbone = K.Model(b_in, b, name="backbone")
    a, c = K.Input((16, 16, 3), name="left"), K.Input((16, 16, 3), name="right")
    shared = L.Conv2D(4, 1, name="shared")
    fa, fc = shared(backbone(a)), shared(L.Conv2D(6, 3, strides=2, padding="same", name="c_conv")(c))
    s = L.Add(name="sum")([fa, fc])
    out1 = L.Conv2D(3, 3, padding="same", activation="softmax", name="head")(s)
    out2 = L.Dense(2, name="fc")(L.GlobalAveragePooling2D(name="gap")(s))
    m = K.Model([a, c], [out1, out2], name="two_heads")
    randomize(m)
    return m


def test_full_model_h5_nested_shared_emit_source_and_verify(tmp_path):
    K = tf_keras()
    m = _nested_shared(K)
    h5, _ = save(m, tmp_path, "h5")
    out, src = tmp_path / "net.safetensors", tmp_path / "net.py"
    code, stdout, err = run_cli("keras2torch", h5, "-o", out, "--emit-source", src, "--mean", "127.5,127.5,127.5",
                                "--std", "127.5")  # fmt: skip
    assert code == 0, err
    xs = [np.random.default_rng(i).normal(size=(2, 16, 16, 3)).astype(np.float32) for i in range(2)]
    from segconvert import load_model

    model = load_model(out)
    assert model.segconvert_meta["preprocessing"]["mean"] == [127.5] * 3
    ts = [torch.from_numpy(x).movedim(-1, 1) for x in xs]
    with torch.no_grad():
        ours = model(*ts)
    for o, k in zip(ours, _keras_out(m, xs), strict=True):
        o = np.moveaxis(o.numpy(), 1, -1) if o.dim() >= 3 else o.numpy()
        np.testing.assert_allclose(o, k, atol=1e-5 * np.abs(k).max())
    # the emitted source: torch-only imports, ruff clean, same weights with load_state_dict unchanged
    text = src.read_text()
    imports = {ln.split()[1] for ln in text.splitlines() if ln.startswith(("import ", "from "))}
    assert imports <= {"torch", "torch.nn.functional"}
    ruff = subprocess.run([sys.executable, "-m", "ruff", "check", "--isolated", "--line-length", "120", "--select",
                           "E,F,W,I,B,UP", str(src)], capture_output=True, text=True)  # fmt: skip
    assert ruff.returncode == 0, ruff.stdout
    spec = importlib.util.spec_from_file_location("emitted_net", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    import safetensors.torch

    net = mod.Net().eval()
    net.load_state_dict(safetensors.torch.load_file(str(out)))
    with torch.no_grad():
        emitted = net(*ts)
    for a, b in zip(emitted, ours, strict=True):
        assert torch.equal(a, b)
    code, stdout, err = run_cli("verify", out, h5)
    assert code == 0, stdout + err
    assert "result: OK" in stdout and "tf_keras" in stdout


def test_keras3_archive_and_weights_plus_json(tmp_path):
    K3 = keras3()
    L = K3.layers
    inp = K3.Input((12, 10, 3))
    x = L.Conv2D(5, 3, strides=2, padding="same", activation="relu")(inp)
    x = L.BatchNormalization()(x)
    x = L.SeparableConv2D(4, 3, padding="same")(x)
    m = K3.Model(inp, L.UpSampling2D(2, interpolation="bilinear")(x))
    randomize(m)
    x = np.random.default_rng(0).normal(size=(1, 12, 10, 3)).astype(np.float32)
    for kind in ("keras", "weights"):
        d = tmp_path / kind
        d.mkdir()
        if kind == "weights":
            path, cfg = d / "m.weights.h5", d / "arch.json"
            m.save_weights(path)
            cfg.write_text(m.to_json())
            args = ["--config", cfg]
        else:
            path, _ = save(m, d, "keras")
            args = []
        code, _, err = run_cli("keras2torch", path, "-o", d / "o.safetensors", *args)
        assert code == 0, err
        np.testing.assert_allclose(_ours(d / "o.safetensors", x)[0], _keras_out(m, x)[0], atol=1e-5)


def test_tf_keras_weights_plus_json(tmp_path):
    K = tf_keras()
    m = _nested_shared(K)
    path, cfg = save(m, tmp_path, "weights")
    code, _, err = run_cli("keras2torch", path, "-o", tmp_path / "o.safetensors", "--config", cfg, "--nhwc")
    assert code == 0, err
    from segconvert import load_model

    model = load_model(tmp_path / "o.safetensors")
    xs = [np.random.default_rng(i).normal(size=(1, 16, 16, 3)).astype(np.float32) for i in range(2)]
    with torch.no_grad():
        ours = model(*[torch.from_numpy(x) for x in xs])  # --nhwc: the Keras layout at the boundary
    for o, k in zip(ours, _keras_out(m, xs), strict=True):
        np.testing.assert_allclose(o.numpy(), k, atol=1e-5 * np.abs(k).max())


def test_real_fer_keras_file(tmp_path):
    """A third-party Keras 2.0.5 full-model file (oarriaga's mini-Xception emotion model), generic path."""
    K = tf_keras()
    h5 = fixture_path("real", "fer_keras", "emotion_model.hdf5")
    out = tmp_path / "fer.safetensors"
    code, stdout, err = run_cli("keras2torch", h5, "-o", out)
    assert code == 0, err
    from segconvert.parity.keras_runtime import keras_parity, load_keras

    km = load_keras(h5)
    from segconvert import load_model

    x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 1)).astype(np.float32)
    rep, _ = keras_parity(load_model(out), km, [x], tolerance=1e-5)
    assert rep.ok and len(rep.rows) == 45, rep.format()
    assert (
        np.argmax(_ours(out, x)[0], -1).tolist()
        == np.argmax(_keras_out(K.models.Model(km.inputs, km.outputs), x)[0], -1).tolist()
    )


def test_parity_folder_on_the_generic_path(tmp_path):
    """--parity FOLDER: input.npy (NHWC) and outputs.npz by Keras layer name, written by real tf_keras; a wrong
    reference fails the check (exit 1, nothing written)."""
    K = tf_keras()
    L = K.layers
    inp = K.Input((9, 11, 3))
    x = L.Conv2D(4, 3, strides=2, padding="same", name="conv")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = L.DepthwiseConv2D(3, padding="same", activation="relu", name="dw")(x)
    m = K.Model(inp, L.UpSampling2D(2, interpolation="bilinear", name="up")(x))
    randomize(m)
    h5, _ = save(m, tmp_path)
    x = np.random.default_rng(0).normal(size=(1, 9, 11, 3)).astype(np.float32)
    names = ["conv", "bn", "dw", "up"]
    taps = K.Model(m.inputs, [m.get_layer(n).output for n in names])
    refs = {n: np.asarray(o) for n, o in zip(names, taps(x, training=False), strict=True)}
    case = tmp_path / "case"
    case.mkdir()
    np.save(case / "input.npy", x)
    np.savez(case / "outputs.npz", **refs)
    out = tmp_path / "o.safetensors"
    code, stdout, err = run_cli("keras2torch", h5, "-o", out, "--parity", case)
    assert code == 0, stdout + err
    assert out.exists() and "4 layers compared" in stdout and "OK: every layer" in stdout, stdout
    import json

    assert json.loads(Path(f"{out}.json").read_text())["parity"]
    out.unlink()
    Path(f"{out}.json").unlink()
    refs["dw"] = refs["dw"] + 0.1 * np.abs(refs["dw"]).max()
    np.savez(case / "outputs.npz", **refs)
    code, stdout, err = run_cli("keras2torch", h5, "-o", out, "--parity", case)
    assert code == 1 and "wrote nothing" in stdout and not out.exists(), stdout + err

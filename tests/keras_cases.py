"""Helpers for the Keras generic tests: real tf_keras / Keras 3 models with random weights, saved and converted.

Weights are random but not trivial: kernels scaled so activations keep unit size, BatchNorm statistics far from
(0, 1) so a mixed-up gamma/beta/mean/variance or epsilon shows up.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def tf_keras():
    return pytest.importorskip("tf_keras")


def keras3():
    k = pytest.importorskip("keras")
    if not k.__version__.startswith("3"):
        pytest.skip("Keras 3 not installed")
    return k


def randomize(model, seed: int = 0) -> None:
    """Random weights: BN stats mean N(0, .5), var U(.5, 2), gamma U(.5, 1.5), beta N(0, .3); others scaled."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if hasattr(layer, "layers"):
            randomize(layer, seed + 1)
            continue
        ws = layer.get_weights()
        if not ws:
            continue
        cls = type(layer).__name__
        new = []
        for i, w in enumerate(ws):
            if cls == "BatchNormalization":
                names = [v.name.split("/")[-1].split(":")[0] for v in layer.weights]
                n = names[i]
                if "variance" in n:
                    v = rng.uniform(0.5, 2.0, w.shape)
                elif "mean" in n:
                    v = rng.normal(0, 0.5, w.shape)
                elif "gamma" in n:
                    v = rng.uniform(0.5, 1.5, w.shape)
                else:
                    v = rng.normal(0, 0.3, w.shape)
            elif w.ndim >= 2:
                fan_in = (
                    int(np.prod(w.shape[:-1]))
                    if "depthwise" not in layer.weights[i].name
                    else int(np.prod(w.shape[:-2]))
                )
                v = rng.normal(0, 1.0 / np.sqrt(max(fan_in, 1)), w.shape)
            else:
                v = rng.normal(0, 0.2, w.shape) if cls != "PReLU" else rng.uniform(0, 0.5, w.shape)
            new.append(v.astype(np.float32))
        layer.set_weights(new)


def save(model, tmp_path: Path, kind: str = "h5") -> tuple[Path, Path | None]:
    """``h5``: full model; ``weights``: weights .h5 + to_json; ``keras``: Keras 3 archive."""
    if kind == "h5":
        p = tmp_path / "model.h5"
        model.save(p)
        return p, None
    if kind == "weights":
        p, c = tmp_path / "w.h5", tmp_path / "arch.json"
        model.save_weights(p)
        c.write_text(model.to_json())
        return p, c
    p = tmp_path / "model.keras"
    model.save(p)
    return p, None


def check(model, x: np.ndarray | list[np.ndarray], tmp_path: Path, kind: str = "h5", tol: float = 1e-5, nhwc=False):
    """Convert the saved model and compare every layer output with Keras; returns (conversion, report, refs)."""
    import torch

    from segconvert.converters.keras_generic import convert_keras_generic
    from segconvert.parity.keras_runtime import keras_parity

    path, cfg = save(model, tmp_path, kind)
    conv = convert_keras_generic(path, cfg, nhwc=nhwc)
    ours = conv.build_model()
    xs = x if isinstance(x, list) else [x]
    rep, refs = keras_parity(ours, model, xs, tolerance=tol)
    assert rep.rows, "nothing compared"
    assert rep.ok, rep.format()
    assert not [u for u in rep.uncompared if "@" not in u], rep.uncompared
    # the model's own outputs, through forward()
    ts = [torch.from_numpy(a) for a in xs]
    ts = [
        t.movedim(-1, 1) if s["layout"] == "nc" and t.dim() >= 3 else t
        for t, s in zip(ts, conv.config["inputs"], strict=True)
    ]
    with torch.no_grad():
        out = ours(*ts)
    outs = out if isinstance(out, tuple) else (out,)
    kouts = model(xs if len(xs) > 1 else xs[0], training=False)
    kouts = kouts if isinstance(kouts, list | tuple) else [kouts]
    for o, k, spec in zip(outs, kouts, conv.config["outputs"], strict=True):
        o = o.numpy()
        if spec["layout"] == "nc" and o.ndim >= 3:
            o = np.moveaxis(o, 1, -1)
        k = np.asarray(k)
        assert o.shape == k.shape
        np.testing.assert_allclose(o, k, rtol=0, atol=tol * max(float(np.abs(k).max()), 1e-6))
    return conv, rep, refs


def argmax_agreement(ours: np.ndarray, ref: np.ndarray, axis: int = -1, margin: float = 1e-4) -> float:
    """Share of positions (away from ties: top-2 gap > margin) where the argmax agrees."""
    top2 = np.sort(ref, axis=axis)
    gap = np.take(top2, -1, axis=axis) - np.take(top2, -2, axis=axis)
    keep = gap > margin * max(float(np.abs(ref).max()), 1e-6)
    agree = np.argmax(ours, axis=axis) == np.argmax(ref, axis=axis)
    return float(agree[keep].mean()) if keep.any() else 1.0

"""Keras in-layer activations (``Conv2D(activation=...)``) fused into the oneDNN convolutions.

Against the unfused eager converted model: NCHW and channels_last inputs, another batch and size than traced,
the eager fallback under bf16 autocast and with gradients; config / state_dict unchanged; a shared layer whose
calls differ, and activations without an exact oneDNN form, are left to the run loop.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from segconvert.inference.onednn import OneDNNConv2d, OneDNNSeparable, onednn_available
from segconvert.inference.prepare import prepare_model

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN (mkldnn)")


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-12))


def _model():
    from tests.keras_cases import randomize, tf_keras

    K = tf_keras()
    L = K.layers
    from segconvert.converters.keras_generic import convert_keras_generic

    inp = K.Input((None, None, 3))
    x = L.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inp)
    x = L.DepthwiseConv2D(3, padding="same", activation="relu6")(x)
    x = L.SeparableConv2D(12, 3, strides=2, padding="same", activation="relu")(x)
    shared = L.Conv2D(12, 1, activation="relu")  # two calls, same activation: fused
    y = L.Add()([shared(x), shared(L.Conv2D(12, 1)(x))])
    y = L.Conv2D(6, 3, padding="same", activation="sigmoid")(y)  # not exact in oneDNN: run loop
    y = L.Conv2D(6, 1, activation="leaky_relu")(y) if hasattr(K.activations, "leaky_relu") else L.Conv2D(6, 1)(y)
    # Activation layers are modules (the trace-based pass): after conv -> BN (folded): fused; read twice: not
    z = L.Conv2D(8, 3, padding="same", use_bias=False, name="pre_conv")(y)
    z = L.Activation("relu", name="act_fused")(L.BatchNormalization(name="pre_bn")(z))
    w = L.Conv2D(8, 1, name="twice")(z)
    y = L.Add()([L.Activation("relu", name="act_kept")(w), w])
    m = K.Model(inp, y)
    randomize(m)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.h5"
        m.save(p)
        return convert_keras_generic(p, None).build_model().eval()


def test_in_layer_activations_fused_and_exact():
    model = _model()
    x = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fast = prepare_model(copy.deepcopy(model), onednn=True, inputs=[x])
    folded = prepare_model(copy.deepcopy(model), onednn=False, inputs=[x])
    rep = fast.segconvert_onednn
    kinds = [v.split(" ")[-1] for v in rep.fused.values()]
    assert kinds.count("relu") >= 3 and "ReLU" in kinds and "relu6" in kinds and "sigmoid" not in kinds, rep.fused
    assert "pre_conv" in rep.fused and "twice" not in rep.fused
    assert fast.config == model.config and fast.state_dict().keys() == folded.state_dict().keys()
    assert any(isinstance(m, OneDNNSeparable) and m.pointwise.unary[0] == "relu" for m in fast.modules())
    fused = [m for m in fast.modules() if isinstance(m, OneDNNConv2d) and m.unary[0] != "none"]
    assert fused
    more = torch.rand(2, 3, 33, 47, generator=torch.Generator().manual_seed(1)) * 2 - 1
    for case in (x, x.contiguous(memory_format=torch.channels_last), more,
                 more.contiguous(memory_format=torch.channels_last)):  # fmt: skip
        with torch.no_grad():
            ref, got = model(case), fast(case)
        assert got.shape == ref.shape and _rel(got, ref) <= 1e-5, _rel(got, ref)
        with torch.no_grad():  # layer by layer: Keras names, Keras layout
            a, b = model.layer_outputs(case), fast.layer_outputs(case)
        assert a.keys() == b.keys()
        for k in a:
            if a[k].is_floating_point() and not k.startswith("pre_"):  # (folded conv / BN: fused values)
                assert _rel(b[k], a[k]) <= 1e-5, k
    # fallbacks: bf16 autocast and gradients take F.conv2d + the same Keras activation
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(fast(x), folded(x))
    xg = x.clone().requires_grad_()
    out = fast(xg)
    out.sum().backward()
    assert xg.grad is not None and torch.equal(out.detach(), folded(x))


def test_shared_layer_with_different_activations_is_left_alone():
    model = _model()
    step = next(s for s in model.steps if s.get("activation") and s["module"] and s["class"] == "Conv2D")
    name = step["module"]
    config = json.loads(json.dumps(model.config))
    for s in config["steps"]:  # a second call of that layer, without an activation
        if s["module"] == name:
            twin = {**s, "name": s["name"] + "_again", "outputs": [o + "_again" for o in s["outputs"]],
                    "activation": None, "shared": True}  # fmt: skip
            config["steps"].insert(config["steps"].index(s) + 1, twin)
            break
    from segconvert.reference_models.keras_generic import KerasGenericNet

    net = KerasGenericNet(**config)
    net.load_state_dict(model.state_dict())
    net.eval()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    fast = prepare_model(copy.deepcopy(net), onednn=True, inputs=[x])
    assert name not in fast.activation_in_module
    with torch.no_grad():
        assert _rel(fast(x), net(x)) <= 1e-5

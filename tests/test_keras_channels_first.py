"""A ``data_format: channels_first`` Keras model through the generic path, against its channels_last twin.

TF on CPU cannot run channels_first Conv2D / DepthwiseConv2D / SeparableConv2D / Conv2DTranspose / pooling
forward, so the channels_first model is only built (symbolically) and saved; the reference is the channels_last
twin with the same weights, run in real tf_keras on the transposed input. Every layer output is compared (ours in
the channels_first model's Keras layout, NCHW, against the twin's NHWC output moved to NCHW), and the Flatten ->
Dense head checks the element order: a channels_first Flatten reads (C, H, W), so the twin's Dense kernel rows
are permuted to match.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.keras_cases import randomize, tf_keras

TOL = 1e-5


def _build(K, first: bool, size: tuple[int, int]):
    L = K.layers
    fmt = "channels_first" if first else "channels_last"
    axis = 1 if first else -1
    inp = K.Input((3, *size) if first else (*size, 3), name="image")
    x = L.Conv2D(6, 3, strides=2, padding="same", data_format=fmt, name="conv")(inp)
    x = L.BatchNormalization(axis=axis, epsilon=1e-3, name="bn")(x)
    x = L.ReLU(6.0, name="relu")(x)
    d = L.DepthwiseConv2D(3, strides=2, padding="same", depth_multiplier=2, data_format=fmt, name="dw")(x)
    d = L.BatchNormalization(axis=axis, name="bn_dw")(d)
    s = L.SeparableConv2D(8, 3, padding="same", dilation_rate=2, data_format=fmt, activation="relu", name="sep")(d)
    v = L.Conv2D(5, (2, 3), data_format=fmt, name="conv_valid")(d)
    v = L.ZeroPadding2D(((1, 1), (1, 2)), data_format=fmt, name="pad")(v)
    c = L.Concatenate(axis=axis, name="cat")([s, L.Cropping2D(((1, 0), (0, 1)), data_format=fmt, name="crop")(v)])
    p = L.MaxPooling2D(2, padding="same", data_format=fmt, name="maxpool")(c)
    a = L.AveragePooling2D(3, strides=1, padding="same", data_format=fmt, name="avgpool")(p)
    t = L.Conv2DTranspose(4, 3, strides=2, padding="same", data_format=fmt, name="convT")(a)
    u = L.UpSampling2D(2, interpolation="bilinear", data_format=fmt, name="up")(t)
    g = L.GlobalAveragePooling2D(data_format=fmt, name="gap")(u)
    f = L.Flatten(data_format=fmt, name="flat")(a)  # Keras moves channels_first's channels last first
    head = L.Dense(7, name="dense")(L.Concatenate(name="cat_head")([f, g]))
    raw = L.Dense(3, name="dense_raw")(L.Flatten(data_format="channels_last", name="flat_raw")(a))  # as stored
    return K.Model(inp, [u, head, raw], name=f"twin_{fmt}")


def _copy_weights(last, first, flat_shape: tuple[int, int, int]) -> None:
    """Same weights; the rows of the Dense that reads the channels_first tensor flattened as stored (C, H, W)
    reordered from the twin's (H, W, C)."""
    h, w, ch = flat_shape
    for layer in last.layers:
        ws = layer.get_weights()
        if layer.name == "dense_raw":
            ws = [ws[0].reshape(h, w, ch, -1).transpose(2, 0, 1, 3).reshape(h * w * ch, -1), ws[1]]
        first.get_layer(layer.name).set_weights(ws)


@pytest.mark.parametrize("size", [(13, 16), (12, 11)])
def test_channels_first_model_matches_channels_last_twin(tmp_path, size):
    K = tf_keras()
    from segconvert.converters.keras_generic import convert_keras_generic

    last = _build(K, False, size)
    randomize(last, seed=size[0])
    first = _build(K, True, size)
    flat_shape = tuple(last.get_layer("avgpool").output.shape[1:])
    _copy_weights(last, first, flat_shape)
    path = tmp_path / "channels_first.h5"
    first.save(path)  # built and saved only: TF's CPU kernels cannot run it

    conv = convert_keras_generic(path, None)
    assert conv.config["inputs"][0]["layout"] == "keras"  # NCHW already
    ours = conv.build_model()

    x = np.random.default_rng(1).normal(size=(2, *size, 3)).astype(np.float32)
    names = [ly.name for ly in last.layers if ly.name != "image"]
    probe = K.Model(last.input, [last.get_layer(n).output for n in names])
    refs = dict(zip(names, (np.asarray(r) for r in probe(x, training=False)), strict=True))
    got = ours.layer_outputs(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())

    compared = []
    for name, ref in refs.items():
        mine = got[name].numpy()
        if name == "flat_raw":  # the stored (C, H, W) order of the channels_first tensor
            ref = ref.reshape(2, *flat_shape).transpose(0, 3, 1, 2).reshape(2, -1)
        if ref.ndim == 4:
            ref = ref.transpose(0, 3, 1, 2)
        assert mine.shape == ref.shape, name
        scale = max(float(np.abs(ref).max()), 1e-6)
        err = float(np.abs(mine - ref).max()) / scale
        assert err <= TOL, f"{name}: {err:.2e} x magnitude"
        compared.append(name)
    assert set(names) - {"image"} == set(compared)

    with torch.no_grad():
        up, head, raw = ours(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())
    ref_up, ref_head, ref_raw = (np.asarray(r) for r in last(x, training=False))
    np.testing.assert_allclose(up.numpy(), ref_up.transpose(0, 3, 1, 2), rtol=0, atol=TOL * np.abs(ref_up).max())
    for mine, ref in ((head, ref_head), (raw, ref_raw)):
        np.testing.assert_allclose(mine.numpy(), ref, rtol=0, atol=TOL * np.abs(ref).max())


def test_channels_first_model_fuses(tmp_path):
    """The fused form (BN axis 1 folded into the channels_first convs) matches the unfused module."""
    K = tf_keras()
    from segconvert.converters.keras_generic import convert_keras_generic
    from segconvert.inference.fuse import check_fused, fuse_model

    size = (13, 16)
    last = _build(K, False, size)
    randomize(last)
    first = _build(K, True, size)
    _copy_weights(last, first, tuple(last.get_layer("avgpool").output.shape[1:]))
    first.save(tmp_path / "m.h5")
    ours = convert_keras_generic(tmp_path / "m.h5", None).build_model().eval()
    xs = [torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))]
    fused, report = fuse_model(ours, xs)
    assert {"conv": ["bn"], "dw": ["bn_dw"]}.items() <= report.folded.items(), report.folded
    assert check_fused(ours, fused, report, xs).ok()

"""The Keras benchmark's families and keras.applications backbones, converted, against real tf_keras.

Each family at two input sizes, random weights with non-trivial BatchNorm statistics: every layer output within
1e-5 x its magnitude, and the class argmax of the output identical wherever Keras's top two classes are not tied.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.keras_cases import argmax_agreement, check, randomize, tf_keras


def _run(model, tmp_path, size, kind="h5", seed=0):
    randomize(model, seed)
    x = np.random.default_rng(seed).uniform(-1, 1, (1, *size, 3)).astype(np.float32)
    conv, rep, refs = check(model, x, tmp_path, kind=kind)
    ours = conv.build_model()
    import torch

    with torch.no_grad():
        out = ours(torch.from_numpy(x).movedim(-1, 1))
    out = out[0] if isinstance(out, tuple) else out
    ref = np.asarray(model(x, training=False))
    if ref.ndim == 4:
        assert argmax_agreement(out.movedim(1, -1).numpy(), ref) == 1.0
    return conv, rep


FAMILIES = [
    ("fast_scnn", "fast_scnn", {}, [(64, 64), (64, 96)]),
    ("deeplab_mnv2_os16", "deeplab_mobilenetv2", {"os": 16}, [(64, 64), (96, 80)]),
    ("deeplab_mnv2_os8", "deeplab_mobilenetv2", {"os": 8}, [(64, 64), (72, 88)]),
    ("deeplab_xception", "deeplab_xception", {}, [(48, 48), (64, 48)]),
    ("unet", "unet", {}, [(64, 64), (48, 80)]),
    ("separable_unet", "unet", {"separable": True}, [(64, 64), (48, 80)]),
    ("bayesian_segnet", "bayesian_segnet", {}, [(64, 64), (48, 80)]),
]


@pytest.mark.parametrize("name,builder,kwargs,sizes", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_family(tmp_path, name, builder, kwargs, sizes):
    K = tf_keras()
    from tests import keras_families

    for i, size in enumerate(sizes):
        model = getattr(keras_families, builder)(K, size, **kwargs)
        d = tmp_path / str(i)
        d.mkdir()
        conv, rep = _run(model, d, size, kind="h5" if i == 0 else "weights", seed=i)
        assert len(rep.rows) >= len([s for s in conv.config["steps"]]) - 1


def test_segnet_indices_follow_tf_semantics(tmp_path):
    """The argmax output of MaxPoolingWithArgmax2D equals TF's flat NHWC index ((y * W + x) * C + c)."""
    K = tf_keras()
    from tests import keras_families

    model = keras_families.bayesian_segnet(K, (32, 48))
    _, rep = _run(model, tmp_path, (32, 48))
    rows = {r.name: r for r in rep.rows}
    pools = [n for n in rows if n.endswith("/1")]
    assert len(pools) == 3 and all(rows[n].max_abs == 0 for n in pools)


BACKBONES = [
    ("MobileNetV2", {"alpha": 0.35, "include_top": True, "classes": 7}, [(32, 32), (48, 40)]),
    ("ResNet50", {"include_top": False, "pooling": "avg"}, [(32, 32), (32, 48)]),
    ("VGG16", {"include_top": False}, [(32, 32), (48, 40)]),
]


@pytest.mark.slow
@pytest.mark.parametrize("arch,kwargs,sizes", BACKBONES, ids=[b[0] for b in BACKBONES])
def test_applications_backbone(tmp_path, arch, kwargs, sizes):
    """keras.applications models built without downloads (weights=None)."""
    K = tf_keras()
    for i, size in enumerate(sizes):
        model = getattr(K.applications, arch)(input_shape=(*size, 3), weights=None, **kwargs)
        d = tmp_path / str(i)
        d.mkdir()
        _run(model, d, size, kind="weights", seed=i)


@pytest.mark.parametrize("builder,kwargs", [("fast_scnn", {}), ("deeplab_mobilenetv2", {"os": 16})])
def test_onnx_round_trip(tmp_path, builder, kwargs):
    """The converted model through segconvert.export.onnx and onnxruntime, against Keras, at two sizes."""
    ort = pytest.importorskip("onnxruntime")
    K = tf_keras()
    from segconvert.converters.keras_generic import convert_keras_generic
    from segconvert.export.onnx import export_onnx
    from tests import keras_families
    from tests.keras_cases import save

    for i, size in enumerate([(64, 64), (64, 96)]):
        model = getattr(keras_families, builder)(K, size, **kwargs)
        randomize(model, i)
        d = tmp_path / str(i)
        d.mkdir()
        path, cfg = save(model, d, "weights")
        ours = convert_keras_generic(path, cfg).build_model()
        x = np.random.default_rng(i).uniform(-1, 1, (1, *size, 3)).astype(np.float32)
        xt = np.ascontiguousarray(np.moveaxis(x, -1, 1))
        res = export_onnx(ours, d / "m.onnx", xt.shape, check_inputs=[xt])
        assert res.written and res.check.ok, res.check.format()
        sess = ort.InferenceSession(str(d / "m.onnx"), providers=["CPUExecutionProvider"])
        (y,) = sess.run(None, {sess.get_inputs()[0].name: xt})
        ref = np.asarray(model(x, training=False))
        np.testing.assert_allclose(np.moveaxis(y, 1, -1), ref, rtol=0, atol=1e-5 * np.abs(ref).max())

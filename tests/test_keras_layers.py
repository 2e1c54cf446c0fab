"""Every Keras layer type of the generic path, one small real tf_keras model each, against real Keras.

Random configs (strides, dilations, paddings, odd sizes; channels_first where TF runs it on CPU), random weights;
every layer output within 1e-5 x its magnitude (see tests/keras_cases.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.keras_cases import check, keras3, randomize, tf_keras


def _x(shape, seed=0):
    return np.random.default_rng(seed).normal(size=(2, *shape)).astype(np.float32)


def _model(K, shape, body):
    inp = K.Input(shape)
    out = body(K.layers, inp)
    m = K.Model(inp, out)
    randomize(m)
    return m


# (id, input shape without batch, body(layers, input) -> output(s))
CASES = [
    ("conv2d_same_s2_asym", (12, 17, 3), lambda L, x: L.Conv2D(5, 3, strides=2, padding="same")(x)),
    ("conv2d_same_s3_k4", (10, 9, 2), lambda L, x: L.Conv2D(4, (4, 2), strides=(3, 2), padding="same")(x)),
    ("conv2d_valid_dil", (15, 16, 3), lambda L, x: L.Conv2D(6, 3, dilation_rate=(2, 3), use_bias=False)(x)),
    ("conv2d_same_dil_even_k", (9, 12, 4), lambda L, x: L.Conv2D(4, 2, dilation_rate=2, padding="same")(x)),
    ("conv2d_groups", (9, 9, 4), lambda L, x: L.Conv2D(6, 3, groups=2, padding="same", activation="relu6")(x)),
    ("conv1d_causal_dil", (19, 3), lambda L, x: L.Conv1D(4, 3, dilation_rate=2, padding="causal")(x)),
    ("conv1d_same_s2", (19, 3), lambda L, x: L.Conv1D(4, 4, strides=2, padding="same", activation="tanh")(x)),
    ("conv2dT_same_s2", (7, 9, 3), lambda L, x: L.Conv2DTranspose(4, 3, strides=2, padding="same")(x)),
    ("conv2dT_valid_k2s3", (5, 6, 3), lambda L, x: L.Conv2DTranspose(4, 2, strides=3)(x)),
    ("conv2dT_outpad", (5, 7, 3), lambda L, x: L.Conv2DTranspose(3, 3, strides=2, padding="same", output_padding=1)(x)),
    ("conv1dT_valid", (9, 3), lambda L, x: L.Conv1DTranspose(2, 3, strides=2)(x)),
    (
        "separable_s2_dm2",
        (10, 12, 3),
        lambda L, x: L.SeparableConv2D(5, 3, strides=2, depth_multiplier=2, padding="same")(x),
    ),
    (
        "separable_dil",
        (12, 12, 4),
        lambda L, x: L.SeparableConv2D(3, 3, dilation_rate=2, padding="same", use_bias=False)(x),
    ),
    ("separable1d", (15, 3), lambda L, x: L.SeparableConv1D(4, 3, padding="same")(x)),
    (
        "depthwise_dm3_s2",
        (12, 11, 3),
        lambda L, x: L.DepthwiseConv2D(3, strides=2, depth_multiplier=3, padding="same")(x),
    ),
    ("depthwise_valid_dil", (13, 11, 2), lambda L, x: L.DepthwiseConv2D(3, dilation_rate=2)(x)),
    ("dense_nd", (5, 7, 6), lambda L, x: L.Dense(4, activation="softmax")(x)),
    ("dense_flat", (5, 4, 3), lambda L, x: L.Dense(3)(L.Flatten()(x))),
    ("bn_eps_off", (6, 7, 5), lambda L, x: L.BatchNormalization(epsilon=1e-5, center=False)(x)),
    ("bn_noscale", (6, 7, 5), lambda L, x: L.BatchNormalization(scale=False, epsilon=0.01)(x)),
    ("bn_axis1_rank3", (4, 9), lambda L, x: L.BatchNormalization(axis=1)(x)),
    ("layernorm", (4, 5, 6), lambda L, x: L.LayerNormalization(axis=[1, 3], epsilon=1e-4)(x)),
    (
        "relu_variants",
        (6, 6, 3),
        lambda L, x: [L.ReLU(max_value=1.0, negative_slope=0.1, threshold=0.3)(x), L.ReLU(6.0)(x), L.ReLU()(x)],
    ),  # fmt: skip
    (
        "leaky_elu_prelu",
        (6, 6, 3),
        lambda L, x: [L.LeakyReLU(0.25)(x), L.ELU(0.7)(x), L.PReLU(shared_axes=[1])(x), L.PReLU()(x)],
    ),  # fmt: skip
    (
        "activations",
        (5, 4, 3),
        lambda L, x: [
            L.Activation(a)(x)
            for a in (
                "relu",
                "sigmoid",
                "hard_sigmoid",
                "tanh",
                "softplus",
                "softsign",
                "swish",
                "gelu",
                "elu",
                "selu",
                "linear",
            )
        ],
    ),  # fmt: skip
    ("softmax_axis", (5, 4, 3), lambda L, x: [L.Softmax(axis=1)(x), L.Softmax()(x), L.Activation("softmax")(x)]),
    (
        "merges",
        (5, 6, 3),
        lambda L, x: [
            m()([x, L.Conv2D(3, 1)(x)]) for m in (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)
        ],
    ),  # fmt: skip
    ("concat_axes", (5, 6, 3), lambda L, x: [L.Concatenate(axis=a)([x, L.Conv2D(3, 1)(x)]) for a in (-1, 1, 2)]),
    (
        "pools_same_odd",
        (12, 11, 3),
        lambda L, x: [
            L.MaxPooling2D(3, 2, padding="same")(x),
            L.AveragePooling2D(3, 2, padding="same")(x),
            L.AveragePooling2D((2, 3), padding="same")(x),
        ],
    ),  # fmt: skip
    ("pools_valid", (13, 11, 3), lambda L, x: [L.MaxPooling2D(2)(x), L.AveragePooling2D(3, 2)(x)]),
    ("pools_1d", (17, 3), lambda L, x: [L.MaxPooling1D(3, 2, padding="same")(x), L.AveragePooling1D(2)(x)]),
    (
        "global_pools",
        (7, 5, 4),
        lambda L, x: [
            L.GlobalAveragePooling2D()(x),
            L.GlobalMaxPooling2D(keepdims=True)(x),
            L.GlobalAveragePooling1D()(L.Reshape((35, 4))(x)),
        ],
    ),  # fmt: skip
    (
        "upsampling",
        (5, 7, 3),
        lambda L, x: [
            L.UpSampling2D((2, 3))(x),
            L.UpSampling2D(2, interpolation="bilinear")(x),
            L.UpSampling2D(3, interpolation="bilinear")(x),
        ],
    ),  # fmt: skip
    ("resizing", (9, 7, 3), lambda L, x: [L.Resizing(13, 5)(x), L.Resizing(4, 11, interpolation="nearest")(x)]),
    (
        "pad_crop",
        (6, 7, 3),
        lambda L, x: [L.ZeroPadding2D(((1, 2), (0, 3)))(x), L.ZeroPadding2D(1)(x), L.Cropping2D(((1, 0), (2, 1)))(x)],
    ),  # fmt: skip
    (
        "reshape_permute",
        (4, 6, 3),
        lambda L, x: [L.Permute((3, 1, 2))(x), L.Reshape((-1, 6))(x), L.RepeatVector(3)(L.Flatten()(x))],
    ),  # fmt: skip
    (
        "identity_layers",
        (5, 5, 3),
        lambda L, x: L.ActivityRegularization(0.1)(
            L.GaussianDropout(0.2)(L.GaussianNoise(0.3)(L.SpatialDropout2D(0.5)(L.Dropout(0.5)(x))))
        ),
    ),  # fmt: skip
    ("rescaling", (5, 5, 3), lambda L, x: L.Rescaling(1 / 127.5, offset=-1)(x)),
    (
        "dot_3d_axes",
        (5, 4),
        lambda L, x: [
            L.Dot(axes=2)([x, L.Dense(4)(x)]),  # (N, 5, 5)
            L.Dot(axes=(1, 1), normalize=True)([x, L.Dense(3)(x)]),  # (N, 4, 3)
            L.Dot(axes=(2, 1))([x, L.Permute((2, 1))(L.Dense(4)(x))]),  # (N, 5, 5)
            L.Dot(axes=-1)([L.Flatten()(x), L.Dense(20)(L.Flatten()(x))]),  # 2-D: (N, 1)
            L.Dot(axes=1, normalize=True)([L.Dense(7)(L.Flatten()(x)), L.Dense(7)(L.Flatten()(x))]),
        ],
    ),  # fmt: skip
]


@pytest.mark.parametrize("name,shape,body", CASES, ids=[c[0] for c in CASES])
def test_layer(tmp_path, name, shape, body):
    K = tf_keras()
    m = _model(K, shape, body)
    check(m, _x(shape), tmp_path)


def test_normalization_layer(tmp_path):
    K = tf_keras()
    inp = K.Input((5, 6, 3))
    norm = K.layers.Normalization()
    norm.adapt(np.random.default_rng(1).normal(2.0, 3.0, (20, 5, 6, 3)).astype(np.float32))
    check(K.Model(inp, K.layers.Conv2D(2, 1)(norm(inp))), _x((5, 6, 3)), tmp_path)


def test_channels_first_where_cpu_runs_it(tmp_path):
    """channels_first layers that TF executes on CPU (pooling, padding, upsampling, BN axis 1, Dense)."""
    K = tf_keras()
    L = K.layers
    inp = K.Input((3, 8, 9))
    x = L.ZeroPadding2D(1, data_format="channels_first")(inp)
    x = L.BatchNormalization(axis=1)(x)
    x = L.UpSampling2D(2, data_format="channels_first")(x)
    x = L.Cropping2D(((1, 0), (0, 2)), data_format="channels_first")(x)
    y = L.GlobalAveragePooling2D(data_format="channels_first")(x)
    m = K.Model(inp, [x, L.Dense(4)(y)])
    randomize(m)
    conv, _, _ = check(m, _x((3, 8, 9)), tmp_path)
    assert conv.config["inputs"][0]["layout"] == "keras"  # a channels_first model is NCHW already


def test_nhwc_boundary(tmp_path):
    K = tf_keras()
    m = _model(K, (7, 8, 3), lambda L, x: L.Conv2D(4, 3, strides=2, padding="same")(x))
    conv, _, _ = check(m, _x((7, 8, 3)), tmp_path, nhwc=True)
    assert [i["layout"] for i in conv.config["inputs"]] == ["keras"]


def test_keras3_hard_sigmoid_and_layers(tmp_path):
    """Keras 3 writes .keras archives; its hard_sigmoid is relu6(x + 3) / 6, not Keras 2's 0.2 x + 0.5."""
    K = keras3()
    L = K.layers
    inp = K.Input((9, 10, 3))
    x = L.Conv2D(4, 3, strides=2, padding="same", activation="hard_sigmoid")(inp)
    x = L.BatchNormalization()(x)
    x = L.SeparableConv2D(5, 3, padding="same")(x)
    x = L.DepthwiseConv2D(3, padding="same")(x)
    x = L.Activation("hard_sigmoid")(L.UpSampling2D(2, interpolation="bilinear")(x))
    m = K.Model(inp, x)
    randomize(m)
    conv, _, _ = check(m, _x((9, 10, 3)) * 4, tmp_path, kind="keras")
    assert abs(conv.config["steps"][0]["activation"]["hard_slope"] - 1 / 6) < 1e-12


def test_dot_emitted_source_matches_keras(tmp_path):
    """Dot through --emit-source: the standalone file (torch only) gives Keras's outputs."""
    import importlib.util

    import safetensors.torch
    import torch

    from tests.cli_runner import run_cli
    from tests.keras_cases import save

    K = tf_keras()
    L = K.layers
    inp = K.Input((5, 4))
    f = L.Flatten()(inp)
    m = K.Model(inp, [L.Dot(axes=(1, 1), normalize=True)([inp, L.Dense(3)(inp)]), L.Dot(axes=1)([f, f])])
    randomize(m)
    h5, _ = save(m, tmp_path)
    out, src = tmp_path / "net.safetensors", tmp_path / "net.py"
    code, _, err = run_cli("keras2torch", h5, "-o", out, "--emit-source", src)
    assert code == 0, err
    spec = importlib.util.spec_from_file_location("emitted_dot", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.Net().eval()
    net.load_state_dict(safetensors.torch.load_file(str(out)))
    x = _x((5, 4))
    with torch.no_grad():
        ours = net(torch.from_numpy(x).movedim(-1, 1))
    for o, k in zip(ours, m(x, training=False), strict=True):
        k = np.asarray(k)
        o = np.moveaxis(o.numpy(), 1, -1) if o.dim() >= 3 else o.numpy()
        np.testing.assert_allclose(o, k, atol=1e-5 * np.abs(k).max())

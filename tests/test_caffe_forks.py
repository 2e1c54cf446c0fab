"""Layers of the BVLC-compatible forks: ShuffleChannel, ReLU6, Swish (OpenCV dnn 4.x), Clip, Upsample, Axpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segconvert.converters.caffe_generic import convert_caffe_generic
from segconvert.errors import CaffeFormatError, ConversionError
from segconvert.formats.caffemodel import read_caffemodel
from segconvert.graph import load_net
from segconvert.reference_models.caffe_generic import CaffeGenericNet
from segconvert.reference_models.caffe_ssd_ops import ShuffleChannel
from tests import caffe_bytes as cb
from tests.caffe_ssd_cases import conv, layer, net_text, opencv_outputs, write_net

_SHAPE = (1, 3, 6, 8)


def _convert(tmp_path, body, shape=_SHAPE, seed=0):
    proto, model = write_net(tmp_path, net_text("t", shape, body), seed=seed)
    c = convert_caffe_generic(load_net(proto, model))
    m = CaffeGenericNet(**c.config)
    m.load_state_dict(c.state_dict)
    x = np.random.default_rng(seed + 1).uniform(-8, 8, shape).astype(np.float32)
    return proto, model, m.eval().layer_outputs(torch.from_numpy(x)), x


@pytest.mark.parametrize(
    "body",
    [
        layer("s", "ShuffleChannel", ["c"], body="  shuffle_channel_param {\n    group: 2\n  }\n"),
        layer("s", "ShuffleChannel", ["c"], body="  shuffle_channel_param {\n    group: 4\n  }\n"),
        layer("s", "ReLU6", ["c"]),
        layer("s", "Swish", ["c"]),
    ],
    ids=["shuffle_g2", "shuffle_g4", "relu6", "swish"],
)
def test_against_opencv(tmp_path, body):
    pytest.importorskip("cv2")
    proto, model, ours, x = _convert(tmp_path, conv("c", "data", 8) + body)
    (cv,) = opencv_outputs(proto, model, x, ["s"])
    np.testing.assert_allclose(ours["s/0"].numpy(), cv, rtol=1e-5, atol=1e-5)


def test_hand_derived_values(tmp_path):
    # ShuffleChannel: channels (group, C/group) transposed: 6 channels, 2 groups -> 0 3 1 4 2 5
    x = torch.arange(6.0).reshape(1, 6, 1, 1)
    assert ShuffleChannel(2)(x).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    body = conv("c", "data", 4)
    body += layer("r6", "ReLU6", ["c"])
    body += layer("r6s", "ReLU6", ["c"], body="  relu6_param {\n    negative_slope: 0.1\n  }\n")
    body += layer("clip", "Clip", ["c"], body="  clip_param {\n    min: -0.5\n    max: 0.7\n  }\n")
    body += layer("sw", "Swish", ["c"], body="  swish_param {\n    beta: 1.5\n  }\n")
    body += layer("up", "Upsample", ["c"], body="  upsample_param {\n    scale: 2\n  }\n")
    body += layer("up_hw", "Upsample", ["c"], body="  upsample_param {\n    upsample_h: 18\n    upsample_w: 16\n  }\n")
    body += layer("gp", "Pooling", ["c"], body="  pooling_param {\n    pool: AVE\n    global_pooling: true\n  }\n")
    body += conv("c2", "data", 4)
    body += layer("axpy", "Axpy", ["gp", "c", "c2"])
    _, _, out, _ = _convert(tmp_path, body)
    c = out["c/0"].numpy().astype(np.float64)
    np.testing.assert_array_equal(out["r6/0"].numpy(), np.clip(c, 0, 6).astype(np.float32))
    leaky = np.minimum(np.maximum(c, 0) + np.float32(0.1) * np.minimum(c, 0), 6)  # rog93's ReLU6 with a slope
    np.testing.assert_allclose(out["r6s/0"].numpy(), leaky, rtol=1e-6, atol=1e-6)
    assert out["r6s/0"].min() < 0 and out["r6s/0"].max() == 6
    np.testing.assert_array_equal(out["clip/0"].numpy(), np.clip(c, -0.5, 0.7).astype(np.float32))
    np.testing.assert_allclose(out["sw/0"].numpy(), c / (1 + np.exp(-1.5 * c)), rtol=1e-6, atol=1e-6)
    assert out["up/0"].shape == (1, 4, 12, 16) and out["up_hw/0"].shape == (1, 4, 18, 16)
    np.testing.assert_array_equal(out["up/0"].numpy()[:, :, 5, 7], c[:, :, 2, 3].astype(np.float32))  # nearest
    np.testing.assert_array_equal(out["up_hw/0"].numpy()[:, :, 17, 15], c[:, :, 5, 7].astype(np.float32))
    a = c.mean((2, 3), keepdims=True)
    want = a * c + out["c2/0"].numpy()
    np.testing.assert_allclose(out["axpy/0"].numpy(), want, rtol=1e-5, atol=1e-5)


def _pool(kernel: int, stride: int, pad: int, mode: str = "MAX") -> str:
    body = (
        f"  pooling_param {{\n    pool: {mode}\n    kernel_size: {kernel}\n    stride: {stride}\n    pad: {pad}\n  }}\n"
    )
    return layer("pool", "Pooling", ["c"], ["pool", "mask"], body)


_UNPOOL = layer(
    "unpool", "Upsample", ["pool", "mask"], body="  upsample_param {\n    upsample_h: 7\n    upsample_w: 9\n  }\n"
)


@pytest.mark.parametrize("kernel,stride,pad", [(2, 2, 0), (3, 2, 1), (3, 3, 0)])
def test_pooling_mask_top_against_opencv(tmp_path, kernel, stride, pad):
    """Caffe's MAX pooling mask (second top, what SegNet's Upsample reads): index h * W + w in the input plane."""
    cv2 = pytest.importorskip("cv2")
    body = conv("c", "data", 4) + _pool(kernel, stride, pad) + _UNPOOL  # the mask top's reader
    proto, model, ours, x = _convert(tmp_path, body, shape=(1, 3, 7, 9))
    cv_proto = tmp_path / "opencv.prototxt"  # OpenCV has no Upsample: the same net without the reader
    cv_proto.write_text(net_text("t", (1, 3, 7, 9), conv("c", "data", 4) + _pool(kernel, stride, pad)))
    net = cv2.dnn.readNetFromCaffe(str(cv_proto), str(model))
    net.setInput(x)
    ((values, mask),) = net.forwardAndRetrieve(["pool"])
    np.testing.assert_allclose(ours["pool/0"].numpy(), values, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ours["pool/1"].numpy(), mask)


def test_segnet_unpooling_hand_derived(tmp_path):
    """alexgkendall/caffe-segnet Upsample: each pooled value back at its mask index, zeros elsewhere."""
    body = conv("c", "data", 4) + _pool(2, 2, 0) + _UNPOOL
    body += layer(
        "unpool2", "Upsample", ["pool", "mask"], body="  upsample_param {\n    scale: 2\n    pad_out_h: true\n  }\n"
    )
    _, _, out, _ = _convert(tmp_path, body, shape=(1, 3, 7, 9))
    c = out["c/0"].numpy()
    want = np.zeros_like(c)
    for i in range(4):  # ceil rounding: the last row / column windows are clipped to the input
        for j in range(5):
            win = c[:, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
            flat = win.reshape(1, 4, -1)
            arg = flat.argmax(-1)  # the first maximum in row-major order, as Caffe
            for ch in range(4):
                r, q = divmod(int(arg[0, ch]), win.shape[3])
                want[0, ch, 2 * i + r, 2 * j + q] = flat[0, ch, arg[0, ch]]
    np.testing.assert_array_equal(out["unpool/0"].numpy(), want)
    assert out["unpool2/0"].shape == (1, 4, 7, 10)  # 4 * 2 - 1 rows, 5 * 2 columns
    # the mask indexes the 7x9 input plane; Caffe writes them into the 7x10 plane's flat memory all the same
    flat = out["unpool2/0"].numpy().reshape(1, 4, -1)
    np.testing.assert_array_equal(flat[..., :63], want.reshape(1, 4, -1))
    assert not flat[..., 63:].any()


def test_unsupported_fork_configurations_are_named(tmp_path):
    for body, why in (
        (_pool(2, 2, 0, "AVE") + _UNPOOL, "pool (Pooling: a second (mask) top needs MAX pooling)"),
        (_pool(2, 2, 0), "pool (Pooling: 2 tops: a mask top is converted only as the second bottom of SegNet's"),
    ):
        proto, model = write_net(tmp_path, net_text("mask", (1, 3, 7, 9), conv("c", "data", 4) + body))
        with pytest.raises(ConversionError) as err:
            convert_caffe_generic(load_net(proto, model))
        assert why in str(err.value)
    body = conv("c", "data", 4) + layer(
        "up", "Upsample", ["c"], body="  upsample_param {\n    upsample_h: 13\n    upsample_w: 16\n  }\n"
    )
    with pytest.raises(CaffeFormatError) as err:
        write_net(tmp_path, net_text("odd_upsample", _SHAPE, body))
    assert err.value.layer == "up" and "not an integer multiple of 6x8" in err.value.message


def test_fork_fields_read_from_binary_at_their_numbers(tmp_path):
    """A caffemodel written by the forks: SegNet's upsample_param at 137 (BVLC's embed_param number), farmingyard's
    shuffle_channel_param at 164, BVLC's clip_param at 148 / swish_param at 147, the SSD fields at 202-206."""
    up = cb.ld(137, cb.vi(1, 2) + cb.vi(6, 12))  # scale 2, upsample_h 12
    shuffle = cb.ld(164, cb.vi(1, 3))
    clip = cb.ld(148, cb.tag(1, 5) + np.float32(-1.5).tobytes() + cb.tag(2, 5) + np.float32(2.5).tobytes())
    swish = cb.ld(147, cb.tag(1, 5) + np.float32(0.75).tobytes())
    permute = cb.ld(202, cb.ld(1, bytes([0, 2, 3, 1])))
    norm = cb.ld(206, cb.vi(1, 0) + cb.vi(3, 0))
    data = b"".join(
        [
            cb.layer("up", "Upsample", extra=up),
            cb.layer("sh", "ShuffleChannel", extra=shuffle),
            cb.layer("cl", "Clip", extra=clip),
            cb.layer("sw", "Swish", extra=swish),
            cb.layer("pm", "Permute", extra=permute),
            cb.layer("nm", "Normalize", [cb.blob([1.0, 2.0], shape=[2])], extra=norm),
        ]
    )
    f = tmp_path / "forks.caffemodel"
    f.write_bytes(data)
    model = read_caffemodel(f)
    assert not model.warnings
    p = {layer.name: layer.param for layer in model.layers}
    assert (p["up"].upsample_param.scale, p["up"].upsample_param.upsample_h) == (2, 12)
    assert p["sh"].shuffle_channel_param.group == 3
    assert (p["cl"].clip_param.min, p["cl"].clip_param.max) == (-1.5, 2.5)
    assert p["sw"].swish_param.beta == 0.75
    assert list(p["pm"].permute_param.order) == [0, 2, 3, 1]
    assert not p["nm"].norm_param.across_spatial and not p["nm"].norm_param.channel_shared
    assert model.layer("nm").blobs[0].tolist() == [1.0, 2.0]

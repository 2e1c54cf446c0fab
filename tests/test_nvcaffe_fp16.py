"""NVCaffe (NVIDIA/caffe) blobs in ``BlobProto.raw_data`` / ``raw_data_type``, written here in the fork's layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segconvert.converters.caffe_generic import convert_caffe_generic
from segconvert.errors import CaffeFormatError
from segconvert.formats.caffemodel import read_caffemodel
from segconvert.graph import load_net
from segconvert.reference_models.caffe_generic import CaffeGenericNet
from tests import caffe_bytes as cb
from tests.caffe_ssd_cases import conv, layer, net_text
from tests.cli_runner import run_cli

_DOUBLE, _FLOAT, _FLOAT16, _INT = 0, 1, 2, 3
_DTYPES = {_DOUBLE: "<f8", _FLOAT: "<f4", _FLOAT16: "<f2"}


def nv_blob(values: np.ndarray, raw_type: int = _FLOAT16, cut: int = 0) -> bytes:
    """NVCaffe's BlobProto as its C++ writes it (field order): shape 7, raw_data_type 10, raw_data 12."""
    raw = np.ascontiguousarray(values, dtype=_DTYPES.get(raw_type, "<i4")).tobytes()
    raw = raw[: len(raw) - cut] if cut else raw
    shape = cb.ld(7, cb.ld(1, b"".join(cb.varint(d) for d in values.shape)))
    return shape + cb.vi(10, raw_type) + cb.ld(12, raw)


def nv_layer(name: str, ltype: str, blobs: list[bytes], bottoms=(), tops=()) -> bytes:
    """A layer with NVCaffe's precision fields: forward_type / backward_type FLOAT16 (varints 145, 146)."""
    return cb.layer(name, ltype, blobs, bottoms, tops, extra=cb.vi(145, _FLOAT16) + cb.vi(146, _FLOAT16))


def _weights(rng):
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float16)
    w.flat[:4] = [np.float16(6e-8), np.float16(-6.1e-5), np.float16(65504), np.float16(-0.0)]  # subnormal, max
    return w, rng.standard_normal(4).astype(np.float16)


@pytest.fixture
def nv_net(tmp_path):
    rng = np.random.default_rng(0)
    w, b = _weights(rng)
    mean, var = rng.standard_normal(4).astype(np.float32), rng.uniform(0.5, 2, 4)
    data = cb.text(1, "nv") + cb.vi(11, _FLOAT16) + cb.vi(13, _FLOAT)  # name, default_forward_type / _math
    data += nv_layer("c", "Convolution", [nv_blob(w), nv_blob(b)], ["data"], ["c"])
    data += nv_layer(
        "bn", "BatchNorm", [nv_blob(mean, _FLOAT), nv_blob(var, _DOUBLE), nv_blob(np.ones(1), _FLOAT16)], ["c"], ["c"]
    )
    model = tmp_path / "nv.caffemodel"
    model.write_bytes(data)
    body = conv("c", "data", 4).replace('  type: "Convolution"\n', '  type: "Convolution"\n  forward_type: FLOAT16\n')
    body += layer("bn", "BatchNorm", ["c"], ["c"], "  batch_norm_param {\n    use_global_stats: true\n  }\n")
    proto = tmp_path / "nv.prototxt"
    text = net_text("nv", (1, 3, 6, 6), body).replace('name: "nv"\n', 'name: "nv"\ndefault_forward_type: FLOAT16\n', 1)
    proto.write_text(text)
    return proto, model, (w, b, mean, var)


def test_fp16_float_double_raw_data_read_bit_exact(nv_net):
    proto, model_file, (w, b, mean, var) = nv_net
    model = read_caffemodel(model_file)
    conv_blobs = model.layer("c").blobs
    assert conv_blobs[0].dtype == np.float32 and conv_blobs[0].shape == (4, 3, 3, 3)
    want = w.astype(np.float32)
    assert np.array_equal(conv_blobs[0].view(np.uint32), want.view(np.uint32))  # bit-exact widening (-0.0 too)
    assert np.array_equal(conv_blobs[1], b.astype(np.float32))
    bn = model.layer("bn").blobs
    assert bn[0].dtype == np.float32 and np.array_equal(bn[0], mean)
    assert bn[1].dtype == np.float64 and np.array_equal(bn[1], var)  # DOUBLE stays double, like double_data
    assert model.layer("c").param.forward_type == _FLOAT16 and model.layer("c").param.backward_type == _FLOAT16
    assert (model.net_param.default_forward_type, model.net_param.default_forward_math) == (_FLOAT16, _FLOAT)
    (note,) = model.warnings
    assert "NVCaffe raw_data blobs (1 DOUBLE, 1 FLOAT, 3 FLOAT16) in layer(s) c, bn" in note
    assert "FLOAT16 widened to float32 (exact)" in note


def test_fp16_net_converts_and_reports(nv_net, tmp_path):
    proto, model_file, (w, b, mean, var) = nv_net
    net = load_net(proto, model_file)
    assert not [w for w in net.warnings if "unknown" in w]  # NVCaffe's text fields are in the schema
    conv_ = convert_caffe_generic(net)
    m = CaffeGenericNet(**conv_.config)
    m.load_state_dict(conv_.state_dict)
    assert torch.equal(m.c.weight, torch.from_numpy(w.astype(np.float32)))
    out = tmp_path / "nv.safetensors"
    code, stdout, err = run_cli("caffe2torch", proto, model_file, "-o", out)
    assert code == 0, err
    assert "note: NVCaffe raw_data blobs" in stdout and "FLOAT16 widened to float32 (exact)" in stdout


@pytest.mark.parametrize(
    "blob,message",
    [
        (lambda v: nv_blob(v, cut=1), "NVCaffe raw_data of 215 bytes is not a multiple of 2 (FLOAT16)"),
        (lambda v: nv_blob(v, cut=2), "blob data length 107 disagrees with its shape [4, 3, 3, 3] (108 values)"),
        (lambda v: nv_blob(v.astype(np.int32), _INT), "NVCaffe raw_data_type INT is not a floating-point type"),
        (lambda v: cb.blob([1.0]) + nv_blob(v), "blob has both data and NVCaffe raw_data"),
    ],
    ids=["odd_bytes", "short", "int_type", "data_and_raw"],
)
def test_bad_raw_data_is_a_one_line_error(tmp_path, blob, message):
    w, _ = _weights(np.random.default_rng(1))
    f = tmp_path / "bad.caffemodel"
    f.write_bytes(cb.layer("ok", "ReLU") + nv_layer("c", "Convolution", [blob(w)]))
    with pytest.raises(CaffeFormatError) as err:
        read_caffemodel(f)
    e = err.value
    assert e.layer == "c" and e.offset is not None and message in e.message
    assert str(e) == e.one_line() and "\n" not in str(e)


def test_truncated_fp16_file(nv_net, tmp_path):
    proto, model_file, _ = nv_net
    data = model_file.read_bytes()
    for cut in (len(data) // 3, len(data) - 5):
        f = tmp_path / f"cut{cut}.caffemodel"
        f.write_bytes(data[:cut])
        with pytest.raises(CaffeFormatError) as err:
            read_caffemodel(f)
        assert "truncated" in err.value.message and err.value.layer in ("c", "bn") and err.value.offset is not None
        code, out, stderr = run_cli("caffe2torch", proto, f, "-o", tmp_path / f"o{cut}.safetensors")
        assert code == 2 and len(stderr.strip().splitlines()) == 1 and "truncated" in stderr
        assert not (tmp_path / f"o{cut}.safetensors").exists()

"""The streaming caffemodel reader and prototxt parser against the real-Caffe fixtures and protobuf."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segconvert.errors import CaffeFormatError
from segconvert.formats.caffe_schema import message_class
from segconvert.formats.caffemodel import read_caffemodel
from segconvert.formats.prototxt import parse_prototxt, read_prototxt
from segconvert.graph import load_net
from segconvert.testing import fixture_path
from tests import caffe_bytes as cb


def _caffe_cases() -> list[Path]:
    root = fixture_path("caffe")
    cases = sorted(p.parent for p in root.glob("*/net.prototxt"))
    cases += sorted(p.parent for p in root.glob("layers/*/net.prototxt"))
    assert len(cases) >= 82, f"expected the 6 network cases and 76 layer cases under {root}"
    return cases


def _all_prototxts() -> list[Path]:
    caffe = fixture_path("caffe")
    mtcnn = fixture_path("real", "mtcnn_caffe")
    return sorted(caffe.rglob("*.prototxt")) + sorted(mtcnn.glob("*.prototxt"))


def _all_caffemodels() -> list[Path]:
    caffe = fixture_path("caffe")
    mtcnn = fixture_path("real", "mtcnn_caffe")
    return sorted(caffe.rglob("*.caffemodel")) + sorted(mtcnn.glob("*.caffemodel"))


def test_every_fixture_prototxt_parses():
    files = _all_prototxts()
    assert len(files) >= 90
    for f in files:
        net = read_prototxt(f)
        assert len(net.layer) + len(net.layers) > 0, f


def test_every_blob_equals_protobufs_own_parse_bit_for_bit():
    files = _all_caffemodels()
    assert len(files) >= 85
    for f in files:
        ours = read_caffemodel(f)
        ref = message_class("NetParameter")()
        ref.ParseFromString(f.read_bytes())
        ref_layers = list(ref.layer) + list(ref.layers)
        assert [layer.name for layer in ours.layers] == [layer.name for layer in ref_layers], f
        for mine, theirs in zip(ours.layers, ref_layers, strict=True):
            assert len(mine.blobs) == len(theirs.blobs), (f, mine.name)
            for a, b in zip(mine.blobs, theirs.blobs, strict=True):
                values = b.double_data if len(b.double_data) else b.data
                expected = np.asarray(values, dtype=a.dtype)
                assert a.size == expected.size
                assert a.reshape(-1).tobytes() == expected.tobytes(), (f, mine.name)
                legacy = [b.HasField(n) for n in ("num", "channels", "height", "width")]
                if any(legacy):  # Caffe's Blob::FromProto: legacy dims win when present
                    assert tuple(a.shape) == (b.num, b.channels, b.height, b.width)
                else:
                    assert tuple(a.shape) == tuple(b.shape.dim)


def test_blobs_view_the_memory_map_read_only():
    model = read_caffemodel(fixture_path("caffe", "pspnet50_ade20k_473", "weights.caffemodel"))
    blob = model.layers[0].blobs[0]
    assert not blob.flags.writeable
    assert not blob.flags.owndata  # a view, not a copy
    base = blob
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    assert type(base).__name__ == "mmap"


def test_inferred_shapes_equal_real_caffe_for_every_layer():
    for case in _caffe_cases():
        meta = json.loads((case / "meta.json").read_text())
        expected = {o["key"]: tuple(o["shape"]) for o in meta["outputs"]}
        implicit = {layer["name"] for layer in meta["layers"] if layer.get("implicit")}
        net = load_net(case / "net.prototxt", case / "weights.caffemodel")
        seen = set()
        for layer in net.layers:
            for i, shape in enumerate(layer.output_shapes):
                key = f"{layer.name}/{i}"
                assert key in expected, (case.name, key)
                assert shape == expected[key], (case.name, key, shape, expected[key])
                seen.add(key)
        missing = {k for k in expected if k.rsplit("/", 1)[0] not in implicit} - seen
        assert not missing, (case.name, sorted(missing)[:5])
        # parameter blob shapes equal what Caffe reported for each layer
        for mlayer in meta["layers"]:
            if mlayer.get("implicit") or not mlayer.get("blob_shapes"):
                continue
            ours = net.layer(mlayer["name"])
            assert [list(b.shape) for b in ours.blobs] == mlayer["blob_shapes"], (case.name, mlayer["name"])


def test_v1_format_upgraded_with_legacy_dims():
    case = fixture_path("caffe", "v1_format")
    model = read_caffemodel(case / "weights.caffemodel")
    assert model.format == "V1"
    assert {layer.type for layer in model.layers} >= {"Convolution", "ReLU", "Pooling", "InnerProduct"}
    net = load_net(case / "net.prototxt", case / "weights.caffemodel")
    assert net.format == "V1"
    ip = next(layer for layer in net.layers if layer.type == "InnerProduct")
    raw = model.layer(ip.name).blobs
    assert raw[0].ndim == 4 and raw[0].shape[:2] == (1, 1)  # legacy (1, 1, out, in) on disk
    assert ip.blobs[0].ndim == 2 and ip.blobs[1].ndim == 1  # reshaped to Caffe's expected shapes


def test_fork_fields_decode_at_official_numbers():
    psp = load_net(caffemodel=fixture_path("caffe", "pspnet50_ade20k_473", "weights.caffemodel"))
    interp = psp.layer("conv5_3_pool1_interp").param
    assert interp.interp_param.height == 60 and interp.interp_param.width == 60
    bn = psp.layer("conv1_1_3x3_s2/bn").param
    assert bn.HasField("bn_param") and bn.bn_param.frozen
    # BVLC-numbered file: the Input layer's field 143 is input_param, not interp_param
    bvlc = read_caffemodel(fixture_path("caffe", "layers", "pool_max_k3s2p1", "weights.caffemodel"))
    inputs = [layer for layer in bvlc.layers if layer.type == "Input"]
    if inputs:
        assert [list(s.dim) for s in inputs[0].param.input_param.shape] == [[1, 4, 11, 13]]
        assert not inputs[0].param.HasField("interp_param")


def test_older_pspnet_numbering_decoded_by_layer_type(tmp_path):
    interp_param = cb.vi(1, 60) + cb.vi(2, 60)
    bn_param = cb.vi(5, 1)
    data = cb.layer("up", "Interp", extra=cb.ld(163, interp_param)) + cb.layer(
        "bn", "BN", extra=cb.ld(137, bn_param), blobs=[cb.blob([1.0], shape=[1, 1, 1, 1])] * 4
    )
    f = tmp_path / "old.caffemodel"
    f.write_bytes(data)
    model = read_caffemodel(f)
    assert model.layer("up").param.interp_param.height == 60
    assert model.layer("bn").param.bn_param.frozen


def test_caffemodel_alone_supplies_names_types_and_blobs():
    model = read_caffemodel(fixture_path("real", "mtcnn_caffe", "det1.caffemodel"))
    net = load_net(caffemodel=model.path)
    assert [layer.name for layer in net.layers if layer.blobs] == [layer.name for layer in model.layers if layer.blobs]


def test_name_type_blobs_only_caffemodel_is_valid_with_prototxt(tmp_path):
    """Caffe loads caffemodels holding only name, type and blobs; the prototxt supplies the rest."""
    case = fixture_path("caffe", "layers", "conv_dilation2")
    full = read_caffemodel(case / "weights.caffemodel")
    data = b""
    for layer in full.layers:
        blobs = [cb.blob(b.reshape(-1).tolist(), shape=list(b.shape)) for b in layer.blobs]
        data += cb.layer(layer.name, layer.type, blobs=blobs)
    f = tmp_path / "bare.caffemodel"
    f.write_bytes(data)
    net = load_net(case / "net.prototxt", f)
    ref = load_net(case / "net.prototxt", case / "weights.caffemodel")
    for a, b in zip(net.layers, ref.layers, strict=True):
        assert a.output_shapes == b.output_shapes
        for x, y in zip(a.blobs, b.blobs, strict=True):
            assert np.array_equal(x, y)


def test_unused_weights_warned_and_missing_weights_error(tmp_path):
    det2 = fixture_path("real", "mtcnn_caffe")
    net = load_net(det2 / "det2.prototxt", det2 / "det2.caffemodel")
    assert net.unused_weights == ["conv5-3"]
    assert any("conv5-3" in w for w in net.warnings)
    # a conv prototxt with a caffemodel that has no weights for it
    conv = fixture_path("caffe", "layers", "conv_stride2")
    pool = fixture_path("caffe", "layers", "pool_max_k3s2p1")
    with pytest.raises(CaffeFormatError) as err:
        load_net(conv / "net.prototxt", pool / "weights.caffemodel")
    assert "needs weights" in str(err.value) and err.value.layer is not None


def test_hand_built_blob_encodings(tmp_path):
    data = (
        cb.layer("packed", "X", blobs=[cb.blob([1.5, -2.0, 3.25], shape=[3])])
        + cb.layer("unpacked", "X", blobs=[cb.blob([1.0, 2.0], shape=[2], packed=False)])
        + cb.layer("double", "X", blobs=[cb.blob([0.1, 0.2], shape=[1, 2], double=True)])
        + cb.layer("legacy", "X", blobs=[cb.blob([1, 2, 3, 4, 5, 6], legacy=(1, 1, 2, 3))])
        + cb.v1_layer("v1conv", 4, blobs=[cb.blob([7.0], legacy=(1, 1, 1, 1))])
    )
    f = tmp_path / "hand.caffemodel"
    f.write_bytes(data)
    m = read_caffemodel(f)
    assert m.format == "V1+V2"
    assert m.layer("packed").blobs[0].tolist() == [1.5, -2.0, 3.25]
    assert m.layer("unpacked").blobs[0].tolist() == [1.0, 2.0]
    d = m.layer("double").blobs[0]
    assert d.dtype == np.float64 and d.shape == (1, 2) and d.tolist() == [[0.1, 0.2]]
    assert m.layer("legacy").blobs[0].shape == (1, 1, 2, 3)
    v1 = m.layer("v1conv")
    assert v1.type == "Convolution" and v1.blobs[0].item() == 7.0


def test_blob_length_disagreeing_with_shape_is_an_error(tmp_path):
    f = tmp_path / "bad.caffemodel"
    f.write_bytes(cb.layer("conv", "Convolution", blobs=[cb.blob([1.0] * 5, shape=[2, 3])]))
    with pytest.raises(CaffeFormatError) as err:
        read_caffemodel(f)
    e = err.value
    assert e.layer == "conv" and e.offset is not None and "disagrees with its shape" in str(e)


def test_2gb_offsets_are_not_a_ceiling(tmp_path):
    """A sparse file with a blob crossing the 2 GB mark and a layer after it (protobuf refuses > 2 GB)."""
    n = (2**31 + 2**20) // 4  # ~2.001 GB of float32
    header = cb.text(1, "big") + cb.text(2, "Convolution")
    blob_head = cb.ld(7, cb.ld(1, cb.varint(n))) + cb.tag(5, 2) + cb.varint(4 * n)
    blob_len = len(blob_head) + 4 * n
    layer_body_len = len(header) + len(cb.tag(7, 2) + cb.varint(blob_len)) + blob_len
    f = tmp_path / "big.caffemodel"
    try:
        with f.open("wb") as fh:
            fh.write(cb.tag(100, 2) + cb.varint(layer_body_len) + header + cb.tag(7, 2) + cb.varint(blob_len))
            fh.write(blob_head)
            data_start = fh.tell()
            fh.seek(data_start + 4 * n - 4)
            fh.write(np.float32(42.0).tobytes())
            fh.write(cb.layer("after", "Scale", blobs=[cb.blob([3.0], shape=[1])]))
    except OSError as exc:  # pragma: no cover - depends on the filesystem
        pytest.skip(f"cannot write a sparse 2 GB file here: {exc}")
    m = read_caffemodel(f)
    big = m.layer("big").blobs[0]
    assert big.size == n and big[-1] == 42.0 and big[0] == 0.0
    after = m.layer("after")
    assert after.offset > 2**31 and after.blobs[0].tolist() == [3.0]


@pytest.mark.parametrize(
    ("head", "what"),
    [(b"\x89HDF\r\n\x1a\n", "HDF5"), (b"PK\x03\x04", "zip"), (b"\x80\x02}q", "pickle"), (b"\x89PNG\r\n", "PNG")],
)
def test_wrong_file_types_are_named(tmp_path, head, what):
    f = tmp_path / "x.caffemodel"
    f.write_bytes(head + b"\x00" * 64)
    with pytest.raises(CaffeFormatError, match=what):
        read_caffemodel(f)


def test_prototxt_given_as_caffemodel_and_vice_versa(tmp_path):
    proto = fixture_path("caffe", "layers", "pool_max_k3s2p1", "net.prototxt")
    with pytest.raises(CaffeFormatError) as err:
        read_caffemodel(proto)
    assert err.value.offset is not None
    model = fixture_path("caffe", "layers", "conv_stride2", "weights.caffemodel")
    with pytest.raises(CaffeFormatError, match="not a text prototxt"):
        read_prototxt(model)
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(CaffeFormatError, match="empty"):
        read_caffemodel(empty)


def test_prototxt_errors_name_file_line_column():
    with pytest.raises(CaffeFormatError) as err:
        parse_prototxt('name: "n"\nlayer {\n  name: "conv"\n  type: "Convolution"\n  bogus_field: 3\n}\n', "x.prototxt")
    e = err.value
    assert (e.file, e.line, e.column, e.layer) == ("x.prototxt", 5, 3, "conv")
    assert "bogus_field" in e.one_line()
    with pytest.raises(CaffeFormatError) as err:
        parse_prototxt("layer {\n  name: 'a'\n", "y.prototxt")
    assert err.value.line is not None


def test_legacy_prototxt_forms():
    text = """
    name: "legacy"
    input: "data"
    input_shape { dim: 1 dim: 3 dim: 9 dim: 9 }
    layer { name: "c" type: "Convolution" bottom: "data" top: "c"
            param { name: "shared_w" } param { name: "shared_b" }
            convolution_param { num_output: 2 kernel_size: 3 } }
    layer { name: "c2" type: "Convolution" bottom: "data" top: "c2"
            param { name: "shared_w" } param { name: "shared_b" }
            convolution_param { num_output: 2 kernel_size: 3 } }
    layer { name: "drop" type: "Dropout" bottom: "c" top: "c" include { phase: TRAIN } }
    layer { name: "r" type: "ReLU" bottom: "c" top: "c" exclude { phase: TRAIN } }
    """
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as fh:
        fh.write(text)
    test_net = load_net(fh.name)
    assert [layer.name for layer in test_net.layers] == ["c", "c2", "r"]
    assert test_net.excluded_layers == ["drop"]
    assert test_net.inputs == {"data": (1, 3, 9, 9)}
    assert test_net.layer("r").in_place and test_net.blob_shapes["c"] == (1, 2, 7, 7)
    train_net = load_net(fh.name, phase="TRAIN")
    assert [layer.name for layer in train_net.layers] == ["c", "c2", "drop"]
    Path(fh.name).unlink()


def test_shared_params_of_msc_copies():
    case = fixture_path("caffe", "deeplab_v2_resnet101_msc")
    net = load_net(case / "net.prototxt", case / "weights.caffemodel")
    copy = net.layer("conv1_res075")
    assert copy.shared_from == "conv1"
    assert copy.num_params == 0 and net.layer("conv1").num_params > 0

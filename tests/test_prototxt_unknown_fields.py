"""Unknown prototxt fields: every one listed once with file:line and layer; report-only in data layers."""

from __future__ import annotations

import pytest

from segconvert.errors import CaffeFormatError
from segconvert.formats.prototxt import parse_prototxt
from segconvert.graph import load_net
from tests.caffe_ssd_cases import write_net
from tests.cli_runner import run_cli

# CaffeOnSpark's MemoryData (source_class, source, share_in_parallel are not BVLC fields) and a fork's
# transform option in a data layer; then a net whose layers carry unknown fields of several shapes.
_COS_DATA = """name: "cos"
layer {
  name: "data"
  type: "MemoryData"
  top: "data"
  top: "label"
  source_class: "com.yahoo.ml.caffe.LMDB"
  memory_data_param {
    source: "file:/tmp/train_lmdb/"
    batch_size: 1
    channels: 3
    height: 8
    width: 8
    share_in_parallel: false
  }
  transform_param { scale: 0.00390625 fancy_jitter { amount: 2 } }
}
layer {
  name: "conv1"
  type: "Convolution"
  bottom: "data"
  top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 }
}
"""

_BAD_LAYERS = (
    _COS_DATA
    + """layer {
  type: "ReLU"
  bottom: "conv1"
  top: "conv1"
  relu_param { negative_slope: 0 mystery: [1, 2, 3] }
  name: "relu1"
}
layer {
  name: "pool1"
  type: "Pooling"
  bottom: "conv1"
  top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
  quantize { bits: 8 mode: "int" }
  note: "a" 'b'
}
"""
)


def test_every_unknown_field_listed_once_with_line_and_layer():
    with pytest.raises(CaffeFormatError) as err:
        parse_prototxt(_BAD_LAYERS, "bad.prototxt")
    e = err.value
    text = e.one_line()
    expected = [
        "bad.prototxt:7 layer 'data' (MemoryData): source_class",
        "bad.prototxt:9 layer 'data' (MemoryData): memory_data_param.source",
        "bad.prototxt:14 layer 'data' (MemoryData): memory_data_param.share_in_parallel",
        "bad.prototxt:16 layer 'data' (MemoryData): transform_param.fancy_jitter",
        "bad.prototxt:29 layer 'relu1' (ReLU): relu_param.mystery",
        "bad.prototxt:38 layer 'pool1' (Pooling): quantize",
        "bad.prototxt:39 layer 'pool1' (Pooling): note",
    ]
    for item in expected:
        assert text.count(item) == 1, item
    assert "7 field(s) unknown" in text and "\n" not in text
    # the error points at the first field that matters (not a data layer's): line 29, column 34, layer relu1
    assert (e.file, e.line, e.column, e.layer) == ("bad.prototxt", 29, 34, "relu1")


def test_data_layer_fields_are_reported_not_fatal(tmp_path):
    notes: list[str] = []
    net = parse_prototxt(_COS_DATA, "cos.prototxt", notes)
    assert net.layer[0].memory_data_param.batch_size == 1 and net.layer[0].transform_param.scale == 0.00390625
    (note,) = notes
    assert note.startswith("ignored 4 unknown field(s) of data layers")
    assert "cos.prototxt:7 layer 'data' (MemoryData): source_class" in note
    # through load_net and the CLI: converted, the note printed once
    proto, model = write_net(tmp_path, _COS_DATA)
    assert sum("unknown field" in w for w in load_net(proto, model).warnings) == 1
    code, out, err = run_cli("caffe2torch", proto, model, "-o", tmp_path / "cos.safetensors")
    assert code == 0, err
    assert out.count("ignored 4 unknown field(s) of data layers") == 1


def test_cli_unknown_field_error_is_one_line(tmp_path):
    _, model = write_net(tmp_path, _COS_DATA)
    proto = tmp_path / "bad.prototxt"
    proto.write_text(_BAD_LAYERS)
    code, out, err = run_cli("caffe2torch", proto, model, "-o", tmp_path / "o.safetensors")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{proto}:29 layer 'relu1' (ReLU): relu_param.mystery" in err
    assert not (tmp_path / "o.safetensors").exists()


def test_later_syntax_errors_keep_their_line_and_column():
    text = _COS_DATA.replace("num_output: 4", "num_output: 4\n    engine: WARP_DRIVE")
    with pytest.raises(CaffeFormatError) as err:
        parse_prototxt(text, "x.prototxt")
    e = err.value
    assert (e.line, e.layer) == (24, "conv1") and "WARP_DRIVE" in e.message
    with pytest.raises(CaffeFormatError) as err:  # unbalanced: protobuf's own message, with its line
        parse_prototxt(_COS_DATA + "layer {\n  name: 'x'\n  unknown_here: 1\n", "y.prototxt")
    assert err.value.line is not None and err.value.file == "y.prototxt"


def test_v1_data_layer_fields_are_reported():
    notes: list[str] = []
    text = 'layers { name: "d" type: DATA top: "data" data_param { source: "x" batch_size: 1 source_class: "y" } }'
    parse_prototxt(text, "v1.prototxt", notes)
    assert notes == [
        "ignored 1 unknown field(s) of data layers (they do not shape the net): "
        "v1.prototxt:1 layer 'd' (DATA): data_param.source_class"
    ]

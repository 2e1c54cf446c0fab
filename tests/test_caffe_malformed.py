"""Truncations and byte flips of real fixture files end in the typed error or a valid parse, nothing else."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segconvert.errors import CaffeFormatError
from segconvert.formats.caffemodel import read_caffemodel
from segconvert.formats.prototxt import parse_prototxt
from segconvert.graph import load_net
from segconvert.testing import fixture_path

_CASES = {
    "v1": ("caffe", "v1_format", "weights.caffemodel"),
    "bn": ("caffe", "layers", "bn_psp_frozen", "weights.caffemodel"),
    "det1": ("real", "mtcnn_caffe", "det1.caffemodel"),
}


@pytest.fixture(scope="module")
def originals() -> dict[str, bytes]:
    return {k: fixture_path(*parts).read_bytes() for k, parts in _CASES.items()}


@pytest.fixture(autouse=True, scope="module")
def _memory_cap():
    """Any allocation sized by a corrupt length field (rather than the file) would hit this cap."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = 8 * 1024**3
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _read(tmp: Path, data: bytes) -> None:
    tmp.write_bytes(data)
    try:
        model = read_caffemodel(tmp)
    except CaffeFormatError as exc:
        line = exc.one_line()
        assert str(tmp) in line and "\n" not in line
        return
    for layer in model.layers:  # a valid parse: every blob's values are consistent with its shape
        for blob in layer.blobs:
            assert blob.size == int(__import__("numpy").prod(blob.shape))


_SETTINGS = settings(max_examples=150, deadline=2000, suppress_health_check=list(HealthCheck))


@_SETTINGS
@given(which=st.sampled_from(sorted(_CASES)), frac=st.floats(0.0, 1.0, exclude_max=True))
def test_truncations(tmp_path_factory, originals, which, frac):
    data = originals[which]
    _read(tmp_path_factory.mktemp("t") / "x.caffemodel", data[: int(len(data) * frac)])


@_SETTINGS
@given(
    which=st.sampled_from(sorted(_CASES)),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=4),
)
def test_byte_flips(tmp_path_factory, originals, which, flips):
    data = bytearray(originals[which])
    for frac, xor in flips:
        data[int(len(data) * frac)] ^= xor
    _read(tmp_path_factory.mktemp("f") / "x.caffemodel", bytes(data))


def test_every_truncation_of_a_small_file(tmp_path, originals):
    data = originals["bn"]
    for cut in range(0, len(data), max(1, len(data) // 400)):
        _read(tmp_path / "x.caffemodel", data[:cut])


def test_truncated_network_names_layer_and_offset(tmp_path):
    data = fixture_path("caffe", "pspnet50_ade20k_473", "weights.caffemodel").read_bytes()
    f = tmp_path / "cut.caffemodel"
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CaffeFormatError) as err:
        read_caffemodel(f)
    e = err.value
    assert e.file == str(f) and e.offset is not None and e.layer and "truncated" in e.message


@settings(max_examples=100, deadline=2000, suppress_health_check=list(HealthCheck))
@given(cut=st.integers(0, 4000), junk=st.text(max_size=5))
def test_prototxt_truncations_and_junk(cut, junk):
    text = fixture_path("caffe", "pspnet50_ade20k_473", "net.prototxt").read_text()[:cut] + junk
    try:
        parse_prototxt(text, "p.prototxt")
    except CaffeFormatError as exc:
        assert exc.file == "p.prototxt" and exc.line is not None


def test_weights_shape_mismatch_names_layer_and_offset(tmp_path):
    """A caffemodel whose conv weights do not fit the prototxt (num_output changed)."""
    case = fixture_path("caffe", "layers", "conv_stride2")
    text = (case / "net.prototxt").read_text()
    assert "num_output: 6" in text
    p = tmp_path / "net.prototxt"
    p.write_text(text.replace("num_output: 6", "num_output: 7"))
    with pytest.raises(CaffeFormatError) as err:
        load_net(p, case / "weights.caffemodel")
    e = err.value
    assert e.layer == "conv" and e.offset is not None and "implies" in e.message

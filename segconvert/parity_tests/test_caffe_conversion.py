"""Checks a Caffe prototxt + caffemodel conversion (and, given one, a real-Caffe dump and a converted file)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segconvert.parity.caffe import load_dump
from segconvert.parity_tests._helpers import convert, load_caffe
from segconvert.parity_tests.plugin import UserFiles


def test_net_reads_and_shapes_match_caffe(user_files: UserFiles) -> None:
    """The files parse; where the dump records Caffe's top and weight shapes, ours are the same."""
    user_files.need("prototxt", "caffemodel")
    net = load_caffe(user_files.prototxt, user_files.caffemodel)
    assert net.layers, "no layers"
    if user_files.dump is None or not (user_files.dump / "meta.json").exists():
        return
    _, _, meta = load_dump(user_files.dump, net)
    by_name = {layer.name: layer for layer in net.layers}
    checked = 0
    for entry in meta.get("outputs", []):
        name, top = entry["key"].rsplit("/", 1)
        if name in by_name and "shape" in entry:
            ours = list(by_name[name].output_shapes[int(top)])
            assert ours == list(entry["shape"]), f"layer {name} top {top}: our shape {ours}, Caffe {entry['shape']}"
            checked += 1
    for layer in meta.get("layers", []):
        if layer["name"] in by_name and "blob_shapes" in layer:
            ours = [list(b.shape) for b in by_name[layer["name"]].blobs]
            assert ours == layer["blob_shapes"], (
                f"layer {layer['name']}: weight shapes {ours}, Caffe {layer['blob_shapes']}"
            )
            checked += 1
    assert checked, "the dump's meta.json records no shape of a layer of this net"


def test_every_blob_used_once_and_every_tensor_filled(user_files: UserFiles) -> None:
    """The conversion consumes each source blob exactly once and fills the whole model (strict load)."""
    user_files.need("prototxt", "caffemodel")
    conv = convert(user_files.prototxt, user_files.caffemodel, user_files.arch)
    model = conv.build_model()  # raises on a missing or unexpected tensor
    filled = set(conv.state_dict)
    expected = {k for k in model.state_dict() if not k.startswith("aux.")}
    assert filled == expected
    for key, tensor in conv.state_dict.items():
        assert torch.isfinite(tensor).all(), f"{key} holds NaN/inf"


def test_layer_by_layer_against_caffe(user_files: UserFiles) -> None:
    """Every mapped layer within the depth-growing float32 tolerance of the real-Caffe dump."""
    user_files.need("prototxt", "caffemodel", "dump")
    from segconvert.parity.caffe import caffe_parity

    conv = convert(user_files.prototxt, user_files.caffemodel, user_files.arch)
    inp, outputs, meta = load_dump(user_files.dump, load_caffe(user_files.prototxt, user_files.caffemodel))
    report, _ = caffe_parity(conv.build_model(), conv.tap_map, inp, outputs, meta, source=str(user_files.dump))
    assert report.rows, "no layer of the dump could be compared (are the outputs keyed '<layer>/<top index>'?)"
    assert report.ok, "\n" + report.format(every=10)


def test_output_argmax_agrees_with_caffe(user_files: UserFiles) -> None:
    """At least 99.9% of output pixels get the same class as in Caffe."""
    user_files.need("prototxt", "caffemodel", "dump")
    from segconvert.parity.caffe import argmax_agreement

    conv = convert(user_files.prototxt, user_files.caffemodel, user_files.arch)
    net = load_caffe(user_files.prototxt, user_files.caffemodel)
    inp, outputs, meta = load_dump(user_files.dump, net)
    last = net.layers[-1]
    key = f"{last.name}/0"
    if key not in outputs:
        pytest.skip(f"the dump has no output of the last layer ({key})")
    entry = next((o for o in meta.get("outputs", []) if o.get("key") == key), {})
    with torch.no_grad():
        ours = conv.build_model()(torch.from_numpy(np.ascontiguousarray(inp))).numpy()
    index = entry.get("index") if entry.get("stored") == "sampled" else None
    agreement = argmax_agreement(ours, outputs[key], index)
    assert agreement >= 0.999, f"argmax agreement {agreement:.5f} < 0.999 on {key}"

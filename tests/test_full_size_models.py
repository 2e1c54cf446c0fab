"""The unmodified released prototxts convert: full-width random weights in the real caffemodel layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segconvert.converters import convert_caffe_net
from segconvert.formats.caffemodel_writer import random_weights_for, write_caffemodel
from segconvert.graph import load_net
from segconvert.reference_models import create_model
from segconvert.testing import fixture_path

CASES = [
    ("pspnet50_ade20k_473", "pspnet50", 150, 473),
    ("pspnet101_voc2012_473", "pspnet101", 21, 473),
    ("pspnet101_cityscapes_713", "pspnet101", 19, 713),
    ("deeplab_v2_resnet101_msc", "deeplabv2_resnet101", 21, None),
]


@pytest.mark.slow
@pytest.mark.parametrize(("case", "arch", "classes", "size"), CASES)
def test_released_prototxt_converts_at_full_width(tmp_path, case, arch, classes, size):
    proto = fixture_path("caffe", case, "full.prototxt")
    net = load_net(proto)
    weights = random_weights_for(net, seed=1)
    model_file = write_caffemodel(tmp_path / "full.caffemodel", weights)
    full = load_net(proto, model_file)
    conv = convert_caffe_net(full)
    assert conv.arch == arch and conv.config["num_classes"] == classes
    model = create_model(conv.arch, **conv.config)
    expected = set(model.state_dict())
    assert set(conv.state_dict) == {k for k in expected if not k.endswith("num_batches_tracked")}
    n_source = sum(int(b.size) for layer in full.layers if not layer.shared_from for b in layer.blobs)
    # BatchNorm's third blob (the scale factor) is folded into mean/var, not stored as a tensor
    n_factors = sum(1 for layer in full.layers if layer.type == "BatchNorm" and not layer.shared_from)
    assert sum(v.numel() for v in conv.state_dict.values()) == n_source - n_factors  # every value used once
    model.load_state_dict(conv.state_dict, strict=False)
    model.eval()
    if arch.startswith("deeplab"):
        x = torch.from_numpy(np.random.default_rng(0).normal(0, 30, (1, 3, 65, 65)).astype("f4"))
        expected_hw = (65, 65)
    else:
        x = torch.from_numpy(np.random.default_rng(0).normal(0, 30, (1, 3, size, size)).astype("f4"))
        expected_hw = (size, size)
    with torch.no_grad():
        y = model(x)
    assert tuple(y.shape) == (1, classes, *expected_hw) and torch.isfinite(y).all()

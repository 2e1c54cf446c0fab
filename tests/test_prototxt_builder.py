"""Our PSPNet prototxt builder reproduces the released deploy prototxts layer for layer."""

from __future__ import annotations

import pytest

from segconvert.formats.prototxt import parse_prototxt, read_prototxt
from segconvert.formats.prototxt_builder import pspnet_prototxt
from segconvert.testing import fixture_path


def _signature(layer):
    c, p, i = layer.convolution_param, layer.pooling_param, layer.interp_param
    return (
        layer.name, layer.type, tuple(layer.bottom), tuple(layer.top),
        c.num_output, tuple(c.kernel_size), tuple(c.stride), tuple(c.pad) or (0,), tuple(c.dilation), c.bias_term,
        p.pool, p.kernel_size, p.stride, p.pad,
        i.height, i.width, i.zoom_factor, layer.bn_param.frozen, layer.eltwise_param.operation,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("case", "args"),
    [
        ("pspnet50_ade20k_473", {"depth": 50, "num_classes": 150, "input_size": 473, "stride_in": "1x1"}),
        ("pspnet101_cityscapes_713", {"depth": 101, "num_classes": 19, "input_size": 713, "stride_in": "3x3"}),
        ("pspnet101_voc2012_473", {"depth": 101, "num_classes": 21, "input_size": 473, "stride_in": "3x3"}),
    ],
)
def test_builder_matches_released_prototxt(case, args):
    released = read_prototxt(fixture_path("caffe", case, "full.prototxt"))
    ours = parse_prototxt(pspnet_prototxt(**args), "built")
    assert list(ours.input_dim) == list(released.input_dim)
    assert [_signature(x) for x in ours.layer] == [_signature(x) for x in released.layer]

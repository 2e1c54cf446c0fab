"""The inference fast paths of the generic Keras modules (no TensorFlow needed).

- TF SAME depthwise / separable convolutions without a padded copy of the input (a zero tap before the kernel
  and symmetric padding where TF pads ``[a, a + 1]``) give the sums of the explicit-padding path;
- ``segconvert.inference.fuse`` folds Keras BatchNormalization (channel axis) into the Keras convolution modules
  (TF-SAME ``Conv``, ``SeparableConv``'s pointwise, ``ConvTranspose``) and leaves other axes alone.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segconvert.inference.fuse import Folded, check_fused, fuse_model
from segconvert.reference_models import keras_ops


def _explicit(x: torch.Tensor, w: torch.Tensor, stride, dilation, groups: int) -> torch.Tensor:
    pads = keras_ops.tf_same_pads(list(x.shape[2:]), list(w.shape[2:]), stride, dilation)
    conv = (F.conv1d, F.conv2d)[x.dim() - 3]
    return conv(F.pad(x, pads), w, None, stride, 0, dilation, groups)


def _random(module: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for name, b in module.named_buffers():
            b.copy_(torch.rand(b.shape, generator=g) + 0.5 if "var" in name else torch.randn(b.shape, generator=g))
    return module.eval()


CASES = [  # (size, kernel, stride, dilation, channels, depth multiplier)
    ((12, 16), [3, 3], [2, 2], [1, 1], 4, 1),  # even: TF pads [0, 1]
    ((11, 13), [3, 3], [2, 2], [1, 1], 3, 2),  # odd: [1, 1]
    ((12, 11), [3, 3], [2, 2], [1, 1], 5, 1),  # mixed
    ((10, 9), [5, 4], [2, 3], [1, 1], 2, 3),  # wider kernels, uneven strides
    ((9, 10), [3, 3], [1, 1], [2, 2], 4, 1),  # dilated, symmetric
    ((8, 9), [2, 2], [1, 1], [2, 1], 3, 1),  # dilated, asymmetric: the explicit path
    ((17,), [3], [2], [1], 4, 1),  # Conv1D
]


@pytest.mark.parametrize("size,k,s,d,c,m", CASES)
def test_depthwise_same_without_padded_copy(size, k, s, d, c, m):
    conv = _random(keras_ops.Conv(c, c * m, k, s, d, groups=c, padding="same"), 0)
    x = torch.randn(2, c, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = conv(x)
        ref = _explicit(x, conv.weight, s, d, c) + conv.bias.reshape(-1, *[1] * len(size))
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("size", [(12, 16), (11, 13)])
def test_separable_same_without_padded_copy(size):
    sep = _random(keras_ops.SeparableConv(3, 5, [3, 3], [2, 2], depth_multiplier=2, padding="same"), 2)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = sep.pointwise(_explicit(x, sep.depthwise.weight, [2, 2], [1, 1], 3))
        torch.testing.assert_close(sep(x), ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


def test_fuse_folds_keras_batchnorm_into_keras_convs():
    model = nn.Sequential(
        keras_ops.Conv(3, 6, [3, 3], [2, 2], padding="same", bias=False),
        keras_ops.BatchNorm(6),
        nn.ReLU6(),
        keras_ops.SeparableConv(6, 8, [3, 3], [2, 2], padding="same"),
        keras_ops.BatchNorm(8, eps=1e-5),
        keras_ops.ConvTranspose(8, 4, [3, 3], [2, 2], padding="same", output_padding=[1, 1]),
        keras_ops.BatchNorm(4),
        keras_ops.Conv(4, 4, [3, 3], [1, 1], groups=4, padding="same"),
        keras_ops.BatchNorm(14, dim=2),  # normalises H, not the channels: not folded
    )
    _random(model, 4)
    xs = [torch.randn(2, 3, 27, 14, generator=torch.Generator().manual_seed(5))]
    fused, report = fuse_model(model, xs)
    assert report.folded == {"0": ["1"], "3.pointwise": ["4"], "5": ["6"]}, report.folded
    assert [type(fused[i]) for i in (1, 4, 6, 8)] == [Folded, Folded, Folded, keras_ops.BatchNorm]
    assert report.inplace == ["2"]
    check = check_fused(model, fused, report, xs)
    assert check.ok() and check.worst_layer_rel < 1e-5, check.describe()

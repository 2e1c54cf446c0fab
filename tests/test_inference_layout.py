"""Layout-aware softmax of the inference form: on channels_last activations it runs along the channel axis as it
lies in memory (no copy to NCHW), same values as the float64 definition, same layout out; NCHW unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segconvert.inference.layout import LayoutLogSoftmax, LayoutSoftmax, layout_aware
from segconvert.inference.prepare import prepare_model


def _softmax64(x: torch.Tensor, dim: int) -> torch.Tensor:
    x = x.double()
    e = (x - x.amax(dim, keepdim=True)).exp()
    return e / e.sum(dim, keepdim=True)


def test_channels_last_softmax_matches_the_definition_and_keeps_the_layout():
    torch.manual_seed(0)
    x = (torch.randn(2, 19, 13, 17) * 6).contiguous(memory_format=torch.channels_last)
    y = LayoutSoftmax(dim=1)(x)
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    assert (y.double() - _softmax64(x, 1)).abs().max() < 1e-6
    ly = LayoutLogSoftmax(dim=1)(x)
    assert ly.is_contiguous(memory_format=torch.channels_last)
    assert (ly.double() - _softmax64(x, 1).log()).abs().max() < 1e-5


def test_nchw_and_other_axes_are_plain_softmax():
    torch.manual_seed(1)
    x = torch.randn(2, 5, 7, 9)
    assert torch.equal(LayoutSoftmax(dim=1)(x), nn.Softmax(dim=1)(x))  # contiguous: the stock kernel, bit-equal
    xc = x.contiguous(memory_format=torch.channels_last)
    for dim in (2, -1):  # not innermost in memory: the stock path
        assert torch.equal(LayoutSoftmax(dim=dim)(xc), nn.Softmax(dim=dim)(xc))
    assert torch.equal(LayoutSoftmax(dim=-1)(x), nn.Softmax(dim=-1)(x))


def test_prepare_model_swaps_softmax_modules_in_place_only():
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Softmax(dim=1), nn.Sequential(nn.LogSoftmax(dim=1)))
    keys = list(net.state_dict())
    assert layout_aware(net) == 2
    assert type(net[1]) is LayoutSoftmax and type(net[2][0]) is LayoutLogSoftmax
    assert isinstance(net[1], nn.Softmax) and net[1].dim == 1 and list(net.state_dict()) == keys

    torch.manual_seed(2)
    ref = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 19, 1), nn.Softmax(dim=1)).eval()
    x = torch.randn(1, 3, 24, 40)
    with torch.no_grad():
        want = ref(x)
        fast = prepare_model(ref, fuse=False, channels_last=True, onednn=False)
        assert type(fast[3]) is LayoutSoftmax
        got = fast(x.contiguous(memory_format=torch.channels_last))
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert (got - want).abs().max() < 1e-6


def test_keras_in_layer_softmax_on_channels_last_matches_the_definition():
    from segconvert.reference_models.keras_ops import activation

    torch.manual_seed(3)
    x = (torch.randn(1, 7, 11, 5) * 4).contiguous(memory_format=torch.channels_last)
    for name, ref in (("softmax", _softmax64(x, 1)), ("log_softmax", _softmax64(x, 1).log())):
        y = activation(x, name, dim=1, layout=True)
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert (y.double() - ref).abs().max() < 1e-5
        assert torch.equal(activation(x, name, dim=1), getattr(torch, name)(x, 1))  # plain: as the emitted source
        xn = x.contiguous()
        assert torch.equal(activation(xn, name, dim=1, layout=True), getattr(torch, name)(xn, 1))


def test_inference_form_of_a_keras_net_with_in_layer_softmax(tmp_path):
    """``Conv2D(..., activation="softmax")``: the plain module computes F.softmax (as its emitted source); the
    inference form switches the net to the layout-aware softmax, and channels_last input keeps its layout."""
    K = pytest.importorskip("tf_keras")
    import segconvert
    from segconvert.commands.convert_keras import convert_keras_generic_files

    inp = K.Input((12, 20, 3))
    x = K.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    out = K.layers.Conv2D(5, 1, activation="softmax")(x)
    K.Model(inp, out).save(tmp_path / "m.h5")
    convert_keras_generic_files(tmp_path / "m.h5", tmp_path / "m.safetensors")
    plain = segconvert.load_model(tmp_path / "m.safetensors")
    fast = segconvert.load_model(tmp_path / "m.safetensors", fuse=True)
    assert plain.softmax_in_layout is False and fast.softmax_in_layout is True
    x = (torch.rand(1, 3, 12, 20) * 255).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want, got = plain(x), fast.to(memory_format=torch.channels_last)(x)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert (got - want).abs().max() < 1e-6

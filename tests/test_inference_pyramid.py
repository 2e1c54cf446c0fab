"""PSPNet's head convolution over the pyramid branches at their pooled size (segconvert.inference.pyramid)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from segconvert.errors import WeightsFileError
from segconvert.inference.prepare import prepare_model
from segconvert.inference.pyramid import PyramidFeatures, PyramidHeadConv, fold_pyramid_heads
from segconvert.reference_models.ops import RESIZE_MODES
from segconvert.reference_models.pspnet import PSPNet
from segconvert.testing import fixture_path

SMALL = dict(stem_widths=[4, 4, 8], widths=[4, 8, 8, 8], out_widths=[8, 8, 16, 32], ppm_width=48, head_width=16)


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype.is_floating_point:
                positive = name.endswith("running_var") or (name.endswith("weight") and t.dim() == 1)
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if positive else torch.randn(t.shape, generator=g) * 0.3)
    return model.eval()


def _psp(resize: str = "align_corners", bins: list[int] | None = None, seed: int = 0) -> PSPNet:
    return _randomise(PSPNet(num_classes=5, ppm_mode="adaptive", resize=resize, ppm_bins=bins, **SMALL), seed)


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref.double()).abs().max() / ref.double().abs().max())


def _x(h: int = 105, w: int = 137, seed: int = 1) -> torch.Tensor:
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 40


@pytest.mark.parametrize("resize", RESIZE_MODES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_pyramid_path_equals_upsample_concat_conv(resize, channels_last):
    """Every resize convention, a non-square feature map (14x18) and non-square cells: the head conv of the
    pyramid path equals the plain upsample + concat + 3x3 conv on the same inputs, and the whole model the
    plain one, to float32 rounding."""
    model = _psp(resize)
    x = _x()
    with torch.no_grad():
        want = model(x)
    fused = prepare_model(_psp(resize), channels_last=channels_last, check=True, inputs=[x])
    assert fused.segconvert_fuse.pyramid == ["head.conv"]
    assert isinstance(fused.head.conv, PyramidHeadConv)
    seen = []

    def hook(mod, args, out):
        feats = args[0]
        assert isinstance(feats, PyramidFeatures) and mod._worth_it(feats)  # the fast path ran
        seen.append(_rel(out, mod.reference(feats)))

    h = fused.head.conv.register_forward_hook(hook)
    xin = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    with torch.no_grad():
        got = fused(xin)
    h.remove()
    assert seen and seen[0] <= 1e-5, seen
    assert _rel(got, want) <= 1e-5
    assert fused.segconvert_fuse.check.worst_layer_rel <= 1e-5


def test_state_dict_keys_and_weights_are_the_folded_models():
    fused = prepare_model(_psp(), channels_last=False)
    unfolded = prepare_model(_psp(), channels_last=False, pyramid=False)
    assert unfolded.segconvert_fuse.pyramid == [] and type(unfolded.head.conv) is not PyramidHeadConv
    assert list(fused.state_dict()) == list(unfolded.state_dict())
    assert fused.head.conv.weight is dict(fused.named_parameters())["head.conv.weight"]
    assert [n for n, _ in fused.ppm.named_children()] == ["pool6", "pool3", "pool2", "pool1"]
    for k, v in unfolded.state_dict().items():  # the pass changes no number: folding alone did
        assert torch.equal(v, fused.state_dict()[k]), k


def test_large_branches_take_the_plain_path_bit_for_bit():
    """Bins as large as the feature map save nothing: upsample + concat + conv, exactly the reference."""
    model = prepare_model(_psp(bins=[12, 1]), channels_last=False)
    x = _x(97, 97)  # feature 13x13: a 12x12 branch has 144 positions against 169 pixels
    outs = []
    h = model.head.conv.register_forward_hook(
        lambda m, a, o: outs.append((m._worth_it(a[0]), torch.equal(o, m.reference(a[0]))))
    )
    with torch.no_grad():
        model(x)
    h.remove()
    assert outs == [(False, True)]


def test_bf16_autocast_on_cpu():
    model = _psp()
    x = _x()
    with torch.no_grad():
        want = model(x)
    fused = prepare_model(_psp(), onednn=False)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = fused(x.contiguous(memory_format=torch.channels_last)).float()
    assert _rel(got, want) <= 5e-2  # bf16 keeps 8 bits of mantissa; the argmax mostly survives
    assert (got.argmax(1) == want.argmax(1)).double().mean() > 0.9
    assert [op.dtype for op in fused.head.conv._ops.values()] == [torch.float32]  # built outside the autocast


def test_check_catches_a_wrong_pyramid_operator(monkeypatch):
    """--check runs the pyramid path against upsample + concat + conv: a wrong operator is refused."""
    real = PyramidHeadConv.operator
    monkeypatch.setattr(PyramidHeadConv, "operator", lambda self, feats: real(self, feats) * 1.01)
    with pytest.raises(WeightsFileError, match=r"head\.conv \(pyramid\)"):
        prepare_model(_psp(), check=True, inputs=[_x()], source="psp.safetensors")


def test_only_pspnet_heads_are_changed():
    class NotPSP(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Conv2d(3, 3, 3, padding=1)

    assert fold_pyramid_heads(NotPSP()) == []
    model = _psp()
    model.head.conv = nn.Conv2d(model.head.conv.in_channels, 16, 3, padding=2, dilation=2, bias=False)
    assert fold_pyramid_heads(model) == []  # not the plain 3x3 the identity is for


def test_fixture_pspnet50_matches_real_caffe_with_the_pyramid_path():
    """The released-layout PSPNet50 fixture (fixed pooling at 473): the inference form with the pyramid path
    still matches real Caffe's scores with the fixtures' tolerance, and the same form without it to float32 rounding."""
    from segconvert.converters import convert_caffe_net
    from segconvert.graph import load_net

    root = fixture_path("caffe", "pspnet50_ade20k_473")
    net = load_net(root / "net.prototxt", root / "weights.caffemodel")
    meta = json.loads((root / "meta.json").read_text())
    x = torch.from_numpy(np.load(root / "input.npy"))
    plain = convert_caffe_net(net).build_model().eval()
    with torch.no_grad():
        want = plain(x)
    model = prepare_model(convert_caffe_net(net).build_model(), check=True, inputs=[x])
    assert model.segconvert_fuse.pyramid == ["head.conv"]
    folded = prepare_model(convert_caffe_net(net).build_model(), pyramid=False, inputs=[x])
    xc = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        got, without = model(xc), folded(xc)
    assert _rel(got, without) <= 1e-5  # the pyramid pass alone: float32 rounding
    assert _rel(got, want) <= 2e-3  # with the folding, as check_fused bounds the whole model
    key = [lay for lay in meta["layers"] if not lay["implicit"]][-1]["name"] + "/0"
    caffe, scores = np.load(root / "outputs.npz")[key], got.numpy()
    entry = {o["key"]: o for o in meta["outputs"]}[key]
    if entry.get("stored") == "sampled":  # the fixture keeps a grid of positions of the full-size scores
        scores = scores[np.ix_(*entry["index"])]
    assert np.abs(scores - caffe).max() <= 2e-3 * np.abs(caffe).max()


def test_an_empty_batch_takes_the_pyramid_path():
    """The inference passes after this one trace on a batch of 0 (else on the meta device, whose imports stay
    resident: +64 MB of PSPNet50's peak RSS when this reshape once failed on zero elements)."""
    model = prepare_model(_psp(), channels_last=False)
    ran = []
    h = model.head.conv.register_forward_hook(lambda m, a, o: ran.append(m._worth_it(a[0])))
    with torch.no_grad():
        out = model(_x()[:0])
    h.remove()
    assert ran == [True] and out.shape == (0, 5, 105, 137)

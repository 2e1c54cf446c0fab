"""segconvert.train.amp: bf16 autocast training on CPU, GradScaler checkpoint state, channels_last parity."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segconvert.reference_models.pspnet import PSPNet
from segconvert.train.amp import Amp, to_channels_last

SMALL_PSP = dict(stem_widths=[4, 4, 8], widths=[4, 8, 8, 8], out_widths=[8, 8, 16, 16], ppm_width=4, head_width=8)


def _tiny() -> PSPNet:
    torch.manual_seed(0)
    return PSPNet(num_classes=3, ppm_mode="adaptive", norm="bn", dropout=0.0, **SMALL_PSP)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 33, 33, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()  # a label the net can learn from the input


def test_bf16_autocast_sgd_loss_decreases_on_cpu() -> None:
    model, (x, y) = _tiny().train(), _data()
    amp = Amp("bf16", "cpu")
    assert amp.scaler is None and amp.dtype is torch.bfloat16
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        with amp.autocast():
            out = model(x)["out"]
            assert out.dtype is torch.bfloat16  # the convolutions really ran in bf16
            loss = F.cross_entropy(out.float(), y)
        amp.backward(loss, opt)
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(p.dtype is torch.float32 for p in model.parameters())  # master weights stay fp32
    assert losses[-1] < 0.8 * losses[0], losses


def test_fp16_grad_scaler_state_round_trip() -> None:
    model, (x, y) = _tiny().train(), _data()
    amp = Amp("fp16", "cpu")
    assert amp.scaler is not None
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with amp.autocast():
        loss = F.cross_entropy(model(x)["out"].float(), y)
    amp.backward(loss, opt)
    state = amp.state_dict()
    assert state["mode"] == "fp16" and state != Amp("fp16", "cpu").state_dict()  # scale or growth tracker moved
    fresh = Amp("fp16", "cpu")
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state
    with pytest.raises(ValueError, match="amp='fp16'"):
        Amp("bf16").load_state_dict(state)
    with pytest.raises(ValueError, match="amp must be one of"):
        Amp("fp8")
    none = Amp("none")
    assert none.scaler is None and none.dtype is None and none.state_dict() == {"mode": "none", "scaler": None}


def test_channels_last_forward_parity() -> None:
    model, (x, _) = _tiny().eval(), _data()
    with torch.no_grad():
        ref = model(x)
        model, (xc,) = to_channels_last(model, x)
        assert xc.is_contiguous(memory_format=torch.channels_last)
        assert model.backbone.stem.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        out = model(xc)
    assert out.shape == ref.shape
    # same maths, different float32 summation order in the convolutions: relative to the logits' scale
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()

"""Activation checkpointing of PSPNet / DeepLab-v2 (width-reduced): equal gradients, BN stats, lower peak memory."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from segconvert.reference_models.deeplab_v2 import DeepLabV2
from segconvert.reference_models.pspnet import CHECKPOINT_PARTS, PSPNet

SMALL_PSP = dict(stem_widths=[4, 4, 8], widths=[4, 8, 8, 8], out_widths=[8, 8, 16, 16], ppm_width=4, head_width=8)


def _psp(norm: str) -> PSPNet:
    torch.manual_seed(0)
    return PSPNet(num_classes=3, ppm_mode="adaptive", aux=True, norm=norm, dropout=0.1, **SMALL_PSP)


def _step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """One training forward/backward with a fixed seed (dropout masks); returns the gradients."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    out = model(x)
    loss = F.cross_entropy(out["out"], y) + 0.4 * F.cross_entropy(out["aux"], y)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        scale = a[k].abs().max().clamp_min(1e-12)
        assert (a[k] - b[k]).abs().max() / scale <= 1e-6, k


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.randn(2, 3, 65, 65, generator=g), torch.randint(0, 3, (2, 65, 65), generator=g)


@pytest.mark.parametrize(
    ("norm", "policy"), [("frozen", True), ("bn", True), ("bn", "light"), ("bn", ["stem", "head"])]
)
def test_pspnet_checkpointing_same_gradients_and_bn_stats(norm: str, policy: bool | str | list[str]) -> None:
    x, y = _data()
    plain = _psp(norm)
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(policy)
    assert ckpt.grad_checkpointing and ckpt.backbone.grad_checkpointing and not plain.grad_checkpointing
    _assert_close(_step(plain, x, y), _step(ckpt, x, y))
    buffers_plain, buffers_ckpt = dict(plain.named_buffers()), dict(ckpt.named_buffers())
    assert buffers_plain.keys() == buffers_ckpt.keys()
    for k, v in buffers_plain.items():
        assert torch.equal(v, buffers_ckpt[k]), k  # running stats updated exactly once
    if norm == "bn":
        assert int(buffers_ckpt["backbone.layer1.0.bn1.num_batches_tracked"]) == 1
        assert not torch.equal(buffers_ckpt["head.bn.running_mean"], torch.zeros(8))
    # frozen BN: no BatchNorm buffers move at all
    if norm == "frozen":
        fresh = dict(_psp("frozen").named_buffers())
        for k, v in buffers_ckpt.items():
            assert torch.equal(v, fresh[k]), k


@pytest.mark.parametrize(
    ("policy", "parts"),
    [
        (True, CHECKPOINT_PARTS),
        ("all", CHECKPOINT_PARTS),
        ("light", ("stem", "layer1", "layer2", "layer3")),
        (["layer4", "ppm"], ("layer4", "ppm")),
        (False, ()),
    ],
)
def test_checkpointing_recomputes_exactly_the_selected_parts(policy: bool | str | list[str], parts: tuple) -> None:
    """A checkpointed part starts its forward twice in a training step (the backward's recompute), the others once."""
    model = _psp("frozen")
    model.set_grad_checkpointing(policy)
    calls = dict.fromkeys(CHECKPOINT_PARTS, 0)
    owners = {"ppm": model.ppm, "head": model.head, **{p: getattr(model.backbone, p) for p in CHECKPOINT_PARTS[:5]}}
    for name, module in owners.items():
        module.register_forward_pre_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    _step(model, *_data())
    assert calls == {p: 2 if p in parts else 1 for p in CHECKPOINT_PARTS}
    assert model.grad_checkpointing == bool(parts) and model.backbone.grad_checkpointing == bool(
        set(parts) - {"ppm", "head"}
    )


def test_checkpointing_refuses_unknown_parts_and_policies() -> None:
    model = _psp("frozen")
    with pytest.raises(ValueError, match="unknown PSPNet part to checkpoint: layer5"):
        model.set_grad_checkpointing(["layer1", "layer5"])
    with pytest.raises(ValueError, match="unknown checkpointing policy 'most'"):
        model.set_grad_checkpointing("most")


def test_eval_and_no_grad_forward_unchanged() -> None:
    x, _ = _data()
    model = _psp("frozen").eval()
    ref = model(x)
    model.set_grad_checkpointing()
    with torch.no_grad():
        assert torch.equal(model(x), ref)
    model.set_grad_checkpointing(False)
    assert not model.grad_checkpointing and not model.backbone.grad_checkpointing


def test_deeplab_backbone_checkpointing_same_gradients() -> None:
    torch.manual_seed(0)
    plain = DeepLabV2(num_classes=3, msc=False, stem_widths=[8], widths=[4, 8, 8, 8], out_widths=[8, 8, 16, 16])
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing()
    assert ckpt.grad_checkpointing
    x, y = _data()
    grads = []
    for m in (plain, ckpt):
        m.train().zero_grad()
        out = m(x)["fc1_voc12"]
        F.cross_entropy(F.interpolate(out, size=y.shape[-2:], mode="bilinear"), y).backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    _assert_close(*grads)


def _peak_cpu_bytes(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Allocator watermark of one training step: running sum of the profiler's CPU allocation/free records."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _step(model, x, y)
    records = [
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    assert len(records) > 100
    live = peak = 0
    for _, nbytes in sorted(records):
        live += nbytes
        peak = max(peak, live)
    return peak


def test_checkpointing_lowers_peak_memory() -> None:
    torch.manual_seed(3)
    x, y = torch.randn(2, 3, 129, 129), torch.randint(0, 3, (2, 129, 129))
    plain = _psp("frozen")
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing()
    peak_plain, peak_ckpt = _peak_cpu_bytes(plain, x, y), _peak_cpu_bytes(ckpt, x, y)
    ratio = peak_ckpt / peak_plain
    print(
        f"peak CPU allocation in a train step (profiler memory events): plain {peak_plain / 2**20:.2f} MiB, "
        f"checkpointed {peak_ckpt / 2**20:.2f} MiB, ratio {ratio:.3f}"
    )
    assert peak_plain > 0 and ratio < 0.8

"""``segconvert torch2torch``: the PyTorch ports' checkpoints against modules with each port's key layout and forward.

The port modules below are written from each project's published model code (isht7/pytorch-deeplab-resnet
``deeplab_resnet.py``, kazuto1011/deeplab-pytorch ``libs/models/{msc,deeplabv2,resnet}.py``, hszhao/semseg
``model/{pspnet,resnet}.py``), width-reduced, with random weights and BatchNorm statistics.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segconvert.converters.torch_ports import convert_torch_checkpoint, detect_torch_layout
from segconvert.weights.store import load_model
from tests.cli_runner import run_cli

TOL = 1e-5


def _randomize(module: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("bn1.weight", "bn2.weight", "bn3.weight")) or ".bn." in name:
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                fan = t[0].numel() if t.dim() > 1 else 1
                t.copy_(torch.randn(t.shape, generator=g) / math.sqrt(fan))
    return module.eval()


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    scale = theirs.abs().max().item()
    assert (ours - theirs).abs().max().item() <= TOL * max(1.0, scale)


# ----------------------------------------------------------------------------------- isht7 (MS_Deeplab)
class _IshtBottleneck(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False)  # stride on the 1x1
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = x if self.downsample is None else self.downsample(x)
        return self.relu(out + res)


class _IshtClassifier(nn.Module):
    def __init__(self, cin: int, classes: int):
        super().__init__()
        self.conv2d_list = nn.ModuleList(nn.Conv2d(cin, classes, 3, padding=r, dilation=r) for r in (6, 12, 18, 24))

    def forward(self, x):
        out = self.conv2d_list[0](x)
        for conv in self.conv2d_list[1:]:
            out = out + conv(x)
        return out


class _IshtResNet(nn.Module):
    def __init__(self, w: int, classes: int, blocks=(3, 4, 23, 3)):
        super().__init__()
        self.inplanes = w
        self.conv1 = nn.Conv2d(3, w, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1, ceil_mode=True)
        self.layer1 = self._layer(w, blocks[0])
        self.layer2 = self._layer(2 * w, blocks[1], stride=2)
        self.layer3 = self._layer(4 * w, blocks[2], dilation=2)
        self.layer4 = self._layer(8 * w, blocks[3], dilation=4)
        self.layer5 = _IshtClassifier(32 * w, classes)

    def _layer(self, planes: int, n: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        down = nn.Sequential(
            nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4)
        )
        units = [_IshtBottleneck(self.inplanes, planes, stride, dilation, down)]
        self.inplanes = planes * 4
        units += [_IshtBottleneck(self.inplanes, planes, 1, dilation) for _ in range(1, n)]
        return nn.Sequential(*units)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer5(self.layer4(self.layer3(self.layer2(self.layer1(x)))))


def _outs(i: int) -> int:
    """isht7's outS under Python 2 integer division (the project's interpreter)."""
    i = (i + 1) // 2
    i = int(math.ceil((i + 1) / 2.0))
    return (i + 1) // 2


class _MSDeeplab(nn.Module):
    def __init__(self, w: int, classes: int):
        super().__init__()
        self.Scale = _IshtResNet(w, classes)

    def forward(self, x):
        n = x.shape[2]

        def up(t, s):
            return F.interpolate(t, size=(s, s), mode="bilinear", align_corners=True)  # UpsamplingBilinear2d

        out = [self.Scale(x), up(self.Scale(up(x, int(n * 0.75) + 1)), _outs(n)), self.Scale(up(x, int(n * 0.5) + 1))]
        out.append(torch.max(torch.max(out[0], out[1]), up(out[2], _outs(n))))
        return out


# --------------------------------------------------------------------------- kazuto1011 (MSC + DeepLabV2)
class _ConvBnReLU(nn.Sequential):
    def __init__(self, cin, cout, k, stride, pad, dil, relu=True):
        super().__init__()
        self.add_module("conv", nn.Conv2d(cin, cout, k, stride, pad, dil, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout, eps=1e-5, momentum=0.001))
        if relu:
            self.add_module("relu", nn.ReLU())


class _KazutoBottleneck(nn.Module):
    def __init__(self, cin, cout, stride, dil, downsample):
        super().__init__()
        mid = cout // 4
        self.reduce = _ConvBnReLU(cin, mid, 1, stride, 0, 1)
        self.conv3x3 = _ConvBnReLU(mid, mid, 3, 1, dil, dil)
        self.increase = _ConvBnReLU(mid, cout, 1, 1, 0, 1, relu=False)
        self.shortcut = _ConvBnReLU(cin, cout, 1, stride, 0, 1, relu=False) if downsample else nn.Identity()

    def forward(self, x):
        return F.relu(self.increase(self.conv3x3(self.reduce(x))) + self.shortcut(x))


class _KazutoResLayer(nn.Sequential):
    def __init__(self, n, cin, cout, stride, dil):
        super().__init__()
        for i in range(n):
            unit = _KazutoBottleneck(cin if i == 0 else cout, cout, stride if i == 0 else 1, dil, i == 0)
            self.add_module(f"block{i + 1}", unit)


class _KazutoASPP(nn.Module):
    def __init__(self, cin, cout, rates):
        super().__init__()
        for i, r in enumerate(rates):
            self.add_module(f"c{i}", nn.Conv2d(cin, cout, 3, 1, padding=r, dilation=r, bias=True))

    def forward(self, x):
        return sum(stage(x) for stage in self.children())


class _KazutoDeepLabV2(nn.Sequential):
    def __init__(self, classes, blocks, w):
        super().__init__()
        ch = [w * 2**p for p in range(6)]
        stem = nn.Sequential()
        stem.add_module("conv1", _ConvBnReLU(3, ch[0], 7, 2, 3, 1))
        stem.add_module("pool", nn.MaxPool2d(3, 2, 1, ceil_mode=True))
        self.add_module("layer1", stem)
        self.add_module("layer2", _KazutoResLayer(blocks[0], ch[0], ch[2], 1, 1))
        self.add_module("layer3", _KazutoResLayer(blocks[1], ch[2], ch[3], 2, 1))
        self.add_module("layer4", _KazutoResLayer(blocks[2], ch[3], ch[4], 1, 2))
        self.add_module("layer5", _KazutoResLayer(blocks[3], ch[4], ch[5], 1, 4))
        self.add_module("aspp", _KazutoASPP(ch[5], classes, [6, 12, 18, 24]))


class _KazutoMSC(nn.Module):
    def __init__(self, base, scales=(0.5, 0.75)):
        super().__init__()
        self.base, self.scales = base, list(scales)

    def forward(self, x):
        logits = self.base(x)
        h, w = logits.shape[-2:]
        pyramid = [
            self.base(F.interpolate(x, scale_factor=p, mode="bilinear", align_corners=False)) for p in self.scales
        ]
        every = [logits] + [F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False) for t in pyramid]
        return torch.max(torch.stack(every), dim=0)[0]


# ------------------------------------------------------------------------------------------ semseg PSPNet
class _SemsegBottleneck(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class _SemsegPSPNet(nn.Module):
    """semseg's PSPNet: deep-base ResNet, layer3/4 dilated 2/4 in place, PPM (1,2,3,6), cls, aux."""

    def __init__(self, w: int, classes: int, blocks=(3, 4, 6, 3)):
        super().__init__()
        self.inplanes = 2 * w
        convs = [nn.Conv2d(3, w, 3, 2, 1, bias=False), nn.Conv2d(w, w, 3, 1, 1, bias=False)]
        convs.append(nn.Conv2d(w, 2 * w, 3, 1, 1, bias=False))
        l0 = []
        for c in convs:
            l0 += [c, nn.BatchNorm2d(c.out_channels), nn.ReLU()]
        self.layer0 = nn.Sequential(*l0, nn.MaxPool2d(3, 2, 1))
        self.layer1 = self._layer(w, blocks[0])
        self.layer2 = self._layer(2 * w, blocks[1], 2)
        self.layer3 = self._layer(4 * w, blocks[2], 2)
        self.layer4 = self._layer(8 * w, blocks[3], 2)
        for layer, d in ((self.layer3, 2), (self.layer4, 4)):
            for n, m in layer.named_modules():
                if "conv2" in n:
                    m.dilation, m.padding, m.stride = (d, d), (d, d), (1, 1)
                elif "downsample.0" in n:
                    m.stride = (1, 1)
        fea = 32 * w
        self.ppm = nn.Module()
        self.ppm.features = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b), nn.Conv2d(fea, fea // 4, 1, bias=False), nn.BatchNorm2d(fea // 4), nn.ReLU()
            )
            for b in (1, 2, 3, 6)
        )
        self.cls = nn.Sequential(
            nn.Conv2d(2 * fea, 4 * w, 3, padding=1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(), nn.Dropout2d(0.1),
            nn.Conv2d(4 * w, classes, 1),
        )  # fmt: skip
        self.aux = nn.Sequential(
            nn.Conv2d(16 * w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.Dropout2d(0.1),
            nn.Conv2d(2 * w, classes, 1),
        )  # fmt: skip

    def _layer(self, planes, n, stride=1):
        down = None
        if stride != 1 or self.inplanes != planes * 4:
            down = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )
        units = [_SemsegBottleneck(self.inplanes, planes, stride, down)]
        self.inplanes = planes * 4
        return nn.Sequential(*units, *(_SemsegBottleneck(self.inplanes, planes) for _ in range(1, n)))

    def forward(self, x):
        h, w = x.shape[-2:]
        assert (h - 1) % 8 == 0 and (w - 1) % 8 == 0
        c3 = self.layer3(self.layer2(self.layer1(self.layer0(x))))
        f = self.layer4(c3)
        f = torch.cat(
            [f] + [F.interpolate(b(f), f.shape[-2:], mode="bilinear", align_corners=True) for b in self.ppm.features], 1
        )
        out = F.interpolate(self.cls(f), size=(h, w), mode="bilinear", align_corners=True)
        aux = F.interpolate(self.aux(c3), size=(h, w), mode="bilinear", align_corners=True)
        return out, aux


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ports():
    torch.manual_seed(0)
    return {
        "isht7": _randomize(_MSDeeplab(4, 5), 1),
        "kazuto1011": _randomize(_KazutoMSC(_KazutoDeepLabV2(6, (3, 4, 6, 3), 4)), 2),
        "semseg": _randomize(_SemsegPSPNet(4, 7), 3),
    }


def _convert(tmp_path, sd, name="ckpt.pth", *extra):
    src = tmp_path / name
    torch.save(sd, src)
    out = tmp_path / (name + ".safetensors")
    code, stdout, err = run_cli("torch2torch", src, "-o", out, *extra)
    return code, stdout, err, out


def test_isht7_layout_matches_ms_deeplab(tmp_path, ports):
    port = ports["isht7"]
    sd = port.state_dict()
    assert detect_torch_layout(sd.keys()) == "isht7"
    code, out, err, dst = _convert(tmp_path, sd)
    assert code == 0, err
    assert "int(0.75H)+1" in out and "layout: isht7" in out
    model = load_model(dst)
    assert model.config["msc_resize"] == "isht7" and model.config["depth"] == 101
    for n in (41, 50):  # 41 = 8k+1 (isht7 sizes = Caffe's), 50: isht7's own sizes (37 vs Caffe 34... differ)
        x = torch.randn(1, 3, n, n)
        with torch.no_grad():
            theirs = port(x)
            ours = model.forward_scales(x)
        keys = ("fc1_voc12", "fc1_voc12_res075_interp", "fc1_voc12_res05", "fc_fusion")
        for k, t in zip(keys, theirs, strict=True):
            _close(ours[k], t)
    x = torch.randn(1, 3, 41, 41)
    with torch.no_grad():  # isht7's evaluation: output[3] upsampled (align_corners) to the input size
        ref = F.interpolate(port(x)[3], size=(41, 41), mode="bilinear", align_corners=True)
        _close(model(x), ref)
    side = json.loads((tmp_path / "ckpt.pth.safetensors.json").read_text())
    assert side["source"]["layout"] == "isht7" and side["preprocessing"]["channel_order"] == "BGR"
    assert any(d[1] == "BatchNorm batch counter" for d in side["conversion"]["dropped"])


def test_kazuto_layout_ddp_matches_msc(tmp_path, ports):
    port = ports["kazuto1011"]
    sd = {f"module.{k}": v for k, v in port.state_dict().items()}  # a DDP checkpoint
    code, out, err, dst = _convert(tmp_path, sd, "kazuto.pth", "--layout", "kazuto1011")
    assert code == 0, err
    assert "'module.' prefix" in out
    model = load_model(dst)
    assert model.config["msc_resize"] == "kazuto" and model.config["resize"] == "half_pixel"
    x = torch.randn(1, 3, 45, 53)
    with torch.no_grad():
        fused = port(x)
        _close(model.forward_scales(x)["fc_fusion"], fused)
        _close(model(x), F.interpolate(fused, size=(45, 53), mode="bilinear", align_corners=False))


def test_semseg_layout_state_dict_wrapper(tmp_path, ports):
    port = ports["semseg"]
    opt = {"state": {}, "param_groups": [{"lr": 0.01, "momentum": 0.9, "params": [0, 1]}]}
    ckpt = {"epoch": 100, "state_dict": {f"module.{k}": v for k, v in port.state_dict().items()}, "optimizer": opt}
    code, out, err, dst = _convert(tmp_path, ckpt, "train_epoch_100.pth")
    assert code == 0, err
    assert "layout: semseg" in out and "architecture: pspnet50" in out
    side = json.loads((tmp_path / "train_epoch_100.pth.safetensors.json").read_text())
    assert side["protocol"]["name"] == "semseg" and side["source"]["format"] == "pytorch"
    assert side["preprocessing"]["std"] == [58.395, 57.12, 57.375]
    dropped = {d[0] for d in side["conversion"]["dropped"]}
    assert {"epoch", "optimizer"} <= dropped
    model = load_model(dst)
    x = torch.randn(1, 3, 65, 57)
    with torch.no_grad():
        theirs, aux = port(x)
        _close(model(x), theirs)
        bb = model.backbone
        c3 = bb.layer3(bb.layer2(bb.layer1(bb.stem(x))))
        _close(model.upsample(model.aux(c3), x.shape[-2:]), aux)


def test_unused_and_missing_keys_are_reported(tmp_path, ports):
    sd = dict(ports["semseg"].state_dict())
    sd["extra_head.weight"] = torch.zeros(3)
    code, _, err, dst = _convert(tmp_path, sd, "extra.pth")
    assert code == 2 and "extra_head.weight" in err and len(err.strip().splitlines()) == 1
    assert not dst.exists()
    sd = dict(ports["isht7"].state_dict())
    del sd["Scale.layer2.1.bn2.running_var"]
    code, _, err, dst = _convert(tmp_path, sd, "missing.pth")
    assert code == 2 and "Scale.layer2.1.bn2.running_var" in err and not dst.exists()
    code, _, err, _ = _convert(tmp_path, ports["isht7"].state_dict(), "wrong.pth", "--layout", "semseg")
    assert code == 2 and "isht7 layout" in err


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_with_code_is_refused(tmp_path, capsys):
    src = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": _Payload()}, src)
    code, out, err = run_cli("torch2torch", src, "-o", tmp_path / "evil.safetensors")
    assert code == 2 and "weights_only=True" in err and len(err.strip().splitlines()) == 1
    assert "this must never run" not in out + err + capsys.readouterr().out
    assert not (tmp_path / "evil.safetensors").exists()


def test_unwritable_output_fails_before_reading(tmp_path):
    code, _, err = run_cli("torch2torch", tmp_path / "absent.pth", "-o", "/sys/nope/out.safetensors")
    assert code == 2 and "/sys/nope" in err


def test_library_call_without_cli(ports):
    from segconvert.converters.torch_ports import TorchCheckpoint

    ckpt = TorchCheckpoint("<memory>", dict(ports["kazuto1011"].state_dict()))
    conv = convert_torch_checkpoint(ckpt)
    assert conv.layout == "kazuto1011" and conv.arch == "deeplabv2_resnet101"
    assert conv.config["num_classes"] == 6 and conv.config["widths"] == [4, 8, 16, 32]


def test_legacy_serialization_is_read_with_weights_only(tmp_path, ports):
    """The 2017 isht7 files predate the zip format: the legacy pickle is read by the same restricted loader."""
    from segconvert.converters.torch_ports import load_torch_checkpoint

    sd = ports["isht7"].state_dict()
    src = tmp_path / "MS_DeepLab_resnet_trained_VOC.pth"
    torch.save(
        {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")},
        src,
        _use_new_zipfile_serialization=False,
    )
    assert not src.read_bytes().startswith(b"PK")
    ckpt = load_torch_checkpoint(src)
    conv = convert_torch_checkpoint(ckpt)
    assert conv.layout == "isht7" and not conv.dropped
    assert torch.equal(conv.state_dict["aspp.convs.3.bias"], sd["Scale.layer5.conv2d_list.3.bias"])
    (tmp_path / "junk.pth").write_bytes(b"\x80\x02not a pickle")
    code, _, err = run_cli("torch2torch", tmp_path / "junk.pth", "-o", tmp_path / "junk.safetensors")
    assert code == 2 and "junk.pth" in err and len(err.strip().splitlines()) == 1

"""Recognise a Caffe DeepLab-v2 / PSPNet net and read its reference-model config from the graph.

Works from the prototxt alone (no weights needed): depth from the unit count, widths from ``num_output``,
stride placement from the strided conv of the first stage-3 unit, dilations, ASPP rates, PPM bins and
their concat order, classes, input size, BN eps, MSC. See :func:`detect_caffe_arch`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from segconvert.errors import ConversionError
from segconvert.graph import Layer, Net
from segconvert.graph.shapes import conv_geometry, interp_args, pool_geometry
from segconvert.reference_models.registry import get_config
from segconvert.reference_models.resnet import STAGE_BLOCKS

__all__ = ["DetectedArch", "detect_caffe_arch", "MSC_SUFFIXES"]

MSC_SUFFIXES = ("_res075", "_res05")  # DeepLab-v2 MSC scale copies, forward-call index 1 and 2

_DEEPLAB_UNIT = re.compile(r"^res([2-5])([a-z]\d*)_branch2a$")
_PSP_UNIT = re.compile(r"^conv([2-5])_(\d+)_1x1_reduce$")
_ASPP = re.compile(r"^(fc1_[A-Za-z0-9]+)_c(\d+)$")


@dataclass
class DetectedArch:
    """``arch`` registry name, ``config`` for ``create_model``, ``family`` ("deeplab" | "pspnet"),
    ``names``: the Caffe layer names the mapping needs, ``notes``: human-readable remarks."""

    arch: str
    config: dict[str, Any]
    family: str
    names: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _f32(x: float) -> float:
    """A float32 field as the shortest decimal that rounds back to it (1e-5, not 9.99999974738e-06)."""
    return float(f"{float(x):.7g}")


def _fail(net: Net, msg: str, layer: str | None = None) -> ConversionError:
    return ConversionError(msg, file=net.prototxt or net.caffemodel, layer=layer)


class _Index:
    def __init__(self, net: Net) -> None:
        self.net = net
        self.by_name: dict[str, Layer] = {}
        for layer in net.layers:
            self.by_name.setdefault(layer.name, layer)

    def get(self, name: str, type_: str | None = None) -> Layer:
        layer = self.by_name.get(name)
        if layer is None:
            raise _fail(self.net, f"expected layer '{name}' is missing")
        if type_ is not None and layer.type != type_:
            raise _fail(self.net, f"expected a {type_} layer, found {layer.type}", name)
        return layer

    def has(self, name: str) -> bool:
        return name in self.by_name

    def conv(self, name: str) -> tuple[Layer, dict[str, Any]]:
        layer = self.get(name, "Convolution")
        p = layer.param.convolution_param
        g = conv_geometry(p)
        g["num_output"] = int(p.num_output)
        g["bias_term"] = bool(p.bias_term)
        g["group"] = int(p.group)
        return layer, g

    def input_hw(self, blob: str) -> list[int] | None:
        shape = self.net.blob_shapes.get(blob)
        if shape is None or len(shape) != 4:
            return None
        return [int(shape[2]), int(shape[3])]


def _units(idx: _Index, pattern: re.Pattern) -> dict[int, list[str]]:
    units: dict[int, list[str]] = {}
    for layer in idx.net.layers:
        m = pattern.match(layer.name)
        if m:
            units.setdefault(int(m.group(1)), []).append(m.group(2))
    return units


def _depth(net: Net, units: dict[int, list[str]]) -> int:
    counts = tuple(len(units.get(s, [])) for s in (2, 3, 4, 5))
    for depth, blocks in STAGE_BLOCKS.items():
        if blocks == counts:
            return depth
    raise _fail(net, f"residual units per stage {counts} match no ResNet depth ({STAGE_BLOCKS})")


def _bn_eps(idx: _Index) -> float:
    eps: set[float] = set()
    for layer in idx.net.layers:
        if layer.type == "BatchNorm":
            p = layer.param.batch_norm_param
            eps.add(_f32(p.eps) if p.HasField("eps") else 1e-5)
        elif layer.type == "BN":
            p = layer.param.bn_param
            eps.add(_f32(p.eps) if p.HasField("eps") else 1e-5)
    if len(eps) > 1:
        raise _fail(idx.net, f"BatchNorm layers use different eps values {sorted(eps)}; one eps is supported")
    return eps.pop() if eps else 1e-5


def _stride_in(net: Net, g1: dict, g3: dict, name1: str, name3: str) -> str:
    s1, s3 = g1["stride"][0], g3["stride"][0]
    if s1 > 1 and s3 == 1:
        return "1x1"
    if s3 > 1 and s1 == 1:
        return "3x3"
    raise _fail(net, f"cannot place the stage-3 stride: {name1} stride {s1}, {name3} stride {s3}")


def detect_caffe_arch(net: Net, arch: str | None = None, overrides: dict[str, Any] | None = None) -> DetectedArch:
    """Detect the architecture of ``net`` and the reference-model config reproducing it.

    ``arch`` (a registry name) must agree with the detected family/depth; ``overrides`` replace config keys
    (e.g. ``norm``, ``ppm_mode``, ``input_size``). Raises :class:`ConversionError` for unknown nets.
    """
    idx = _Index(net)
    if idx.has("conv1_1_3x3_s2") or any(_PSP_UNIT.match(n) for n in idx.by_name):
        det = _detect_pspnet(idx)
    elif any(_DEEPLAB_UNIT.match(n) for n in idx.by_name):
        det = _detect_deeplab(idx)
    else:
        raise _fail(net, "not a recognised DeepLab-v2 or PSPNet Caffe net (no res*/conv*_1x1_reduce units)")
    if arch is not None and arch != det.arch:
        if det.family == "pspnet" and arch in ("pspnet50", "pspnet101"):
            raise _fail(net, f"requested {arch} but the net has depth {det.config['depth']} ({det.arch})")
        if not (det.family == "deeplab" and arch == "deeplabv2_resnet101"):
            raise _fail(net, f"requested {arch} but the net is a {det.arch}")
    if overrides:
        det.config.update(overrides)
        det.notes.append(f"config overridden: {sorted(overrides)}")
        if det.family == "pspnet":
            det.arch = f"pspnet{det.config['depth']}"
    try:
        det.config = get_config(det.arch, **det.config)
    except (TypeError, ValueError) as exc:
        raise _fail(net, f"invalid config for {det.arch}: {exc}") from None
    return det


def _stage_geometry(idx: _Index, first_unit: dict[int, str]) -> tuple[list[int], list[int], list[int], list[int]]:
    """(widths, out_widths, strides, dilations) from each stage's first unit (names via ``first_unit``)."""
    widths, outs, strides, dils = [], [], [], []
    for s in (2, 3, 4, 5):
        names = first_unit[s]
        _, ga = idx.conv(names["a"])
        _, gb = idx.conv(names["b"])
        _, gc = idx.conv(names["c"])
        _, gp = idx.conv(names["proj"])
        widths.append(ga["num_output"])
        outs.append(gc["num_output"])
        strides.append(max(ga["stride"][0], gb["stride"][0], gp["stride"][0]))
        dils.append(gb["dilation"][0])
    return widths, outs, strides, dils


def _detect_deeplab(idx: _Index) -> DetectedArch:
    net = idx.net
    units = _units(idx, _DEEPLAB_UNIT)
    depth = _depth(net, units)
    notes: list[str] = []
    _, g1 = idx.conv("conv1")
    if g1["kernel"] != (7, 7) or g1["stride"] != (2, 2):
        raise _fail(net, f"conv1 is {g1['kernel']}/{g1['stride']}, expected a 7x7/2 MSRA stem", "conv1")
    first = {
        s: {
            "a": f"res{s}a_branch2a",
            "b": f"res{s}a_branch2b",
            "c": f"res{s}a_branch2c",
            "proj": f"res{s}a_branch1",
        }
        for s in (2, 3, 4, 5)
    }
    for s in (2, 3, 4, 5):
        if units[s][0] != "a":
            raise _fail(net, f"the first res{s} unit is res{s}{units[s][0]}, expected res{s}a")
    widths, outs, strides, dils = _stage_geometry(idx, first)
    _, ga = idx.conv("res3a_branch2a")
    _, gb = idx.conv("res3a_branch2b")
    stride_in = _stride_in(net, ga, gb, "res3a_branch2a", "res3a_branch2b")
    heads = sorted(
        {m.group(1) for n in idx.by_name if (m := _ASPP.match(n))},
        key=lambda h: [layer.name for layer in net.layers].index(f"{h}_c0"),
    )
    if not heads:
        raise _fail(net, "no ASPP branches fc1_<name>_c<i> found")
    aspp = heads[0]
    if len(heads) > 1:
        notes.append(f"several ASPP heads {heads}; using {aspp}")
    rates, num_classes = [], None
    i = 0
    while idx.has(f"{aspp}_c{i}"):
        _, g = idx.conv(f"{aspp}_c{i}")
        rates.append(g["dilation"][0])
        num_classes = g["num_output"]
        i += 1
    msc = idx.has("fc_fusion") or idx.has(f"{aspp}_res075")
    data_blob = idx.get("conv1").bottoms[0]
    input_size = idx.input_hw(data_blob)
    if input_size is None:
        notes.append("input size unknown (no input dims / crop_size)")
    final = None
    score_blob = "fc_fusion" if msc else aspp
    for layer in net.layers:
        if layer.type == "Interp" and layer.bottoms == [score_blob]:
            final = layer.name
    if final is None:
        notes.append(f"no Interp on {score_blob}: the model still upsamples with zoom {8}")
    config = dict(
        depth=depth,
        num_classes=int(num_classes),
        msc=bool(msc),
        aspp_rates=rates,
        input_size=input_size,
        stem_widths=[g1["num_output"]],
        widths=widths,
        out_widths=outs,
        strides=strides,
        dilations=dils,
        stride_in=stride_in,
        bn_eps=_bn_eps(idx),
    )
    names = {"units": units, "aspp": aspp, "final_interp": final, "data": data_blob}
    return DetectedArch("deeplabv2_resnet101", config, "deeplab", names, notes)


def _detect_pspnet(idx: _Index) -> DetectedArch:
    net = idx.net
    units = _units(idx, _PSP_UNIT)
    depth = _depth(net, units)
    notes: list[str] = []
    stem = ["conv1_1_3x3_s2", "conv1_2_3x3", "conv1_3_3x3"]
    stem_widths = [idx.conv(n)[1]["num_output"] for n in stem]
    for s in (2, 3, 4, 5):
        if units[s][0] != "1":
            raise _fail(net, f"the first conv{s} unit is conv{s}_{units[s][0]}, expected conv{s}_1")
    first = {
        s: {
            "a": f"conv{s}_1_1x1_reduce",
            "b": f"conv{s}_1_3x3",
            "c": f"conv{s}_1_1x1_increase",
            "proj": f"conv{s}_1_1x1_proj",
        }
        for s in (2, 3, 4, 5)
    }
    widths, outs, strides, dils = _stage_geometry(idx, first)
    _, ga = idx.conv("conv3_1_1x1_reduce")
    _, gb = idx.conv("conv3_1_3x3")
    stride_in = _stride_in(net, ga, gb, "conv3_1_1x1_reduce", "conv3_1_3x3")
    concat = idx.get("conv5_3_concat", "Concat")
    pool_re = re.compile(r"^conv5_3_pool(\d+)_interp$")
    producer = {t: layer.name for layer in net.layers for t in layer.tops}
    bins = []
    for blob in concat.bottoms[1:]:
        m = pool_re.match(producer.get(blob, ""))
        if not m:
            raise _fail(net, f"concat input '{blob}' is not a conv5_3_pool<n>_interp output", concat.name)
        bins.append(int(m.group(1)))
    ppm_width = idx.conv(f"conv5_3_pool{bins[0]}_conv")[1]["num_output"]
    _, g54 = idx.conv("conv5_4")
    _, g6 = idx.conv("conv6")
    dropout = 0.0
    for layer in net.layers:
        if layer.type == "Dropout" and layer.bottoms == ["conv5_4"]:
            dropout = _f32(layer.param.dropout_param.dropout_ratio)
    data_blob = idx.get("conv1_1_3x3_s2").bottoms[0]
    input_size = idx.input_hw(data_blob)
    pool = idx.get(f"conv5_3_pool{bins[0]}", "Pooling")
    if input_size is None:
        # fixed kernels k = feat / bin; the released nets use input = 8 (feat - 1) + 1
        feat = pool_geometry(pool.param.pooling_param)["kernel"][0] * bins[0]
        input_size = [8 * (feat - 1) + 1] * 2
        notes.append(f"input size not declared; {input_size} derived from the pyramid-pooling kernels")
    interp = idx.get(f"conv5_3_pool{bins[0]}_interp", "Interp")
    if "height" not in interp_args(interp.param.interp_param):
        notes.append("pyramid-pooling Interp is not height/width based")
    config = dict(
        depth=depth,
        num_classes=g6["num_output"],
        input_size=input_size,
        ppm_bins=bins,
        ppm_mode="fixed",
        ppm_width=ppm_width,
        head_width=g54["num_output"],
        dropout=dropout,
        stem="deep",
        stride_in=stride_in,
        padding="caffe",
        stem_widths=stem_widths,
        widths=widths,
        out_widths=outs,
        strides=strides,
        dilations=dils,
        bn_eps=_bn_eps(idx),
    )
    final = None
    for layer in net.layers:
        if layer.type == "Interp" and layer.bottoms == ["conv6"]:
            final = layer.name
    if final is None:
        notes.append("no Interp on conv6: the model still upsamples with zoom 8")
    names = {"units": units, "final_interp": final, "data": data_blob, "stem": stem}
    return DetectedArch(f"pspnet{depth}", config, "pspnet", names, notes)

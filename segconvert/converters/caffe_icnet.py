"""hszhao/ICNet Caffe nets (``icnet_cityscapes.prototxt``, BN merged, and ``icnet_cityscapes_bnnomerge.prototxt``)
onto the ``icnet`` reference model: detection from the prototxt alone and the layer-by-layer mapping.

Layer names (hszhao/ICNet ``evaluation/prototxt``): ``data_sub1`` (Scale), ``data_sub2`` (Interp shrink 2), the
PSPNet50-style ``conv1_*``/``conv{2-5}_*`` units on the 1/2 image with ``conv3_1_sub4`` (Interp shrink 2) after
``conv3_1``, ``conv5_3_pool{1,2,3,6}`` (+ ``_interp``) summed into ``conv5_3_sum``, ``conv5_4_k1``,
``conv5_4_interp``, ``conv_sub4`` + ``conv3_1_sub2_proj`` -> ``sub24_sum``, ``sub24_sum_interp``, ``conv_sub2`` +
``conv3_sub1_proj`` (after ``conv{1,2,3}_sub1`` on the full image) -> ``sub12_sum``, ``sub12_sum_interp``,
``conv6_cls``, ``conv6_interp``. Every Interp, Pooling, Eltwise and conv geometry is checked against the model.
"""

from __future__ import annotations

import re

import torch

from segconvert.errors import ConversionError
from segconvert.graph import Net
from segconvert.graph.shapes import pool_geometry
from segconvert.reference_models.registry import create_model, get_config

from .caffe_detect import DetectedArch, _bn_eps, _f32, _Index
from .caffe_names import CaffeConversion, _Mapper, check_bottoms_produced

__all__ = ["is_icnet", "detect_icnet", "convert_caffe_icnet"]

_UNIT = re.compile(r"^conv([2-5])_(\d+)_1x1_reduce$")
_SUB1 = ("conv1_sub1", "conv2_sub1", "conv3_sub1")
_STEM = ("conv1_1_3x3_s2", "conv1_2_3x3", "conv1_3_3x3")


def is_icnet(net: Net) -> bool:
    """True for a net with ICNet's cascade layers (``conv_sub4``, ``sub24_sum``, ``sub12_sum``)."""
    names = {layer.name for layer in net.layers}
    return {"conv_sub4", "sub24_sum", "sub12_sum"} <= names


def detect_icnet(net: Net) -> DetectedArch:
    """The ``icnet`` config reproducing ``net``, from the prototxt (widths, units, dilations, pyramid kernels)."""
    idx = _Index(net)
    fail = lambda msg, layer=None: ConversionError(msg, file=net.prototxt or net.caffemodel, layer=layer)  # noqa: E731
    if not is_icnet(net):
        raise fail("not an ICNet net (no conv_sub4 / sub24_sum / sub12_sum)")
    units: dict[int, int] = {}
    for layer in net.layers:
        m = _UNIT.match(layer.name)
        if m:
            units[int(m.group(1))] = max(units.get(int(m.group(1)), 0), int(m.group(2)))
    blocks = [units.get(s, 0) for s in (2, 3, 4, 5)]
    widths = [idx.conv(f"conv{s}_1_1x1_reduce")[1]["num_output"] for s in (2, 3, 4, 5)]
    outs = [idx.conv(f"conv{s}_1_1x1_increase")[1]["num_output"] for s in (2, 3, 4, 5)]
    dils = [idx.conv(f"conv{s}_1_3x3")[1]["dilation"][0] for s in (2, 3, 4, 5)]
    producer = {t: layer.name for layer in net.layers for t in layer.tops}
    bins, kernels, strides = [], [], []
    for blob in idx.get("conv5_3_sum", "Eltwise").bottoms[1:]:
        m = re.match(r"^conv5_3_pool(\d+)_interp$", producer.get(blob, ""))
        if not m:
            raise fail(f"sum input '{blob}' is not a conv5_3_pool<n>_interp output", "conv5_3_sum")
        b = int(m.group(1))
        g = pool_geometry(idx.get(f"conv5_3_pool{b}", "Pooling").param.pooling_param)
        bins.append(b)
        kernels.append(list(g["kernel"]))
        strides.append(list(g["stride"]))
    batchnorm = any(layer.type in ("BN", "BatchNorm") for layer in net.layers)
    data = idx.get("conv1_sub1").bottoms[0]
    scale = producer.get(data)
    input_scale = scale is not None and idx.get(scale).type == "Scale"
    in_blob = idx.get(scale).bottoms[0] if input_scale else data
    config = dict(
        num_classes=idx.conv("conv6_cls")[1]["num_output"],
        backbone="psp",
        input_size=idx.input_hw(in_blob),
        batchnorm=batchnorm,
        padding="caffe",
        stem_widths=[idx.conv(n)[1]["num_output"] for n in _STEM],
        widths=widths,
        out_widths=outs,
        blocks=blocks,
        dilations=dils,
        ppm_bins=bins,
        ppm_mode="fixed",
        ppm_kernels=kernels,
        ppm_strides=strides,
        ppm_width=idx.conv("conv5_4_k1")[1]["num_output"],
        cff_width=idx.conv("conv_sub4")[1]["num_output"],
        sub1_widths=[idx.conv(n)[1]["num_output"] for n in _SUB1],
        input_scale=input_scale,
        bn_eps=_bn_eps(idx) if batchnorm else 1e-5,
    )
    try:
        config = get_config("icnet", **config)
    except (TypeError, ValueError) as exc:
        raise fail(f"invalid config for icnet: {exc}") from None
    notes = [] if batchnorm else ["BatchNorm merged into the conv biases (icnet_cityscapes.prototxt)"]
    if config["input_size"] is None:
        notes.append("input size not declared: the fixed pyramid-pooling kernels fit only the release's crop")
    return DetectedArch("icnet", config, "icnet", {"data": in_blob}, notes)


def _conv(m: _Mapper, name: str, path: str, relu: bool, batchnorm: bool) -> None:
    m.conv_chain(name, f"{path}.conv", f"{path}.bn" if batchnorm else None, f"{path}.relu" if relu else None)


def _interp(m: _Mapper, name: str, module: str) -> None:
    m.check_interp(m.visit(name, "Interp", module), m.module(module))


def convert_caffe_icnet(net: Net, *, require_weights: bool = True) -> CaffeConversion:
    """Convert a loaded hszhao/ICNet Caffe net onto ``icnet`` (every blob used once, every target filled once)."""
    check_bottoms_produced(net)
    det = detect_icnet(net)
    cfg = det.config
    with_weights = any(layer.blobs for layer in net.layers)
    if require_weights and not with_weights:
        raise ConversionError("the net has no weights (prototxt only)", file=net.prototxt)
    with torch.device("meta"):
        model = create_model("icnet", **cfg)
    m = _Mapper(net, model, with_weights)
    bn = cfg["batchnorm"]
    if cfg["input_scale"]:
        layer = m.layer("data_sub1", "Scale")
        if layer.param.scale_param.bias_term:
            raise m.fail("a Scale with bias on the input is not supported", layer.name)
        m.visited.add(layer.name)
        blobs = m.blobs(layer, 0)
        if blobs:
            m.fill("input_scale", blobs[0].reshape(-1), "data_sub1[0]")
    _interp(m, "data_sub2", "resize_sub2")
    for i, name in enumerate(_STEM, 1):
        _conv(m, name, f"backbone.stem.conv{i}", True, bn)
    m.check_pool(m.visit("pool1_3x3_s2", "Pooling", "backbone.stem.pool"), m.module("backbone.stem.pool"))
    for si, n in enumerate(cfg["blocks"]):
        s = si + 2
        for k in range(1, n + 1):
            unit = f"backbone.layer{si + 1}.{k - 1}"
            _conv(m, f"conv{s}_{k}_1x1_reduce", f"{unit}.conv1", True, bn)
            _conv(m, f"conv{s}_{k}_3x3", f"{unit}.conv2", True, bn)
            _conv(m, f"conv{s}_{k}_1x1_increase", f"{unit}.conv3", False, bn)
            if k == 1:
                _conv(m, f"conv{s}_{k}_1x1_proj", f"{unit}.downsample", False, bn)
            m.check_eltwise(m.visit(f"conv{s}_{k}", "Eltwise", unit), "SUM", 2)
            if s == 3 and k == 1:
                _interp(m, "conv3_1_sub4", "backbone.shrink")
    for b in cfg["ppm_bins"]:
        pool = f"ppm.pool{b}"
        m.check_pool(m.visit(f"conv5_3_pool{b}", "Pooling", f"{pool}.pool"), m.module(f"{pool}.pool"))
        m.visit(f"conv5_3_pool{b}_interp", "Interp", f"{pool}.upsample")
    m.check_eltwise(m.visit("conv5_3_sum", "Eltwise", "ppm"), "SUM", len(cfg["ppm_bins"]) + 1)
    _conv(m, "conv5_4_k1", "ppm_conv", True, bn)
    _interp(m, "conv5_4_interp", "cff24.upsample")
    _conv(m, "conv_sub4", "cff24.conv_low", False, bn)
    _conv(m, "conv3_1_sub2_proj", "cff24.conv_high", False, bn)
    m.check_eltwise(m.visit("sub24_sum", "Eltwise", "cff24.relu"), "SUM", 2)
    _interp(m, "sub24_sum_interp", "cff12.upsample")
    _conv(m, "conv_sub2", "cff12.conv_low", False, bn)
    for i, name in enumerate(_SUB1, 1):
        _conv(m, name, f"sub1.conv{i}", True, bn)
    _conv(m, "conv3_sub1_proj", "cff12.conv_high", False, bn)
    m.check_eltwise(m.visit("sub12_sum", "Eltwise", "cff12.relu"), "SUM", 2)
    _interp(m, "sub12_sum_interp", "upsample_cls")
    m.conv_chain("conv6_cls", "classifier", None, None)
    if "conv6_interp" in m.by_name:
        _interp(m, "conv6_interp", "upsample.interp")
    m.finish(det)
    state = {k: m.state[k] for k in m.targets if k in m.state}
    notes = det.notes + m.notes + [f"BN eps {_f32(cfg['bn_eps'])}"] * bn
    return CaffeConversion(
        arch="icnet",
        config=cfg,
        state_dict=state,
        skipped_layers=m.skipped,
        shared_copies=m.shared,
        tap_map=m.taps,
        notes=notes,
    )

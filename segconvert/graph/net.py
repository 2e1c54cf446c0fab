"""The neutral network graph used by the rest of segconvert.

A :class:`Net` is built from a prototxt, a caffemodel, or both merged by layer name (Caffe's own binding
rule), with legacy V1 layers upgraded, include/exclude rules applied for the requested phase, and every
top's shape inferred with Caffe's exact rules (:mod:`segconvert.graph.shapes`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segconvert.errors import CaffeFormatError
from segconvert.formats.caffe_upgrade import upgrade_v1_layer
from segconvert.formats.caffemodel import CaffeModel, read_caffemodel
from segconvert.formats.prototxt import read_prototxt
from segconvert.graph.shapes import RULES, Shape, ShapeError, needs_weights

_PHASES = {"TRAIN": 0, "TEST": 1}


@dataclass
class Layer:
    name: str
    type: str
    bottoms: list[str]
    tops: list[str]
    param: Any  # LayerParameter (V2), without blobs
    blobs: list[np.ndarray] = field(default_factory=list)
    param_names: list[str] = field(default_factory=list)
    output_shapes: list[Shape | None] = field(default_factory=list)
    expected_blob_shapes: list[Shape] | None = None
    shared_from: str | None = None  # layer whose blobs this one shares through param names
    blob_offsets: list[int] = field(default_factory=list)

    @property
    def num_params(self) -> int:
        return 0 if self.shared_from else sum(int(b.size) for b in self.blobs)

    @property
    def in_place(self) -> bool:
        return bool(self.tops) and self.tops == self.bottoms[: len(self.tops)]


@dataclass
class Net:
    name: str
    inputs: dict[str, Shape | None]
    layers: list[Layer]
    blob_shapes: dict[str, Shape | None]
    phase: str = "TEST"
    prototxt: Path | None = None
    caffemodel: Path | None = None
    format: str = "V2"
    warnings: list[str] = field(default_factory=list)
    excluded_layers: list[str] = field(default_factory=list)  # removed by include/exclude rules
    unused_weights: list[str] = field(default_factory=list)  # caffemodel layers with blobs, not in net

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def __contains__(self, name: str) -> bool:
        return any(layer.name == name for layer in self.layers)

    @property
    def num_params(self) -> int:
        return sum(layer.num_params for layer in self.layers)


def load_net(
    prototxt: str | os.PathLike[str] | None = None,
    caffemodel: str | os.PathLike[str] | CaffeModel | None = None,
    *,
    phase: str = "TEST",
    input_shapes: dict[str, Shape] | None = None,
    net_param: Any = None,
) -> Net:
    """Build a :class:`Net` from a prototxt and/or a caffemodel (merged by layer name). ``net_param``: a
    NetParameter message used instead of reading ``prototxt`` (which then only names the file it came from)."""
    if prototxt is None and caffemodel is None and net_param is None:
        raise ValueError("need a prototxt, a caffemodel, or both")
    if phase not in _PHASES:
        raise ValueError(f"phase must be TRAIN or TEST, not {phase!r}")
    model = caffemodel if isinstance(caffemodel, CaffeModel) else None
    proto_notes: list[str] = []  # unknown fields of data layers (segconvert.formats.prototxt)
    if caffemodel is not None and model is None:
        model = read_caffemodel(caffemodel)
    from_text = prototxt is not None or net_param is not None
    if from_text:
        proto_path = Path(prototxt) if prototxt is not None else None
        if net_param is None:
            net_param = read_prototxt(proto_path, proto_notes)
        params, fmt = _layers_of(net_param)
        source_file: Path | None = proto_path
    else:
        assert model is not None
        proto_path = None
        net_param = model.net_param
        params, fmt = [layer.param for layer in model.layers], model.format
        source_file = model.path
    state_level = net_param.state.level if net_param.HasField("state") else 0
    state_stages = set(net_param.state.stage) if net_param.HasField("state") else set()
    layers: list[Layer] = []
    excluded: list[str] = []
    for p in params:
        if not _included(p, _PHASES[phase], state_level, state_stages):
            excluded.append(p.name)
            continue
        layers.append(
            Layer(
                name=p.name,
                type=p.type,
                bottoms=list(p.bottom),
                tops=list(p.top),
                param=p,
                param_names=[spec.name for spec in p.param],
            )
        )
    net = Net(
        name=net_param.name,
        inputs=_declared_inputs(net_param, source_file),
        layers=layers,
        blob_shapes={},
        phase=phase,
        prototxt=proto_path,
        caffemodel=model.path if model is not None else None,
        format=fmt,
        excluded_layers=excluded,
    )
    net.warnings.extend(proto_notes)
    if input_shapes:
        net.inputs.update({k: tuple(v) for k, v in input_shapes.items()})
    if model is not None:
        _bind_blobs(net, model, require=from_text)
        net.warnings.extend(model.warnings)
    _infer_shapes(net, source_file)
    return net


def _layers_of(net_param: Any) -> tuple[list[Any], str]:
    if len(net_param.layer) and len(net_param.layers):
        return [*map(upgrade_v1_layer, net_param.layers), *net_param.layer], "V1+V2"
    if len(net_param.layers):
        return [upgrade_v1_layer(v1) for v1 in net_param.layers], "V1"
    return list(net_param.layer), "V2"


def _included(p: Any, phase: int, level: int, stages: set[str]) -> bool:
    def meets(rule: Any) -> bool:
        if rule.HasField("phase") and rule.phase != phase:
            return False
        if rule.HasField("min_level") and level < rule.min_level:
            return False
        if rule.HasField("max_level") and level > rule.max_level:
            return False
        if any(s not in stages for s in rule.stage):
            return False
        return not any(s in stages for s in rule.not_stage)

    if len(p.include):
        return any(meets(r) for r in p.include)
    if len(p.exclude):
        return not any(meets(r) for r in p.exclude)
    return True


def _declared_inputs(net_param: Any, path: Path | None) -> dict[str, Shape | None]:
    names = list(net_param.input)
    inputs: dict[str, Shape | None] = {}
    if len(net_param.input_shape):
        if len(net_param.input_shape) != len(names):
            raise CaffeFormatError("needs one input_shape per input", file=path)
        for name, shape in zip(names, net_param.input_shape, strict=True):
            inputs[name] = tuple(int(d) for d in shape.dim)
    elif len(net_param.input_dim):
        dims = list(net_param.input_dim)
        if len(dims) != 4 * len(names):
            raise CaffeFormatError(f"needs 4 input_dim values per input ({len(names)} inputs)", file=path)
        for i, name in enumerate(names):
            inputs[name] = tuple(int(d) for d in dims[4 * i : 4 * i + 4])
    else:
        inputs = {name: None for name in names}
    return inputs


def _bind_blobs(net: Net, model: CaffeModel, *, require: bool) -> None:
    by_name = {layer.name: layer for layer in model.layers}
    owners: dict[str, tuple[Layer, int]] = {}
    in_net = set()
    for layer in net.layers:
        in_net.add(layer.name)
        src = by_name.get(layer.name)
        if src is not None and src.blobs:
            layer.blobs = list(src.blobs)
            layer.blob_offsets = list(src.blob_offsets)
        named = [n for n in layer.param_names if n]
        if named and all(n in owners for n in named):
            owner = owners[named[0]][0]
            if owner is not layer:
                layer.shared_from = owner.name
                if not layer.blobs:
                    layer.blobs = list(owner.blobs)
        for i, pname in enumerate(layer.param_names):
            if pname and pname not in owners:
                owners[pname] = (layer, i)
        if require and needs_weights(layer.param) and not layer.blobs:
            raise CaffeFormatError(
                f"{layer.type} layer needs weights but {model.path.name} has none for it",
                file=net.prototxt,
                layer=layer.name,
            )
    unused = [layer.name for layer in model.layers if layer.blobs and layer.name not in in_net]
    unused = [n for n in unused if n not in net.excluded_layers]
    if unused and require:
        net.unused_weights = unused
        net.warnings.append(
            f"{model.path.name}: weights for layer(s) not in the prototxt, ignored: {', '.join(unused)}"
        )


def propagate_shapes(
    net: Net,
    data_shapes: Mapping[str, tuple[int, ...]] | None = None,
    *,
    check_blobs: bool = True,
    fail: Callable[[Any, str], Exception] | None = None,
) -> dict[str, Shape | None]:
    """Caffe's top shapes layer by layer from the net inputs (and ``data_shapes``: top -> shape of data layers
    without bottoms); sets each layer's ``output_shapes`` / ``expected_blob_shapes`` and returns every top's shape.
    ``check_blobs``: the loaded blobs must have the expected shapes. ``fail(layer, message)`` builds the error of a
    shape rule that refuses its inputs (default: :class:`CaffeFormatError` naming the prototxt and layer)."""
    data_shapes = data_shapes or {}
    shapes: dict[str, Shape | None] = dict(net.inputs)
    for layer in net.layers:
        if data_shapes and layer.tops and not layer.bottoms and all(t in data_shapes for t in layer.tops):
            layer.output_shapes = [tuple(data_shapes[t]) for t in layer.tops]
        else:
            bottoms = [shapes.get(b) for b in layer.bottoms]
            rule = RULES.get(layer.type)
            if rule is None or any(b is None for b in bottoms):
                layer.output_shapes = [None] * len(layer.tops)
            else:
                try:
                    tops, expected = rule(layer.param, bottoms)  # type: ignore[arg-type]
                except ShapeError as exc:
                    if fail is not None:
                        raise fail(layer, f"{layer.type}: {exc}") from None
                    raise CaffeFormatError(f"{layer.type}: {exc}", file=net.prototxt, layer=layer.name) from None
                layer.output_shapes = list(tops)
                layer.expected_blob_shapes = expected
                if check_blobs:
                    _check_blobs(net, layer, expected)
        for top, shape in zip(layer.tops, layer.output_shapes, strict=False):
            shapes[top] = shape
    return shapes


def _infer_shapes(net: Net, path: Path | None) -> None:
    def fail(layer: Any, message: str) -> Exception:
        return CaffeFormatError(message, file=net.prototxt or path, layer=layer.name)

    net.blob_shapes = propagate_shapes(net, fail=fail)


def _check_blobs(net: Net, layer: Layer, expected: list[Shape]) -> None:
    """Blob count and element counts must match; legacy 4-D shapes are reshaped to the expected ones."""
    if not layer.blobs or not expected:
        return
    file = net.caffemodel
    n_exp = len(expected)
    if layer.type == "BatchNorm" and len(layer.blobs) == 3:
        pass
    elif len(layer.blobs) != n_exp:
        raise CaffeFormatError(
            f"{layer.type} has {len(layer.blobs)} blobs, the prototxt implies {n_exp}",
            file=file,
            layer=layer.name,
            offset=layer.blob_offsets[0] if layer.blob_offsets else None,
        )
    for i, (blob, shape) in enumerate(zip(layer.blobs, expected, strict=False)):
        if tuple(blob.shape) == tuple(shape):
            continue
        if blob.size == int(np.prod(shape, dtype=np.int64)):
            layer.blobs[i] = blob.reshape(shape)
            continue
        raise CaffeFormatError(
            f"blob {i} has shape {list(blob.shape)}, the prototxt implies {list(shape)}",
            file=file,
            layer=layer.name,
            offset=layer.blob_offsets[i] if i < len(layer.blob_offsets) else None,
        )

"""The generic Keras path: any model of supported layers -> a ``keras_generic`` config and its state_dict.

:func:`convert_keras_generic` reads a Keras file without TensorFlow (:mod:`segconvert.formats.keras_model`), turns
every layer call into a step of :class:`~segconvert.reference_models.keras_generic.KerasGenericNet`
(:mod:`.keras_layers` does one layer), and checks that every weight array of the file is used exactly once. Every
unsupported layer of the model is listed in one :class:`ConversionError`; ``Lambda`` layers and unknown (custom)
classes are listed as such: code in the file is never run.

The tap map keys every layer call by its Keras name (``"conv1"``, ``"block/conv"`` inside a nested model,
``"shared@1"`` for a shared layer's second call, ``"pool/1"`` for a second output) -> the key of
:meth:`KerasGenericNet.layer_outputs` holding the same value in the Keras layout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segconvert.errors import ConversionError
from segconvert.formats.keras_model import KerasFile, open_keras_model
from segconvert.reference_models.caffe_generic import python_name
from segconvert.reference_models.keras_generic import KerasGenericNet, keras_generic_config

from .keras_layers import SUPPORTED, Ctx, LayerSpec, Unsupported, keras1_normalise, translate

__all__ = ["KerasConversion", "convert_keras_generic", "convert_keras_file", "unsupported_layers"]

# Built-in Keras layers the generic path does not convert (reported as unsupported, not as custom code)
_BUILTIN = {
    "LSTM", "GRU", "SimpleRNN", "Bidirectional", "TimeDistributed", "ConvLSTM2D", "Embedding", "Conv3DTranspose",
    "MaxPooling3D", "AveragePooling3D", "UpSampling3D", "ZeroPadding3D", "Cropping3D", "Attention",
    "MultiHeadAttention", "Dot", "ThresholdedReLU", "Masking", "TFOpLambda", "SlicingOpLambda", "CenterCrop",
    "RandomFlip", "RandomCrop", "RandomRotation", "RandomZoom", "UnitNormalization", "GroupNormalization",
    "LocallyConnected2D", "CategoryEncoding", "Identity", "Wrapper", "Highway", "MaxoutDense",
}  # fmt: skip


@dataclass
class KerasConversion:
    """A converted ``keras_generic`` config + state_dict, the tap map and the accounting of every source array."""

    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    tap_map: dict[str, str]
    sources: dict[str, str]
    source_format: str
    keras_version: str | None
    layers: list[dict[str, str]]
    notes: list[str] = field(default_factory=list)
    preprocessing: dict[str, Any] = field(default_factory=dict)
    arch: str = "keras_generic"
    dropped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def inputs(self) -> list[dict[str, Any]]:
        """``meta["inputs"]``: name, shape as the module takes it (N first, -1 free), kind, preprocessing."""
        out = []
        for spec in self.config["inputs"]:
            shape = [-1 if d is None else int(d) for d in spec["shape"]]
            if spec["layout"] == "nc" and len(shape) >= 2:
                shape = [shape[-1], *shape[:-1]]
            image = len(shape) == 3 and shape[0 if spec["layout"] == "nc" else -1] in (1, 3)
            pre = {k: v for k, v in self.preprocessing.items() if v is not None}
            if self.preprocessing.get("mean") is None and self.preprocessing.get("std") is None:
                pre = {}  # nothing given: the model takes what its Keras input took
            kind = "image" if image and spec["layout"] == "nc" else "tensor"
            out.append({"name": spec["name"].split(":")[0], "shape": [-1, *shape], "kind": kind, "preprocessing": pre})
        return out

    def build_model(self, device: str | torch.device = "cpu") -> KerasGenericNet:
        model = KerasGenericNet(**self.config)
        model.load_state_dict(self.state_dict, strict=True)
        return model.to(device).eval()


def _describe_unsupported(layer: Any, cfg_module: str | None, detail: str = "") -> str:
    cls, name = layer.class_name, layer.path
    if cls == "Lambda":
        return f"{cls} '{name}' (Python code: code in the file is never run)"
    builtin = cls in _BUILTIN or (cfg_module or "").startswith(("keras.", "keras"))
    if not builtin and not detail:
        return f"{cls} '{name}' (custom layer class: code in the file is never run)"
    return f"{cls} '{name}'" + (f" ({detail})" if detail else "")


def unsupported_layers(kf: KerasFile) -> list[str]:
    """Every layer the generic path cannot convert by class (``"Class 'name' (why)"``)."""
    out = []
    for layer in kf.graph.layers.values():
        if layer.class_name not in SUPPORTED and keras1_normalise(layer.class_name, {})[0] not in SUPPORTED:
            out.append(_describe_unsupported(layer, layer.config.get("module")))
    return out


def _hard_slope(kf: KerasFile) -> float:
    if kf.keras_version:
        return 1 / 6 if kf.keras_version.split(".")[0] == "3" else 0.2
    return 1 / 6 if kf.format == "keras3" else 0.2


def convert_keras_file(kf: KerasFile, *, nhwc: bool = False) -> KerasConversion:
    """A read Keras file -> :class:`KerasConversion` (see the module docstring)."""
    graph, file = kf.graph, kf.path
    bad = unsupported_layers(kf)
    if bad:
        raise ConversionError(f"{len(bad)} unsupported layer(s): " + "; ".join(bad), file=file)
    channels_first = any(
        layer.config.get("data_format") == "channels_first" or layer.config.get("dim_ordering") == "th"
        for layer in graph.layers.values()
    )
    boundary = "keras" if nhwc or channels_first else "nc"
    slope = _hard_slope(kf)
    tensors: dict[str, tuple[int, str]] = {}  # id -> (rank, layout)
    inputs = []
    for tid, shape in graph.inputs:
        tensors[tid] = (len(shape) + 1, boundary)
        inputs.append({"name": tid, "shape": list(shape), "layout": boundary})
    groups: dict[str, list[tuple[str, str]]] = {}
    for key in kf.arrays:
        groups.setdefault(key[0], []).append(key)
    used: set[tuple[str, str]] = set()
    modules: set[str] = set()
    reserved = set(dir(KerasGenericNet)) | {"config", "input_names", "output_names", "steps", "layer_outputs"}
    first: dict[str, tuple[dict[str, Any], LayerSpec]] = {}
    steps, state, sources, notes, problems = [], {}, {}, [], []
    for node in graph.nodes:
        layer = node.layer
        if problems and any(t not in tensors for t in node.inputs):  # after an unsupported layer: report only it
            continue
        ranks = [tensors[t][0] for t in node.inputs]
        layouts = [tensors[t][1] for t in node.inputs]
        if layer.path in first:  # a shared layer's later call runs the same module with the same layouts
            step0, spec = first[layer.path]
            step = {**step0, "inputs": list(node.inputs), "outputs": list(node.outputs), "shared": True}
        else:
            top, name = layer.weight_key
            keys = groups.get(top, []) if top == name else [k for k in [(top, name)] if k in kf.arrays]
            weights = [w for k in keys for w in kf.arrays[k]]
            try:
                cls, cfg = keras1_normalise(layer.class_name, layer.config)
                spec = translate(Ctx(cls, cfg, ranks, layouts, weights, slope))
            except Unsupported as exc:
                problems.append(_describe_unsupported(layer, layer.config.get("module"), str(exc) or "unsupported"))
                continue
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                raise ConversionError(f"{type(exc).__name__ if isinstance(exc, KeyError) else ''}{exc}".strip(),
                                      file=file, layer=layer.path) from None  # fmt: skip
            used.update(keys)
            module = python_name(layer.path, modules, reserved)
            for suffix, arr in spec.state.items():
                state[f"{module}.{suffix}"] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
                sources[f"{module}.{suffix}"] = f"{layer.path}/{suffix}"
            notes += [f"{layer.path}: {n}" for n in spec.notes]
            wants = spec.layouts or list(layouts)
            step = {
                "name": layer.path, "class": layer.class_name, "module": module, "ctor": spec.ctor,
                "args": spec.args, "kwargs": spec.kwargs, "inputs": list(node.inputs), "layouts": wants,
                "outputs": list(node.outputs), "out_layout": spec.out_layout or wants[0],
                "activation": spec.activation,
            }  # fmt: skip
            first[layer.path] = (step, spec)
        out_ranks = spec.out_ranks or [ranks[0]]
        for j, t in enumerate(node.outputs):
            tensors[t] = (out_ranks[min(j, len(out_ranks) - 1)], step["out_layout"])
        steps.append(step)
    if problems:
        raise ConversionError(f"{len(problems)} unsupported layer(s): " + "; ".join(problems), file=file)
    unused = [f"{a}/{b}" if a != b else a for a, b in kf.arrays if (a, b) not in used and kf.arrays[(a, b)]]
    if unused:
        raise ConversionError(f"weights of {len(unused)} layer(s) not used by the model: {unused[:8]}", file=file)
    outputs = [{"name": t, "layout": boundary} for t in graph.outputs]
    aliases = {}
    for path, outs in graph.nested.items():
        for j, t in enumerate(outs):
            layer, call, index = t.rsplit(":", 2)
            if call == "0" and layer in graph.layers:
                aliases[path + (f"/{j}" if j else "")] = layer + (f"/{index}" if index != "0" else "")
    config = keras_generic_config(inputs, steps, outputs, graph.name, kf.keras_version, aliases)
    taps = _tap_keys(config)
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in KerasGenericNet(**config).state_dict().items()}
    missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    bad_shape = [
        f"{k} {list(state[k].shape)} vs {list(s)}" for k, s in want.items() if k in state and state[k].shape != s
    ]
    if missing or extra or bad_shape:
        raise ConversionError(f"converted tensors do not fit: missing {missing[:5]}, unexpected {extra[:5]}, "
                              f"shapes {bad_shape[:3]}", file=file)  # fmt: skip
    return KerasConversion(
        config=config,
        state_dict={k: state[k] for k in want},
        tap_map=taps,
        sources=sources,
        source_format=kf.format,
        keras_version=kf.keras_version,
        layers=[{"name": s["name"], "class": s["class"]} for s in steps if not s.get("shared")],
        notes=notes,
    )


def _tap_keys(config: dict[str, Any]) -> dict[str, str]:
    """Keras layer call (``name[@call][/output]``) -> :meth:`KerasGenericNet.layer_outputs` key (the same)."""
    taps, calls = {}, {}
    for step in config["steps"]:
        call = calls.get(step["name"], 0)
        calls[step["name"]] = call + 1
        for j in range(len(step["outputs"])):
            key = step["name"] + (f"@{call}" if call else "") + (f"/{j}" if j else "")
            taps[key] = key
    return taps


def convert_keras_generic(
    path: str | os.PathLike, config: str | os.PathLike | None = None, *, nhwc: bool = False
) -> KerasConversion:
    """Read a Keras file (full-model ``.h5``, ``.keras``, or weights + ``config`` JSON) and convert it."""
    kf = open_keras_model(Path(path), config)
    return convert_keras_file(kf, nhwc=nhwc)

"""Keras model architecture (``model_config`` / ``config.json`` / ``to_json()``) as a graph, plus its weights.

Nothing in the file is executed: the JSON is read as data. Layouts understood:

* Keras 1.x and 2.x / tf_keras ``Sequential`` (``config`` a list of layers in 2.0-era and Keras 1 files, else a
  dict with ``layers``) and ``Model`` / ``Functional`` (``inbound_nodes`` as ``[[[layer, node, tensor, kwargs]]]``,
  Keras 1 without the kwargs), with several inputs/outputs, shared layers (one layer, several nodes) and nested
  models (a model used as a layer; flattened, its layers named ``outer/inner``);
* Keras 3 ``config.json`` (``inbound_nodes`` as ``[{"args": [...__keras_tensor__ with keras_history...]}]``).

Weights (:func:`read_keras_arrays`): legacy HDF5 groups with ``weight_names`` (nested models: names
``inner/var:0``; Keras 1: ``<layer>_W``, ``<layer>_b``...), or Keras 3 ``layers/<path>/vars/<i>`` named by the
``vars`` group's ``name`` attribute. Keys are ``(top-level layer, innermost layer)``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segconvert.errors import CheckpointError
from segconvert.formats.keras_h5 import _read_dataset, _snake, _text, _text_list, read_keras_archive

__all__ = ["KerasLayer", "KerasNode", "KerasGraph", "KerasFile", "parse_model_config", "open_keras_model"]

MODEL_CLASSES = ("Model", "Functional", "Sequential")
_K1_VARS = {"W": "kernel", "b": "bias", "running_std": "moving_variance", "running_mean": "moving_mean"}


@dataclass
class KerasLayer:
    """One layer: ``path`` (``"conv1"``, ``"backbone/conv1"`` in a nested model), class and config."""

    path: str
    class_name: str
    config: dict[str, Any]
    weight_key: tuple[str, str]


@dataclass
class KerasNode:
    """One call of a layer: input and output tensor ids (``"<layer path>:<node>:<index>"``)."""

    layer: KerasLayer
    call: int
    inputs: list[str]
    outputs: list[str]


@dataclass
class KerasGraph:
    """A flattened Keras model: ``inputs`` ``[(tensor id, shape without batch)]``, ``nodes`` in a valid execution
    order, ``outputs`` (tensor ids)."""

    name: str
    inputs: list[tuple[str, list[int | None]]]
    nodes: list[KerasNode]
    outputs: list[str]
    layers: dict[str, KerasLayer] = field(default_factory=dict)
    keras_version: str | None = None
    nested: dict[str, list[str]] = field(default_factory=dict)  # nested model path -> its first call's outputs


class _Bad(ValueError):
    pass


def _class(spec: dict) -> str:
    return str(spec.get("class_name", "?"))


def _name(spec: dict) -> str:
    name = spec.get("name") or spec.get("config", {}).get("name")
    if not isinstance(name, str) or not name:
        raise _Bad(f"a {_class(spec)} layer has no name")
    return name


def _ref(item: Any) -> tuple[str, int, int]:
    """A tensor reference in any layout -> (layer, node, tensor)."""
    if isinstance(item, dict):
        hist = item.get("config", {}).get("keras_history")
        if hist is None:
            raise _Bad(f"inbound tensor without keras_history: {str(item)[:80]}")
        item = hist
    if isinstance(item, list | tuple) and len(item) >= 3 and isinstance(item[0], str):
        return str(item[0]), int(item[1]), int(item[2])
    raise _Bad(f"cannot read the tensor reference {str(item)[:80]}")


def _is_ref(item: Any) -> bool:
    if isinstance(item, dict):
        return item.get("class_name") == "__keras_tensor__"
    return isinstance(item, list | tuple) and len(item) in (3, 4) and isinstance(item[0], str)


def _node_refs(node: Any) -> list[tuple[str, int, int]]:
    """Input references of one ``inbound_nodes`` entry (Keras 1/2 list or Keras 3 dict)."""
    if isinstance(node, dict):  # Keras 3
        out: list[tuple[str, int, int]] = []

        def walk(v: Any) -> None:
            if _is_ref(v):
                out.append(_ref(v))
            elif isinstance(v, list | tuple):
                for x in v:
                    walk(x)

        walk(node.get("args", []))
        for v in (node.get("kwargs") or {}).values():
            walk(v)
        return out
    if isinstance(node, list):
        return [_ref(x) for x in node]
    raise _Bad(f"cannot read inbound node {str(node)[:80]}")


def _io_refs(v: Any) -> list[tuple[str, int, int]]:
    if _is_ref(v):
        return [_ref(v)]
    if isinstance(v, list):
        return [r for x in v for r in _io_refs(x)]
    raise _Bad(f"cannot read input/output layers {str(v)[:80]}")


def _input_shape(spec: dict) -> list[int | None]:
    c = spec.get("config", {})
    for key in ("batch_shape", "batch_input_shape"):
        if c.get(key) is not None:
            return list(c[key])[1:]
    if c.get("input_shape") is not None:
        return list(c["input_shape"])
    if c.get("input_dim") is not None:
        return [int(c["input_dim"])]
    raise _Bad(f"input '{_name(spec)}' declares no shape")


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[KerasNode] = []
        self.layers: dict[str, KerasLayer] = {}
        self.alias: dict[str, str] = {}
        self.known: set[str] = set()
        self.nested: dict[str, list[str]] = {}

    def resolve(self, t: str) -> str:
        while t in self.alias:
            t = self.alias[t]
        return t

    def model(self, spec: dict, prefix: str, top: str | None, feeds: list[str] | None) -> tuple[list, list[str]]:
        """Add a (nested) model's layers; ``feeds`` are the outer tensors bound to its inputs."""
        cls, cfg = _class(spec), spec.get("config")
        if cls == "Sequential" or isinstance(cfg, list):
            return self.sequential(cfg, prefix, top, feeds)
        if not isinstance(cfg, dict) or not isinstance(cfg.get("layers"), list):
            raise _Bad(f"model {cls} has no layer list")
        inputs, pending = [], []
        specs = {_name(s): s for s in cfg["layers"]}
        for s in cfg["layers"]:
            name = _name(s)
            path = f"{prefix}{name}"
            if _class(s) == "InputLayer":
                inputs.append((name, path, s))
                continue
            nodes = s.get("inbound_nodes") or []
            if not isinstance(nodes, list):
                raise _Bad(f"layer '{path}': inbound_nodes is not a list")
            for k, node in enumerate(nodes):
                pending.append((s, path, k, [(f"{prefix}{a}:{b}:{c}") for a, b, c in _node_refs(node)]))
        want = _io_refs(cfg.get("input_layers", [])) or [(n, 0, 0) for n, _, _ in inputs]
        bound = []
        for i, (n, _, _) in enumerate(want):
            if n not in specs:
                raise _Bad(f"input layer '{n}' is not a layer of the model")
            tid = f"{prefix}{n}:0:0"
            if feeds is None:
                bound.append((tid, _input_shape(specs[n])))
                self.known.add(tid)
            else:
                if i >= len(feeds):
                    raise _Bad(f"nested model '{prefix[:-1]}' gets {len(feeds)} inputs, needs {len(want)}")
                self.alias[tid] = feeds[i]
        self.schedule(pending, top)
        outs = [self.resolve(f"{prefix}{a}:{b}:{c}") for a, b, c in _io_refs(cfg.get("output_layers", []))]
        return bound, outs

    def sequential(self, cfg: Any, prefix: str, top: str | None, feeds: list[str] | None) -> tuple[list, list[str]]:
        layers = cfg if isinstance(cfg, list) else (cfg or {}).get("layers")
        if not isinstance(layers, list) or not layers:
            raise _Bad("Sequential model has no layers")
        bound: list = []
        current: str | None = feeds[0] if feeds else None
        for s in layers:
            name = _name(s)
            if current is None:
                current = f"{prefix}{name}:input"
                bound.append((current, _input_shape(s)))
                self.known.add(current)
            if _class(s) == "InputLayer":
                continue
            self.schedule([(s, f"{prefix}{name}", 0, [current])], top)
            current = self.resolve(f"{prefix}{name}:0:0")
        return bound, [current]

    def schedule(self, pending: list, top: str | None) -> None:
        """Add nodes once their inputs exist (the config's order, repeated passes for shared layers)."""
        while pending:
            left = []
            for s, path, k, ins in pending:
                ins = [self.resolve(t) for t in ins]
                if not all(t in self.known for t in ins):
                    left.append((s, path, k, ins))
                    continue
                self.add(s, path, k, ins, top)
            if len(left) == len(pending):
                raise _Bad(f"layer '{left[0][1]}' reads tensors that no layer produces: {left[0][3]}")
            pending = left

    def add(self, s: dict, path: str, k: int, ins: list[str], top: str | None) -> None:
        cls = _class(s)
        if cls in MODEL_CLASSES:
            _, outs = self.model(s, f"{path}/", top or _name(s), ins)
            self.nested.setdefault(path, outs)
            for j, t in enumerate(outs):  # a nested model's node 0 is its own graph: calls count from 1
                self.alias[f"{path}:{k + 1}:{j}"] = t
                self.alias.setdefault(f"{path}:{k}:{j}", t)
                self.known.add(t)
            return
        layer = self.layers.get(path)
        if layer is None:
            cfg = s.get("config") if isinstance(s.get("config"), dict) else {}
            layer = KerasLayer(path, cls, cfg, (top or _name(s), _name(s)))
            self.layers[path] = layer
        n_out = 2 if cls == "MaxPoolingWithArgmax2D" else 1
        outs = [f"{path}:{k}:{j}" for j in range(n_out)]
        self.nodes.append(KerasNode(layer, k, ins, outs))
        self.known.update(outs)


def parse_model_config(config: Any, keras_version: str | None = None) -> KerasGraph:
    """A parsed model config (dict) -> :class:`KerasGraph`. Raises ``ValueError`` naming what does not parse."""
    if isinstance(config, str):
        config = json.loads(config)
    if not isinstance(config, dict) or _class(config) not in MODEL_CLASSES:
        raise ValueError(f"not a Keras model config (class_name {_class(config) if isinstance(config, dict) else '?'})")
    b = _Builder()
    cfg = config.get("config")
    try:
        inputs, outputs = b.model(config, "", None, None)
    except (_Bad, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError(str(exc) or type(exc).__name__) from None
    name = cfg.get("name", "") if isinstance(cfg, dict) else ""
    return KerasGraph(str(name), inputs, b.nodes, outputs, b.layers, keras_version, b.nested)


@dataclass
class KerasFile:
    """A Keras file read without TensorFlow: the graph, the weights by ``(top layer, layer)`` and versions."""

    path: Path
    graph: KerasGraph
    arrays: dict[tuple[str, str], list[tuple[str | None, np.ndarray]]]
    format: str
    keras_version: str | None
    backend: str | None = None


def _legacy_arrays(g, file: Path, size: int) -> dict:
    out: dict[tuple[str, str], list] = {}
    for group in _text_list(g.attrs["layer_names"]):
        if group not in g:
            raise CheckpointError("layer listed in layer_names has no group", file=file, key=group)
        lg = g[group]
        for wn in _text_list(lg.attrs["weight_names"]) if "weight_names" in lg.attrs else []:
            if wn not in lg:
                raise CheckpointError("weight listed in weight_names is missing", file=file, key=f"{group}/{wn}")
            parts = wn.split(":")[0].split("/")
            inner, var = (parts[-2], parts[-1]) if len(parts) >= 2 else (group, parts[-1])
            if len(parts) == 1 and var.startswith(f"{group}_"):  # Keras 1: <layer>_W
                var = var[len(group) + 1 :]
                var = _K1_VARS.get(var, var)
            out.setdefault((group, inner), []).append((var, _read_dataset(lg[wn], file, size)))
    return out


def _k3_arrays(g, file: Path, size: int, top: str | None, layers_cfg: list | None) -> dict:
    out: dict[tuple[str, str], list] = {}
    names = {}
    seen: dict[str, int] = {}
    for s in layers_cfg or []:
        base = _snake(_class(s))
        n = seen.get(base, 0)
        seen[base] = n + 1
        names[base if n == 0 else f"{base}_{n}"] = s
    for key in g:
        lg = g[key]
        spec = names.get(key, {})
        name = _text(lg["vars"].attrs["name"]) if "vars" in lg and "name" in lg["vars"].attrs else None
        name = name or (_name(spec) if spec else key)
        if "vars" in lg:
            idx = sorted((k for k in lg["vars"] if k.isdigit()), key=int)
            if idx:
                out[(top or name, name)] = [(None, _read_dataset(lg["vars"][k], file, size)) for k in idx]
        if "layers" in lg:
            sub = spec.get("config", {}).get("layers") if isinstance(spec.get("config"), dict) else None
            out.update(_k3_arrays(lg["layers"], file, size, top or name, sub))
    return out


def open_keras_model(path: str | os.PathLike, config: str | os.PathLike | None = None) -> KerasFile:
    """Read a full-model ``.h5``, a ``.keras`` archive, or weights (``.h5`` / ``.weights.h5``) + ``config`` JSON."""
    import h5py

    p = Path(path)
    if not p.is_file():
        raise CheckpointError("no such file", file=p)
    source, size, extras = read_keras_archive(p)
    model_config = extras["config.json"].decode("utf-8", "replace") if "config.json" in extras else None
    try:
        version = json.loads(extras["metadata.json"]).get("keras_version") if "metadata.json" in extras else None
    except (ValueError, AttributeError) as exc:
        raise CheckpointError(f"cannot read archive: metadata.json: {exc}", file=p) from None
    backend = None
    try:
        with h5py.File(source, "r") as f:
            for attrs in (f.attrs, f["model_weights"].attrs if "model_weights" in f else {}):
                version = _text(attrs["keras_version"]) if "keras_version" in attrs else version
                backend = _text(attrs["backend"]) if "backend" in attrs else backend
            if "model_config" in f.attrs:
                model_config = _text(f.attrs["model_config"])
            if config is not None:
                model_config = Path(config).read_text()
            if model_config is None:
                raise CheckpointError("the file has no model config (weights only): give the architecture JSON "
                                      "with --config arch.json", file=p)  # fmt: skip
            try:
                parsed = json.loads(model_config)
                graph = parse_model_config(parsed, version)
            except ValueError as exc:
                raise CheckpointError(
                    f"model config does not parse: {exc}", file=config or p, key="model_config"
                ) from None
            if "model_weights" in f or "layer_names" in f.attrs:
                g = f["model_weights"] if "model_weights" in f else f
                if "layer_names" not in g.attrs:
                    raise CheckpointError("no 'layer_names' attribute (not a Keras weights file)", file=p)
                arrays, fmt = _legacy_arrays(g, p, size), "keras2-model" if "model_weights" in f else "keras2"
            elif "layers" in f and isinstance(f["layers"], h5py.Group):
                layers_cfg = parsed.get("config", {}).get("layers") if isinstance(parsed.get("config"), dict) else None
                arrays, fmt = _k3_arrays(f["layers"], p, size, None, layers_cfg), "keras3"
            else:
                raise CheckpointError("no layer_names, model_weights or layers/ (not a Keras weights file)", file=p)
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, UnicodeDecodeError) as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise CheckpointError(f"cannot read Keras HDF5 file: {msg}", file=p) from None
    graph.keras_version = version
    return KerasFile(p, graph, arrays, fmt, version, backend)

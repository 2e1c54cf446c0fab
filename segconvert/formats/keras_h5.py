"""Keras HDF5 weight reader (h5py only; no TensorFlow or Keras needed).

Three layouts:

* **Keras 2 weights** (``Model.save_weights('x.h5')``): root attribute ``layer_names`` lists every layer in
  ``model.layers`` order; group ``<layer>`` has attribute ``weight_names`` giving the weight order, and each
  weight is the dataset ``<layer>/<weight name>`` (e.g. ``conv1/conv1/kernel:0``).
* **Keras 2 full model** (``model.save('x.h5')``): the same layout under ``model_weights/``, plus the root
  attribute ``model_config`` (JSON).
* **Keras 3 weights** (``x.weights.h5``, also inside a ``.keras`` zip): ``layers/<path>/vars/<i>``, where
  ``<path>`` is the snake-case class name made unique in ``model.layers`` order (``conv2d_3``). The layer
  name is taken from the ``vars`` group's ``name`` attribute (Keras >= 3.x writes it), else reconstructed from
  the model config (``.keras`` files), else the path is kept.

Weight names are shortened to the variable name (``kernel``, ``bias``, ``gamma``, ``beta``, ``moving_mean``,
``moving_variance``, ``depthwise_kernel``, ...). Keras 3 files do not store variable names; they are inferred
from the layer class and the number of variables where unambiguous, else the index (``"0"``, ``"1"``...).
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np

from segconvert.errors import CheckpointError

__all__ = ["KerasWeights", "open_keras_weights", "describe"]

# Keras 3 variable order per layer class (snake-case) and variable count
_K3_VARS: dict[tuple[str, int], list[str]] = {}
for _cls in ("conv1d", "conv2d", "conv3d", "dense", "conv1d_transpose", "conv2d_transpose", "conv3d_transpose"):
    _K3_VARS[(_cls, 1)] = ["kernel"]
    _K3_VARS[(_cls, 2)] = ["kernel", "bias"]
for _cls in ("depthwise_conv1d", "depthwise_conv2d"):
    _K3_VARS[(_cls, 1)] = ["kernel"]
    _K3_VARS[(_cls, 2)] = ["kernel", "bias"]
for _cls in ("separable_conv1d", "separable_conv2d"):
    _K3_VARS[(_cls, 2)] = ["depthwise_kernel", "pointwise_kernel"]
    _K3_VARS[(_cls, 3)] = ["depthwise_kernel", "pointwise_kernel", "bias"]
_K3_VARS[("batch_normalization", 4)] = ["gamma", "beta", "moving_mean", "moving_variance"]
_K3_VARS[("layer_normalization", 2)] = ["gamma", "beta"]
_K3_VARS[("p_re_lu", 1)] = ["alpha"]
_K3_VARS[("embedding", 1)] = ["embeddings"]

_SUFFIX = re.compile(r"_\d+$")


def _text(v) -> str:
    if isinstance(v, (bytes, np.bytes_)):
        return bytes(v).decode("utf-8", "replace")
    return str(v)


def _text_list(v) -> list[str]:
    if isinstance(v, (str, bytes, np.bytes_)):
        return [_text(v)]
    return [_text(x) for x in np.asarray(v).reshape(-1)]


def _short(weight_name: str) -> str:
    """``conv1_1/kernel:0`` -> ``kernel``."""
    return weight_name.rsplit("/", 1)[-1].split(":", 1)[0]


def _snake(name: str) -> str:
    """Keras's class-name -> path rule: ``Conv2D`` -> ``conv2d``, ``BatchNormalization`` -> ``batch_normalization``."""
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", re.sub(r"\W+", "", name))
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


def _natural(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


class KerasWeights:
    """The weights of a Keras HDF5 file, in memory.

    ``layers``: ordered ``{layer name: [(weight name, array), ...]}`` (layers without weights omitted);
    ``model_config``: the parsed model config, if the file has one; ``format``: ``"keras2"``,
    ``"keras2-model"`` or ``"keras3"``; ``layer_names``: every layer in model order where the file says
    (Keras 2), ``paths``: Keras 3 path -> layer name.
    """

    def __init__(self, path: Path, fmt: str) -> None:
        self.path = path
        self.format = fmt
        self.layers: dict[str, list[tuple[str, np.ndarray]]] = {}
        self.model_config: dict | None = None
        self.layer_names: list[str] = []
        self.paths: dict[str, str] = {}
        self.keras_version: str | None = None
        self.backend: str | None = None

    def __repr__(self) -> str:
        return f"<KerasWeights {self.format} {str(self.path)!r}: {len(self.layers)} layers with weights>"

    def weights(self, layer: str) -> dict[str, np.ndarray]:
        """``{weight name: array}`` of one layer."""
        if layer not in self.layers:
            raise KeyError(layer)
        return dict(self.layers[layer])

    def entries(self) -> list[tuple[str, tuple[int, ...], str, int]]:
        """``(layer/weight, shape, dtype, nbytes)`` for every weight, in model order."""
        return [
            (f"{layer}/{w}", tuple(a.shape), a.dtype.name, int(a.nbytes))
            for layer, ws in self.layers.items()
            for w, a in ws
        ]


def _read_dataset(ds, file: Path, file_size: int) -> np.ndarray:
    nbytes = int(np.prod(ds.shape, dtype=np.int64)) * ds.dtype.itemsize if ds.shape is not None else 0
    limit = file_size if ds.compression is None else 1024 * file_size
    if nbytes > limit:
        raise CheckpointError(f"dataset claims {nbytes} bytes in a {file_size}-byte file", file=file, key=ds.name)
    return np.asarray(ds[()])


def _read_legacy(kw: KerasWeights, g, file_size: int) -> None:
    if "layer_names" not in g.attrs:
        raise CheckpointError("no 'layer_names' attribute (not a Keras weights file)", file=kw.path, key=g.name)
    kw.layer_names = _text_list(g.attrs["layer_names"])
    for layer in kw.layer_names:
        if layer not in g:
            raise CheckpointError("layer listed in layer_names has no group", file=kw.path, key=layer)
        lg = g[layer]
        names = _text_list(lg.attrs["weight_names"]) if "weight_names" in lg.attrs else []
        ws = []
        for wn in names:
            if wn not in lg:
                raise CheckpointError("weight listed in weight_names is missing", file=kw.path, key=f"{layer}/{wn}")
            ws.append((_short(wn), _read_dataset(lg[wn], kw.path, file_size)))
        if ws:
            kw.layers[layer] = ws


def _k3_groups(g, prefix: str = "") -> list[tuple[str, object]]:
    """(path, vars group) for every layer under a Keras 3 ``layers`` group, recursing into sub-models."""
    out = []
    for name in g:
        lg = g[name]
        path = f"{prefix}{name}"
        if "vars" in lg:
            out.append((path, lg["vars"]))
        if "layers" in lg:
            out.extend(_k3_groups(lg["layers"], f"{path}/"))
    return out


def _k3_paths_from_config(config: dict) -> dict[str, str]:
    """Keras 3 weight path -> layer name, by the naming rule (snake-case class name, unique in order)."""
    layers = config.get("config", {}).get("layers", []) if isinstance(config, dict) else []
    seen: dict[str, int] = {}
    out = {}
    for layer in layers:
        base = _snake(str(layer.get("class_name", "layer")))
        n = seen.get(base, 0)
        seen[base] = n + 1
        name = layer.get("name") or layer.get("config", {}).get("name")
        out[base if n == 0 else f"{base}_{n}"] = str(name)
    return out


def _read_keras3(kw: KerasWeights, f, file_size: int) -> None:
    by_config = _k3_paths_from_config(kw.model_config) if kw.model_config else {}
    order = list(by_config)
    groups = sorted(_k3_groups(f["layers"]), key=lambda pg: _natural(pg[0]))
    if order:
        rank = {p: i for i, p in enumerate(order)}
        groups.sort(key=lambda pg: rank.get(pg[0], len(rank)))
    for path, vg in groups:
        keys = sorted((k for k in vg if k.isdigit()), key=int)
        if not keys:
            continue
        name = _text(vg.attrs["name"]) if "name" in vg.attrs else by_config.get(path, path)
        cls = _SUFFIX.sub("", path.rsplit("/", 1)[-1])
        labels = _K3_VARS.get((cls, len(keys)), keys)
        if name in kw.layers:
            name = path
        kw.paths[path] = name
        kw.layers[name] = [
            (label, _read_dataset(vg[k], kw.path, file_size)) for label, k in zip(labels, keys, strict=True)
        ]
    kw.layer_names = list(kw.layers)


def read_keras_archive(p: Path, extras: tuple[str, ...] = ("config.json", "metadata.json")) -> tuple[object, int, dict]:
    """``(h5 source, its size, {name: bytes})``: a Keras 3 ``.keras`` zip's ``model.weights.h5`` (in memory) and the
    ``extras`` it holds; for any other file ``(p, file size, {})``. Bad archives raise :class:`CheckpointError`."""
    size = p.stat().st_size
    try:
        if not zipfile.is_zipfile(p):
            return p, size, {}
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
            if "model.weights.h5" not in names:
                raise CheckpointError("archive has no model.weights.h5 (not a .keras file)", file=p)
            info = z.getinfo("model.weights.h5")
            if info.file_size > 64 * size + (1 << 20):
                raise CheckpointError("model.weights.h5 claims an implausible size", file=p)
            found = {name: z.read(name) for name in extras if name in names}
            return io.BytesIO(z.read("model.weights.h5")), info.file_size, found
    except (zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"cannot read archive: {exc}", file=p) from None


def open_keras_weights(path: str | os.PathLike) -> KerasWeights:
    """Read a Keras ``.h5`` / ``.hdf5`` / ``.weights.h5`` file or a Keras 3 ``.keras`` archive."""
    import h5py

    p = Path(path)
    if not p.is_file():
        raise CheckpointError("no such file", file=p)
    source, size, extras = read_keras_archive(p)
    try:
        config = json.loads(extras["config.json"]) if "config.json" in extras else None
    except ValueError as exc:
        raise CheckpointError(f"cannot read archive: config.json: {exc}", file=p) from None
    try:
        with h5py.File(source, "r") as f:
            if "model_weights" in f:
                kw = KerasWeights(p, "keras2-model")
                g = f["model_weights"]
            elif "layer_names" in f.attrs:
                kw = KerasWeights(p, "keras2")
                g = f
            elif "layers" in f and isinstance(f["layers"], h5py.Group):
                kw = KerasWeights(p, "keras3")
                g = None
            else:
                raise CheckpointError("no layer_names, model_weights or layers/ (not a Keras weights file)", file=p)
            for attrs in (f.attrs, g.attrs if g is not None else {}):
                if "keras_version" in attrs:
                    kw.keras_version = _text(attrs["keras_version"])
                if "backend" in attrs:
                    kw.backend = _text(attrs["backend"])
            if "model_config" in f.attrs:
                config = json.loads(_text(f.attrs["model_config"]))
            kw.model_config = config
            if g is None:
                _read_keras3(kw, f, size)
            else:
                _read_legacy(kw, g, size)
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, UnicodeDecodeError) as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise CheckpointError(f"cannot read Keras HDF5 file: {msg}", file=p) from None
    return kw


def describe(path: str | os.PathLike) -> list[dict]:
    """``[{name, shape, dtype, nbytes}]`` of every weight (for ``segconvert inspect``)."""
    kw = open_keras_weights(path)
    return [{"name": n, "shape": list(s), "dtype": d, "nbytes": b} for n, s, d, b in kw.entries()]

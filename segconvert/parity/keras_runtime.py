"""Run the source Keras file in real Keras (tf_keras or Keras 3) and compare every layer with the conversion.

The file is loaded the safe way only: a full-model ``.h5`` or weights + architecture JSON through ``tf_keras``
(``model_from_json`` + ``load_weights``), a Keras 3 ``.keras`` archive through ``keras.saving.load_model`` with
its default ``safe_mode=True``. A model with ``Lambda`` or unknown custom layers is never loaded (the conversion
refuses it before). Per-layer outputs come from a probe model over the top-level layers' outputs; layers inside
a nested model are compared through the nested model's output.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segconvert.parity.report import ParityReport, compare

__all__ = ["keras_runtime_status", "load_keras", "keras_layer_outputs", "keras_parity", "verify_keras"]

_SUSPECT = ("Lambda",)


def _quiet() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def keras_runtime_status(path: Path) -> str | None:
    """None when a Keras runtime for ``path`` is importable, else the one-line install hint."""
    import importlib.util

    want = "keras" if _is_keras3(path) else "tf_keras"
    if importlib.util.find_spec(want) is None:
        return f"{want} is not installed (pip install 'tensorflow-cpu' '{want.replace('_', '-')}') "
    return None


def _is_keras3(path: Path) -> bool:
    return zipfile.is_zipfile(path) or path.name.endswith(".weights.h5") and _h5_is_keras3(path)


def _h5_is_keras3(path: Path) -> bool:
    import h5py

    with h5py.File(path, "r") as f:
        return "layers" in f and "layer_names" not in f.attrs and "model_weights" not in f


def load_keras(path: str | os.PathLike, config: str | os.PathLike | None = None, custom_objects: dict | None = None):
    """The source file as a Keras model (see the module docstring for how it is loaded)."""
    _quiet()
    path = Path(path)
    if _is_keras3(path):
        import keras

        if path.suffix == ".keras" or config is None:
            return keras.saving.load_model(path, compile=False, custom_objects=custom_objects)
        model = keras.models.model_from_json(Path(config).read_text(), custom_objects=custom_objects)
        model.load_weights(path)
        return model
    import tf_keras

    with tf_keras.utils.custom_object_scope(custom_objects or {}):
        if config is not None:
            model = tf_keras.models.model_from_json(Path(config).read_text())
            model.load_weights(str(path))
            return model
        import h5py

        with h5py.File(path, "r") as f:
            if "model_config" not in f.attrs:
                raise ValueError("weights-only file: give the architecture JSON")
            text = f.attrs["model_config"]
            text = text.decode() if isinstance(text, bytes) else str(text)
        if any(c in text for c in ('"class_name": "Lambda"',)):
            raise ValueError("the model has Lambda layers: not loaded (code in the file is never run)")
        model = tf_keras.models.model_from_json(text)
        model.load_weights(str(path))
        return model


def _call_output(model, layer, legacy: bool):
    """The output of a layer's first call in the model (a nested model's node 0 may be its own graph)."""
    nested = hasattr(layer, "layers") and hasattr(layer, "inputs")
    try:
        if legacy:
            ours = [i for i in range(len(layer._inbound_nodes)) if f"{layer.name}_ib-{i}" in model._network_nodes]
            return layer.get_output_at(ours[0]) if ours else None
        nodes = layer._inbound_nodes
        node = nodes[1] if nested and len(nodes) > 1 else nodes[0]
        out = node.output_tensors
        return out[0] if len(out) == 1 else list(out)
    except (AttributeError, ValueError, IndexError, RuntimeError):
        return None


def keras_layer_outputs(model, inputs: list[np.ndarray], names: list[str] | None = None) -> dict[str, np.ndarray]:
    """``{layer name[/j]: output}`` of the top-level layers (first call) of a Keras model on ``inputs``."""
    mod = type(model).__module__
    if mod.startswith("tf_keras"):
        import tf_keras as K
    else:
        import keras as K
    keys, tensors = [], []
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer" or (names is not None and layer.name not in names):
            continue
        out = _call_output(model, layer, mod.startswith("tf_keras"))
        if out is None:
            continue
        outs = out if isinstance(out, list | tuple) else [out]
        for j, t in enumerate(outs):
            keys.append(layer.name + (f"/{j}" if j else ""))
            tensors.append(t)
    probe = K.Model(model.inputs, tensors)
    values = probe(inputs if len(inputs) > 1 else inputs[0], training=False)
    values = values if isinstance(values, list | tuple) else [values]
    return {k: np.asarray(v) for k, v in zip(keys, values, strict=True)}


def keras_parity(
    ours: torch.nn.Module, keras_model, inputs: list[np.ndarray], *, tolerance: float = 1e-5, source: str = "Keras"
) -> tuple[ParityReport, dict[str, np.ndarray]]:
    """Every layer output of our ``keras_generic`` model against Keras on the same (Keras-layout) ``inputs``."""
    refs = keras_layer_outputs(keras_model, inputs)
    specs = ours.config["inputs"]
    xs = [torch.from_numpy(np.ascontiguousarray(x, np.float32)) for x in inputs]
    xs = [x.movedim(-1, 1) if s["layout"] == "nc" and x.dim() >= 3 else x for x, s in zip(xs, specs, strict=True)]
    mine = {k: v.numpy() for k, v in ours.layer_outputs(*xs).items()}
    classes = {s["name"]: s["class"] for s in ours.config["steps"]}
    rep = ParityReport(source=source)
    for key, ref in refs.items():
        if key not in mine:
            rep.uncompared.append(key)
            continue
        rep.rows.append(compare(key, classes.get(key.split("/")[0], "?"), mine[key], ref, tolerance=tolerance))
    return rep, refs


def verify_keras(
    model: torch.nn.Module, path: Path, xs: list[np.ndarray], *, tolerance: float = 1e-4
) -> dict[str, Any]:
    """``segconvert verify`` for a Keras source and a ``keras_generic`` conversion: the fields of verify's
    ``RuntimeUse`` (name, version, used, what, reason, report, install). ``xs`` are the inputs as the converted
    module takes them; Keras gets them in its own layout."""
    name = "keras" if _is_keras3(path) else "tf_keras"
    status = keras_runtime_status(path)
    if status:
        return {"name": name, "reason": status, "install": "tensorflow-cpu tf-keras keras"}
    if not zipfile.is_zipfile(path) and not _has_model_config(path):
        return {"name": name, "reason": "a weights-only Keras file: Keras needs the architecture JSON to run it"}
    km = load_keras(path)
    specs = model.config["inputs"]
    kx = [np.moveaxis(x, 1, -1) if s["layout"] == "nc" and x.ndim >= 3 else x for x, s in zip(xs, specs, strict=True)]
    module = type(km).__module__.split(".")[0]
    version = __import__(module).__version__
    rep, _ = keras_parity(model, km, kx, tolerance=tolerance, source=f"{module} {version} running {path.name}")
    return {"name": module, "version": version, "used": True, "what": f"{len(rep.rows)} layers", "report": rep}


def _has_model_config(path: Path) -> bool:
    import h5py

    with h5py.File(path, "r") as f:
        return "model_config" in f.attrs

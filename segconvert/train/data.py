"""The data source of a train net, chosen by its data layer's type (a small registry).

``register_data_layer("ImageSegData", factory)`` adds a type; a factory is called as
``factory(layer, prototxt=Path, seed=int)`` and returns an object with ``next_batch() -> {top: array}``,
``state_dict()`` and ``load_state_dict(state)``. Built in: ``HDF5Data``; ``Input`` nets take their batches from
the caller (:class:`~segconvert.train.data_hdf5.InputSource`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from segconvert.errors import ConversionError

from .caffe_net import layer_line
from .data_hdf5 import HDF5DataSource

__all__ = ["DATA_LAYERS", "data_source_for", "register_data_layer"]

DATA_LAYERS: dict[str, Callable[..., Any]] = {}


def register_data_layer(layer_type: str, factory: Callable[..., Any]) -> None:
    """Make ``data_source_for`` build ``factory(layer, prototxt=..., seed=...)`` for layers of ``layer_type``."""
    DATA_LAYERS[layer_type] = factory


def _hdf5(layer: Any, *, prototxt: Path | None, seed: int) -> HDF5DataSource:
    p = layer.param.hdf5_data_param
    return HDF5DataSource(
        p.source,
        list(layer.tops),
        int(p.batch_size),
        shuffle=bool(p.shuffle),
        seed=seed,
        prototxt=prototxt,
        layer=layer.name,
        line=layer_line(prototxt, layer.name),
    )


register_data_layer("HDF5Data", _hdf5)


def data_source_for(net: Any, *, seed: int = 0) -> Any:
    """The data source of ``net``'s (single) data layer; None for a net fed through ``Input`` layers."""
    from .caffe_net import _DATA_TYPES

    layers = [layer for layer in net.layers if layer.type in _DATA_TYPES and layer.type != "Input"]
    if not layers:
        return None
    if len(layers) > 1:
        names = ", ".join(f"{layer.name} ({layer.type})" for layer in layers)
        raise ConversionError(f"more than one data layer: {names}", file=net.prototxt)
    layer = layers[0]
    if layer.type not in DATA_LAYERS:
        _load_plugins()
    factory = DATA_LAYERS.get(layer.type)
    if factory is None:
        raise ConversionError(
            f"{layer.type} data layer is not supported in training (supported: {', '.join(sorted(DATA_LAYERS))}, "
            "Input)",
            file=net.prototxt,
            line=layer_line(net.prototxt, layer.name),
            layer=layer.name,
        )
    return factory(layer, prototxt=net.prototxt, seed=seed)


def _load_plugins() -> None:
    """Data layers defined in other modules of this package register themselves on import."""
    import importlib

    for name in ("segconvert.train.data_imageseg",):
        try:
            importlib.import_module(name)
        except ImportError:
            pass

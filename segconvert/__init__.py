"""segconvert: exact conversion of Caffe / TF-Slim / Keras segmentation checkpoints to PyTorch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from segconvert.errors import (
    CaffeFormatError,
    CheckpointError,
    ConversionError,
    DatasetError,
    OutputPathError,
    SegconvertError,
    WeightsFileError,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "CaffeFormatError",
    "CheckpointError",
    "ConversionError",
    "DatasetError",
    "OutputPathError",
    "SegconvertError",
    "WeightsFileError",
    "load_model",
]

if TYPE_CHECKING:  # pragma: no cover
    import torch


def load_model(path: str, device: str = "cpu", **kwargs: Any) -> torch.nn.Module:
    """Rebuild a converted model from its weights file's metadata and load the weights."""
    from segconvert.weights.store import load_model as _load

    return _load(path, device=device, **kwargs)


def __dir__() -> list[str]:
    """Only the public API (not the submodules imported on the way, nor typing helpers)."""
    return sorted(__all__)

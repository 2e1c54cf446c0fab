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
    "predict",
]

if TYPE_CHECKING:  # pragma: no cover
    import torch


def load_model(path: str, device: str = "cpu", **kwargs: Any) -> torch.nn.Module:
    """Rebuild a converted model from its weights file's metadata and load the weights."""
    from segconvert.weights.store import load_model as _load

    return _load(path, device=device, **kwargs)


def predict(model: torch.nn.Module, image: Any, **options: Any) -> Any:
    """The (H, W) label map of an image (path, PIL image or uint8 RGB array); see segconvert.inference.predict."""
    from segconvert.inference.predict import predict as _predict

    return _predict(model, image, **options)


def __dir__() -> list[str]:
    """Only the public API (not the submodules imported on the way, nor typing helpers)."""
    return sorted(__all__)

"""The network input of an image: channel order, mean, std and scale, from the weights' metadata."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from segconvert.errors import WeightsFileError

__all__ = ["Preprocessing"]


@dataclass(frozen=True)
class Preprocessing:
    """x = (pixels[channel_order] * scale - mean) / std, pixels 0..255; mean/std given in channel_order."""

    channel_order: str = "RGB"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] | None = None
    scale: float = 1.0

    @classmethod
    def from_meta(cls, meta: dict[str, Any] | None) -> Preprocessing:
        if not meta:
            raise WeightsFileError(
                "the weights carry no preprocessing metadata (channel order, mean, std): "
                "convert them with segconvert or pass a Preprocessing"
            )
        order = str(meta.get("channel_order", "RGB")).upper()
        if order not in ("RGB", "BGR"):
            raise WeightsFileError(f"preprocessing channel_order must be RGB or BGR, got {order!r}")
        std = meta.get("std")
        return cls(
            order,
            tuple(float(v) for v in meta.get("mean", (0.0, 0.0, 0.0))),  # type: ignore[arg-type]
            None if std is None else tuple(float(v) for v in std),  # type: ignore[arg-type]
            float(meta.get("scale", 1.0)),
        )

    @classmethod
    def from_model(cls, model: nn.Module) -> Preprocessing:
        meta = getattr(model, "segconvert_meta", None) or {}
        return cls.from_meta(meta.get("preprocessing"))

    def normalize(self, rgb: torch.Tensor) -> torch.Tensor:
        """(3, H, W) RGB pixel values (any float dtype) -> float32 network input."""
        x = rgb.float()
        if self.channel_order == "BGR":
            x = x.flip(0)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(3, 1, 1)
        x = x * self.scale - mean if self.scale != 1.0 else x - mean
        if self.std is not None:
            x = x / torch.tensor(self.std, dtype=torch.float32, device=x.device).view(3, 1, 1)
        return x

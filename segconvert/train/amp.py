"""Mixed precision and memory format for training: autocast context, optional GradScaler, channels_last."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["AMP_MODES", "Amp", "to_channels_last"]

AMP_MODES = ("none", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Amp:
    """``--amp none|bf16|fp16`` on one device type (``"cpu"`` or ``"cuda"``).

    ``autocast()`` wraps the forward and the loss; ``backward(loss, optimizer)`` does the (scaled) backward and
    step. fp16 uses a :class:`torch.amp.GradScaler` (its ``state_dict`` goes into checkpoints); bf16 needs none.
    """

    def __init__(self, mode: str = "none", device_type: str = "cpu", *, scaler: bool | None = None) -> None:
        if mode not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {mode!r}")
        self.mode, self.device_type = mode, device_type
        use_scaler = mode == "fp16" if scaler is None else bool(scaler)
        self.scaler = torch.amp.GradScaler(device_type) if use_scaler and mode != "none" else None

    @property
    def dtype(self) -> torch.dtype | None:
        return _DTYPES.get(self.mode)

    def autocast(self) -> AbstractContextManager[Any]:
        """Autocast context for the forward pass and the loss (a no-op for ``none``)."""
        if self.mode == "none":
            return nullcontext()
        return torch.autocast(self.device_type, dtype=_DTYPES[self.mode])

    def backward(self, loss: Tensor, optimizer: torch.optim.Optimizer) -> None:
        """``loss.backward()`` then ``optimizer.step()``, through the GradScaler when there is one."""
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Unscale the gradients in place before clipping (no-op without a scaler)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def state_dict(self) -> dict[str, Any]:
        """``{"mode": ..., "scaler": GradScaler state or None}`` for a training checkpoint."""
        return {"mode": self.mode, "scaler": None if self.scaler is None else self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the mode must match the run's (a scaler state needs a scaler)."""
        if state.get("mode") != self.mode:
            raise ValueError(f"checkpoint was trained with amp={state.get('mode')!r}, this run uses {self.mode!r}")
        if state.get("scaler") is not None and self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])


def to_channels_last(model: nn.Module, *inputs: Tensor) -> tuple[nn.Module, tuple[Tensor, ...]]:
    """Convert ``model`` (in place) and the 4-D ``inputs`` to ``torch.channels_last`` memory format."""
    model = model.to(memory_format=torch.channels_last)
    return model, tuple(t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t for t in inputs)

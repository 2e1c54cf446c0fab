"""Shared book-keeping for the TF-Slim and Keras converters: strict filling, the result, NHWC parity."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segconvert.errors import ConversionError
from segconvert.reference_models.registry import create_model

__all__ = ["TFConversion", "Filler", "nhwc_parity", "OPTIMIZER_SLOT_SUFFIXES"]

# variables that training adds next to the weights: optimizer slots and moving averages
OPTIMIZER_SLOT_SUFFIXES = (
    "/Momentum",
    "/Adam",
    "/Adam_1",
    "/RMSProp",
    "/RMSProp_1",
    "/Adagrad",
    "/ExponentialMovingAverage",
)


@dataclass
class TFConversion:
    """A converted state_dict for ``create_model(arch, **config)`` plus the accounting of every source tensor.

    ``sources``: target key -> source tensor name; ``dropped``: (source tensor, reason) for every source
    tensor that was deliberately not used; ``tap_map``: reference-output key (TF end-point / Keras layer name)
    -> module path whose output equals it (``""`` = the model output).
    """

    arch: str
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    sources: dict[str, str]
    dropped: list[tuple[str, str]]
    tap_map: dict[str, str]
    preprocessing: dict[str, Any]
    source_format: str
    notes: list[str] = field(default_factory=list)

    def build_model(self, device: str | torch.device = "cpu") -> nn.Module:
        """The reference model with these weights loaded strictly, in eval mode."""
        model = create_model(self.arch, **self.config)
        missing, unexpected = model.load_state_dict(self.state_dict, strict=False)
        if missing or unexpected:
            raise ConversionError(f"state_dict does not fit {self.arch}: missing {missing}, unexpected {unexpected}")
        return model.to(device).eval()


def _as_tensor(arr: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only views of a memory map
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


class Filler:
    """Fills each target tensor exactly once, checking shapes; records which source tensor went where."""

    def __init__(self, arch: str, config: dict[str, Any], file: str | Path) -> None:
        with torch.device("meta"):
            model = create_model(arch, **config)
        self.model = model
        self.targets = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        self.file = str(file)
        self.state: dict[str, torch.Tensor] = {}
        self.sources: dict[str, str] = {}
        self.used: set[str] = set()
        self.notes: list[str] = []

    def fail(self, message: str, key: str | None = None) -> ConversionError:
        return ConversionError(message, file=self.file, key=key)

    def fill(self, key: str, value: np.ndarray, source: str) -> None:
        if key not in self.targets:
            raise self.fail(f"target tensor '{key}' does not exist in the model", source)
        if key in self.sources:
            raise self.fail(f"target '{key}' filled twice ({self.sources[key]} and {source})", source)
        if value.dtype.kind not in "fiu":
            raise self.fail(f"source tensor has dtype {value.dtype}", source)
        if tuple(value.shape) != self.targets[key]:
            raise self.fail(f"shape {list(value.shape)} does not fit '{key}' {list(self.targets[key])}", source)
        self.state[key] = _as_tensor(value)
        self.sources[key] = source
        self.used.add(source)

    def conv(self, prefix: str, kernel: np.ndarray, source: str, bias: np.ndarray | None = None, bias_source=None):
        """HWIO kernel -> OIHW ``<prefix>.weight`` (+ ``<prefix>.bias``)."""
        if kernel.ndim != 4:
            raise self.fail(f"conv kernel has rank {kernel.ndim}, expected HWIO", source)
        self.fill(f"{prefix}.weight", np.transpose(kernel, (3, 2, 0, 1)), source)
        if bias is not None:
            self.fill(f"{prefix}.bias", bias, bias_source or source)

    def bn(self, prefix: str, params: Mapping[str, tuple[str, np.ndarray]]) -> None:
        """gamma/beta/moving_mean/moving_variance -> weight/bias/running_mean/running_var; a missing gamma
        (``scale=False``) or beta (``center=False``) becomes ones / zeros."""
        for src, dst in (("moving_mean", "running_mean"), ("moving_variance", "running_var")):
            if src not in params:
                raise self.fail(f"BatchNorm '{prefix}' has no {src}")
            self.fill(f"{prefix}.{dst}", params[src][1], params[src][0])
        n = self.targets[f"{prefix}.running_mean"][0]
        for src, dst, default in (("gamma", "weight", 1.0), ("beta", "bias", 0.0)):
            if src in params:
                self.fill(f"{prefix}.{dst}", params[src][1], params[src][0])
            else:
                self.fill(f"{prefix}.{dst}", np.full(n, default, np.float32), f"<{src} absent: {default:g}>")
                self.notes.append(f"{prefix}: no {src} in the source, using {default:g}")

    def finish(self) -> dict[str, torch.Tensor]:
        missing = [k for k in self.targets if k not in self.state]
        if missing:
            raise self.fail(f"{len(missing)} model tensors have no source: {missing[:8]}")
        return self.state


def nhwc_parity(
    model: nn.Module,
    tap_map: Mapping[str, str],
    input_nhwc: np.ndarray,
    outputs: Mapping[str, np.ndarray],
    *,
    source: str,
    tolerance: float = 1e-4,
    transform: Mapping[str, Any] | None = None,
):
    """Run ``model`` on an NHWC input and compare every tapped module with the NHWC reference outputs.

    Returns ``(ParityReport, model output)``. ``transform`` optionally maps an output key to a function applied
    to the model output (NCHW) instead of a tap (e.g. softmax + crop for a stored sample of the final output).
    """
    from segconvert.parity.report import ParityReport, compare
    from segconvert.reference_models import capture_outputs

    taps = {k: v for k, v in tap_map.items() if k in outputs and v}
    x = torch.from_numpy(np.ascontiguousarray(np.transpose(input_nhwc, (0, 3, 1, 2)), dtype=np.float32))
    model.eval()
    out, captured = capture_outputs(model, x, taps)
    captured.update({k: out for k, v in tap_map.items() if k in outputs and not v})
    report = ParityReport(source=source)
    for key in outputs:
        if transform and key in transform:
            ours = transform[key](out)
        elif key in captured:
            ours = captured[key]
        else:
            report.uncompared.append(key)
            continue
        ours_np = ours.detach().cpu().numpy()
        if ours_np.ndim == 4:
            ours_np = np.transpose(ours_np, (0, 2, 3, 1))
        report.rows.append(compare(key, "TF", ours_np, outputs[key], tolerance=tolerance))
    return report, out

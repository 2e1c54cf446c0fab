"""One call from a loaded converted model to its inference form: fusion (+ check), memory format, compile, autocast.

``prepare_model`` never touches the weights file: everything happens on the module in memory.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from segconvert.errors import WeightsFileError

__all__ = ["AMP_CHOICES", "amp_dtype", "autocast", "prepare_model"]

AMP_CHOICES = ("bf16", "fp16")


def amp_dtype(amp: str | bool | None, device: torch.device | str) -> torch.dtype | None:
    """``"bf16"`` / ``"fp16"`` -> the dtype; True -> the device's usual one (fp16 on CUDA, bf16 elsewhere)."""
    if amp in (None, False, "", "none", "off", "fp32"):
        return None
    kind = torch.device(device).type
    if amp is True:
        return torch.float16 if kind == "cuda" else torch.bfloat16
    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
    if str(amp).lower() not in table:
        raise ValueError(f"amp must be one of {AMP_CHOICES}, got {amp!r}")
    dtype = table[str(amp).lower()]
    if dtype == torch.float16 and kind == "cpu":
        raise ValueError("fp16 autocast is for GPUs; on the CPU use bf16")
    return dtype


@contextlib.contextmanager
def autocast(device: torch.device | str, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` for ``dtype`` on the device's type, or nothing when ``dtype`` is None."""
    if dtype is None:
        yield
        return
    with torch.autocast(torch.device(device).type, dtype=dtype):
        yield


def _cpu_float32(model: nn.Module) -> bool:
    params = list(model.parameters())
    return bool(params) and all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params)


def prepare_model(
    model: nn.Module,
    *,
    fuse: bool = True,
    check: bool = False,
    channels_last: bool | None = None,
    compile: bool = False,
    onednn: bool | None = None,
    pyramid: bool | None = None,
    inputs: Sequence[torch.Tensor] | None = None,
    source: Any = None,
) -> nn.Module:
    """The inference form of ``model`` (modified in place and returned).

    ``fuse``: :func:`segconvert.inference.fuse.fuse_model`; ``check``: compare it with the unfused model on
    ``inputs`` (default: the metadata's synthetic input) and raise :class:`WeightsFileError` naming ``source``
    when a folded layer is off by more than 1e-5 x its magnitude. ``channels_last``: the weights' memory
    format (None: channels_last when fused -- the inference form's, on every device -- else as loaded; kept
    as ``model.segconvert_channels_last``, which eval / predict follow for their crops); ``compile``:
    ``torch.compile`` (the returned module is the compiled wrapper, metadata kept).
    ``pyramid`` (None / True: when fused): PSPNet's head conv over the pyramid branches at their pooled size
    (:mod:`segconvert.inference.pyramid`; False keeps the concat). Softmax modules become layout-aware
    (:mod:`segconvert.inference.layout`). ``onednn``: after folding, run the convolutions (+ the activation
    reading each alone) as oneDNN fused primitives (:mod:`segconvert.inference.onednn`); None: when it is
    exact and possible -- fused, not compiled, model on the CPU in float32, oneDNN present. Callers that will
    autocast pass False (the modules would fall back to eager at every call anyway). The fuse report is kept
    as ``model.segconvert_fuse`` (None when not fused), the oneDNN one as ``model.segconvert_onednn`` (None
    when the pass did not run).
    """
    from segconvert.inference.fuse import check_fused, fuse_model
    from segconvert.inference.layout import layout_aware

    meta = getattr(model, "segconvert_meta", None)
    model.eval()
    report = None
    if fuse:
        reference = copy.deepcopy(model) if check else None
        model, report = fuse_model(model, inputs, inplace=True)
        if pyramid is None or pyramid:
            from segconvert.inference.pyramid import fold_pyramid_heads

            report.pyramid = fold_pyramid_heads(model)
        if reference is not None:
            result = check_fused(reference, model, report, inputs)
            del reference
            if not result.ok():
                raise WeightsFileError(f"fused model differs from the unfused one: {result.describe()}", file=source)
    if channels_last is None:
        channels_last = fuse
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    layout_aware(model)
    model.segconvert_channels_last = bool(channels_last)
    model.segconvert_fuse = report
    model.segconvert_onednn = None
    if onednn is None:
        onednn = fuse and not compile and _cpu_float32(model)
    if onednn:
        from segconvert.inference.onednn import onednn_model

        onednn_model(model, inputs)
    if compile:
        compiled = torch.compile(model, dynamic=True)
        compiled.segconvert_meta = meta  # type: ignore[attr-defined]
        compiled.segconvert_fuse = report  # type: ignore[attr-defined]
        compiled.segconvert_channels_last = bool(channels_last)  # type: ignore[attr-defined]
        return compiled  # type: ignore[return-value]
    return model

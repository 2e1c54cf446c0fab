"""Parity against real-Caffe dumps: run a converted model, compare every mapped layer with ``outputs.npz``.

The dump format is the fixtures' (``../shared/fixtures/caffe/README.md``): ``outputs.npz`` keyed
``"<layer>/<top index>"`` holding each top right after its layer ran, and ``meta.json`` with each output's
full-tensor stats and, for big tops, the sampled ``index``. Users can produce the same from pycaffe.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segconvert.errors import SegconvertError
from segconvert.parity.report import ParityReport, compare


def depth_tolerance(i: int, n: int, first: float = 1e-4, last: float = 2e-3) -> float:
    """Allowed max|d| / max|ref| at the i-th of n compared layers: geometric from ``first`` to ``last``.

    Float32 rounding grows with depth (the fixtures README measures ~5e-7 at conv1 and ~1e-3 at res5c of
    ResNet-101 between two correct implementations), so the bound is tight near the input.
    """
    if n <= 1:
        return last
    return first * (last / first) ** (i / (n - 1))


def load_dump(case_dir: str | Path, net: Any = None) -> tuple[np.ndarray, Mapping[str, np.ndarray], dict[str, Any]]:
    """``input.npy``, ``outputs.npz`` and ``meta.json`` of a Caffe dump folder.

    A dump without ``meta.json`` (a user's own pycaffe dump) gets the layer list of ``net``
    (a :class:`~segconvert.graph.Net`) as its meta, or none.
    """
    case = Path(case_dir)
    for name in ("input.npy", "outputs.npz"):
        if not (case / name).is_file():
            raise SegconvertError(
                f"a Caffe dump folder needs {name} (input.npy, outputs.npz keyed '<layer>/<top>', meta.json optional)",
                file=case,
            )
    if (case / "meta.json").exists():
        meta = json.loads((case / "meta.json").read_text())
    elif net is not None:
        meta = {"layers": [{"name": layer.name, "type": layer.type, "tops": layer.tops} for layer in net.layers]}
    else:
        meta = {}
    return np.load(case / "input.npy"), np.load(case / "outputs.npz"), meta


def caffe_parity(
    model: torch.nn.Module,
    tap_map: Mapping[str, Any],
    input_array: np.ndarray,
    outputs: Mapping[str, np.ndarray],
    meta: Mapping[str, Any],
    *,
    source: str = "real Caffe",
    first_tol: float = 1e-4,
    last_tol: float = 2e-3,
) -> tuple[ParityReport, torch.Tensor]:
    """Compare our module outputs (``tap_map``: Caffe layer name -> module path or (path, call)) with Caffe's."""
    from segconvert.reference_models import capture_outputs

    entries = {o["key"]: o for o in meta.get("outputs", [])}
    types = {layer["name"]: layer["type"] for layer in meta.get("layers", [])}
    order = {layer["name"]: i for i, layer in enumerate(meta.get("layers", []))}
    # A tap names the Caffe layer (and top) whose value our module's output equals: for an in-place chain
    # conv -> BN -> ReLU that is the last layer of the chain.
    keys: dict[str, str] = {}
    for name, tap in tap_map.items():
        layer = getattr(tap, "layer", name)
        key = f"{layer}/{getattr(tap, 'top_index', 0)}"
        if key in outputs:
            keys[name] = key
    taps = {name: tap_map[name] for name in sorted(keys, key=lambda n: order.get(keys[n].rsplit("/", 1)[0], 1 << 30))}
    model.eval()
    out, captured = capture_outputs(model, torch.from_numpy(np.ascontiguousarray(input_array)), taps)
    report = ParityReport(source=source)
    for i, name in enumerate(taps):
        key = keys[name]
        layer = key.rsplit("/", 1)[0]
        entry = entries.get(key, {})
        index = entry.get("index") if entry.get("stored") == "sampled" else None
        absmax = entry.get("stats", {}).get("absmax")
        report.rows.append(
            compare(
                layer,
                types.get(layer, "?"),
                captured[name].cpu().numpy(),
                outputs[key],
                tolerance=depth_tolerance(i, len(taps), first_tol, last_tol),
                ref_absmax=absmax,
                index=index,
            )
        )
    compared = {k.rsplit("/", 1)[0] for k in keys.values()}
    report.uncompared = [n for n in order if n not in compared and f"{n}/0" in outputs and types.get(n) != "Split"]
    return report, out


def argmax_agreement(ours: np.ndarray, ref: np.ndarray, index: list[list[int]] | None = None) -> float:
    """Fraction of pixels whose class argmax agrees (channel axis 1; ``index`` selects a stored sample).

    When the stored sample keeps only some channels, the argmax is taken over those channels on both sides.
    """
    if index is not None:
        ours = ours[np.ix_(*index)]
    a, b = np.argmax(ours, axis=1), np.argmax(ref, axis=1)
    return float(np.mean(a == b)) if a.size else math.nan

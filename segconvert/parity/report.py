"""Layer-by-layer parity reports: our outputs against a source framework's, with the first divergence named.

Each compared layer gets max |ours - ref|, that error relative to max |ref| (the reference's abs-max,
over the full tensor where the fixture stores it), and the cosine similarity. Errors from float32
accumulation grow smoothly with depth; a semantic slip shows up as a jump at one layer, which the report
names together with the likely cause for that layer type.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# Likely causes by the Caffe layer type (or name pattern) where parity first fails.
_CAUSES = {
    "BatchNorm": "BatchNorm eps or the scale-factor blob (blob 2: divide mean/var by it; 0 means 0)",
    "BN": "PSPNet BN blob order [slope, bias, mean, var] or eps",
    "Scale": "Scale gamma/beta (bias_term) or the BN eps before it",
    "Pooling": "ceil pooling (Caffe rounds up, with its clipping rule) or the AVE divisor counting padding",
    "Interp": "Interp size rule or align_corners (Caffe Interp is align_corners=True)",
    "Concat": "concat order (Caffe PSPNet: [x, pool6, pool3, pool2, pool1])",
    "Eltwise": "residual branch wiring or Eltwise operation (SUM / MAX / coeff)",
    "Convolution": "convolution stride placement, dilation or padding",
    "Deconvolution": "deconvolution padding / output size",
    "Input": "BGR/mean preprocessing of the input",
}


@dataclass
class LayerParity:
    name: str
    type: str
    shape: list[int]
    max_abs: float
    ref_absmax: float
    rel: float  # max_abs / ref_absmax
    cosine: float
    tolerance: float  # allowed rel
    ok: bool
    note: str = ""


@dataclass
class ParityReport:
    source: str
    rows: list[LayerParity] = field(default_factory=list)
    uncompared: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def first_failure(self) -> LayerParity | None:
        return next((r for r in self.rows if not r.ok), None)

    def likely_cause(self) -> str | None:
        bad = self.first_failure
        if bad is None:
            return None
        if bad.type == "ONNX":  # a whole-graph comparison: the input preprocessing is the same on both sides
            if bad.note.startswith(("shape", "output shapes")):
                return "the ONNX graph's output shape differs: it was exported for another input size (re-export)"
            return "the ONNX graph computes something else than PyTorch: re-export it with segconvert export-onnx"
        if bad.note.startswith("shape"):
            return "output shape differs: stride placement, padding, dilation or pooling rounding"
        idx = self.rows.index(bad)
        if idx == 0:
            return "the first compared layer differs: BGR/mean preprocessing or first-conv channel order"
        name = bad.name
        if bad.type == "Convolution" and any(t in name for t in ("res3a", "conv3_1", "block2", "unit_1")):
            return "stride placement (1x1 reduce vs 3x3 vs last unit)"
        return _CAUSES.get(bad.type, "first layer over tolerance; compare its parameters with the source")

    def max_rel(self) -> float:
        return max((r.rel for r in self.rows), default=0.0)

    def summary(self, reference: str) -> dict[str, Any]:
        """The figures stored in a converted file's metadata (JSON-safe: an infinite max_rel, i.e. a shape
        mismatch, becomes null)."""
        max_rel = self.max_rel()
        return {
            "reference": reference,
            "ok": self.ok,
            "compared_layers": len(self.rows),
            "max_rel": max_rel if math.isfinite(max_rel) else None,
        }

    def to_dict(self) -> dict[str, Any]:
        bad = self.first_failure
        return {
            "source": self.source,
            "ok": self.ok,
            "compared": len(self.rows),
            "max_rel": self.max_rel(),
            "first_failure": bad.name if bad else None,
            "likely_cause": self.likely_cause(),
            "uncompared": self.uncompared,
            "layers": [asdict(r) for r in self.rows],
        }

    def format(self, every: int = 1, color: bool = False) -> str:
        """A text table (every ``every``-th row, always the failures and the last row)."""
        lines = [f"parity against {self.source}: {len(self.rows)} layers compared"]
        lines.append(f"{'layer':40s} {'type':14s} {'max|d|':>10s} {'rel':>10s} {'tol':>9s} {'cosine':>10s}")
        for i, r in enumerate(self.rows):
            if not r.ok or i % every == 0 or i == len(self.rows) - 1:
                flag = "" if r.ok else "  <-- over tolerance"
                lines.append(
                    f"{r.name[:40]:40s} {r.type[:14]:14s} {r.max_abs:10.3e} {r.rel:10.3e} {r.tolerance:9.1e} "
                    f"{r.cosine:10.7f}{flag}{'  ' + r.note if r.note else ''}"
                )
        bad = self.first_failure
        if bad is None:
            lines.append(f"OK: every layer within tolerance (max rel {self.max_rel():.2e})")
        else:
            lines.append(f"FIRST DIVERGENCE: {bad.name} ({bad.type}); likely cause: {self.likely_cause()}")
        if self.uncompared:
            lines.append(f"not compared ({len(self.uncompared)}): {', '.join(self.uncompared[:8])}...")
        return "\n".join(lines)


def compare(
    name: str,
    ltype: str,
    ours: np.ndarray,
    ref: np.ndarray,
    *,
    tolerance: float,
    ref_absmax: float | None = None,
    index: list[list[int]] | None = None,
) -> LayerParity:
    """Compare one output. ``index`` selects the stored sample of ``ours`` (fixtures store big tops sampled)."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    full_shape = list(ours.shape)
    if index is not None:
        try:
            ours = ours[np.ix_(*index)]
        except IndexError:
            pass
    if ours.shape != ref.shape:
        return LayerParity(
            name,
            ltype,
            full_shape,
            math.inf,
            0.0,
            math.inf,
            0.0,
            tolerance,
            False,
            f"shape {list(ours.shape)} vs reference {list(ref.shape)}",
        )
    diff = float(np.max(np.abs(ours - ref))) if ref.size else 0.0
    absmax = float(ref_absmax if ref_absmax is not None else (np.max(np.abs(ref)) if ref.size else 0.0))
    rel = diff / absmax if absmax > 0 else (0.0 if diff == 0 else math.inf)
    a, b = ours.ravel(), ref.ravel()
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    cosine = float(a @ b / (na * nb)) if na > 0 and nb > 0 else (1.0 if na == nb else 0.0)
    return LayerParity(name, ltype, full_shape, diff, absmax, rel, cosine, tolerance, bool(rel <= tolerance))


def evenly_within(keys: list[str], sizes: Mapping[str, int], max_bytes: int | None) -> list[str]:
    """``keys`` (in layer order) thinned evenly, first and last kept, until their ``sizes`` sum to at most
    ``max_bytes``: which layers a comparison keeps when every output of a big net does not fit in memory."""
    total = sum(sizes.get(k, 0) for k in keys)
    if max_bytes is None or total <= max_bytes or len(keys) < 3:
        return keys
    keep = max(2, int(len(keys) * max_bytes / max(total, 1)))
    while keep > 2:
        chosen = [keys[i] for i in sorted({round(j * (len(keys) - 1) / (keep - 1)) for j in range(keep)})]
        if sum(sizes.get(k, 0) for k in chosen) <= max_bytes:
            return chosen
        keep -= 1
    return [keys[0], keys[-1]]

"""What ``segconvert verify`` found: runtimes used or not (and what to install), layers unchecked, tolerances."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Outputs kept for the per-layer comparison (ours + one reference); bigger nets compare an even subset.
MEMORY_BUDGET = 2 << 30
FIRST_TOLERANCE = 1e-4  # relative tolerance at the first compared layer (grows geometrically with depth)
DEFAULT_TOLERANCE = 2e-3  # at the last layer: float32 rounding through ResNet-101 (fixtures README)
ONNX_TOLERANCE = 1e-4


@dataclass
class RuntimeUse:
    """One runtime: used (with a parity report) or not available (with the reason)."""

    name: str
    version: str | None = None
    used: bool = False
    what: str = ""  # what it checked ("205 layers", "final output", "320 checkpoint tensors")
    reason: str = ""  # why it was not used
    report: Any = None  # ParityReport
    install: str = ""  # what to pip install when it is missing (printed once, in summary())

    def label(self) -> str:
        return f"{self.name} {self.version}" if self.version else self.name


def group_unchecked(unchecked: Sequence[tuple[str, str]], *, keep: int = 3) -> list[str]:
    """One line per layer, except a reason shared by more than ``keep`` layers: one line for all of them."""
    by_reason: dict[str, list[str]] = {}
    for name, why in unchecked:
        by_reason.setdefault(why, []).append(name)
    lines = []
    for why, names in by_reason.items():
        if len(names) > keep:
            lines.append(f"  {len(names)} layers ({names[0]} ... {names[-1]}): {why}")
        else:
            lines += [f"  {name}: {why}" for name in names]
    return lines


@dataclass
class VerifyResult:
    weights: Path
    arch: str
    input_desc: str
    runtimes: list[RuntimeUse] = field(default_factory=list)
    unchecked: list[tuple[str, str]] = field(default_factory=list)  # (layer, reason) no runtime could check
    notes: list[str] = field(default_factory=list)

    @property
    def compared(self) -> int:
        return sum(len(r.report.rows) for r in self.runtimes if r.used and r.report is not None)

    @property
    def ok(self) -> bool:
        return self.compared > 0 and all(r.report.ok for r in self.runtimes if r.used and r.report is not None)

    def first_failure(self) -> tuple[str, Any] | None:
        for r in self.runtimes:
            if r.used and r.report is not None and r.report.first_failure is not None:
                return r.label(), r.report.first_failure
        return None

    def summary(self) -> list[str]:
        used = [f"{r.label()} ({r.what})" for r in self.runtimes if r.used]
        missing = [f"{r.label()} ({r.reason})" for r in self.runtimes if not r.used]
        lines = [
            f"runtimes used: {', '.join(used) or 'none'}"
            + (f"; not available: {', '.join(missing)}" if missing else "")
        ]
        installs = sorted({r.install for r in self.runtimes if not r.used and r.install})
        if installs:
            lines.append(f"to check with the missing runtimes: pip install {' '.join(installs)}")
        if self.unchecked:
            lines.append(f"layers no runtime could check ({len(self.unchecked)}):")
            lines += group_unchecked(self.unchecked)
        else:
            lines.append("layers no runtime could check: none")
        bad = self.first_failure()
        if self.compared == 0:
            lines.append("result: NOTHING CHECKED (no runtime could compare anything)")
        elif bad is None:
            lines.append(f"result: OK, {self.compared} comparisons within tolerance")
        else:
            runtime, row = bad
            lines.append(
                f"result: FAILED, first layer over tolerance: {row.name} ({row.type}) against {runtime}, "
                f"relative {row.rel:.3e} > {row.tolerance:.1e}"
            )
        return lines

    def to_dict(self) -> dict[str, Any]:
        bad = self.first_failure()
        return {
            "weights": str(self.weights),
            "arch": self.arch,
            "input": self.input_desc,
            "ok": self.ok,
            "compared": self.compared,
            "first_failure": None if bad is None else {"runtime": bad[0], "layer": bad[1].name, "type": bad[1].type},
            "runtimes": [
                {
                    "name": r.name,
                    "version": r.version,
                    "used": r.used,
                    "what": r.what,
                    "reason": r.reason,
                    "report": r.report.to_dict() if r.report is not None else None,
                }
                for r in self.runtimes
            ],
            "unchecked_layers": [{"layer": n, "reason": w} for n, w in self.unchecked],
            "notes": self.notes,
        }

"""The per-layer parity report: comparison figures, first divergence, likely cause, JSON-safe summary."""

from __future__ import annotations

import json
import math

import numpy as np

from segconvert.parity.report import ParityReport, compare


def test_compare_figures_are_hand_checkable():
    ref = np.array([[1.0, -4.0], [2.0, 0.5]], np.float32)
    ours = ref + np.array([[0.0, 0.002], [0.0, 0.0]], np.float32)
    row = compare("conv1", "Convolution", ours, ref, tolerance=1e-3)
    assert math.isclose(row.max_abs, 0.002, rel_tol=1e-4)
    assert math.isclose(row.rel, 0.002 / 4.0, rel_tol=1e-4) and row.ok
    assert compare("conv1", "Convolution", ours, ref, tolerance=1e-4).ok is False


def test_first_divergence_cause_and_summary_with_a_shape_mismatch_is_json_safe():
    rep = ParityReport(source="test")
    ref = np.ones((1, 2, 3, 3), np.float32)
    rep.rows.append(compare("conv1", "Convolution", ref, ref, tolerance=1e-4))
    rep.rows.append(compare("pool1", "Pooling", np.ones((1, 2, 2, 2), np.float32), ref, tolerance=1e-4))
    assert not rep.ok and rep.first_failure.name == "pool1"
    assert "shape" in rep.likely_cause()
    summary = rep.summary("dump/")
    assert summary["ok"] is False and summary["compared_layers"] == 2
    assert summary["max_rel"] is None or math.isfinite(summary["max_rel"])
    json.dumps(summary, allow_nan=False)  # what the metadata writer requires
    assert "FIRST DIVERGENCE: pool1" in rep.format()

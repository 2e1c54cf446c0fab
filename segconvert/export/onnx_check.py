"""Running an exported ONNX file in onnxruntime against the PyTorch model it came from (:func:`check_onnx`),
and the typed error of the export package."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from segconvert.errors import SegconvertError

__all__ = ["ExportError", "OnnxCheck", "check_onnx", "input_mismatch", "DEFAULT_TOLERANCE"]

DEFAULT_TOLERANCE = 1e-4  # max |onnx - torch| / max |torch|
# onnxruntime's default session folds BN into convolution weights and reorders to blocked layouts, all
# re-rounded in float32: when the graph as written is exact, its optimized result may be this many
# tolerances away (the random-weight Fast-SCNN-width PSPNet: 1.7e-4 optimized, 9.4e-5 as written)
OPTIMIZED_SLACK = 10


class ExportError(SegconvertError):
    """The model cannot be exported as asked (dynamic shapes, opset, onnx packages missing)."""


@dataclass
class OnnxCheck:
    """onnxruntime against PyTorch on one input (relative = max |d| / max |torch|)."""

    runtime: str
    shape: list[int]
    max_abs: float
    absmax: float
    rel: float
    tolerance: float
    ok: bool
    cosine: float = 1.0
    float32_floor: float | None = None  # max |torch fp32 - torch fp64| / absmax, measured when rel > tolerance
    rel_to_float64: float | None = None  # max |onnx - torch fp64| / absmax
    unoptimized_rel: float | None = None  # the graph as written (optimizations off) vs PyTorch, when measured
    unoptimized_to_float64: float | None = None
    note: str = ""

    def format(self) -> str:
        line = (
            f"onnxruntime {self.runtime} vs PyTorch: max |d| {self.max_abs:.3e}, max |ref| {self.absmax:.3e}, "
            f"relative {self.rel:.3e} (tolerance {self.tolerance:.0e}) -> {'OK' if self.ok else 'FAILED'}"
        )
        if self.float32_floor is not None:
            line += (
                f"\n  float32 rounding floor of this network on this input: PyTorch fp32 vs fp64 "
                f"{self.float32_floor:.3e}, onnxruntime vs PyTorch fp64 {self.rel_to_float64:.3e}"
            )
        if self.unoptimized_rel is not None:
            line += (
                f"\n  the graph as written (onnxruntime optimizations off): relative {self.unoptimized_rel:.3e} "
                f"vs PyTorch, {self.unoptimized_to_float64:.3e} vs PyTorch fp64"
            )
        return line + (f"\n  {self.note}" if self.note else "")


def _require_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ExportError(f"ONNX export needs the 'export' extra (pip install 'segconvert[export]'): {exc}") from None
    return onnx, onnxruntime


def _session(source: Any, ort: Any, optimize: bool = True) -> Any:
    """A CPU session: onnxruntime's default (all graph optimizations) or the graph exactly as written."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _flat(out: Any) -> list[np.ndarray]:
    """Model outputs (tensor, tuple/list or dict of tensors) as a list of arrays, in order."""
    if isinstance(out, Tensor):
        return [out.detach().cpu().numpy()]
    if isinstance(out, dict):
        out = list(out.values())
    return [a for o in out for a in _flat(o)]


def _compare(ys: list[np.ndarray], refs: list[np.ndarray]) -> tuple[float, float, float] | None:
    """(max |d|, max |ref|, cosine) over all outputs; None when the shapes differ."""
    if len(ys) != len(refs) or any(a.shape != b.shape for a, b in zip(ys, refs, strict=True)):
        return None
    a = np.concatenate([y.astype(np.float64).ravel() for y in ys])
    b = np.concatenate([r.astype(np.float64).ravel() for r in refs])
    if not b.size:
        return 0.0, 0.0, 1.0
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    cosine = float(a @ b / (na * nb)) if na > 0 and nb > 0 else (1.0 if na == nb else 0.0)
    return float(np.max(np.abs(a - b))), float(np.max(np.abs(b))), cosine


def check_onnx(
    path: str | os.PathLike[str],
    model: nn.Module,
    input: np.ndarray | Tensor | Sequence[np.ndarray | Tensor],
    tolerance: float = DEFAULT_TOLERANCE,
) -> OnnxCheck:
    """Run ``path`` in onnxruntime and ``model`` in PyTorch on ``input`` (one array, or one per net input, in the
    graph's input order); compare the outputs.

    Passes when max |onnx - torch| <= ``tolerance`` x max |torch|. Deep float32 networks can amplify rounding
    beyond that (the width-reduced DeepLab-v2 fixture: PyTorch fp32 itself is 3e-4 from fp64); so when the
    float32 comparison is over tolerance the model is also run in float64 and the check passes if
    onnxruntime is no further from the float64 result than twice PyTorch's own float32 error. Failing
    that, the graph is run as written (onnxruntime's optimizations off): the check passes when that passes
    either rule and the default optimized session is within ``OPTIMIZED_SLACK`` tolerances of PyTorch
    (its BN folding and layout changes re-round in float32; an export fault is orders larger). The figures
    are reported either way.
    """
    _, ort = _require_onnx()
    inputs = [input] if isinstance(input, (np.ndarray, Tensor)) else list(input)
    return _check(str(path), model, inputs, tolerance, ort, path)


def _run(source: Any, ort: Any, xs: Sequence[Tensor], path: Any, optimize: bool = True) -> list[np.ndarray]:
    try:
        sess = _session(source, ort, optimize)
        names = [i.name for i in sess.get_inputs()]
        if len(names) != len(xs):
            raise ExportError(f"the ONNX graph has {len(names)} input(s) {names}, {len(xs)} given", file=path)
        return sess.run(None, {n: x.numpy() for n, x in zip(names, xs, strict=True)})
    except SegconvertError:
        raise
    except Exception as exc:
        raise ExportError(f"onnxruntime cannot run the file: {type(exc).__name__}: {_short(exc)}", file=path) from None


def _check(source: Any, model: nn.Module, inputs: Sequence[Any], tolerance: float, ort: Any, path: Any) -> OnnxCheck:
    xs = [torch.as_tensor(np.ascontiguousarray(i), dtype=torch.float32) for i in inputs]
    ys = _run(source, ort, xs, path)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            refs = _flat(model(*xs))
        version = ort.__version__
        stats = _compare(ys, refs)
        if stats is None:
            return OnnxCheck(
                version, list(refs[0].shape), math.inf, 0.0, math.inf, tolerance, False, cosine=0.0,
                note=f"output shapes {[list(y.shape) for y in ys]} vs PyTorch {[list(r.shape) for r in refs]}",
            )  # fmt: skip
        max_abs, absmax, cosine = stats
        rel = max_abs / absmax if absmax > 0 else (0.0 if max_abs == 0 else math.inf)
        check = OnnxCheck(version, list(refs[0].shape), max_abs, absmax, rel, tolerance, bool(rel <= tolerance), cosine)
        if check.ok or not math.isfinite(rel):
            return check
        refs64 = _float64_forward(model, xs)
        floor = _compare(refs, refs64)[0] / absmax
        check.float32_floor, check.rel_to_float64 = floor, _compare(ys, refs64)[0] / absmax
        if check.rel_to_float64 <= 2 * floor:
            check.ok = True
            check.note = "within twice PyTorch's own float32 error of the float64 result: float32 rounding only"
            return check
        plain = _run(source, ort, xs, path, optimize=False)
        check.unoptimized_rel = _compare(plain, refs)[0] / absmax
        check.unoptimized_to_float64 = _compare(plain, refs64)[0] / absmax
        exact = check.unoptimized_rel <= tolerance or check.unoptimized_to_float64 <= 2 * floor
        if exact and rel <= OPTIMIZED_SLACK * tolerance:
            check.ok = True
            check.note = (
                "the graph as written is exact to float32; onnxruntime's graph optimizations (BN folded into "
                f"convolutions, blocked layouts) re-round in float32, within {OPTIMIZED_SLACK}x the tolerance"
            )
        return check
    finally:
        model.train(was_training)


def input_mismatch(path: str | os.PathLike[str], shapes: Sequence[Sequence[int]]) -> str | None:
    """Why inputs of ``shapes`` do not fit the ONNX file's declared inputs (count, rank, static sizes), or None."""
    onnx, _ = _require_onnx()
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:
        raise ExportError(f"not a readable ONNX file: {type(exc).__name__}: {_short(exc)}", file=path) from None
    inits = {t.name for t in graph.initializer}
    declared = [
        (i.name, [d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim])
        for i in graph.input
        if i.name not in inits
    ]
    fmt = ", ".join(f"{n} {'x'.join('?' if d is None else str(d) for d in dims)}" for n, dims in declared)
    given = ", ".join("x".join(map(str, s)) for s in shapes)
    if len(declared) != len(shapes):
        return f"the ONNX graph takes {len(declared)} input(s) ({fmt}), the check has {len(shapes)} ({given})"
    for (_, dims), shape in zip(declared, shapes, strict=True):
        if len(dims) != len(shape) or any(d is not None and d != s for d, s in zip(dims, shape, strict=True)):
            return (
                f"the ONNX graph takes {fmt}, the check input is {given}: give that input size "
                "(--input-size / --input-shape) or re-export with --dynamic"
            )
    return None


def _float64_forward(model: nn.Module, xs: Sequence[Tensor]) -> list[np.ndarray]:
    """The model's outputs computed in float64 (weights cast; the model is restored to float32)."""
    model.double()
    try:
        with torch.no_grad():
            return _flat(model(*(x.double() for x in xs)))
    finally:
        model.float()

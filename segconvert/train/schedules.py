"""Caffe's learning-rate policies, evaluated exactly as ``SGDSolver<float>::GetLearningRate`` does.

``iteration`` is Caffe's ``iter_`` *before* the update (the fixture's iteration t uses ``t - 1``). The
arithmetic follows the C++ types: ``poly``, ``inv`` and ``sigmoid`` in float32 (``powf``/``expf``), while
``step``/``exp``/``multistep`` raise a float32 ``gamma`` to an *integer* power, which C++ promotes to
``double`` before the product with ``base_lr`` is rounded back to float32. ``poly`` gives 0 at
``iter == max_iter`` and NaN beyond (a negative base to a fractional power), as Caffe does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

import numpy as np

__all__ = ["caffe_learning_rate", "lr_schedule"]

f32 = np.float32


def _libm_float(name: str) -> Any:
    """The C library's float function (``powf``/``expf``: what Caffe calls); numpy's own float32 ``power`` differs
    from glibc's ``powf`` by one ulp at some inputs. Falls back to float64 rounded to float32."""
    try:
        fn = getattr(ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6"), name)
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_float
    fn.argtypes = [ctypes.c_float] * (2 if name == "powf" else 1)
    return fn


_POWF, _EXPF = _libm_float("powf"), _libm_float("expf")


def _powf(x: np.float32, y: np.float32) -> np.float32:
    return f32(_POWF(x, y)) if _POWF is not None else f32(np.float64(x) ** np.float64(y))


def _expf(x: np.float32) -> np.float32:
    return f32(_EXPF(x)) if _EXPF is not None else f32(np.exp(np.float64(x)))


def caffe_learning_rate(solver: Any, iteration: int) -> float:
    """The float32 rate (as a Python float) for Caffe ``iter_ = iteration``; ``solver``: a ``SolverConfig``."""
    policy, base = solver.lr_policy, f32(solver.base_lr)
    it = int(iteration)
    with np.errstate(all="ignore"):
        if policy == "fixed":
            rate = base
        elif policy == "step":
            rate = f32(np.float64(base) * np.float64(f32(solver.gamma)) ** (it // int(solver.stepsize)))
        elif policy == "exp":
            rate = f32(np.float64(base) * np.float64(f32(solver.gamma)) ** it)
        elif policy == "multistep":
            step = sum(1 for v in solver.stepvalue if it >= v)
            rate = f32(np.float64(base) * np.float64(f32(solver.gamma)) ** step)
        elif policy == "inv":
            inner = f32(1) + f32(f32(solver.gamma) * f32(it))
            rate = f32(base * _powf(inner, -f32(solver.power)))
        elif policy == "poly":
            frac = f32(f32(it) / f32(solver.max_iter))
            rate = f32(base * _powf(f32(f32(1) - frac), f32(solver.power)))
        elif policy == "sigmoid":
            z = f32(-f32(solver.gamma) * f32(f32(it) - f32(solver.stepsize)))
            rate = f32(base * f32(f32(1) / f32(f32(1) + _expf(z))))
        else:
            raise ValueError(f"unknown lr_policy {policy!r}")
    return float(rate)


def lr_schedule(solver: Any, iterations: range | None = None) -> np.ndarray:
    """float32 rates for ``iterations`` (default ``0 .. max_iter + 1``, like the fixtures' ``lr_schedule``)."""
    its = iterations if iterations is not None else range(int(solver.max_iter) + 2)
    return np.array([caffe_learning_rate(solver, i) for i in its], dtype=np.float32)

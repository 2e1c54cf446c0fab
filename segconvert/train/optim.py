"""Caffe's solvers as one ``torch.optim.Optimizer``: SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam.

Every parameter is its own group carrying Caffe's ``name`` (``"layer/blob"``), ``lr_mult`` and ``decay_mult``;
shared parameters are passed once (Caffe updates the owner once, from the sum of every sharer's gradient,
which autograd already accumulates in ``.grad``). :meth:`CaffeOptimizer.step` takes the iteration's rate
(:func:`segconvert.train.schedules.caffe_learning_rate`) and does what ``Solver::ApplyUpdate`` does, per blob:

1. ``ClipGradients`` (once, over all blobs, when ``clip_gradients >= 0``);
2. ``Normalize``: ``g = grad * float32(1/iter_size)`` (a multiplication, not a division);
3. ``Regularize``: ``g += local_decay * w`` (L2) or ``local_decay * sign(w)`` (L1), ``local_decay =
   float32(weight_decay * decay_mult)``;
4. ``ComputeUpdateValue`` with ``local_rate = float32(rate * lr_mult)``; for SGD ``v = momentum * v +
   local_rate * g`` (the rate is *inside* the history), then ``w -= v``.

``arithmetic="fma"`` (default) reproduces Caffe's float32 BLAS rounding: each ``axpy``/``axpby`` is one fused
multiply-add, emulated as a float64 product and sum rounded once to float32 (exact products; a double rounding
is possible in about one case in 2^29). This matches the fixtures' recorded SGD updates bit for bit.
``arithmetic="float32"`` uses plain float32 torch ops (two roundings per step; within float32 rounding).

``form="pytorch"`` (SGD only) is ``torch.optim.SGD``'s momentum instead: ``buf = momentum * buf + g``,
``w -= local_rate * buf``. The two agree while the rate is constant. When it changes (every step of ``poly``),
Caffe's history is ``v_t = sum_k m^(t-k) lr_k g_k`` while PyTorch's step is ``lr_t * sum_k m^(t-k) g_k``: the past
gradients are re-weighted by the *current* rate, so after step t the weights differ by
``sum_k (lr_t - lr_k) m^(t-k) g_k`` per step (see :func:`pytorch_form_difference`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

__all__ = ["CaffeOptimizer", "SOLVER_HISTORY", "fma", "pytorch_form_difference"]

f32 = np.float32
# number of history blobs per parameter, as Caffe's solvers keep them (AdaDelta and Adam: two)
SOLVER_HISTORY = {"SGD": 1, "Nesterov": 1, "AdaGrad": 1, "RMSProp": 1, "AdaDelta": 2, "Adam": 2}


def fma(a: float, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """float32 ``a * x + y`` with one rounding (a BLAS ``saxpy`` with FMA), via float64."""
    return torch.add(y.double(), x.double(), alpha=float(a)).float()


class CaffeOptimizer(torch.optim.Optimizer):
    """Caffe's ``Solver::ApplyUpdate`` (see the module docstring). ``params``: dicts with ``params`` (one tensor),
    ``name``, ``lr_mult``, ``decay_mult``; or tensors (mults 1)."""

    def __init__(
        self,
        params: Iterable[Any],
        *,
        solver_type: str = "SGD",
        momentum: float = 0.0,
        momentum2: float = 0.999,
        delta: float = 1e-8,
        rms_decay: float = 0.99,
        weight_decay: float = 0.0,
        regularization_type: str = "L2",
        iter_size: int = 1,
        clip_gradients: float = -1.0,
        arithmetic: str = "fma",
        form: str = "caffe",
    ) -> None:
        if solver_type not in SOLVER_HISTORY:
            raise ValueError(f"solver type must be one of {tuple(SOLVER_HISTORY)}, got {solver_type!r}")
        if arithmetic not in ("fma", "float32"):
            raise ValueError(f"arithmetic must be 'fma' or 'float32', got {arithmetic!r}")
        if form not in ("caffe", "pytorch") or (form == "pytorch" and solver_type != "SGD"):
            raise ValueError(f"form must be 'caffe' or (SGD only) 'pytorch', got {form!r} for {solver_type}")
        if regularization_type not in ("L2", "L1"):
            raise ValueError(f"regularization_type must be L2 or L1, got {regularization_type!r}")
        groups = []
        for i, p in enumerate(params):
            g = dict(p) if isinstance(p, dict) else {"params": [p]}
            g.setdefault("name", f"param{i}")
            g.setdefault("lr_mult", 1.0)
            g.setdefault("decay_mult", 1.0)
            groups.append(g)
        defaults = dict(
            solver_type=solver_type,
            momentum=float(f32(momentum)),
            momentum2=float(f32(momentum2)),
            delta=float(f32(delta)),
            rms_decay=float(f32(rms_decay)),
            weight_decay=float(f32(weight_decay)),
            regularization_type=regularization_type,
            iter_size=int(iter_size),
            clip_gradients=float(f32(clip_gradients)),
            arithmetic=arithmetic,
            form=form,
        )
        super().__init__(groups, defaults)

    # ------------------------------------------------------------------------------------------ helpers
    def _axpy(self, a: float, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``a * x + y`` (Caffe ``caffe_axpy``)."""
        if self.defaults["arithmetic"] == "fma":
            return fma(a, x, y)
        return y + x * float(a)

    def _axpby(self, a: float, x: torch.Tensor, b: float, y: torch.Tensor) -> torch.Tensor:
        """``a * x + b * y`` (Caffe ``caffe_cpu_axpby``: scale y by b, then axpy)."""
        return self._axpy(a, x, y * float(b))

    def history(self, p: torch.Tensor) -> list[torch.Tensor]:
        """The Caffe history blobs of ``p`` (created as zeros on first use)."""
        st = self.state[p]
        if "history" not in st:
            n = SOLVER_HISTORY[self.defaults["solver_type"]]
            st["history"] = [torch.zeros_like(p, memory_format=torch.preserve_format) for _ in range(n)]
        return st["history"]

    def clip_gradients(self) -> float:
        """Caffe ``ClipGradients``: scale every gradient when their global L2 norm exceeds ``clip_gradients``."""
        clip = self.defaults["clip_gradients"]
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if clip < 0 or not grads:
            return 1.0
        sumsq = f32(sum(float(torch.sum(gr.double() ** 2)) for gr in grads))
        norm = f32(np.sqrt(sumsq))
        if norm <= clip:
            return 1.0
        factor = float(f32(f32(clip) / norm))
        for gr in grads:
            gr.mul_(factor)
        return factor

    # --------------------------------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, rate: float, iteration: int = 0) -> None:  # type: ignore[override]
        """One Caffe update with the policy's ``rate`` at Caffe ``iter_ = iteration`` (Adam's bias correction)."""
        d = self.defaults
        self.clip_gradients()
        scale = float(f32(1.0) / f32(d["iter_size"]))
        for group in self.param_groups:
            p = group["params"][0]
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            g = grad * scale if d["iter_size"] > 1 else grad.clone()
            local_decay = float(f32(f32(d["weight_decay"]) * f32(group["decay_mult"])))
            if local_decay:
                reg = p if d["regularization_type"] == "L2" else torch.sign(p)
                g = self._axpy(local_decay, reg, g)
            local_rate = float(f32(f32(rate) * f32(group["lr_mult"])))
            p.sub_(self._update(p, g, local_rate, iteration))

    def _update(self, p: torch.Tensor, g: torch.Tensor, rate: float, iteration: int) -> torch.Tensor:
        d = self.defaults
        kind, m, h = d["solver_type"], d["momentum"], self.history(p)
        if kind == "SGD" and d["form"] == "pytorch":
            h[0].copy_(self._axpby(1.0, g, m, h[0]))
            return h[0] * rate
        if kind == "SGD":
            h[0].copy_(self._axpby(rate, g, m, h[0]))
            return h[0]
        if kind == "Nesterov":
            prev = h[0].clone()
            h[0].copy_(self._axpby(rate, g, m, h[0]))
            return self._axpby(float(f32(1) + f32(m)), h[0], -m, prev)
        delta = d["delta"]
        if kind == "AdaGrad":
            h[0].add_(g * g)
            return (g / (torch.sqrt(h[0]) + delta)) * rate
        if kind == "RMSProp":
            rd = d["rms_decay"]
            h[0].copy_(self._axpby(float(f32(1) - f32(rd)), g * g, rd, h[0]))
            return (g / (torch.sqrt(h[0]) + delta)) * rate
        if kind == "AdaDelta":
            one_m = float(f32(1) - f32(m))
            h[0].copy_(self._axpby(one_m, g * g, m, h[0]))
            update = g * torch.sqrt((h[1] + delta) / (h[0] + delta))
            h[1].copy_(self._axpby(one_m, update * update, m, h[1]))
            return update * rate
        # Adam: beta1 = momentum, beta2 = momentum2, eps_hat = delta, t = iter_ + 1
        b1, b2, t = m, d["momentum2"], int(iteration) + 1
        h[0].copy_(self._axpby(float(f32(1) - f32(b1)), g, b1, h[0]))
        h[1].copy_(self._axpby(float(f32(1) - f32(b2)), g * g, b2, h[1]))
        correction = f32(np.sqrt(f32(1 - np.float64(f32(b2)) ** t)) / f32(1 - np.float64(f32(b1)) ** t))
        return (h[0] / (torch.sqrt(h[1]) + delta)) * float(f32(f32(rate) * correction))


def pytorch_form_difference(rates: list[float], grads: list[float], momentum: float) -> float:
    """Total weight difference (PyTorch form minus Caffe form) after SGD steps with these ``rates`` and constant
    per-step gradients ``grads`` (scalars, float64): ``sum_t [lr_t * B_t - V_t]`` with ``B_t = m B + g`` and
    ``V_t = m V + lr_t g``. Weight *decrease* is the update, so a positive value means PyTorch moved less."""
    b = v = diff = 0.0
    for lr, g in zip(rates, grads, strict=True):
        b = momentum * b + g
        v = momentum * v + lr * g
        diff += v - lr * b
    return diff

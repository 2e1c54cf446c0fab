"""L2 / L2-SP regulariser of PSPNet-TF-Reproduce (``model/network_base.py`` ``_decay``) on a PyTorch model.

Only convolution kernels (``nn.Conv2d.weight``) are regularised. Mode 1 (L2-SP): a pre-trained kernel ``w`` with
its init ``w0`` adds ``rate * 1/2 ||w - w0||^2``; a new kernel (no ``w0``: pyramid, head, aux) adds
``rate2 * 1/2 ||w||^2``. Mode 0: plain L2, ``rate`` on pre-trained and ``rate2`` on new kernels.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

__all__ = ["L2SP", "conv_kernel_names"]


def conv_kernel_names(model: nn.Module) -> list[str]:
    """State-dict names of every ``nn.Conv2d`` kernel."""
    return [f"{n}.weight" if n else "weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


class L2SP:
    """``reg = L2SP(model, init_state, mode, rate, rate2)``; ``reg(model)`` is the term added to the loss.

    ``init_state``: the init checkpoint's tensors by state-dict name; a kernel present there with the same shape
    is pre-trained, any other kernel is new (:attr:`pretrained`, :attr:`new` list them).
    """

    def __init__(self, model: nn.Module, init_state: Mapping[str, Tensor], mode: int, rate: float, rate2: float):
        if mode not in (0, 1):
            raise ValueError(f"L2-SP mode must be 0 (L2) or 1 (L2-SP), got {mode}")
        self.mode, self.rate, self.rate2 = int(mode), float(rate), float(rate2)
        params = dict(model.named_parameters())
        self.pretrained: list[str] = []
        self.new: list[str] = []
        self.ref: dict[str, Tensor] = {}
        for name in conv_kernel_names(model):
            w0 = init_state.get(name)
            if w0 is not None and tuple(w0.shape) == tuple(params[name].shape):
                self.pretrained.append(name)
                self.ref[name] = w0.detach().to(params[name].device, params[name].dtype).clone()
            else:
                self.new.append(name)

    def __call__(self, model: nn.Module) -> Tensor:
        params = dict(model.named_parameters())
        first = params[(self.pretrained or self.new)[0]]
        old = first.new_zeros(())
        for name in self.pretrained:
            w = params[name]
            d = w - self.ref[name] if self.mode == 1 else w
            old = old + 0.5 * (d * d).sum()
        new = first.new_zeros(())
        for name in self.new:
            w = params[name]
            new = new + 0.5 * (w * w).sum()
        return self.rate * old + self.rate2 * new

"""torchrun process groups and a SyncBatchNorm that also runs on CPU (gloo).

``torch.nn.SyncBatchNorm`` refuses CPU tensors in torch 2.13 ("expected input tensor to be on GPU or XPU"), so
:class:`CpuSyncBatchNorm` computes the batch statistics of the whole global batch with two autograd-aware
``all_reduce`` calls (mean, then the centred sum of squares); :func:`convert_sync_batchnorm` picks torch's
SyncBatchNorm on CUDA and this one on CPU, and is applied before DDP wraps the model.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import Tensor, nn

__all__ = ["CpuSyncBatchNorm", "convert_sync_batchnorm", "init_distributed", "world_info"]


def world_info() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment (0, 0, 1 without it)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init_distributed(device: str = "cpu") -> tuple[int, int]:
    """Join torchrun's group (gloo on CPU, NCCL on CUDA); returns (rank, world_size)."""
    rank, local, world = world_info()
    if world > 1 and not dist.is_initialized():
        cuda = str(device).startswith("cuda")
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo")
    return rank, world


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the batch over every rank (any device, any backend)."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        count = torch.tensor([x.numel() // c], dtype=x.dtype, device=x.device)
        total = dist_nn.all_reduce(torch.cat([x.sum((0, 2, 3)), count]))
        n = total[-1].detach()
        mean = total[:c] / n
        centred = x - mean.view(1, c, 1, 1)
        var = dist_nn.all_reduce((centred * centred).sum((0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
                self.num_batches_tracked += 1
        y = centred * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y


def convert_sync_batchnorm(module: nn.Module, device: str | torch.device = "cpu") -> nn.Module:
    """Every ``nn.BatchNorm2d`` -> torch's SyncBatchNorm on CUDA, :class:`CpuSyncBatchNorm` elsewhere (same
    parameters and buffers; frozen BN, which is not a BatchNorm2d, is left alone)."""
    if torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CpuSyncBatchNorm):
        new = CpuSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)  # fmt: skip
        new.load_state_dict(module.state_dict())
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, device))
    return module

"""Worker for tests/test_distributed_syncbn.py (run by torchrun): SyncBN over 2 ranks vs one BN on the batch."""

import sys

import torch
import torch.distributed as dist
from torch import nn

from segconvert.train.distributed import convert_sync_batchnorm, init_distributed

rank, world = init_distributed("cpu")
torch.manual_seed(0)
x = torch.randn(4, 3, 5, 5) * 3 + 1
ref = nn.BatchNorm2d(3)
with torch.no_grad():
    ref.weight.uniform_(0.5, 1.5)
    ref.bias.uniform_(-1, 1)
sync = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)), "cpu")
sync[0].load_state_dict(ref.state_dict())
g = torch.randn(4, 3, 5, 5)
ref_x = x.clone().requires_grad_(True)
ref_y = ref(ref_x)
(ref_y * g).sum().backward()
part = slice(2 * rank, 2 * rank + 2)
my_x = x[part].clone().requires_grad_(True)
y = sync(my_x)
(y * g[part]).sum().backward()
dist.all_reduce(sync[0].weight.grad)
ok = (
    torch.allclose(y, ref_y[part].detach(), atol=1e-5)
    and torch.allclose(my_x.grad, ref_x.grad[part], atol=1e-5)
    and torch.allclose(sync[0].weight.grad, ref.weight.grad, atol=1e-4)
    and torch.allclose(sync[0].running_mean, ref.running_mean, atol=1e-6)
    and torch.allclose(sync[0].running_var, ref.running_var, atol=1e-5)
)
print(f"rank {rank} ok={ok}")
dist.destroy_process_group()
sys.exit(0 if ok else 1)

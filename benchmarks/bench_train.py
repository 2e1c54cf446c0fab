"""Trainer overhead: the DeepLab-v2 MSC recipe step through ``Trainer`` vs a minimal hand-written PyTorch loop.

Same model (width-reduced on CPU, ``--divisor 1`` for full width on a GPU), same pre-built batches, same
Caffe-form optimiser; the bare loop is forward / backward / step only. Prints iterations/s, peak memory and the
trainer's overhead (target <= 5%). ``python benchmarks/bench_train.py --iters 20 --crop 65``
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--crop", type=int, default=65)
    ap.add_argument("--divisor", type=int, default=8)
    ap.add_argument("--depth", type=int, default=101)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()

    from segconvert.reference_models.deeplab_v2 import DeepLabV2
    from segconvert.train.engine import Trainer
    from segconvert.train.log import peak_memory_mib
    from segconvert.train.optim import CaffeOptimizer
    from segconvert.train.recipe_net import DeepLabRecipeNet
    from segconvert.train.recipes import get_recipe
    from segconvert.train.solver import parse_solver

    dev = torch.device(a.device)
    r = get_recipe("deeplabv2-voc12").resolve({"solver.iter_size": 1, "solver.max_iter": 10 * a.iters})
    solver = parse_solver(r.solver_text())
    g = torch.Generator().manual_seed(0)
    batches = [
        {"data": torch.randn(1, 3, a.crop, a.crop, generator=g) * 50,
         "label": torch.randint(0, 21, (1, 1, a.crop, a.crop), generator=g).float()}
        for _ in range(4)
    ]  # fmt: skip

    class Cycle:
        def __init__(self) -> None:
            self.i = 0

        def next_batch(self) -> dict[str, torch.Tensor]:
            self.i += 1
            return batches[self.i % len(batches)]

        def state_dict(self) -> dict[str, int]:
            return {"i": self.i}

        def load_state_dict(self, s: dict[str, int]) -> None:
            self.i = s["i"]

    def make_net() -> DeepLabRecipeNet:
        torch.manual_seed(0)
        d = a.divisor
        m = DeepLabV2(depth=a.depth, stem_widths=[64 // d], widths=[w // d for w in (64, 128, 256, 512)])
        with torch.no_grad():
            m.backbone.stem.bn1.weight.mul_(0.02)
        return DeepLabRecipeNet(m, {"backbone": (1, 1), "head_weight": (10, 1), "head_bias": (20, 0)})

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    # bare loop
    net = make_net().to(dev)
    opt = CaffeOptimizer(net.param_groups(), momentum=0.9, weight_decay=5e-4)
    dev_batches = [{k: v.to(dev) for k, v in b.items()} for b in batches]

    def bare(n: int) -> float:
        sync()
        t0 = time.perf_counter()
        for i in range(n):
            net.train()
            opt.zero_grad(set_to_none=False)
            net(dev_batches[i % 4]).total.backward()
            opt.step(2.5e-4, i)
        sync()
        return time.perf_counter() - t0

    bare(2)
    t_bare = bare(a.iters)
    mem_bare = peak_memory_mib(dev)
    trainer = Trainer(make_net(), solver, Cycle(), device=dev)
    trainer.run(2)
    sync()
    t0 = time.perf_counter()
    trainer.run(2 + a.iters)
    sync()
    t_ours = time.perf_counter() - t0
    mem_ours = peak_memory_mib(dev)
    print(f"device {dev}, depth {a.depth}, widths /{a.divisor}, crop {a.crop}, {a.iters} iterations (MSC, 4 losses)")
    print(f"bare loop : {a.iters / t_bare:7.2f} it/s  peak {mem_bare:8.0f} MiB")
    print(f"Trainer   : {a.iters / t_ours:7.2f} it/s  peak {mem_ours:8.0f} MiB")
    print(f"overhead  : {100 * (t_ours / t_bare - 1):+.1f}% per iteration (target <= 5%)")


if __name__ == "__main__":
    main()

"""PSPNet50 training through ``TorchTrainer`` vs a bare PyTorch loop: images/s, trainer overhead and peak memory.

Configurations: ``plain``, ``bf16``, ``fp16`` (CUDA only), ``ckpt`` (activation checkpointing, policy ``light``:
the stem and layer1-3), ``ckpt-all`` (every backbone stage, the pyramid and the head) and ``bf16+ckpt`` /
``bf16+ckpt-all`` / ``fp16+ckpt``. Each is a run that
:func:`segconvert.train.psp_run.build_psp_run` builds from a preset (``run.amp``, ``run.grad_checkpointing``,
``model.width_divisor`` overridden); the trainer's data is replaced by two pre-built batches already on the
device. The bare loop drives the *same* model, optimizer and ``Amp`` (autocast, GradScaler for fp16) on the same
batches: forward, ``CE(main) + aux_weight * CE(aux)`` (ignore 255), backward, step -- nothing else (no schedule,
no metrics, no host syncs). Everything runs in one process: all runs are built first, then timed in interleaved
rounds (each round every configuration, bare and trainer in alternating order) so shared-machine load drifts hit
all of them alike; the time per iteration is the median of the timed iterations (``--iters`` each).

Memory, per configuration and method, one extra step each (not timed), all *above the step's baseline* (weights,
momentum, the batches; gradients freed by ``zero_grad(set_to_none=True)``):

- ``step_peak``: the allocator's high-water mark during one whole step -- on CUDA
  ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, on CPU the running sum of the profiler's
  allocation/free records (``torch.profiler``, ``profile_memory=True``);
- ``fb_peak``: the same high-water mark up to the optimizer step (read in an optimizer step pre-hook; on CPU the
  hook allocates a marker block the records are split at), i.e. forward + backward without the optimizer's
  temporaries (which are what peaks at small crops);
- ``act_peak = fb_peak - gradient bytes``: activations, the backward's recomputation and temporaries (a lower
  bound: the gradients are not all allocated yet when the peak is early in the backward); the checkpointing target
  ``<= 0.5x`` is read on it;
- ``saved`` (per configuration, the bare forward): bytes still allocated after forward + loss, i.e. what autograd
  keeps for the backward (checkpointed regions keep only their inputs);
- CUDA only: ``max_allocated``, the absolute ``torch.cuda.max_memory_allocated`` of the step (includes every
  run built in the process: pass one configuration to read one run's alone, as ``gpu_check_train.py`` does).

``python benchmarks/bench_train_pspnet.py --threads 1`` (CPU: full width, crop 97, batch 2, ~2 s a step; one thread
on a shared machine -- torch's default threads are erratic under load; ``--divisor 8`` makes element-wise work, not
convolutions, the cost, which no GPU run resembles); on a GPU: ``--device cuda --crop 473 --batch 8``.
``--json FILE`` writes every number.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

CONFIGS = {"plain": ("none", "none"), "bf16": ("bf16", "none"), "fp16": ("fp16", "none"), "ckpt": ("none", "light"),
           "ckpt-all": ("none", "all"), "bf16+ckpt": ("bf16", "light"), "bf16+ckpt-all": ("bf16", "all"),
           "fp16+ckpt": ("fp16", "light")}  # (run.amp, run.grad_checkpointing)  # fmt: skip
MIB = 2**20


class SyntheticSet:
    """The dataset ``build_psp_run`` asks for (class count, length); never read: the batches are pre-built."""

    name, split = "synthetic", "train"

    def __init__(self, num_classes: int, n: int) -> None:
        self.num_classes, self.n = num_classes, n

    def __len__(self) -> int:
        return self.n

    def load_image(self, i: int) -> np.ndarray:
        raise RuntimeError("the benchmark feeds pre-built batches")

    load_target = load_image


class Cycle:
    """``PSPBatches``' interface over pre-built device batches."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.batches, self.i = batches, 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.i += 1
        return self.batches[self.i % len(self.batches)]

    def state_dict(self) -> dict[str, int]:
        return {"i": self.i}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.i = int(state["i"])


def make_batches(n: int, batch: int, crop: int, label_size: int, classes: int, device: torch.device,
                 seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    """Normalised-image-like inputs and random labels with ~10% ignored pixels."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(batch, 3, crop, crop, generator=g)
        y = torch.randint(0, classes, (batch, label_size, label_size), generator=g)
        y[torch.rand(y.shape, generator=g) < 0.1] = 255
        out.append((x.to(device), y.to(device)))
    return out


def build(config: str, a: argparse.Namespace, device: torch.device) -> SimpleNamespace:
    """One configuration's run (from the preset) and its batches."""
    from segconvert.train.psp_run import build_psp_run
    from segconvert.train.recipes import get_recipe

    amp, ckpt = CONFIGS[config]
    over = {"model.width_divisor": a.divisor, "model.depth": a.depth, "data.crop_size": [a.crop, a.crop],
            "data.batch_size": a.batch, "run.amp": amp, "run.grad_checkpointing": ckpt,
            "run.num_workers": 0}  # fmt: skip
    recipe = get_recipe(a.recipe)
    over.update({"solver.epochs": 10**6} if "solver.epochs" in recipe.values else {"solver.max_iter": 10**6})
    resolved = recipe.resolve(over)
    classes = int(resolved.values["model.num_classes"])
    run = build_psp_run(resolved, SyntheticSet(classes, a.batch), device=str(device))
    shrink = int(resolved.values.get("data.label_shrink") or 1)
    label_size = a.crop if run.net.label_mode == "resize_logits" else -(-a.crop // shrink)
    batches = make_batches(2, a.batch, a.crop, label_size, classes, device)
    run.trainer.data = Cycle(batches)
    return SimpleNamespace(name=config, run=run, batches=batches, i=0, times={"bare": [], "trainer": []}, mem={})


def bare_loss(b: SimpleNamespace, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    net = b.run.net
    with b.run.trainer.amp.autocast():
        out = net.model(x)
        loss = F.cross_entropy(out["out"].float(), y, ignore_index=net.ignore_label)
        if "aux" in out and net.aux_weight:
            loss = loss + net.aux_weight * F.cross_entropy(out["aux"].float(), y, ignore_index=net.ignore_label)
    if b.run.trainer.regulariser is not None:  # the same objective as the trainer's (none in the semseg presets)
        loss = loss + b.run.trainer.regulariser(net.model)
    return loss


def bare_update(b: SimpleNamespace, loss: torch.Tensor) -> None:
    """Backward and optimizer step, through the GradScaler for fp16."""
    optimizer, scaler = b.run.trainer.optimizer, b.run.trainer.amp.scaler
    if scaler is None:
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def bare_step(b: SimpleNamespace) -> None:
    """The hand-written loop's iteration: forward, loss, backward, step."""
    b.i += 1
    x, y = b.batches[b.i % len(b.batches)]
    b.run.net.model.train()
    b.run.trainer.optimizer.zero_grad(set_to_none=True)
    bare_update(b, bare_loss(b, x, y))


def trainer_step(b: SimpleNamespace) -> None:
    b.run.trainer.step()


STEPS: dict[str, Callable[[SimpleNamespace], None]] = {"bare": bare_step, "trainer": trainer_step}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


MARKER = 3 * 2**20 + 4321  # bytes of the CPU allocation that marks the optimizer step in the profiler's records


def _profiled_peak(fn: Callable[[], Any]) -> tuple[int, int, int]:
    """(high-water mark, high-water mark before the first ``MARKER`` allocation, final) of the running sum of the
    profiler's CPU allocation records during ``fn`` (the marker's own records left out)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    records = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    live = peak = 0
    before = None
    for _, nbytes in records:
        if abs(nbytes) == MARKER:
            before = peak if before is None else before
            continue
        live += nbytes
        peak = max(peak, live)
    return peak, peak if before is None else before, live


def grad_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def measure_step(b: SimpleNamespace, method: str, device: torch.device) -> dict[str, float]:
    """Allocator peaks of one step of ``method`` above the baseline (see the module docstring); an optimizer
    step pre-hook marks where forward + backward end."""
    optimizer = b.run.trainer.optimizer
    optimizer.zero_grad(set_to_none=True)
    gc.collect()
    _sync(device)
    cuda = device.type == "cuda"
    seen: list[int] = []

    def mark(*_: Any) -> None:
        if not seen:
            seen.append(torch.cuda.max_memory_allocated(device) if cuda else 0)
            if not cuda:
                del_me = torch.empty(MARKER, dtype=torch.uint8)
                del del_me

    handle = optimizer.register_step_pre_hook(mark)
    try:
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            STEPS[method](b)
            _sync(device)
            absolute = torch.cuda.max_memory_allocated(device)
            peak, fb_peak = absolute - base, seen[0] - base
            extra = {"max_allocated_mib": absolute / MIB}
        else:
            peak, fb_peak, _ = _profiled_peak(lambda: STEPS[method](b))
            extra = {}
    finally:
        handle.remove()
    g = grad_bytes(b.run.net.model)
    return {"step_peak_mib": peak / MIB, "fb_peak_mib": fb_peak / MIB, "act_peak_mib": (fb_peak - g) / MIB, **extra}


def measure_saved(b: SimpleNamespace, device: torch.device) -> float:
    """MiB allocated after the bare forward + loss above the baseline: what autograd keeps for the backward."""
    b.run.trainer.optimizer.zero_grad(set_to_none=True)
    b.run.net.model.train()
    x, y = b.batches[0]
    gc.collect()
    _sync(device)
    if device.type == "cuda":
        base = torch.cuda.memory_allocated(device)
        loss = bare_loss(b, x, y)
        _sync(device)
        kept = torch.cuda.memory_allocated(device) - base
    else:
        holder: list[torch.Tensor] = []
        _, _, kept = _profiled_peak(lambda: holder.append(bare_loss(b, x, y)))
        loss = holder.pop()
    del loss  # frees the graph without a backward
    return kept / MIB


def forward_share(b: SimpleNamespace, device: torch.device, n: int = 3) -> float:
    """Median share of the bare forward + loss in forward + backward + step (``n`` untimed split steps):
    recomputing the whole forward costs at least ``1 + share`` x the time."""
    trainer, shares = b.run.trainer, []
    for i in range(n):
        x, y = b.batches[i % len(b.batches)]
        trainer.optimizer.zero_grad(set_to_none=True)
        _sync(device)
        t0 = time.perf_counter()
        loss = bare_loss(b, x, y)
        _sync(device)
        t1 = time.perf_counter()
        bare_update(b, loss)
        _sync(device)
        shares.append((t1 - t0) / (time.perf_counter() - t0))
    return statistics.median(shares)


def run_benchmark(a: argparse.Namespace, configs: list[str]) -> dict[str, Any]:
    """Build, measure memory, time interleaved; returns the JSON-able results."""
    device = torch.device(a.device)
    if device.type == "cpu" and any(CONFIGS[c][0] == "fp16" for c in configs):
        raise SystemExit("error: fp16 autocast is benchmarked on CUDA only (use bf16 on CPU)")
    t_start = time.perf_counter()
    runs = [build(c, a, device) for c in configs]
    for b in runs:  # warm-up (oneDNN / cuDNN plans, momentum buffers, autocast caches)
        for _ in range(a.warmup):
            bare_step(b)
            trainer_step(b)
        _sync(device)
    for b in runs:
        b.mem = {m: measure_step(b, m, device) for m in ("bare", "trainer")}
        b.mem["saved_mib"] = measure_saved(b, device)
        b.fwd_share = forward_share(b, device)
    for r in range(a.iters):
        for b in runs if r % 2 == 0 else runs[::-1]:
            for method in ("bare", "trainer") if (r + len(b.name)) % 2 == 0 else ("trainer", "bare"):
                _sync(device)
                t0 = time.perf_counter()
                STEPS[method](b)
                _sync(device)
                b.times[method].append(time.perf_counter() - t0)
    results: dict[str, Any] = {}
    for b in runs:
        med = {m: statistics.median(t) for m, t in b.times.items()}
        mean = {m: statistics.fmean(t) for m, t in b.times.items()}
        results[b.name] = {
            "seconds_per_iter": med,
            "mean_seconds_per_iter": mean,
            "images_per_s": {m: a.batch / t for m, t in med.items()},
            "overhead_pct": 100 * (med["trainer"] / med["bare"] - 1),
            "overhead_pct_mean": 100 * (mean["trainer"] / mean["bare"] - 1),
            "overhead_pct_min": 100 * (min(b.times["trainer"]) / min(b.times["bare"]) - 1),
            "memory": b.mem,
            "forward_share": b.fwd_share,
            "times": b.times,
        }
    ratios = {}
    for ck in (c for c in results if "ckpt" in c):
        base = ck.split("+")[0] if "+" in ck else "plain"
        if base in results:
            p, c = results[base], results[ck]
            ratios[f"{ck} / {base}"] = {
                "act_peak": c["memory"]["trainer"]["act_peak_mib"] / p["memory"]["trainer"]["act_peak_mib"],
                "step_peak": c["memory"]["trainer"]["step_peak_mib"] / p["memory"]["trainer"]["step_peak_mib"],
                "saved": c["memory"]["saved_mib"] / p["memory"]["saved_mib"],
                "time_trainer": c["seconds_per_iter"]["trainer"] / p["seconds_per_iter"]["trainer"],
                "time_bare": c["seconds_per_iter"]["bare"] / p["seconds_per_iter"]["bare"],
                "recompute_floor": 1 + p["forward_share"],
            }
    model = runs[0].run.net.model
    return {
        "settings": {
            **vars(a),
            "configs": configs,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "seconds": time.perf_counter() - t_start,
        },
        "results": results,
        "checkpointing": ratios,
    }


def report(out: dict[str, Any], log: Callable[[str], None] = print) -> None:
    """The results as a table (MiB above the step's baseline; see the module docstring)."""
    s = out["settings"]
    log(f"{s['recipe']} depth {s['depth']} widths /{s['divisor']} ({s['params_m']:.2f} M params), crop {s['crop']}, "
        f"batch {s['batch']}, {s['iters']} timed iterations per method, device {s['device_name']}, "
        f"{s['threads']} threads, {s['seconds']:.0f} s")  # fmt: skip
    keys = ["step_peak_mib", "fb_peak_mib", "act_peak_mib"] + (["max_allocated_mib"] if "cuda" in s["device"] else [])
    heads = {"step_peak_mib": "step", "fb_peak_mib": "f+b", "act_peak_mib": "act", "max_allocated_mib": "max alloc"}
    log(f"{'config':<10} {'method':<8} {'img/s':>8} {'s/iter':>8} " + " ".join(f"{heads[k]:>9}" for k in keys)
        + f" {'saved':>9}  overhead (median / mean / min)")  # fmt: skip
    for name, r in out["results"].items():
        for m in ("bare", "trainer"):
            mib = " ".join(f"{r['memory'][m][k]:9.1f}" for k in keys)
            line = f"{name:<10} {m:<8} {r['images_per_s'][m]:8.2f} {r['seconds_per_iter'][m]:8.3f} {mib}"
            line += f" {r['memory']['saved_mib']:9.1f}"
            if m == "trainer":
                line += f"  {r['overhead_pct']:+.1f}% / {r['overhead_pct_mean']:+.1f}% / {r['overhead_pct_min']:+.1f}%"
            log(line)
    for key, q in out["checkpointing"].items():
        log(f"{key}: activation peak x{q['act_peak']:.2f} (target <= 0.5), step peak x{q['step_peak']:.2f}, "
            f"saved x{q['saved']:.2f}; time x{q['time_trainer']:.2f} trainer / x{q['time_bare']:.2f} bare "
            f"(target <= 1.35; recomputing the forward costs >= x{q['recompute_floor']:.2f} here: 1 + its share "
            "of a plain step)")  # fmt: skip


def parser() -> argparse.ArgumentParser:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if cuda else "cpu")
    ap.add_argument("--recipe", default="pspnet-semseg-voc", help="a pspnet-semseg-* preset (no regulariser)")
    ap.add_argument("--depth", type=int, default=50)
    ap.add_argument("--divisor", type=int, default=None, help="width reduction (default 1: full PSPNet50)")
    ap.add_argument("--crop", type=int, default=None, help="default 97 on CPU, 473 on CUDA")
    ap.add_argument("--batch", type=int, default=None, help="default 2 on CPU, 8 on CUDA")
    ap.add_argument("--iters", type=int, default=6, help="timed iterations per configuration and method")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--configs", default=None, help="comma list of " + ", ".join(CONFIGS) + " (default: all the "
                    "device runs: fp16 only on CUDA)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--json", default=None, help="write the results to this file")
    return ap


def finish_args(a: argparse.Namespace) -> list[str]:
    gpu = a.device.startswith("cuda")
    a.divisor = a.divisor or 1
    a.crop = a.crop or (473 if gpu else 97)
    a.batch = a.batch or (8 if gpu else 2)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.configs:
        configs = [c.strip() for c in a.configs.split(",")]
        bad = [c for c in configs if c not in CONFIGS]
        if bad:
            raise SystemExit(f"error: unknown config {bad[0]!r} (choose from {', '.join(CONFIGS)})")
        return configs
    return [c for c in CONFIGS if gpu or "fp16" not in c]


def write_json(path: str | Path, out: dict[str, Any]) -> None:
    from segconvert.fileio import atomic_write

    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(out, indent=1) + "\n"))


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)
    configs = finish_args(a)
    out = run_benchmark(a, configs)
    report(out)
    if a.json:
        write_json(a.json, out)


if __name__ == "__main__":
    main()

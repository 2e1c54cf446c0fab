"""Run a PSPNet preset: ``segconvert train --recipe pspnet-... --dataset D --root DIR [--init W] -o OUT``, on one
process or under ``torchrun`` (every rank runs this; rank 0 writes the files).

``OUT`` receives what a DeepLab recipe run writes (:mod:`segconvert.train.recipe_run`): ``run.json`` (final
values, overrides, model config, init file and its report: initialised / new / re-initialised tensors, world
size), ``train_log.jsonl``, ``tensorboard/`` when installed, ``checkpoints/state_iter_<N>.pt``,
``iter_<N>.safetensors`` every ``solver.snapshot`` and ``final.safetensors`` (frozen-BN inference form without the
aux head: ``eval``, ``export-onnx``, ``predict`` read it).
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any, TextIO

import torch

from segconvert.errors import SegconvertError
from segconvert.fileio import atomic_write

__all__ = ["build_psp_run", "train_psp_recipe", "PSP_RUN_OPTIONS"]

# segconvert run options a preset carries (CLI flags set them; run.json records them)
PSP_RUN_OPTIONS = (
    "run.amp",
    "run.channels_last",
    "run.grad_checkpointing",
    "run.compile",
    "run.compile_backend",
    "run.grad_accum",
)


def _preprocessing(v: dict[str, Any]) -> dict[str, Any]:
    std = v.get("data.std")
    return {"channel_order": "RGB", "mean": [float(x) for x in v["data.mean"]],
            "std": None if std is None else [float(x) for x in std], "scale": 1.0}  # fmt: skip


class PSPRun:
    """What :func:`build_psp_run` builds: the model, trainer and its pieces."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


def _check_compile_backend(name: str) -> None:
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())
    if name not in known:
        raise SegconvertError(f"run.compile_backend={name!r}: not a torch.compile backend (e.g. inductor, aot_eager)",
                              key="run.compile_backend")  # fmt: skip


def build_psp_run(resolved: Any, dataset: Any, *, init: str | Path | None = None, device: str = "cpu") -> PSPRun:
    """Model (init loaded, SyncBN under torchrun), data, optimizer, regulariser and :class:`TorchTrainer`."""
    from segconvert.weights.store import read_metadata

    from .amp import Amp
    from .distributed import convert_sync_batchnorm, world_info
    from .l2sp import L2SP
    from .psp_data import PSPBatches, PSPSamples, per_rank_batch
    from .psp_model import PSPTrainNet, build_psp_model, checkpoint_policy, load_psp_init, psp_param_groups
    from .torch_engine import TorchTrainer
    from .transforms import build_transforms

    v = resolved.values
    rank, _local, world = world_info()
    seed = int(v["run.seed"])
    torch.manual_seed(seed)
    init_meta = read_metadata(init) if init is not None else None
    model = build_psp_model(v, init_meta)
    report = load_psp_init(model, init) if init is not None else None
    if dataset.num_classes != model.config["num_classes"]:
        raise SegconvertError(f"preset has {model.config['num_classes']} classes but dataset {dataset.name} has "
                              f"{dataset.num_classes}; set model.num_classes", key="model.num_classes")  # fmt: skip
    if v["model.norm"] == "syncbn" and world > 1:
        model = convert_sync_batchnorm(model, device)
    model.set_grad_checkpointing(checkpoint_policy(v["run.grad_checkpointing"]))
    if v["run.compile"]:
        _check_compile_backend(str(v["run.compile_backend"]))
    mode = "shrink_labels" if int(v.get("data.label_shrink", 1)) > 1 else "resize_logits"
    net = PSPTrainNet(model, float(v["model.aux_weight"]), int(v["data.ignore_label"]), mode)
    base_lr = float(v["solver.base_lr"])
    groups = psp_param_groups(model, float(v.get("solver.backbone_lr_mult", 1.0)),
                              float(v.get("solver.head_lr_mult", 1.0)), base_lr)  # fmt: skip
    optimizer = torch.optim.SGD(groups, lr=base_lr, momentum=float(v["solver.momentum"]),
                                weight_decay=float(v["solver.weight_decay"]))  # fmt: skip
    regulariser = None
    if "l2sp.mode" in v:
        own = model.state_dict()
        pretrained = {k: own[k] for k in (report["initialised"] if report else [])}  # w0: the init's tensors
        regulariser = L2SP(model, pretrained, int(v["l2sp.mode"]), float(v["l2sp.rate"]), float(v["l2sp.rate2"]))
    accumulate = int(v["run.grad_accum"])
    batch = per_rank_batch(int(v["data.batch_size"]), world, accumulate)
    samples = PSPSamples(dataset, build_transforms(v), seed, int(v.get("data.label_shrink", 1)))
    data = PSPBatches(samples, batch, rank=rank, world=world, seed=seed, num_workers=int(v["run.num_workers"]))
    if "solver.max_iter" in v:
        max_iter = int(v["solver.max_iter"])
    else:  # semseg: max_iter = epochs * len(train_loader)
        max_iter = int(v["solver.epochs"]) * data.per_epoch
    amp = Amp(v["run.amp"], torch.device(device).type)
    trainer = TorchTrainer(net, optimizer, data, base_lr=base_lr, max_iter=max_iter, power=float(v["solver.power"]),
                           schedule=v["solver.schedule"], accumulate=accumulate, amp=amp, regulariser=regulariser,
                           device=device, channels_last=bool(v["run.channels_last"]),
                           compile=v["run.compile"] and str(v["run.compile_backend"]))  # fmt: skip
    return PSPRun(resolved=resolved, model=model, net=net, trainer=trainer, data=data, init_report=report,
                  init_meta=init_meta, rank=rank, world=world, per_rank_batch=batch, max_iter=max_iter)  # fmt: skip


def _snapshot_meta(run: PSPRun, dataset: Any, iteration: int) -> dict[str, Any]:
    from .psp_model import snapshot_config

    v = run.resolved.values
    cfg = snapshot_config(run.model, v["data.crop_size"])
    return {
        "arch": run.model.arch_name,
        "config": cfg,
        "num_classes": cfg["num_classes"],
        "input_size": cfg["input_size"],
        "preprocessing": _preprocessing(v),
        "source": {"format": "segconvert-train", "recipe": run.resolved.recipe.name, "init": run.init},
        "training": {
            "iteration": int(iteration),
            "recipe": run.resolved.to_json(),
            "dataset": {"name": dataset.name, "split": dataset.split},
            "world_size": run.world,
        },  # fmt: skip
    }


def write_psp_snapshot(run: PSPRun, dataset: Any, path: Path, iteration: int) -> Path | None:
    """Rank 0 writes ``path`` (converted-weights layout); other ranks write nothing."""
    from segconvert.weights.store import save_converted

    from .psp_model import snapshot_state

    if run.rank != 0:
        return None
    return save_converted(path, snapshot_state(run.model), _snapshot_meta(run, dataset, iteration))


def _init_summary(report: dict[str, list[str]] | None) -> list[str]:
    if report is None:
        return ["no --init: every tensor randomly initialised (He normal convolutions)"]
    notes = [f"init: {len(report['initialised'])} tensors initialised from the file, {len(report['new'])} new "
             f"({', '.join(sorted({k.split('.')[0] for k in report['new']})) or 'none'})"]  # fmt: skip
    if report["reinitialised"]:
        notes.append(f"re-initialised (class count differs): {', '.join(report['reinitialised'])}")
    if report["unused"]:
        notes.append(f"unused tensors of the init file: {len(report['unused'])} ({report['unused'][0]}, ...)")
    return notes


def train_psp_recipe(out: Path, resolved: Any, *, dataset: Any, root: str | Path, split: str, init: str | Path | None,
                     resume: bool, device: str, max_iter: int | None, val_every: int, val_split: str,
                     val_protocol: str, val_limit: int | None, progress: bool,
                     stream: TextIO | None = None) -> dict[str, Any]:  # fmt: skip
    """Train (or resume) a PSPNet preset in ``out`` on this rank (called by :func:`~.recipe_run.train_recipe`)."""
    from segconvert.eval.datasets import get_dataset
    from segconvert.weights.provenance import sha256_file

    from .callbacks import LogHook, SnapshotHook, ValidationHook, run_checkpointed
    from .checkpoint import Checkpointer, load_checkpoint
    from .distributed import init_distributed
    from .log import JsonlLog, ProgressBar, TensorBoardLog, tensorboard_available

    init_distributed(device)
    ds = dataset if not isinstance(dataset, str) else get_dataset(dataset, root, split)
    run = build_psp_run(resolved, ds, init=init, device=device)
    run.init = {"path": str(init), "sha256": sha256_file(init)} if init is not None else None
    main = run.rank == 0
    stream = (stream or sys.stdout) if main else io.StringIO()
    v, trainer = resolved.values, run.trainer
    checkpointer = Checkpointer(out, int(v["run.checkpoint_every"]), int(v["run.keep_checkpoints"]),
                                    rank=run.rank, world=run.world)  # fmt: skip
    start = Checkpointer.restore(trainer, load_checkpoint(out)) if resume else 0
    notes = _init_summary(run.init_report)
    if not resume and main:
        record = {
            "recipe": resolved.to_json(),
            "model": {"arch": run.model.arch_name, "config": run.model.config},
            "init": run.init,
            "init_report": run.init_report,
            "notes": notes,
            "dataset": {"name": ds.name, "root": str(Path(root).resolve()), "split": split, "images": len(ds)},
            "device": str(device),
            "world_size": run.world,
            "per_rank_batch": run.per_rank_batch,
            "max_iter": run.max_iter,
        }
        atomic_write(out / "run.json", lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1) + "\n"))
        for note in notes:
            print(f"note: {note}", file=stream)
    stop_at = run.max_iter if max_iter is None else int(max_iter)
    jsonl = JsonlLog(out / "train_log.jsonl", start=start) if main else None
    tb = TensorBoardLog(out / "tensorboard", start=start) if main and tensorboard_available() else None
    bar = ProgressBar(stop_at, start=start, device=device, enabled=progress and main)
    trainer.hooks = [
        LogHook(None, bar, jsonl, tb),
        SnapshotHook(out, int(v["solver.snapshot"]), lambda p, it: write_psp_snapshot(run, ds, p, it)),
    ]
    if val_every:
        from segconvert.eval.protocols import Preprocessing, get_protocol

        val_ds = get_dataset(ds.name, root, val_split)
        prep = Preprocessing.from_meta(_preprocessing(v))
        trainer.hooks.insert(1, ValidationHook(val_every, run.model, val_ds, get_protocol(val_protocol, ds.name),
                                               device=device, limit=val_limit, jsonl=jsonl, stream=stream,
                                               preprocessing=prep))  # fmt: skip
    records = run_checkpointed(trainer, checkpointer, stop_at)
    final = write_psp_snapshot(run, ds, out / "final.safetensors", trainer.iteration)
    return {
        "iterations": trainer.iteration,
        "started_at": start,
        "final": str(final or out / "final.safetensors"),
        "last_loss": records[-1].loss if records else None,
        "notes": notes,
        "recipe": resolved.to_json(),
        "rank": run.rank,
        "world_size": run.world,
    }

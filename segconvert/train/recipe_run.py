"""Run a training recipe on a dataset: ``segconvert train --recipe NAME --dataset voc --root DIR -o OUT``.

:func:`train_recipe` builds the recipe's model (architecture from the ``init`` file's metadata, class count /
MSC / ASPP from the recipe), its ImageSegData stream over a :mod:`segconvert.eval.datasets` dataset, the
solver (``solver.*`` values) and a :class:`~segconvert.train.engine.Trainer` with the logging, checkpoint,
snapshot and validation hooks. ``OUT`` receives:

- ``run.json``: the recipe's final values (after ``--set``), what was overridden, the model config, the init
  file (sha256) and its notes (classifier re-initialisation), the dataset;
- ``train_log.jsonl`` (one line per iteration), ``tensorboard/`` when TensorBoard is installed;
- ``checkpoints/state_iter_<N>.pt`` (full state, every ``run.checkpoint_every``, last ``run.keep_checkpoints``);
- ``iter_<N>.safetensors`` every ``solver.snapshot`` and ``final.safetensors``: converted-weights files
  (``load_model``, ``segconvert eval``, ``export-onnx`` read them), with the training provenance.

``resume=True`` continues ``OUT`` from its latest checkpoint with the values recorded in ``run.json``; the
losses and weights equal an uninterrupted run's bit for bit on CPU.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from segconvert.errors import SegconvertError
from segconvert.fileio import atomic_write, check_output_path

from .callbacks import LogHook, SnapshotHook, ValidationHook, run_checkpointed
from .checkpoint import Checkpointer, latest_checkpoint, load_checkpoint
from .data_imageseg import ImageSegData, ImageSegStream, transform_from_params
from .log import CaffeDisplay, JsonlLog, ProgressBar, TensorBoardLog, tensorboard_available
from .recipes import ResolvedRecipe, get_recipe

__all__ = ["RecipeRun", "build_recipe_run", "train_recipe", "RunFolderError"]


class RunFolderError(SegconvertError):
    """An output folder that already holds a run (without --resume), or a --resume folder without one."""


@dataclass
class RecipeRun:
    resolved: ResolvedRecipe
    trainer: Any
    model: torch.nn.Module
    stream: ImageSegStream
    display: CaffeDisplay
    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    init: dict[str, Any] | None = None


def model_config(resolved: ResolvedRecipe, init_meta: dict[str, Any] | None) -> dict[str, Any]:
    from segconvert.reference_models.deeplab_v2 import deeplabv2_config

    m = resolved.section("model")
    if init_meta is not None and str(init_meta.get("arch", "")).startswith("deeplabv2"):
        cfg = dict(init_meta["config"])
    elif init_meta is not None and init_meta.get("arch") == "resnet":
        cfg = {k: v for k, v in init_meta["config"].items() if k not in ("num_classes", "in_channels")}
        cfg["output_stride"] = 8
        cfg.pop("strides", None), cfg.pop("dilations", None)
    else:
        d = int(m["width_divisor"])
        cfg = {"depth": int(m["depth"]), "stem_widths": [64 // d], "widths": [w // d for w in (64, 128, 256, 512)]}
    cfg.update(num_classes=int(m["num_classes"]), msc=bool(m["msc"]), aspp_rates=list(m["aspp_rates"]),
               norm=m["norm"])  # fmt: skip
    cfg.setdefault("input_size", [513, 513])
    return deeplabv2_config(**cfg)


def build_recipe_run(
    resolved: ResolvedRecipe,
    dataset: Any,
    *,
    init: str | Path | None = None,
    device: str | torch.device = "cpu",
    hooks: list[Any] | None = None,
) -> RecipeRun:
    """Model, data stream, solver and Trainer of a recipe (no files written)."""
    from segconvert.reference_models.deeplab_v2 import DeepLabV2
    from segconvert.weights.provenance import sha256_file
    from segconvert.weights.store import read_metadata

    from .engine import Trainer
    from .recipe_net import DeepLabRecipeNet, load_init, reinit_classifier
    from .solver import parse_solver

    v = resolved.values
    seed = int(v["run.seed"])
    torch.manual_seed(seed)
    init_meta = read_metadata(init) if init is not None else None
    config = model_config(resolved, init_meta)
    model = DeepLabV2(**config)
    notes: list[str] = []
    init_info = None
    if init is not None:
        notes = load_init(model, init, v["init.classifier_std"], v["init.classifier_bias"], seed)
        init_info = {"path": str(init), "sha256": sha256_file(init), "arch": init_meta.get("arch")}
    else:
        reinit_classifier(model, v["init.classifier_std"], v["init.classifier_bias"], seed)
        notes.append("no --init: backbone randomly initialised (He normal), classifier N(0, std)")
    if dataset.num_classes != config["num_classes"]:
        raise SegconvertError(
            f"recipe has {config['num_classes']} classes but dataset {dataset.name} has {dataset.num_classes}; "
            "set model.num_classes", key="model.num_classes")  # fmt: skip
    mults = {k: (float(v[f"params.{k}.lr_mult"]), float(v[f"params.{k}.decay_mult"]))
             for k in ("backbone", "head_weight", "head_bias")}  # fmt: skip
    net = DeepLabRecipeNet(model, mults, ignore_label=int(v["loss.ignore_label"]))
    transform = transform_from_params(
        v["data.crop_size"], v["data.mean_value"], v["data.scale_factors"], v["data.mirror"], v["data.ignore_label"]
    )
    data = ImageSegData.from_dataset(dataset, transform, seed=seed, shuffle=bool(v["data.shuffle"]))
    stream = ImageSegStream(data, batch_size=int(v["data.batch_size"]), num_workers=int(v["run.num_workers"]))
    solver = parse_solver(resolved.solver_text(), None)
    trainer = Trainer(net, solver, stream, device=device, hooks=hooks or [])
    display = CaffeDisplay(int(v["solver.display"]), int(v["solver.average_loss"]))
    return RecipeRun(resolved, trainer, model, stream, display, config, notes, init_info)


def _snapshot_meta(run: RecipeRun, dataset: Any, iteration: int) -> dict[str, Any]:
    mean = [float(x) for x in run.resolved["data.mean_value"]]
    return {
        "arch": run.model.arch_name,
        "config": run.config,
        "num_classes": run.config["num_classes"],
        "input_size": run.config.get("input_size"),
        "preprocessing": {"channel_order": "BGR", "mean": mean, "std": None, "scale": 1.0},
        "source": {"format": "segconvert-train", "recipe": run.resolved.recipe.name, "init": run.init},
        "training": {
            "iteration": int(iteration),
            "recipe": run.resolved.to_json(),
            "dataset": {"name": dataset.name, "split": dataset.split},
            "notes": run.notes,
        },
    }


def write_snapshot(run: RecipeRun, dataset: Any, path: Path, iteration: int) -> Path:
    from segconvert.weights.store import save_converted

    return save_converted(path, run.model.state_dict(), _snapshot_meta(run, dataset, iteration))


def train_recipe(
    out_dir: str | Path,
    *,
    recipe: str | None = None,
    overrides: list[str] | None = None,
    dataset: str | None = None,
    root: str | Path | None = None,
    split: str = "train_aug",
    init: str | Path | None = None,
    resume: bool = False,
    device: str = "cpu",
    max_iter: int | None = None,
    val_every: int = 0,
    val_split: str = "val",
    val_protocol: str = "whole",
    val_limit: int | None = None,
    progress: bool = True,
    stream: TextIO | None = None,
) -> dict[str, Any]:
    """Train (or resume) a recipe run in ``out_dir``; returns a summary. Raises
    :class:`~segconvert.train.checkpoint.TrainingInterrupted` after writing the final checkpoint on a signal."""
    from segconvert.eval.datasets import get_dataset

    out = Path(out_dir)
    stream = stream or sys.stdout
    run_file = out / "run.json"
    if resume:
        if not run_file.is_file() or latest_checkpoint(out) is None:
            raise RunFolderError("no recipe run to resume (run.json and checkpoints/state_iter_<N>.pt)", file=out)
        recorded = json.loads(run_file.read_text())
        if overrides:
            raise RunFolderError("--set cannot change a resumed run; its values are in run.json", file=run_file)
        resolved = get_recipe(recorded["recipe"]["name"]).resolve(recorded["recipe"]["values"])
        resolved.overridden = {k: (d["preset"], d["used"]) for k, d in recorded["recipe"]["overridden"].items()}
        ds_info = recorded["dataset"]
        dataset, root, split = ds_info["name"], ds_info["root"], ds_info["split"]
        init = recorded["init"]["path"] if recorded.get("init") else None
    else:
        if recipe is None or dataset is None or root is None:
            raise SegconvertError("--recipe needs --dataset and --root")
        resolved = get_recipe(recipe).resolve(overrides or [])
    check_output_path(out, directory=True)
    if not resume and (run_file.exists() or latest_checkpoint(out) is not None):
        raise RunFolderError("already holds a training run: continue it with --resume, or choose another -o", file=out)
    ds = get_dataset(dataset, root, split)  # a wrong root fails here: nothing written yet
    if resolved.values.get("model.arch") == "pspnet":  # the PyTorch-form presets (torchrun-aware)
        from .psp_run import train_psp_recipe

        return train_psp_recipe(out, resolved, dataset=ds, root=root, split=split, init=init, resume=resume,
                                device=device, max_iter=max_iter, val_every=val_every, val_split=val_split,
                                val_protocol=val_protocol, val_limit=val_limit, progress=progress,
                                stream=stream)  # fmt: skip
    from .distributed import world_info

    if world_info()[2] > 1:
        raise SegconvertError(f"recipe {resolved.recipe.name} is a Caffe-exact one-process run (iter_size accumulates "
                              "its batch); run it without torchrun / --nproc")  # fmt: skip
    val_ds = val_proto = None
    if val_every:
        from segconvert.eval.protocols import get_protocol

        val_ds = get_dataset(dataset, root, val_split)
        val_proto = get_protocol(val_protocol, ds.name)
    run = build_recipe_run(resolved, ds, init=init, device=device)
    trainer, v = run.trainer, resolved.values
    start = 0
    state = None
    if resume:
        state = load_checkpoint(out)
        start = Checkpointer.restore(trainer, state)
        run.display.load_state_dict(state["extra"]["display"])
    stop_at = int(v["solver.max_iter"]) if max_iter is None else int(max_iter)
    record = {
        "recipe": resolved.to_json(),
        "model": {"arch": run.model.arch_name, "config": run.config},
        "init": run.init,
        "notes": run.notes,
        "dataset": {"name": ds.name, "root": str(Path(root).resolve()), "split": split, "images": len(ds)},
        "device": str(device),
    }
    if not resume:
        atomic_write(run_file, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1) + "\n"))
        for note in run.notes:
            print(f"note: {note}", file=stream)
    jsonl = JsonlLog(out / "train_log.jsonl", start=start)
    tb = TensorBoardLog(out / "tensorboard", start=start) if tensorboard_available() else None
    bar = ProgressBar(stop_at, start=start, device=device, enabled=progress)
    run.display.stream = stream
    checkpointer = Checkpointer(out, int(v["run.checkpoint_every"]), int(v["run.keep_checkpoints"]),
                                extra=lambda: {"display": run.display.state_dict()})  # fmt: skip
    trainer.hooks = [
        LogHook(run.display, bar, jsonl, tb),
        SnapshotHook(out, int(v["solver.snapshot"]), lambda p, it: write_snapshot(run, ds, p, it)),
    ]
    if val_every and val_ds is not None:
        from segconvert.eval.protocols import Preprocessing

        prep = Preprocessing.from_meta(_snapshot_meta(run, ds, 0)["preprocessing"])
        trainer.hooks.insert(1, ValidationHook(val_every, run.model, val_ds, val_proto, device=device,
                                               limit=val_limit, jsonl=jsonl, stream=stream,
                                               preprocessing=prep))  # fmt: skip
    records = run_checkpointed(trainer, checkpointer, stop_at)
    if checkpointer.last_saved != trainer.iteration:
        checkpointer.save(trainer, trainer.iteration)
    final = write_snapshot(run, ds, out / "final.safetensors", trainer.iteration)
    return {
        "iterations": trainer.iteration,
        "started_at": start,
        "final": str(final),
        "last_loss": records[-1].loss if records else None,
        "notes": run.notes,
        "recipe": resolved.to_json(),
    }

"""The recipe side of ``segconvert train``: ``--recipe NAME --dataset voc --root DIR -o OUT`` and ``--resume OUT``.

Options are added to the ``train`` command by :func:`recipe_options`; :func:`run_recipe_cli` runs them over
:func:`segconvert.train.recipe_run.train_recipe`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

RECIPE_KEYS = ("recipe", "overrides", "dataset", "root", "split", "resume", "val_every", "val_split", "val_protocol",
               "val_limit", "quiet", "nproc", "amp", "grad_checkpointing", "compile", "channels_last")  # fmt: skip
# PyTorch-form run flags (PSPNet presets) -> the preset's run.* values
TORCH_FLAGS = {"amp": "run.amp", "grad_checkpointing": "run.grad_checkpointing", "compile": "run.compile",
               "channels_last": "run.channels_last"}  # fmt: skip


def recipe_options(f: Any) -> Any:
    options = [
        click.option(
            "--recipe", default=None, help="A training preset (see `segconvert recipes`), instead of --solver."
        ),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe value."),
        click.option(
            "--dataset",
            type=click.Choice(["voc", "cityscapes", "ade20k"]),
            default=None,
            help="Training dataset (our loaders, released layout).",
        ),  # fmt: skip
        click.option("--root", type=click.Path(), default=None, help="Dataset root folder."),
        click.option("--split", default="train_aug", show_default=True, help="Training split."),
        click.option(
            "--resume",
            "resume",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help="Continue the run in folder OUT from its latest checkpoint (-o may be omitted).",
        ),
        click.option("--val-every", type=click.IntRange(min=0), default=0, help="Validate every N iterations."),
        click.option("--val-split", default="val", show_default=True, help="Validation split."),
        click.option("--val-protocol", default="whole", show_default=True, help="Validation protocol preset."),
        click.option("--val-limit", type=int, default=None, help="Validate on the first N images only."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
        click.option(
            "--nproc",
            type=click.IntRange(min=1),
            default=None,
            help="PSPNet presets: run under torchrun with N processes on this node (DDP; gloo on CPU, "
            "NCCL on CUDA). Multi-node: call torchrun yourself (see README).",
        ),
        click.option(
            "--amp",
            type=click.Choice(["none", "bf16", "fp16"]),
            default=None,
            help="PSPNet presets: mixed precision (fp16 with a GradScaler).",
        ),
        click.option(
            "--grad-checkpointing",
            is_flag=False,
            flag_value="light",
            default=None,
            metavar="[light|all|PARTS]",
            help="PSPNet presets: recompute activations in the backward: light (alone: stem, layer1-3), all "
            "(+ layer4, pyramid, head) or a comma list of parts.",
        ),
        click.option("--compile", is_flag=True, default=None, help="PSPNet presets: torch.compile the forward."),
        click.option("--channels-last", is_flag=True, default=None, help="PSPNet presets: channels_last tensors."),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


def wants_recipe(args: dict[str, Any], solver: Path | None) -> bool:
    """A recipe run, or ``--resume OUT`` of one (its ``run.json``); ``--resume`` of a ``--solver`` run is not."""
    resume = args.get("resume")
    return bool(args.get("recipe")) or (solver is None and resume is not None and (Path(resume) / "run.json").is_file())


def torch_flag_overrides(args: dict[str, Any]) -> list[str]:
    """``--amp bf16`` etc. as ``run.amp=bf16`` overrides (only the flags given)."""
    return [f"{key}={json.dumps(args[flag])}" for flag, key in TORCH_FLAGS.items() if args.get(flag)]


def given_torch_flags(args: dict[str, Any]) -> list[str]:
    """The PyTorch-form flags that were given (for the one-line refusal of a --solver run)."""
    names = {**{f: "--" + f.replace("_", "-") for f in TORCH_FLAGS}, "nproc": "--nproc"}
    return [names[f] for f in names if args.get(f)]


def relaunch_under_torchrun(nproc: int) -> int:
    """Run this same command line under ``torchrun --standalone --nproc-per-node N`` (without ``--nproc``)."""
    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            argv.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "segconvert", *argv]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.call(cmd, env=env)


def run_recipe_cli(
    output: Path | None, init: Path | None, max_iter: int | None, device: str, args: dict[str, Any]
) -> None:
    from segconvert.train.checkpoint import TrainingInterrupted
    from segconvert.train.recipe_run import train_recipe

    resume = args["resume"]
    if resume is not None and output is not None and Path(output).resolve() != Path(resume).resolve():
        raise click.UsageError("--resume OUT continues OUT; -o, if given, must be the same folder")
    output = resume if resume is not None else output
    if output is None:
        raise click.UsageError("-o/--output is required")

    if resume is None and (args["dataset"] is None or args["root"] is None):
        raise click.UsageError("--recipe needs --dataset and --root")
    flags = torch_flag_overrides(args)
    if flags and resume is not None:
        raise click.UsageError("--amp/--grad-checkpointing/--compile/--channels-last cannot change a resumed run "
                               "(its values are in run.json)")  # fmt: skip
    if args.get("nproc") and int(os.environ.get("WORLD_SIZE", "1")) == 1 and args["nproc"] > 1:
        sys.exit(relaunch_under_torchrun(args["nproc"]))
    try:
        summary = train_recipe(
            output,
            recipe=args["recipe"],
            overrides=[*args["overrides"], *flags],
            dataset=args["dataset"],
            root=args["root"],
            split=args["split"],
            init=init,
            resume=resume is not None,
            device=device,
            max_iter=max_iter,
            val_every=args["val_every"],
            val_split=args["val_split"],
            val_protocol=args["val_protocol"],
            val_limit=args["val_limit"],
            progress=not args["quiet"],
        )
    except TrainingInterrupted as exc:
        if int(os.environ.get("RANK", "0")) == 0:
            click.echo(f"error: {exc.one_line()}", err=True)
        sys.exit(exc.exit_code)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    over = summary["recipe"]["overridden"]
    if over:
        click.echo("overridden: " + ", ".join(f"{k}={v['used']!r} (preset {v['preset']!r})" for k, v in over.items()))
    click.echo(f"wrote {summary['final']}")
    click.echo(f"trained {summary['iterations']} iterations (recipe {summary['recipe']['name']}, from "
               f"{summary['started_at']})")  # fmt: skip

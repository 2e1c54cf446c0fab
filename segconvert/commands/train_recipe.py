"""The recipe side of ``segconvert train``: ``--recipe NAME --dataset voc --root DIR -o OUT`` and ``--resume OUT``.

Options are added to the ``train`` command by :func:`recipe_options`; :func:`run_recipe_cli` runs them over
:func:`segconvert.train.recipe_run.train_recipe`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

RECIPE_KEYS = ("recipe", "overrides", "dataset", "root", "split", "resume", "val_every", "val_split", "val_protocol",
               "val_limit", "quiet")  # fmt: skip


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
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


def wants_recipe(args: dict[str, Any], solver: Path | None) -> bool:
    """A recipe run, or ``--resume OUT`` of one (its ``run.json``); ``--resume`` of a ``--solver`` run is not."""
    resume = args.get("resume")
    return bool(args.get("recipe")) or (solver is None and resume is not None and (Path(resume) / "run.json").is_file())


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
    try:
        summary = train_recipe(
            output,
            recipe=args["recipe"],
            overrides=list(args["overrides"]),
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
        click.echo(f"error: {exc.one_line()}", err=True)
        sys.exit(exc.exit_code)
    over = summary["recipe"]["overridden"]
    if over:
        click.echo("overridden: " + ", ".join(f"{k}={v['used']!r} (preset {v['preset']!r})" for k, v in over.items()))
    click.echo(f"wrote {summary['final']}")
    click.echo(f"trained {summary['iterations']} iterations (recipe {summary['recipe']['name']}, from "
               f"{summary['started_at']})")  # fmt: skip

"""``segconvert train --solver solver.prototxt``: a Caffe training setup, run in PyTorch with Caffe's arithmetic.

Thin wrapper over :func:`segconvert.train.build.trainer_from_solver` and
:class:`segconvert.train.snapshots.SnapshotHook`; extra hooks (logging, checkpoints) are added to
``hooks`` in :func:`run_train`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from segconvert.commands._args import ExistingPath
from segconvert.commands.train_recipe import recipe_options, run_recipe_cli, wants_recipe


def run_train(
    solver: Path,
    output: Path,
    *,
    weights: Path | None = None,
    init: Path | None = None,
    max_iter: int | None = None,
    device: str = "cpu",
    form: str = "caffe",
    arch: str = "auto",
    hooks: list[Any] | None = None,
) -> Any:
    """Check the output folder, build the trainer (all input errors happen here, before anything is written),
    then train with snapshots in ``output``. Returns the trainer."""
    from segconvert.fileio import check_output_path
    from segconvert.train.build import trainer_from_solver
    from segconvert.train.snapshots import SnapshotHook

    check_output_path(output, directory=True)
    trainer = trainer_from_solver(
        solver, weights=weights, init=init, device=device, max_iter=max_iter, form=form, arch=arch
    )
    snapshots = SnapshotHook(output, int(trainer.solver.snapshot))
    trainer.hooks.extend([snapshots, *(hooks or [])])
    output.mkdir(parents=True, exist_ok=True)
    trainer.run()
    trainer.snapshots = snapshots
    return trainer


@click.command()
@click.option("--solver", "solver", default=None, type=ExistingPath(), help="Caffe solver.prototxt (or --recipe).")
@click.option("--weights", type=ExistingPath(), help="Initial weights: a Caffe .caffemodel (by layer name).")
@click.option("--init", type=ExistingPath(), help="Initial weights: a caffe2torch conversion of the net.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), help="Output folder (required).")
@click.option(
    "--max-iter", type=click.IntRange(min=0), help="Stop after N iterations (default: the solver's max_iter)."
)
@click.option("--device", default="cpu", show_default=True, help="torch device.")
@click.option(
    "--optimizer-form",
    type=click.Choice(["caffe", "pytorch"]),
    default="caffe",
    show_default=True,
    help="caffe: v = m*v + lr*g, w -= v (Caffe); pytorch: torch.optim.SGD's buf = m*buf + g, w -= lr*buf.",
)
@click.option(
    "--generic",
    is_flag=True,
    help="Train the generic one-module-per-layer net even when the named DeepLab-v2 model fits the prototxt.",
)
@recipe_options
def train(
    solver: Path,
    weights: Path | None,
    init: Path | None,
    output: Path,
    max_iter: int | None,
    device: str,
    optimizer_form: str,
    generic: bool,
    **recipe_args: Any,
) -> None:
    """Train a Caffe net from its solver.prototxt, step for step as Caffe's solver does; or a recipe
    (``--recipe NAME --dataset voc --root DIR``, see ``segconvert recipes``)."""
    if wants_recipe(recipe_args, solver):
        if weights is not None:
            raise click.UsageError("a recipe takes --init (converted weights), not --weights")
        run_recipe_cli(output, init, max_iter, device, recipe_args)
        return
    if solver is None:
        raise click.UsageError("give --solver solver.prototxt or --recipe NAME")
    if output is None:
        raise click.UsageError("-o/--output is required")
    if weights is not None and init is not None:
        raise click.UsageError("give --weights or --init, not both")
    trainer = run_train(
        solver,
        output,
        weights=weights,
        init=init,
        max_iter=max_iter,
        device=device,
        form=optimizer_form,
        arch="generic" if generic else "auto",
    )
    click.echo(f"model: {trainer.net.arch_path}")
    for path in trainer.snapshots.written:
        click.echo(f"wrote {path}")
    click.echo(
        f"trained {trainer.iteration} iterations ({trainer.solver.solver_type}, lr_policy "
        f"{trainer.solver.lr_policy}, iter_size {trainer.solver.iter_size})"
    )

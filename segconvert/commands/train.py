"""``segconvert train --solver solver.prototxt``: a Caffe training setup, run in PyTorch with Caffe's arithmetic.

Thin wrapper over :func:`segconvert.train.build.trainer_from_solver` and
:class:`segconvert.train.snapshots.SnapshotHook`; extra hooks (logging, checkpoints) are added to
``hooks`` in :func:`run_train`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

import click

from segconvert.commands._args import ExistingPath
from segconvert.commands.train_recipe import given_torch_flags, recipe_options, run_recipe_cli, wants_recipe


def run_train(
    solver: Path | None,
    output: Path,
    *,
    weights: Path | None = None,
    init: Path | None = None,
    max_iter: int | None = None,
    device: str = "cpu",
    form: str = "caffe",
    arch: str = "auto",
    hooks: list[Any] | None = None,
    checkpoint_every: int | None = None,
    keep_checkpoints: int = 2,
    resume: bool = False,
    stream: TextIO | None = None,
) -> Any:
    """Check the output folder, build the trainer (all input errors happen here, before anything is written),
    then train with snapshots, ``train_log.jsonl`` (the solver's test phase as ``"event": "test"`` records, its
    Caffe lines on ``stream``), ``tensorboard/`` events when TensorBoard is installed, and full-state checkpoints
    (``OUT/checkpoints``, every ``checkpoint_every`` iterations, default the solver's ``snapshot``; 0: only on
    SIGINT/SIGTERM) in ``output``.
    ``resume=True`` continues ``output`` from its latest checkpoint with the recorded solver, weights and options
    (``max_iter`` may extend it). Raises :class:`~segconvert.train.checkpoint.TrainingInterrupted` after writing
    the final checkpoint on a signal. Returns the trainer (``.started_at``: the iteration it began at)."""
    from segconvert.fileio import check_output_path
    from segconvert.train.build import trainer_from_solver
    from segconvert.train.callbacks import LogHook, run_checkpointed
    from segconvert.train.checkpoint import Checkpointer, latest_checkpoint, load_checkpoint
    from segconvert.train.log import JsonlLog, TensorBoardLog, tensorboard_available
    from segconvert.train.recipe_run import RunFolderError
    from segconvert.train.snapshots import SnapshotHook

    stream = stream or sys.stdout
    output = Path(output)
    state = None
    if resume:
        if latest_checkpoint(output) is None:
            raise RunFolderError("no training run to resume (checkpoints/state_iter_<N>.pt)", file=output)
        state = load_checkpoint(output)
        recorded = state["extra"].get("solver_run")
        if recorded is None:
            raise RunFolderError("the checkpoint is not from a --solver run", file=state["path"])
        solver = Path(recorded["solver"])
        weights = Path(recorded["weights"]) if recorded["weights"] else None
        init = Path(recorded["init"]) if recorded["init"] else None
        form, arch = recorded["form"], recorded["arch"]
        checkpoint_every, keep_checkpoints = recorded["checkpoint_every"], recorded["keep_checkpoints"]
        max_iter = recorded["max_iter"] if max_iter is None else max_iter
    elif solver is None:
        raise ValueError("solver is required unless resume=True")
    check_output_path(output, directory=True)
    if not resume and latest_checkpoint(output) is not None:
        raise RunFolderError("already holds a training run: continue it with --resume, or another -o", file=output)
    trainer = trainer_from_solver(
        solver, weights=weights, init=init, device=device, max_iter=max_iter, form=form, arch=arch
    )
    every = int(trainer.solver.snapshot) if checkpoint_every is None else int(checkpoint_every)
    record = {
        "solver": str(Path(solver).resolve()),
        "weights": str(Path(weights).resolve()) if weights else None,
        "init": str(Path(init).resolve()) if init else None,
        "form": form,
        "arch": arch,
        "checkpoint_every": every,
        "keep_checkpoints": int(keep_checkpoints),
        "max_iter": trainer.max_iter,
    }
    trainer.started_at = Checkpointer.restore(trainer, state) if state is not None else 0
    test = trainer.solver_test  # the solver's test phase (Caffe's TestAll), after the iteration's log record
    if test is not None:
        trainer.hooks.remove(test)
        if state is not None and "solver_test" in state["extra"]:
            test.load_state_dict(state["extra"]["solver_test"])
    snapshots = SnapshotHook(output, int(trainer.solver.snapshot))
    output.mkdir(parents=True, exist_ok=True)
    jsonl = JsonlLog(output / "train_log.jsonl", start=trainer.started_at)
    tb = TensorBoardLog(output / "tensorboard", start=trainer.started_at) if tensorboard_available() else None
    log = LogHook(jsonl=jsonl, tensorboard=tb)
    if test is not None:
        test.jsonl, test.stream, test.tensorboard = jsonl, stream, tb
    trainer.hooks.extend([log, *([test] if test is not None else []), snapshots, *(hooks or [])])

    def extra() -> dict[str, Any]:
        return {"solver_run": record, **({"solver_test": test.state_dict()} if test is not None else {})}

    checkpointer = Checkpointer(output, every, int(keep_checkpoints), extra=extra)
    trainer.snapshots = snapshots
    run_checkpointed(trainer, checkpointer)
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
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=0),
    default=None,
    help="--solver runs: full-state checkpoint every K iterations (default: the solver's snapshot; 0: signals only).",
)
@click.option("--keep-checkpoints", type=click.IntRange(min=1), default=2, show_default=True,
              help="--solver runs: keep the last N checkpoints.")  # fmt: skip
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
    checkpoint_every: int | None,
    keep_checkpoints: int,
    **recipe_args: Any,
) -> None:
    """Train a Caffe net from its solver.prototxt, step for step as Caffe's solver does; or a recipe
    (``--recipe NAME --dataset voc --root DIR``, see ``segconvert recipes``)."""
    if wants_recipe(recipe_args, solver):
        if weights is not None:
            raise click.UsageError("a recipe takes --init (converted weights), not --weights")
        run_recipe_cli(output, init, max_iter, device, recipe_args)
        return
    from segconvert.train.checkpoint import TrainingInterrupted

    flags = given_torch_flags(recipe_args)
    if flags:
        raise click.UsageError(f"{', '.join(flags)} apply to the PSPNet presets (--recipe pspnet-...); a --solver run "
                               "keeps Caffe's float32 arithmetic in one process")  # fmt: skip
    resume = recipe_args["resume"]
    if resume is not None:
        if solver is not None or weights is not None or init is not None:
            raise click.UsageError("--resume OUT continues the recorded run: give no --solver/--weights/--init")
        if output is not None and Path(output).resolve() != Path(resume).resolve():
            raise click.UsageError("--resume OUT continues OUT; -o, if given, must be the same folder")
        output = resume
    elif solver is None:
        raise click.UsageError("give --solver solver.prototxt or --recipe NAME")
    if output is None:
        raise click.UsageError("-o/--output is required")
    if weights is not None and init is not None:
        raise click.UsageError("give --weights or --init, not both")
    try:
        trainer = run_train(
            solver,
            output,
            weights=weights,
            init=init,
            max_iter=max_iter,
            device=device,
            form=optimizer_form,
            arch="generic" if generic else "auto",
            checkpoint_every=checkpoint_every,
            keep_checkpoints=keep_checkpoints,
            resume=resume is not None,
        )
    except TrainingInterrupted as exc:
        click.echo(f"error: {exc.one_line()}", err=True)
        sys.exit(exc.exit_code)
    click.echo(f"model: {trainer.net.arch_path}")
    for path in trainer.snapshots.written:
        click.echo(f"wrote {path}")
    click.echo(
        f"trained {trainer.iteration} iterations ({trainer.solver.solver_type}, lr_policy "
        f"{trainer.solver.lr_policy}, iter_size {trainer.solver.iter_size})"
    )

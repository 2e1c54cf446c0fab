"""The ``segconvert`` command line. Commands live in ``segconvert/commands/`` and are imported lazily."""

from __future__ import annotations

import importlib
import os
import sys

import click

from segconvert import __version__
from segconvert.errors import SegconvertError

# command name -> "module:attribute" (a click.Command). Imported only when used, so start-up stays fast.
COMMANDS: dict[str, str] = {
    "inspect": "segconvert.commands.inspect_cmd:inspect",
    "caffe2torch": "segconvert.commands.convert_caffe:caffe2torch",
    "slim2torch": "segconvert.commands.convert_tf:slim2torch",
    "keras2torch": "segconvert.commands.convert_keras:keras2torch",
    "demo": "segconvert.commands.demo:demo",
    "eval": "segconvert.commands.evaluate:eval_cmd",
    "score": "segconvert.commands.evaluate:score",
    "zoo": "segconvert.commands.evaluate:zoo",
    "reproduce": "segconvert.commands.evaluate:reproduce",
    "verify": "segconvert.commands.verify:verify",
    "export-onnx": "segconvert.commands.export:export_onnx",
    # commands being built (issues 10-16); listed once their module exists
    "predict": "segconvert.commands.predict:predict",
    "benchmark": "segconvert.commands.benchmark:benchmark",
    "train": "segconvert.commands.train:train",
    "recipes": "segconvert.commands.recipes:recipes",
    "torch2torch": "segconvert.commands.convert_torch:torch2torch",
}


def _load_command(name: str) -> click.Command | None:
    target = COMMANDS.get(name)
    if target is None:
        return None
    module_name, attr = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:  # command not built yet
            return None
        raise
    return getattr(module, attr)


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(n for n in COMMANDS if _load_command(n) is not None)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return _load_command(cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="segconvert")
def cli() -> None:
    """Convert Caffe / TF-Slim / Keras segmentation checkpoints to exact PyTorch, and prove it."""


def main(argv: list[str] | None = None) -> None:
    """Console entry point: typed errors become one line on stderr and exit status 2."""
    try:
        code = cli.main(args=argv, prog_name="segconvert", standalone_mode=False)
        if isinstance(code, int) and code:  # click returns an Exit's code instead of exiting here
            sys.exit(code)
    except SegconvertError as exc:
        click.echo(f"error: {exc.one_line()}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


def run() -> None:
    """The ``segconvert`` executable: :func:`main`, then a fast exit.

    Everything is written and flushed by then; skipping the interpreter's teardown of torch's module graph
    saves about half a second per command. In-process callers (tests) use :func:`main`, which returns.
    """
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int | None):
            click.echo(str(exc.code), err=True)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed pipe (``| head``)
            pass
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()

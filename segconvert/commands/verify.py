"""``segconvert verify``: the command over :func:`segconvert.parity.verify.verify_conversion`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from segconvert.commands._args import ExistingPath
from segconvert.errors import SegconvertError
from segconvert.parity.verify import verify_conversion
from segconvert.parity.verify_common import DEFAULT_TOLERANCE, VerifyResult


def print_result(result: VerifyResult) -> None:
    click.echo(f"verify {result.weights.name}: {result.arch}; input: {result.input_desc}")
    for note in result.notes:
        click.echo(f"note: {note}")
    for r in result.runtimes:
        if r.used and r.report is not None:
            every = max(1, len(r.report.rows) // 25)
            click.echo(r.report.format(every=every))
    for line in result.summary():
        click.echo(line)


@click.command()
@click.argument("weights", type=ExistingPath())
@click.argument("sources", nargs=-1, type=click.Path(path_type=Path))
@click.option("--onnx", "onnx_file", type=ExistingPath())
@click.option("--image", type=ExistingPath(), help="Default: synthetic.")
@click.option("--input-size", nargs=2, type=int, default=None, metavar="H W", help="Default: the model's.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic input image.")
@click.option(
    "--tolerance",
    type=float,
    default=DEFAULT_TOLERANCE,
    show_default=True,
    help="Allowed max|d| / max|ref| at the last layer (1e-4 at the first, geometric in between).",
)
@click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="NAME:N,C,H,W",
    help="Shape of one net input (repeatable); default: the shapes recorded at conversion.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def verify(
    weights: Path,
    sources: tuple[Path, ...],
    onnx_file: Path | None,
    image: Path | None,
    input_size: tuple[int, int] | None,
    seed: int,
    tolerance: float,
    input_shapes: tuple[str, ...],
    as_json: bool,
) -> None:
    """Check converted WEIGHTS against independent runtimes running the SOURCES they came from.

    SOURCES: the Caffe .prototxt and .caffemodel, a TF checkpoint prefix, or a Keras .h5. Exits 1 when a
    compared layer is over tolerance or nothing could be compared.
    """
    from segconvert.formats.detect import describe_foreign_file

    foreign = describe_foreign_file(weights)
    if foreign is not None:  # a source model or an export given as WEIGHTS: say what it is
        raise SegconvertError(f"not a segconvert weights file but {foreign}", file=weights)
    for p in sources:
        if not p.exists() and not p.with_name(p.name + ".index").exists():
            raise SegconvertError("no such file", file=p)
    result = verify_conversion(
        weights,
        list(sources),
        onnx=onnx_file,
        image=image,
        input_size=input_size,
        seed=seed,
        tolerance=tolerance,
        input_shapes=input_shapes,
    )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=1, default=float))
    else:
        print_result(result)
    if not result.ok:
        raise click.exceptions.Exit(1)

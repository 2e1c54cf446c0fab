"""``segconvert export-onnx``: converted weights to an ONNX file, checked with onnxruntime against PyTorch.

The graph gets one input per net input (names and shapes from the weights' metadata, see
:mod:`segconvert.weights.inputs`); the file is written only after onnxruntime agrees with PyTorch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from segconvert.errors import SegconvertError

BIG_MODEL_BYTES = 64 * 2**20  # stage lines on stderr above this much weight data


def parse_dynamic_axes(texts: Sequence[str]) -> dict[str, list[int]]:
    """``NAME:0,2,3`` (repeatable) -> ``{NAME: [0, 2, 3]}``."""
    out: dict[str, list[int]] = {}
    for text in texts:
        name, _, axes = text.rpartition(":")
        try:
            values = [int(a) for a in axes.split(",") if a.strip()]
        except ValueError:
            values = []
        if not name or not values or min(values) < 0:
            raise click.BadParameter(f"expected NAME:AXES (data:0,2,3), got {text!r}", param_hint="--dynamic-axes")
        out[name] = values
    return out


def export_weights(
    weights: Path,
    output: Path,
    *,
    opset: int | None = None,
    dynamic: bool = False,
    dynamic_axes: dict[str, list[int]] | None = None,
    input_size: Sequence[int] | None = None,
    input_shapes: Sequence[str] = (),
    tolerance: float | None = None,
    progress: Any = None,
) -> Any:
    """The whole export-onnx job (a Python user can call it): returns the :class:`ExportResult` with its check."""
    from segconvert.export.onnx import DEFAULT_OPSET, DEFAULT_TOLERANCE, refuse_dynamic
    from segconvert.export.onnx import export_onnx as export
    from segconvert.fileio import check_output_path
    from segconvert.weights.inputs import apply_input_shapes, concrete_shape, input_specs, synthetic_inputs
    from segconvert.weights.store import load_model

    check_output_path(output)
    if input_size is not None and min(input_size) < 1:
        raise SegconvertError(f"--input-size must be positive, got {list(input_size)}")
    model = load_model(weights)
    meta = model.segconvert_meta
    if dynamic or dynamic_axes:  # the real refusal (sizes fixed in the model) before anything else
        refuse_dynamic(model, file=weights)
    specs = apply_input_shapes(input_specs(meta), list(input_shapes), source=str(weights))
    free = [s for s in specs if any(d < 0 for d in s.shape[2:])]
    if free and input_size is None and not (dynamic or dynamic_axes):
        raise SegconvertError(
            f"input {free[0].name!r} has no fixed size ({free[0].describe()}): pass --input-size H W "
            f"or --input-shape {free[0].name}:N,C,H,W",
            file=weights,
        )
    shapes = [concrete_shape(s, input_size) for s in specs]
    xs = synthetic_inputs(specs, size=input_size)
    return export(
        model,
        output,
        shapes,
        opset=opset or DEFAULT_OPSET,
        dynamic=dynamic_axes or dynamic,
        input_names=[s.name for s in specs],
        check_inputs=xs,
        tolerance=tolerance or DEFAULT_TOLERANCE,
        progress=progress,
    )


def _shape_text(result: Any) -> str:
    parts = []
    for name, shape in zip(result.input_names, result.input_shapes, strict=True):
        axes = result.dynamic_axes.get(name, {})
        dims = "x".join(axes[i] if i in axes else str(d) for i, d in enumerate(shape))
        parts.append(f"{name} {dims}")
    return ", ".join(parts)


@click.command("export-onnx")
@click.argument("weights", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="model.onnx")
@click.option("--opset", type=int, default=None, help="ONNX opset (default 17; 11 to 20).")
@click.option("--dynamic", is_flag=True, help="Symbolic batch and spatial axes of every input (refused where fixed).")
@click.option(
    "--dynamic-axes",
    multiple=True,
    metavar="NAME:AXES",
    help="Symbolic axes of one input, e.g. data:0,2,3 (repeatable; instead of --dynamic).",
)
@click.option("--input-size", nargs=2, type=int, default=None, metavar="H W", help="Default: the model's input size.")
@click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="NAME:N,C,H,W",
    help="Shape of one net input (repeatable), e.g. data:1,1,28,28; default: the shapes recorded at conversion.",
)
@click.option("--tolerance", type=float, default=None, help="Allowed max|onnx - torch| / max|torch| (default 1e-4).")
def export_onnx(
    weights: Path,
    output: Path,
    opset: int | None,
    dynamic: bool,
    dynamic_axes: tuple[str, ...],
    input_size: tuple[int, int] | None,
    input_shapes: tuple[str, ...],
    tolerance: float | None,
) -> None:
    """Export converted WEIGHTS to ONNX, run the graph in onnxruntime and compare with PyTorch, then write it.

    One ONNX input per net input, with the net's input names. Exits 1 (and writes nothing) when the
    difference is over tolerance.
    """
    axes = parse_dynamic_axes(dynamic_axes) if dynamic_axes else None
    big = weights.stat().st_size > BIG_MODEL_BYTES
    progress = (lambda msg: click.echo(f"export-onnx: {msg}", err=True)) if big else None
    result = export_weights(
        weights,
        output,
        opset=opset,
        dynamic=dynamic,
        dynamic_axes=axes,
        input_size=input_size,
        input_shapes=input_shapes,
        tolerance=tolerance,
        progress=progress,
    )
    ops = result.ops
    check = result.check
    if not result.written:
        click.echo(check.format())
        click.echo(f"not written: {output} (onnxruntime differs from PyTorch; nothing was left on disk)")
        raise click.exceptions.Exit(1)
    click.echo(
        f"wrote {result.path} ({result.file_bytes / 1e6:.1f} MB, opset {result.opset}, input "
        f"{_shape_text(result)}) in {result.seconds:.1f}s"
    )
    if result.data_path is not None:
        click.echo(f"weights stored as external data in {result.data_path.name} (over protobuf's 2 GiB limit)")
    resize = ops.get("Resize", 0)
    pools = ", ".join(f"{v} {k}" for k, v in result.pooling.items()) or "none"
    click.echo(
        f"graph: {sum(ops.values())} nodes, {ops.get('Conv', 0)} Conv, {resize} Resize (align_corners), "
        f"{ops.get('MaxPool', 0)} MaxPool + {ops.get('AveragePool', 0)} AveragePool (Caffe pooling plans: {pools})"
    )
    for shape in result.checked_sizes:
        click.echo(f"dynamic graph also checked at input {'x'.join(map(str, shape))}")
    click.echo(check.format())

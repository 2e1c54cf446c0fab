"""``segconvert export-onnx``: converted weights to an ONNX file, checked with onnxruntime against PyTorch."""

from __future__ import annotations

from pathlib import Path

import click

from segconvert.errors import SegconvertError


@click.command("export-onnx")
@click.argument("weights", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="model.onnx")
@click.option("--opset", type=int, default=None, help="ONNX opset (default 17; 11 to 20).")
@click.option("--dynamic", is_flag=True, help="Symbolic batch, height and width (refused where sizes are fixed).")
@click.option("--input-size", nargs=2, type=int, default=None, metavar="H W", help="Default: the model's input size.")
@click.option("--tolerance", type=float, default=None, help="Allowed max|onnx - torch| / max|torch| (default 1e-4).")
def export_onnx(
    weights: Path,
    output: Path,
    opset: int | None,
    dynamic: bool,
    input_size: tuple[int, int] | None,
    tolerance: float | None,
) -> None:
    """Export converted WEIGHTS to ONNX, then run the file in onnxruntime and compare with PyTorch.

    Exits 1 when the difference is over tolerance (the file is kept so it can be inspected).
    """
    from segconvert.export.onnx import DEFAULT_OPSET, DEFAULT_TOLERANCE, check_onnx
    from segconvert.export.onnx import export_onnx as export
    from segconvert.parity.inputs import default_input_size, model_input
    from segconvert.weights.store import load_model

    model = load_model(weights)
    meta = model.segconvert_meta
    size = list(input_size) if input_size else default_input_size(meta)
    if not size:
        raise SegconvertError("the model has no fixed input size: pass --input-size H W", file=weights)
    if min(size) < 1:
        raise SegconvertError(f"--input-size must be positive, got {size}")
    result = export(model, output, (1, 3, size[0], size[1]), opset=opset or DEFAULT_OPSET, dynamic=dynamic)
    ops = result.ops
    click.echo(
        f"wrote {result.path} ({result.file_bytes / 1e6:.1f} MB, opset {result.opset}, input "
        f"{'N x 3 x H x W (dynamic)' if dynamic else 'x'.join(map(str, result.input_shape))}) "
        f"in {result.seconds:.1f}s"
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
    x = model_input(meta, size=size)
    check = check_onnx(result.path, model, x, tolerance=tolerance or DEFAULT_TOLERANCE)
    click.echo(check.format())
    if not check.ok:
        raise click.exceptions.Exit(1)

"""``segconvert inspect``: list the layers (or tensors) of model files, with shapes and parameter counts."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from segconvert.commands._args import ExistingPath
from segconvert.errors import SegconvertError
from segconvert.formats.detect import detect_kind


def _fmt_shape(shape: Any) -> str:
    if shape is None:
        return "?"
    return "x".join(str(d) for d in shape) if len(shape) else "scalar"


def caffe_rows(prototxt: Path | None, caffemodel: Path | None) -> dict[str, Any]:
    from segconvert.graph import load_net

    net = load_net(prototxt, caffemodel)
    warnings = [
        f"layer '{name}' reads blob '{blob}', which no input or earlier layer produces: the shapes computed from it "
        "are unknown ('?')"
        for name, blob in unproduced_bottoms(net)
    ]
    rows = []
    for layer in net.layers:
        rows.append(
            {
                "layer": layer.name,
                "type": layer.type,
                "bottoms": layer.bottoms,
                "tops": layer.tops,
                "output_shapes": [list(s) if s is not None else None for s in layer.output_shapes],
                "param_shapes": [list(b.shape) for b in layer.blobs]
                if layer.blobs
                else [list(s) for s in (layer.expected_blob_shapes or [])],
                "params": layer.num_params if layer.blobs else sum(_count(s) for s in layer.expected_blob_shapes or []),
                "shared_from": layer.shared_from,
            }
        )
    return {
        "kind": "caffe",
        "name": net.name,
        "format": net.format,
        "prototxt": str(prototxt) if prototxt else None,
        "caffemodel": str(caffemodel) if caffemodel else None,
        "inputs": {k: list(v) if v is not None else None for k, v in net.inputs.items()},
        "layers": rows,
        "total_layers": len(rows),
        "total_params": sum(r["params"] for r in rows if not r["shared_from"]),
        "weights_loaded": caffemodel is not None,
        "warnings": net.warnings + warnings,
        "errors": len(warnings),
    }


def _count(shape: Any) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def tensor_rows(path: Path, kind: str) -> dict[str, Any]:
    if kind == "tf_checkpoint":
        from segconvert.formats.tf_checkpoint import describe
    else:
        from segconvert.formats.keras_h5 import describe
    entries = describe(path)
    return {
        "kind": kind,
        "file": str(path),
        "tensors": entries,
        "total_tensors": len(entries),
        "total_params": sum(_count(e["shape"]) for e in entries),
        "total_bytes": sum(int(e["nbytes"]) for e in entries),
    }


def _stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def _console() -> Any:
    """rich's console at the terminal's width (``COLUMNS`` first, as rich reads it); 200 columns into a pipe or a
    file (a parent process's readline may have exported a COLUMNS that is not this output's)."""
    from rich.console import Console

    return Console() if _stdout_is_terminal() else Console(width=200)


def unproduced_bottoms(net: Any) -> list[tuple[str, str]]:
    """``(layer, blob)`` for every bottom that no net input or earlier layer produced."""
    available = set(net.inputs)
    found = []
    for layer in net.layers:
        found += [(layer.name, b) for b in layer.bottoms if b not in available]
        available.update(layer.tops)
    return found


def _print_caffe(info: dict[str, Any]) -> None:
    from rich.table import Table

    title = f"{info['name'] or 'net'} ({info['format']})"
    table = Table(title=title, show_lines=False)
    for col, kw in (
        ("layer", {}),
        ("type", {}),
        ("bottoms -> tops", {}),
        ("output shape", {}),
        ("parameter shapes", {}),
        ("params", {"justify": "right"}),
    ):
        table.add_column(col, **kw)
    for r in info["layers"]:
        params = "shared: " + r["shared_from"] if r["shared_from"] else (f"{r['params']:,}" if r["params"] else "")
        table.add_row(
            r["layer"],
            r["type"],
            f"{', '.join(r['bottoms'])} -> {', '.join(r['tops'])}",
            ", ".join(_fmt_shape(s) for s in r["output_shapes"]),
            ", ".join(_fmt_shape(s) for s in r["param_shapes"]),
            params,
        )
    console = _console()
    console.print(table)
    weights = "" if info["weights_loaded"] else " (expected; no caffemodel given)"
    console.print(f"total: {info['total_layers']} layers, {info['total_params']:,} parameters{weights}")
    for w in info["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {w}", soft_wrap=True)


def _print_tensors(info: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"{info['file']} ({info['kind']})")
    for col in ("name", "shape", "dtype", "bytes"):
        table.add_column(col, justify="right" if col == "bytes" else "left")
    for e in info["tensors"]:
        table.add_row(e["name"], _fmt_shape(e["shape"]), str(e["dtype"]), f"{int(e['nbytes']):,}")
    console = _console()
    console.print(table)
    console.print(
        f"total: {info['total_tensors']} tensors, {info['total_params']:,} values, {info['total_bytes']:,} bytes"
    )


@click.command()
@click.argument("files", nargs=-1, required=True, type=ExistingPath(tf_prefix=True))
@click.option("--json", "as_json", is_flag=True, help="Print the same information as JSON.")
def inspect(files: tuple[Path, ...], as_json: bool) -> None:
    """List the layers of a prototxt and/or caffemodel (or the tensors of a TF checkpoint / Keras file)."""
    if len(files) > 2:
        raise click.UsageError("give at most two files (a prototxt and a caffemodel)")
    kinds = [detect_kind(f) for f in files]
    if any(k in ("tf_checkpoint", "keras_h5") for k in kinds):
        if len(files) != 1:
            raise click.UsageError("TF checkpoints and Keras files are inspected one at a time")
        info = tensor_rows(files[0], kinds[0])
        printer = _print_tensors
    else:
        protos = [f for f, k in zip(files, kinds, strict=True) if k == "prototxt"]
        models = [f for f, k in zip(files, kinds, strict=True) if k == "caffemodel"]
        if len(protos) > 1 or len(models) > 1:
            raise SegconvertError(f"expected one prototxt and one caffemodel, got {len(protos)} and {len(models)}")
        info = caffe_rows(protos[0] if protos else None, models[0] if models else None)
        printer = _print_caffe
    if as_json:
        json.dump(info, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        printer(info)
    if info.get("errors"):  # the net cannot run as written (a bottom nothing produces)
        raise click.exceptions.Exit(1)

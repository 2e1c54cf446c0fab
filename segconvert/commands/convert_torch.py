"""``segconvert torch2torch``: the PyTorch ports' checkpoints (isht7, kazuto1011, semseg) to our models."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click


def convert_torch_files(
    checkpoint: str | Path, output: Path, *, layout: str | None = None, fmt: str | None = None
) -> dict[str, Any]:
    """The whole torch2torch job (output path checked first, atomic write); returns a report dict."""
    from segconvert.converters.torch_ports import convert_torch_checkpoint, load_torch_checkpoint
    from segconvert.weights.provenance import source_entry
    from segconvert.weights.store import check_weights_output, save_converted

    check_weights_output(output, fmt)  # weights + sidecar writable: one line, exit 2, before the checkpoint is read
    t0 = time.perf_counter()
    ckpt = load_torch_checkpoint(checkpoint)
    conv = convert_torch_checkpoint(ckpt, layout=layout)
    t1 = time.perf_counter()
    meta: dict[str, Any] = {
        "arch": conv.arch,
        "config": conv.config,
        "num_classes": conv.config.get("num_classes"),
        "input_size": conv.config.get("input_size"),
        "dataset": conv.dataset,
        "preprocessing": conv.preprocessing,
        "protocol": conv.protocol,
        "source": {"format": "pytorch", "layout": conv.layout, "files": [source_entry(checkpoint)]},
        "conversion": {
            "tensors": len(conv.state_dict),
            "source_tensors": len(set(conv.sources.values())),
            "dropped": [list(d) for d in conv.dropped],
            "notes": conv.notes,
        },
    }
    save_converted(output, conv.state_dict, meta, fmt=fmt, progress=True)
    t2 = time.perf_counter()
    return {
        "conversion": conv,
        "meta": meta,
        "output": output,
        "timings": {"read_and_map": t1 - t0, "write": t2 - t1, "total": t2 - t0},
    }


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--layout",
    type=click.Choice(["auto", "isht7", "kazuto1011", "semseg"]),
    default="auto",
    show_default=True,
    help="isht7/pytorch-deeplab-resnet or kazuto1011/deeplab-pytorch (DeepLab-v2 MSC), hszhao/semseg (PSPNet).",
)
@click.option("--format", "fmt", type=click.Choice(["safetensors", "pth"]), help="Default: from the suffix.")
def torch2torch(checkpoint: Path, output: Path, layout: str, fmt: str | None) -> None:
    """Convert a PyTorch port's CHECKPOINT (.pth, read with weights_only=True) into a segconvert model."""
    report = convert_torch_files(checkpoint, output, layout=layout, fmt=fmt)
    conv, meta = report["conversion"], report["meta"]
    click.echo(f"layout: {conv.layout}  architecture: {conv.arch}  num_classes={conv.config['num_classes']}")
    click.echo(
        f"mapped {meta['conversion']['source_tensors']} source tensors onto {len(conv.state_dict)} tensors "
        f"({sum(v.numel() for v in conv.state_dict.values()):,} values)"
    )
    if conv.dropped:
        shown = conv.dropped[:6]
        more = f" and {len(conv.dropped) - len(shown)} more" if len(conv.dropped) > len(shown) else ""
        click.echo("dropped (not used by the model): " + ", ".join(f"{n} ({why})" for n, why in shown) + more)
    for note in conv.notes:
        click.echo(f"note: {note}")
    from segconvert.commands.convert_caffe import describe_preprocessing

    pre = meta["preprocessing"]
    click.echo(f"expects: {describe_preprocessing(pre)}")
    click.echo(f"wrote {report['output']} (+ .json sidecar) in {report['timings']['total']:.2f}s")

"""``segconvert demo``: the whole path on an embedded default, no downloads.

Writes a PSPNet50-ADE20K-layout prototxt and caffemodel (the released layer names and wiring, widths
divided by ``--width-divisor``, random weights in the real blob layout), inspects it, converts it, runs
the converted model, and prints the conversion report with timings. Where OpenCV dnn is installed (a
dependency of segconvert) it runs the same caffemodel there, an independent Caffe runtime, and prints the
per-layer parity report; the command exits 1 if a layer is over tolerance.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np


@click.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="Keep the files here.")
@click.option("--depth", type=click.Choice(["50", "101"]), default="50", show_default=True)
@click.option("--width-divisor", type=int, default=8, show_default=True, help="1 = full released width.")
def demo(out_dir: Path | None, depth: str, width_divisor: int) -> None:
    """Write a PSPNet caffemodel in the released layout, inspect it, convert it and run it."""
    import torch

    from segconvert.commands.convert_caffe import convert_caffe_files, print_report
    from segconvert.fileio import check_output_path
    from segconvert.formats.caffemodel_writer import random_weights_for, write_caffemodel
    from segconvert.formats.prototxt_builder import pspnet_prototxt
    from segconvert.graph import load_net

    if out_dir is not None:
        check_output_path(out_dir, directory=True)  # before any work: one line, exit 2, nothing created
    with tempfile.TemporaryDirectory() as tmp:
        work = out_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        d = int(depth)
        classes, stride_in = (150, "1x1") if d == 50 else (21, "3x3")
        proto = work / f"pspnet{d}_473.prototxt"
        proto.write_text(pspnet_prototxt(d, classes, 473, width_divisor=width_divisor, stride_in=stride_in))
        t0 = time.perf_counter()
        model_path = write_caffemodel(work / f"pspnet{d}_473.caffemodel", random_weights_for(load_net(proto), seed=0))
        click.echo(
            f"1. wrote {model_path.name} ({model_path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.2f}s"
        )
        net = load_net(proto, model_path)
        last = net.layers[-1]
        click.echo(
            f"2. inspect: {len(net.layers)} layers, {net.num_params:,} parameters, "
            f"{last.name} -> {'x'.join(map(str, last.output_shapes[0]))}"
        )
        click.echo("3. caffe2torch:")
        report = convert_caffe_files(proto, model_path, work / f"pspnet{d}_473.safetensors", build_model=True)
        print_report(report, temporary=out_dir is None)
        model = report["model"].eval()
        from segconvert.parity.inputs import model_input

        x = model_input(report["meta"])  # a seeded synthetic image with the model's preprocessing
        t1 = time.perf_counter()
        with torch.no_grad():
            y = model(torch.from_numpy(x))
        click.echo(
            f"4. ran the converted model: {tuple(x.shape)} -> {tuple(y.shape)} in {time.perf_counter() - t1:.2f}s"
        )
        if not _reference_parity(proto, model_path, model, report["meta"], x):
            raise click.exceptions.Exit(1)


def _reference_parity(proto: Path, caffemodel: Path, model: Any, meta: dict[str, Any], x: np.ndarray) -> bool:
    """Where an independent Caffe runtime is installed, compare every mapped layer with it; False if over."""
    from segconvert.parity.verify_caffe import verify_caffe

    t0 = time.perf_counter()
    runtimes, unchecked, notes = verify_caffe(model, meta, proto, caffemodel, x)
    used = [r for r in runtimes if r.used]
    if not used:
        reasons = "; ".join(f"{r.name}: {r.reason}" for r in runtimes)
        installs = sorted({r.install for r in runtimes if r.install})
        hint = f"; to check it: pip install {' '.join(installs)}" if installs else ""
        click.echo(f"5. parity: no reference runtime available ({reasons}){hint}")
        return True
    click.echo(
        f"5. parity against {', '.join(f'{r.label()} ({r.what})' for r in used)} in {time.perf_counter() - t0:.2f}s:"
    )
    for note in notes:
        click.echo(f"note: {note}")
    for r in used:
        click.echo(r.report.format(every=20))
    if unchecked:
        click.echo(f"layers no runtime could check: {', '.join(n for n, _ in unchecked)}")
    return all(r.report.ok for r in used)

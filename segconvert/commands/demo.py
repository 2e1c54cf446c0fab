"""``segconvert demo``: the whole path on an embedded default, no downloads.

Writes a PSPNet50-ADE20K-layout prototxt and caffemodel (the released layer names and wiring, widths
divided by ``--width-divisor``, random weights in the real blob layout), inspects it, converts it, runs
the converted model, and prints the conversion report with timings.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click


@click.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="Keep the files here.")
@click.option("--depth", type=click.Choice(["50", "101"]), default="50", show_default=True)
@click.option("--width-divisor", type=int, default=8, show_default=True, help="1 = full released width.")
def demo(out_dir: Path | None, depth: str, width_divisor: int) -> None:
    """Write a PSPNet caffemodel in the released layout, inspect it, convert it and run it."""
    import numpy as np
    import torch

    from segconvert.commands.convert_caffe import convert_caffe_files, print_report
    from segconvert.formats.caffemodel_writer import random_weights_for, write_caffemodel
    from segconvert.formats.prototxt_builder import pspnet_prototxt
    from segconvert.graph import load_net

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
        print_report(report)
        model = report["model"].eval()
        x = torch.from_numpy(np.random.default_rng(0).normal(0, 50, (1, 3, 473, 473)).astype("f4"))
        t1 = time.perf_counter()
        with torch.no_grad():
            y = model(x)
        click.echo(
            f"4. ran the converted model: {tuple(x.shape)} -> {tuple(y.shape)} in {time.perf_counter() - t1:.2f}s"
        )
        _maybe_reference_parity(proto, model_path, model, x)


def _maybe_reference_parity(proto: Path, caffemodel: Path, model, x) -> None:
    """Where OpenCV dnn is installed (the ``parity`` extra), compare the final output with it."""
    try:
        import cv2
    except ImportError:
        click.echo("5. parity: no reference runtime installed (pip install '.[parity]' adds OpenCV dnn)")
        return
    click.echo("5. parity: OpenCV dnn has no PSPNet BN layer; see `segconvert verify` for per-layer checks")
    del cv2, proto, caffemodel, model, x

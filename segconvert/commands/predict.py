"""``segconvert predict``: label, colour and overlay PNGs of images from converted weights."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from segconvert.commands._args import (
    AMP_OPTION,
    CHECK_OPTION,
    COMPILE_OPTION,
    DATASET_CHOICE,
    ProtocolChoice,
    check_amp,
    preprocessing_options,
    resolve_preprocessing,
    throughput_options,
)
from segconvert.errors import SegconvertError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


def _images(paths: tuple[str, ...]) -> list[tuple[Path, str]]:
    """(image file, output stem): files as given, folders' images (recursively, sorted) with relative stems."""
    out: list[tuple[Path, str]] = []
    for text in paths:
        p = Path(text)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise click.UsageError(f"{p}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            out += [(f, str(f.relative_to(p).with_suffix(""))) for f in found]
        else:
            out.append((p, p.stem))
    stems = [s for _, s in out]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise click.UsageError(f"several inputs would write the same output name(s): {', '.join(dup[:5])}")
    return out


@click.command("predict")
@click.argument("weights", type=click.Path(exists=True, dir_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Output folder.")
@click.option("--protocol", type=ProtocolChoice(), default=None, help="Protocol preset (default: the weights').")
@click.option("--dataset", type=DATASET_CHOICE, default=None, help="Preset sizes, palette and class names.")
@click.option("--scales", default=None, help="'ss', 'ms' or comma-separated scales (default: the preset's).")
@click.option("--flip/--no-flip", default=None, help="Flip augmentation (default: the preset's).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, mps.")
@click.option("--batch-size", type=int, default=None, help="Crops per forward (default: 8 on CUDA, 1 on CPU).")
@throughput_options
@AMP_OPTION
@COMPILE_OPTION
@CHECK_OPTION
@click.option("--no-fuse", is_flag=True, help="Run the plain converted module (no BatchNorm folding).")
@click.option("--no-onednn", is_flag=True, help="Fused, but convolutions through eager F.conv2d (no oneDNN pass).")
@preprocessing_options
@click.option("--show", is_flag=True, help="Print the classes present with their pixel shares.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def predict(
    weights: str,
    images: tuple[str, ...],
    out_dir: str,
    protocol: str | None,
    dataset: str | None,
    scales: str | None,
    flip: bool | None,
    device: str,
    batch_size: int | None,
    batch_memory: float | None,
    workers: int | None,
    channels_last: bool | None,
    amp: str | bool | None,
    compile_: bool,
    check: bool,
    no_fuse: bool,
    no_onednn: bool,
    mean: str | None,
    std: str | None,
    bgr: bool | None,
    show: bool,
    quiet: bool,
) -> None:
    """Predict IMAGES (files or folders) with converted WEIGHTS: labels/, color/ and overlay/ PNGs in --out.

    Preprocessing (channel order, mean / std) comes from the weights' metadata; images run at their own
    resolution with the weights' protocol (padding to the input size, sliding windows when larger).
    --mean/--std/--bgr/--rgb replace the recorded normalisation (and give one to nets that record none,
    such as generic Caffe conversions). --workers decodes the images in worker processes and --batch-memory
    batches sliding-window crops to a budget, as in eval; the outputs are the same with any of their values.
    """
    from tqdm import tqdm

    from segconvert.eval.loader import default_workers
    from segconvert.eval.protocols import parse_scales
    from segconvert.eval.runner import resolve_device
    from segconvert.fileio import check_output_path
    from segconvert.inference import predict as lib
    from segconvert.weights.store import load_model, read_metadata

    if batch_size and batch_memory:
        raise SegconvertError("give --batch-size (crops per forward) or --batch-memory (a budget), not both")
    check_output_path(out_dir, directory=True)
    files = _images(images)
    meta = read_metadata(weights)
    lib.image_input_check(meta, source=weights)
    try:
        dev = resolve_device(device)
        scale_values = parse_scales(scales)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    check_amp(amp, dev)
    recorded = lib.recorded_preprocessing(meta)
    prep = None  # the weights' own (segconvert.inference.predict)
    if recorded is None or mean is not None or std is not None or bgr is not None:
        prep = resolve_preprocessing(weights, meta, mean, std, bgr, recorded=recorded or {})
    on_cpu_amp = bool(amp) and dev.type == "cpu"  # bf16 autocast: the oneDNN modules would fall back anyway
    model = load_model(weights, device=str(dev))
    if not no_fuse or compile_:  # the inference form (or the plain module, compiled); --no-fuse: as loaded
        from segconvert.inference.prepare import prepare_model

        onednn = False if no_onednn or on_cpu_amp else None
        check = check and not no_fuse
        model = prepare_model(model, fuse=not no_fuse, check=check, onednn=onednn, compile=compile_, source=weights)
    palette = lib.palette_for(meta, dataset)
    names = lib.class_names_for(meta, dataset)
    bar = tqdm(total=len(files), desc="predict", unit="img", file=sys.stderr, disable=quiet or len(files) < 2)
    results = lib.predict_files(
        model,
        [path for path, _ in files],
        protocol=protocol,
        dataset=dataset,
        scales=scale_values,
        flip=flip,
        preprocessing=prep,
        device=dev,
        amp=amp,
        batch_size=batch_size,
        batch_memory=batch_memory,
        workers=default_workers(dev) if workers is None else workers,
        channels_last=channels_last,
    )
    try:
        while True:
            try:
                result = next(results, None)
            except lib.ProtocolOptionsError as exc:
                raise click.UsageError(str(exc)) from exc
            if result is None:
                break
            i, image, pred = result
            path, stem = files[i]
            lib.write_prediction(pred, image, out_dir, stem, palette)
            if show:
                rows: list[Any] = lib.legend(pred, names)
                click.echo(f"{path}: {pred.shape[1]}x{pred.shape[0]}, {len(rows)} classes")
                for cid, name, share in rows:
                    click.echo(f"  {cid:>4}  {name:<24} {100 * share:6.2f}%")
            bar.update(1)
    finally:
        results.close()
        bar.close()
    click.echo(f"wrote {len(files)} prediction(s) to {out_dir} (labels/, color/, overlay/)", err=True)


__all__ = ["predict"]

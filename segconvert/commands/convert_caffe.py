"""``segconvert caffe2torch``: a released DeepLab-v2 / PSPNet prototxt + caffemodel to PyTorch weights."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from segconvert.errors import ConversionError


def convert_caffe_files(
    prototxt: Path,
    caffemodel: Path,
    output: Path,
    *,
    arch: str | None = None,
    fmt: str | None = None,
    parity_case: Path | None = None,
    progress: bool = False,
    build_model: bool = False,
) -> dict[str, Any]:
    """The whole caffe2torch job; returns a report dict (also used by ``segconvert demo``)."""
    from segconvert.graph import load_net  # torch-free
    from segconvert.weights.provenance import hash_sources_in_background

    t0 = time.perf_counter()
    source_hashes = hash_sources_in_background([prototxt, caffemodel])  # a thread: overlaps reading and imports
    net = load_net(prototxt, caffemodel)
    timings: dict[str, float] = {"read": time.perf_counter() - t0}
    t1 = time.perf_counter()
    from segconvert.converters import convert_caffe_net  # torch is imported here
    from segconvert.reference_models import create_model
    from segconvert.weights.store import save_converted

    timings["import"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    conv = convert_caffe_net(net, arch=arch)  # checks every blob used once, every target filled once
    timings["map"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    sources = source_hashes()
    timings["hash_wait"] = time.perf_counter() - t2
    meta: dict[str, Any] = {
        "arch": conv.arch,
        "config": conv.config,
        "num_classes": conv.config.get("num_classes"),
        "input_size": conv.config.get("input_size"),
        "preprocessing": caffe_preprocessing(conv.arch),
        "source": {"format": "caffe", "net_name": net.name, "files": sources},
        "conversion": {
            "skipped_layers": [list(s) for s in conv.skipped_layers],
            "shared_copies": len(conv.shared_copies),
            "source_blobs": sum(len(layer.blobs) for layer in net.layers if not layer.shared_from),
            "tensors": len(conv.state_dict),
        },
    }
    report: dict[str, Any] = {"meta": meta, "net": net, "conversion": conv}
    if parity_case is not None or build_model:
        model = create_model(conv.arch, **conv.config)
        missing, unexpected = model.load_state_dict(conv.state_dict, strict=False)
        if missing or unexpected:
            raise ConversionError(
                f"converted tensors do not fit {conv.arch}: "
                f"missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}",
                file=caffemodel,
            )
        report["model"] = model
    if parity_case is not None:
        from segconvert.parity.caffe import caffe_parity, load_dump

        t3 = time.perf_counter()
        inp, outputs, fixture_meta = load_dump(parity_case)
        parity, _ = caffe_parity(model, conv.tap_map, inp, outputs, fixture_meta, source=str(parity_case))
        timings["parity"] = time.perf_counter() - t3
        meta["parity"] = {
            "reference": str(parity_case),
            "ok": parity.ok,
            "compared_layers": len(parity.rows),
            "max_rel": parity.max_rel(),
        }
        report["parity"] = parity
    t4 = time.perf_counter()
    save_converted(output, conv.state_dict, meta, fmt=fmt, progress=progress)
    timings["write"] = time.perf_counter() - t4
    timings["total"] = time.perf_counter() - t0
    report["timings"] = timings
    report["output"] = output
    return report


# Mean pixels (B, G, R) of the released Caffe models; inputs are 0-255 BGR with no std (SPEC 3.3, 4.3).
_CAFFE_MEANS = {"deeplab": [104.008, 116.669, 122.675], "pspnet": [103.939, 116.779, 123.68]}


def caffe_preprocessing(arch: str) -> dict[str, Any]:
    mean = _CAFFE_MEANS["deeplab" if arch.startswith("deeplab") else "pspnet"]
    return {"channel_order": "BGR", "mean": mean, "std": None, "scale": 1.0}


def print_report(report: dict[str, Any]) -> None:
    conv, meta, t = report["conversion"], report["meta"], report["timings"]
    click.echo(f"architecture: {conv.arch}  {_short_config(conv.config)}")
    click.echo(
        f"mapped {meta['conversion']['source_blobs']} source blobs onto {len(conv.state_dict)} tensors "
        f"({sum(v.numel() for v in conv.state_dict.values()):,} values); "
        f"{len(conv.shared_copies)} MSC copy layers recognised as shared weights"
    )
    if conv.skipped_layers:
        skipped = ", ".join(f"{name} ({ltype})" for name, ltype, _ in conv.skipped_layers)
        click.echo(f"skipped (not part of inference): {skipped}")
    for note in getattr(conv, "notes", []) or []:
        click.echo(f"note: {note}")
    pre = meta["preprocessing"]
    click.echo(f"expects: {pre['channel_order']} input, 0-255, minus mean {pre['mean']}, std {pre['std']}")
    if "parity" in report:
        click.echo(report["parity"].format(every=20))
    click.echo(
        f"wrote {report['output']} (+ .json sidecar) in {t['total']:.2f}s "
        f"(read {t['read']:.2f}s, import torch {t['import']:.2f}s, map {t['map']:.2f}s, "
        f"waiting for sha256 {t['hash_wait']:.2f}s, write {t['write']:.2f}s)"
    )


def _short_config(config: dict[str, Any]) -> str:
    keys = ("depth", "num_classes", "input_size", "stem", "stride_in", "msc", "bn_eps")
    return " ".join(f"{k}={config[k]}" for k in keys if k in config)


@click.command()
@click.argument("prototxt", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("caffemodel", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--arch", help="Architecture name (default: detected from the prototxt).")
@click.option("--format", "fmt", type=click.Choice(["safetensors", "pth"]), help="Default: from the suffix.")
@click.option(
    "--parity",
    "parity_case",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A Caffe dump folder (input.npy, outputs.npz, meta.json) to check the converted model against.",
)
def caffe2torch(
    prototxt: Path, caffemodel: Path, output: Path, arch: str | None, fmt: str | None, parity_case: Path | None
) -> None:
    """Convert a DeepLab-v2 / PSPNet PROTOTXT + CAFFEMODEL to PyTorch weights with provenance metadata."""
    report = convert_caffe_files(
        prototxt, caffemodel, output, arch=arch, fmt=fmt, parity_case=parity_case, progress=True
    )
    print_report(report)
    if "parity" in report and not report["parity"].ok:
        raise click.exceptions.Exit(1)

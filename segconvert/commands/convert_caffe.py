"""``segconvert caffe2torch``: a Caffe prototxt + caffemodel to PyTorch weights.

DeepLab-v2 / PSPNet nets map onto the named reference models; any other net of supported layers (or any net
with ``--generic``) goes through the generic path, which can also write the model's readable source.
"""

from __future__ import annotations

import keyword
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
    generic: bool = False,
    emit_source: Path | None = None,
    class_name: str | None = None,
) -> dict[str, Any]:
    """The whole caffe2torch job; returns a report dict (also used by ``segconvert demo``)."""
    from segconvert.graph import load_net  # torch-free
    from segconvert.weights.provenance import hash_sources_in_background

    t0 = time.perf_counter()
    source_hashes = hash_sources_in_background([prototxt, caffemodel])  # a thread: overlaps reading and imports
    net = load_net(prototxt, caffemodel)
    timings: dict[str, float] = {"read": time.perf_counter() - t0}
    t1 = time.perf_counter()
    from segconvert.converters.caffe_auto import convert_caffe_auto
    from segconvert.fileio import atomic_write
    from segconvert.reference_models import create_model  # torch is imported here
    from segconvert.weights.store import save_converted

    timings["import"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    why_generic = "requested" if generic else "--emit-source" if emit_source is not None else None
    if why_generic and arch is not None:
        raise click.UsageError("--arch names a reference model; --generic / --emit-source convert layer by layer")
    conv, path = convert_caffe_auto(net, arch, why_generic)  # every blob used once, every target filled once
    timings["map"] = time.perf_counter() - t1
    source_text = None
    if emit_source is not None:
        if emit_source.resolve() == output.resolve():
            raise click.UsageError("--emit-source must differ from the weights file (-o)")
        if class_name is not None and (not class_name.isidentifier() or keyword.iskeyword(class_name)):
            raise click.BadParameter(f"{class_name!r} is not a Python identifier", param_hint="--class-name")
        from segconvert.converters.caffe_codegen import emit_source as emit

        class_name = class_name or (net.name if net.name.isidentifier() and not keyword.iskeyword(net.name) else "Net")
        source_text = emit(conv.config, class_name, source=prototxt.name, weights_file=output.name)
    t2 = time.perf_counter()
    sources = source_hashes()
    timings["hash_wait"] = time.perf_counter() - t2
    meta: dict[str, Any] = {
        "arch": conv.arch,
        "config": conv.config,
        "num_classes": conv.config.get("num_classes"),
        "input_size": conv.config.get("input_size"),
        "preprocessing": None if conv.arch == "caffe_generic" else caffe_preprocessing(conv.arch),
        "source": {"format": "caffe", "net_name": net.name, "files": sources},
        "conversion": {
            "skipped_layers": [list(s) for s in conv.skipped_layers],
            "shared_copies": len(conv.shared_copies),
            "source_blobs": sum(len(layer.blobs) for layer in net.layers if not layer.shared_from),
            "tensors": len(conv.state_dict),
        },
    }
    report: dict[str, Any] = {"meta": meta, "net": net, "conversion": conv, "path": path}
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
        inp, outputs, fixture_meta = load_dump(parity_case, net)
        parity, _ = caffe_parity(model, conv.tap_map, inp, outputs, fixture_meta, source=str(parity_case))
        timings["parity"] = time.perf_counter() - t3
        meta["parity"] = parity.summary(str(parity_case))
        report["parity"] = parity
    t4 = time.perf_counter()
    save_converted(output, conv.state_dict, meta, fmt=fmt, progress=progress)
    if emit_source is not None:
        atomic_write(emit_source, lambda tmp: Path(tmp).write_text(source_text))
        report["source"] = (emit_source, class_name)
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
    if "path" in report:
        click.echo(f"path: {report['path']}")
    click.echo(
        f"mapped {meta['conversion']['source_blobs']} source blobs onto {len(conv.state_dict)} tensors "
        f"({sum(v.numel() for v in conv.state_dict.values()):,} values); "
        f"{len(conv.shared_copies)} {'MSC copy ' if conv.arch != 'caffe_generic' else ''}layers recognised "
        "as shared weights"
    )
    if conv.skipped_layers:
        skipped = ", ".join(f"{name} ({ltype})" for name, ltype, _ in conv.skipped_layers)
        click.echo(f"skipped (not part of inference): {skipped}")
    for note in getattr(conv, "notes", []) or []:
        click.echo(f"note: {note}")
    pre = meta["preprocessing"]
    if pre is None:
        click.echo("expects: the net's own preprocessing (Caffe files do not record it; the metadata leaves it empty)")
    else:
        click.echo(f"expects: {pre['channel_order']} input, 0-255, minus mean {pre['mean']}, std {pre['std']}")
    if "parity" in report:
        click.echo(report["parity"].format(every=20))
    click.echo(
        f"wrote {report['output']} (+ .json sidecar) in {t['total']:.2f}s "
        f"(read {t['read']:.2f}s, import torch {t['import']:.2f}s, map {t['map']:.2f}s, "
        f"waiting for sha256 {t['hash_wait']:.2f}s, write {t['write']:.2f}s)"
    )
    if "source" in report:
        path, class_name = report["source"]
        click.echo(f"wrote {path}: class {class_name}, loads {report['output'].name} with load_state_dict")


def _short_config(config: dict[str, Any]) -> str:
    if "layers" in config:  # caffe_generic
        ins = ", ".join(f"{i['name']} {i['shape']}" for i in config["inputs"])
        return f"net {config['net_name']!r}: {len(config['layers'])} layers, inputs {ins}, outputs {config['outputs']}"
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
@click.option(
    "--generic",
    is_flag=True,
    help="Convert layer by layer (one module per Caffe layer) even if the net is a DeepLab-v2 / PSPNet. "
    "Nets that are not are converted this way anyway.",
)
@click.option(
    "--emit-source",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the model's readable PyTorch source here (imports only torch); implies --generic.",
)
@click.option("--class-name", help="Class name in the --emit-source file (default: the net's name, else Net).")
def caffe2torch(
    prototxt: Path,
    caffemodel: Path,
    output: Path,
    arch: str | None,
    fmt: str | None,
    parity_case: Path | None,
    generic: bool,
    emit_source: Path | None,
    class_name: str | None,
) -> None:
    """Convert a Caffe PROTOTXT + CAFFEMODEL to PyTorch weights with provenance metadata.

    DeepLab-v2 / PSPNet nets become the named reference models; other nets of supported layers are converted
    generically (see --generic).
    """
    report = convert_caffe_files(
        prototxt,
        caffemodel,
        output,
        arch=arch,
        fmt=fmt,
        parity_case=parity_case,
        progress=True,
        generic=generic,
        emit_source=emit_source,
        class_name=class_name,
    )
    print_report(report)
    if "parity" in report and not report["parity"].ok:
        raise click.exceptions.Exit(1)

"""``segconvert caffe2torch``: a Caffe prototxt + caffemodel to PyTorch weights.

DeepLab-v2 / PSPNet nets map onto the named reference models; any other net of supported layers (or any net
with ``--generic``) goes through the generic path, which can also write the model's readable source.
"""

from __future__ import annotations

import keyword
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from segconvert.commands._args import ExistingPath
from segconvert.errors import ConversionError, SegconvertError


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
    keep_on_failure: bool = False,
    input_shapes: Sequence[str] = (),
    until: str | None = None,
) -> dict[str, Any]:
    """The whole caffe2torch job; returns a report dict (also used by ``segconvert demo``).

    Every output path is checked before the work. With ``parity_case``, nothing is written when a layer is
    over tolerance (``report["written"]`` is False) unless ``keep_on_failure``.
    """
    from segconvert.fileio import check_output_path
    from segconvert.graph import load_net  # torch-free
    from segconvert.weights.provenance import hash_sources_in_background
    from segconvert.weights.store import check_weights_output

    arch, generic = resolve_caffe_arch(arch, generic)
    check_argument_order(prototxt, caffemodel)
    check_weights_output(output, fmt)  # weights + sidecar: one line, exit 2, before anything is read
    if emit_source is not None:
        check_output_path(emit_source)
    t0 = time.perf_counter()
    source_hashes = hash_sources_in_background([prototxt, caffemodel])  # a thread: overlaps reading and imports
    from segconvert.weights.inputs import check_declared, parse_input_shape

    given = dict(parse_input_shape(t) for t in input_shapes)  # --input-shape NAME:N,C,H,W: one line if malformed
    net = load_net(prototxt, caffemodel)
    redeclared = {n: v for n, v in given.items() if n in net.inputs and min(v) > 0 and net.inputs[n] != tuple(v)}
    if redeclared:  # shapes of declared inputs: the shape inference runs with them
        check_declared(net.inputs, redeclared, source=prototxt.name)
        net = load_net(prototxt, caffemodel, input_shapes=redeclared)
    if until is not None:  # --until LAYER: the net up to that layer, generic path (e.g. SSD's raw heads)
        from segconvert.converters.caffe_generic import cut_net

        net = cut_net(net, until)
    timings: dict[str, float] = {"read": time.perf_counter() - t0}
    t1 = time.perf_counter()
    from segconvert.converters.caffe_auto import convert_caffe_auto
    from segconvert.fileio import atomic_write
    from segconvert.reference_models import create_model  # torch is imported here
    from segconvert.weights.store import save_converted

    timings["import"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    why_generic = "requested" if generic else "--emit-source" if emit_source is not None else None
    why_generic = why_generic or (f"--until {until}" if until is not None else None)
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
        "inputs": caffe_inputs_meta(conv, net.inputs, given, prototxt),
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
        meta["parity"] = parity.summary(parity_case.name)  # the folder's name: no local absolute path
        report["parity"] = parity
    t4 = time.perf_counter()
    report["written"] = "parity" not in report or report["parity"].ok or keep_on_failure
    if report["written"]:
        save_converted(output, conv.state_dict, meta, fmt=fmt, progress=progress)
        if emit_source is not None:
            atomic_write(emit_source, lambda tmp: Path(tmp).write_text(source_text))
            report["source"] = (emit_source, class_name)
    timings["write"] = time.perf_counter() - t4
    timings["total"] = time.perf_counter() - t0
    report["timings"] = timings
    report["output"] = output
    return report


CAFFE_ARCHS = ("deeplabv2_resnet101", "pspnet50", "pspnet101", "caffe_generic")


def caffe_arch_names() -> list[str]:
    """What ``--arch`` takes: the Caffe reference models, ``caffe_generic``, and the presets built on them."""
    from segconvert.reference_models.registry import PRESETS  # torch is imported here only when --arch is given

    return [*CAFFE_ARCHS, *sorted(n for n, p in PRESETS.items() if p["arch"] in CAFFE_ARCHS)]


def resolve_caffe_arch(arch: str | None, generic: bool) -> tuple[str | None, bool]:
    """``(architecture, generic)`` for an ``--arch`` value: a preset names its architecture; ``caffe_generic``
    is the generic path; an unknown name is refused listing the known ones."""
    if arch is None:
        return None, generic
    if arch == "caffe_generic":
        return None, True
    if arch in CAFFE_ARCHS:
        return arch, generic
    from segconvert.reference_models.registry import PRESETS

    if arch in PRESETS and PRESETS[arch]["arch"] in CAFFE_ARCHS:
        return PRESETS[arch]["arch"], generic
    raise ConversionError(f"unknown --arch {arch!r}; caffe2torch knows: {', '.join(caffe_arch_names())}")


def check_argument_order(prototxt: Path, caffemodel: Path) -> None:
    """Refuse swapped arguments (a caffemodel first, a prototxt second) before reading either file."""
    from segconvert.formats.detect import detect_kind

    first, second = detect_kind(prototxt), detect_kind(caffemodel)
    if first == "caffemodel" and second == "prototxt":
        raise SegconvertError(
            f"the arguments look swapped: {prototxt} is a binary caffemodel and {caffemodel} a text prototxt; "
            "give the PROTOTXT first, then the CAFFEMODEL"
        )
    for path, kind, want in ((prototxt, first, "prototxt"), (caffemodel, second, "caffemodel")):
        if kind in ("tf_checkpoint", "keras_h5"):
            other = "slim2torch" if kind == "tf_checkpoint" else "keras2torch"
            raise ConversionError(f"expected a Caffe {want}, got a {kind.replace('_', ' ')}: use {other}", file=path)


def caffe_inputs_meta(conv: Any, declared: dict, given: dict, prototxt: Path) -> list[dict[str, Any]]:
    """``meta["inputs"]``: the net's declared inputs, in order, with ``--input-shape`` values applied."""
    from segconvert.weights.inputs import apply_input_shapes, caffe_input_specs, specs_to_meta

    pre = None if conv.arch == "caffe_generic" else caffe_preprocessing(conv.arch)
    specs = caffe_input_specs(conv.config, declared, pre)
    return specs_to_meta(apply_input_shapes(specs, given, source=prototxt.name))


# Mean pixels (B, G, R) of the released Caffe models; inputs are 0-255 BGR with no std (SPEC 3.3, 4.3).
_CAFFE_MEANS = {"deeplab": [104.008, 116.669, 122.675], "pspnet": [103.939, 116.779, 123.68]}


def caffe_preprocessing(arch: str) -> dict[str, Any]:
    mean = _CAFFE_MEANS["deeplab" if arch.startswith("deeplab") else "pspnet"]
    return {"channel_order": "BGR", "mean": mean, "std": None, "scale": 1.0}


def print_report(report: dict[str, Any], *, temporary: bool = False) -> None:
    """The conversion report; ``temporary``: the output lives in a folder deleted afterwards (name only)."""
    conv, meta, t = report["conversion"], report["meta"], report["timings"]
    click.echo(f"architecture: {conv.arch}  {_short_config(conv.config)}")
    if "path" in report:
        click.echo(f"path: {report['path']}")
    shared = len(conv.shared_copies)
    click.echo(
        f"mapped {meta['conversion']['source_blobs']} source blobs onto {len(conv.state_dict)} tensors "
        f"({sum(v.numel() for v in conv.state_dict.values()):,} values)"
        + (
            f"; {shared} {'MSC copy ' if conv.arch != 'caffe_generic' else ''}layers recognised as shared weights"
            if shared
            else ""
        )
    )
    if conv.skipped_layers:
        skipped = ", ".join(f"{name} ({ltype})" for name, ltype, _ in conv.skipped_layers)
        click.echo(f"skipped (not part of inference): {skipped}")
    for note in getattr(conv, "notes", []) or []:
        click.echo(f"note: {note}")
    for note in getattr(report.get("net"), "warnings", []) or []:  # reading notes: NVCaffe FP16, unknown fields
        click.echo(f"note: {note}")
    pre = meta["preprocessing"]
    if pre is None:
        click.echo("expects: the net's own preprocessing (Caffe files do not record it; the metadata leaves it empty)")
    else:
        click.echo(f"expects: {describe_preprocessing(pre)}")
    if "parity" in report:
        click.echo(report["parity"].format(every=20))
    if not report.get("written", True):
        click.echo(f"wrote nothing: the parity check failed (--keep-on-failure writes {report['output']} anyway)")
        return
    where = f"{report['output'].name} (in a temporary folder; --out DIR keeps it)" if temporary else report["output"]
    click.echo(
        f"wrote {where} (+ .json sidecar) in {t['total']:.2f}s "
        f"(read {t['read']:.2f}s, import torch {t['import']:.2f}s, map {t['map']:.2f}s, "
        f"waiting for sha256 {t['hash_wait']:.2f}s, write {t['write']:.2f}s)"
    )
    if "source" in report:
        path, class_name = report["source"]
        click.echo(f"wrote {path}: class {class_name}, loads {report['output'].name} with load_state_dict")


def describe_preprocessing(pre: dict[str, Any]) -> str:
    """``BGR input, 0-255, minus mean [...]`` (+ ``, divided by std [...]`` only where there is a std)."""
    text = f"{pre['channel_order']} input, 0-255, minus mean {pre['mean']}"
    return text + (f", divided by std {pre['std']}" if pre.get("std") is not None else "")


def _short_config(config: dict[str, Any]) -> str:
    if "layers" in config:  # caffe_generic
        ins = ", ".join(f"{i['name']} {i['shape']}" for i in config["inputs"])
        return f"net {config['net_name']!r}: {len(config['layers'])} layers, inputs {ins}, outputs {config['outputs']}"
    keys = ("depth", "num_classes", "input_size", "stem", "stride_in", "msc", "bn_eps")
    return " ".join(f"{k}={config[k]}" for k in keys if k in config)


@click.command()
@click.argument("prototxt", type=ExistingPath())
@click.argument("caffemodel", type=ExistingPath())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--arch",
    help=f"Default: detected from the prototxt. One of: {', '.join(CAFFE_ARCHS)} (= --generic), or a preset "
    "(pspnet50_ade20k, pspnet101_voc2012, pspnet101_cityscapes, deeplabv2_resnet101_voc12). A name that does not "
    "fit the net is refused, saying what the net is.",
)
@click.option("--format", "fmt", type=click.Choice(["safetensors", "pth"]), help="Default: from the suffix.")
@click.option(
    "--parity",
    "parity_case",
    type=ExistingPath(folder=True),
    help="A Caffe dump folder (input.npy, outputs.npz, meta.json) to check the converted model against; "
    "nothing is written when a layer is over tolerance (see --keep-on-failure).",
)
@click.option("--keep-on-failure", is_flag=True, help="With --parity: write the output even when the check fails.")
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
@click.option(
    "--until",
    metavar="LAYER",
    help="Convert the net up to and including LAYER only (generic path), e.g. an SSD net's raw heads "
    "without its DetectionOutput.",
)
@click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="NAME:N,C,H,W",
    help="Shape of a net input (repeatable; -1 = free axis), recorded for export-onnx / verify / predict.",
)
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
    keep_on_failure: bool,
    input_shapes: tuple[str, ...],
    until: str | None,
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
        keep_on_failure=keep_on_failure,
        input_shapes=input_shapes,
        until=until,
    )
    print_report(report)
    if "parity" in report and not report["parity"].ok:
        raise click.exceptions.Exit(1)

"""``segconvert keras2torch``: a Keras file (full-model ``.h5``, ``.keras``, weights + ``--config``) to PyTorch.

PSPNet-Keras weights keep their named mapping onto ``pspnet50/101`` when detected; anything else, or any file
with ``--generic``, goes through the generic graph path (:mod:`segconvert.converters.keras_generic`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from segconvert.commands._args import ExistingPath
from segconvert.commands.convert_tf import _FORMAT, _KEEP, _OUTPUT, _PARITY, _finish, print_report
from segconvert.errors import ConversionError

__all__ = ["keras2torch", "convert_keras_files", "convert_keras_generic_files", "check_keras_outputs"]


def _is_pspnet_keras(path: Path) -> bool:
    from segconvert.formats.keras_h5 import open_keras_weights

    try:
        return "conv1_1_3x3_s2" in open_keras_weights(path).layers
    except Exception:  # noqa: BLE001 - not readable as PSPNet-Keras weights: the generic path reports why
        return False


def convert_keras_files(
    h5: Path,
    output: Path,
    *,
    arch: str = "auto",
    fmt: str | None = None,
    input_size: int = 473,
    bn_eps: float | None = None,
    parity_case: Path | None = None,
    keep_on_failure: bool = False,
) -> dict[str, Any]:
    """The PSPNet-Keras named mapping (keras2torch's original job); returns a report dict."""
    from segconvert.converters.keras import convert_keras_pspnet
    from segconvert.fileio import check_output_path
    from segconvert.formats.keras_h5 import open_keras_weights

    check_output_path(output)
    t0 = time.perf_counter()
    kw = open_keras_weights(h5)
    conv = convert_keras_pspnet(kw, arch=arch, input_size=input_size, bn_eps=bn_eps)
    t1 = time.perf_counter()
    source = {"format": kw.format, "keras_version": kw.keras_version}
    report = _finish(conv, output, fmt, [h5], parity_case, source, keep_on_failure)
    report["timings"].update(read_and_map=t1 - t0, total=time.perf_counter() - t0)
    return report


def check_keras_outputs(output: Path, fmt: str | None = None, emit_source: Path | None = None) -> None:
    """Before any reading or conversion: the weights, their ``<out>.json`` sidecar and ``--emit-source`` can be
    written (raises :class:`~segconvert.errors.OutputPathError` naming the path)."""
    from segconvert.fileio import check_output_path
    from segconvert.weights.store import check_weights_output

    check_weights_output(output, fmt)
    if emit_source is not None:
        check_output_path(emit_source)


def _preprocessing(mean, std, scale, channel_order) -> dict[str, Any]:
    return {
        "channel_order": channel_order,
        "mean": list(mean) if mean else None,
        "std": list(std) if std else None,
        "scale": scale,
    }


def convert_keras_generic_files(
    path: Path,
    output: Path,
    *,
    config: Path | None = None,
    fmt: str | None = None,
    nhwc: bool = False,
    emit_source: Path | None = None,
    preprocessing: dict[str, Any] | None = None,
    parity_case: Path | None = None,
    keep_on_failure: bool = False,
) -> dict[str, Any]:
    """The generic keras2torch job: check outputs, convert, optional parity, write weights (+ source)."""
    from segconvert.converters.keras_codegen import emit_source as emit
    from segconvert.converters.keras_generic import convert_keras_generic
    from segconvert.fileio import atomic_write
    from segconvert.weights.provenance import source_entry
    from segconvert.weights.store import save_converted

    check_keras_outputs(output, fmt, emit_source)
    t0 = time.perf_counter()
    conv = convert_keras_generic(path, config, nhwc=nhwc)
    conv.preprocessing = preprocessing or _preprocessing(None, None, 1.0, "RGB")
    t1 = time.perf_counter()
    text = emit(conv.config, source=path.name, weights_file=output.name) if emit_source is not None else None
    files = [path] + ([config] if config else [])
    meta: dict[str, Any] = {
        "arch": conv.arch,
        "config": conv.config,
        "num_classes": None,
        "input_size": None,
        "preprocessing": conv.preprocessing,
        "inputs": conv.inputs,
        "source": {
            "format": conv.source_format,
            "keras_version": conv.keras_version,
            "files": [source_entry(p) for p in files],
        },  # fmt: skip
        "keras": {"layers": conv.layers, "nhwc": nhwc},
        "conversion": {
            "tensors": len(conv.state_dict),
            "source_tensors": len(conv.sources),
            "dropped": [],
            "notes": conv.notes,
        },  # fmt: skip
    }
    report: dict[str, Any] = {"conversion": conv, "timings": {}}
    if parity_case is not None:
        report["parity"] = fixture_parity(conv, parity_case)
        meta["parity"] = report["parity"].summary(parity_case.name)
    report["written"] = "parity" not in report or report["parity"].ok or keep_on_failure
    if report["written"]:
        save_converted(output, conv.state_dict, meta, fmt=fmt, progress=True)
        if text is not None:
            atomic_write(emit_source, lambda tmp: Path(tmp).write_text(text))
    report["timings"].update(read_and_map=t1 - t0, total=time.perf_counter() - t0)
    report.update(meta=meta, output=output, source_file=emit_source)
    return report


def fixture_parity(conv, case: Path):
    """Compare every layer with a folder's ``input.npy`` (Keras layout) and ``outputs.npz`` (by Keras layer name)."""
    import numpy as np
    import torch

    from segconvert.parity.report import ParityReport, compare

    model = conv.build_model()
    x = torch.from_numpy(np.load(case / "input.npy").astype(np.float32))
    if model.config["inputs"][0]["layout"] == "nc" and x.dim() >= 3:
        x = x.movedim(-1, 1)
    mine = model.layer_outputs(x)
    refs = dict(np.load(case / "outputs.npz"))
    rep = ParityReport(source=case.name)
    classes = {s["name"]: s["class"] for s in model.config["steps"]}
    for key, ref in refs.items():
        if key in mine:
            rep.rows.append(compare(key, classes.get(key, "?"), mine[key].numpy(), ref, tolerance=1e-4))
        else:
            rep.uncompared.append(key)
    if not rep.rows:
        raise ConversionError("no output in outputs.npz matches a layer of the model", file=case)
    return rep


def print_generic_report(report: dict[str, Any]) -> None:
    conv, t = report["conversion"], report["timings"]
    cfg = conv.config
    ins = ", ".join(f"{i['name'].split(':')[0]} {i['shape']} ({i['layout']})" for i in cfg["inputs"])
    click.echo(f"architecture: keras_generic  model {cfg['model_name']!r}: {len(conv.layers)} layers, inputs {ins}")
    click.echo(
        f"converted {len(conv.state_dict)} tensors ({sum(v.numel() for v in conv.state_dict.values()):,} values)"
    )
    for note in conv.notes:
        click.echo(f"note: {note}")
    if "parity" in report:
        click.echo(report["parity"].format(every=10))
    if not report.get("written", True):
        click.echo(f"wrote nothing: the parity check failed (--keep-on-failure writes {report['output']} anyway)")
        return
    extra = f" and {report['source_file']}" if report.get("source_file") else ""
    click.echo(f"wrote {report['output']} (+ .json sidecar){extra} in {t['total']:.2f}s")


def _floats(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise click.BadParameter(f"expected numbers separated by commas, got {text!r}") from None


@click.command()
@click.argument("h5", type=ExistingPath())
@_OUTPUT
@click.option(
    "--arch",
    type=click.Choice(["auto", "pspnet50", "pspnet101", "generic"]),
    default="auto",
    show_default=True,
    help="auto: PSPNet-Keras named mapping when detected, else the generic graph path; generic = --generic.",
)
@_FORMAT
@click.option(
    "--input-size", type=int, default=473, show_default=True, help="PSPNet-Keras: the crop its PPM kernels fit."
)
@click.option("--bn-eps", type=float, help="PSPNet-Keras BatchNorm epsilon (default: the model config's, else 1e-5).")
@click.option("--config", "config", type=ExistingPath(), help="Architecture JSON (model.to_json()) for a weights file.")
@click.option("--generic", is_flag=True, help="Use the generic graph path even for PSPNet-Keras weights.")
@click.option("--emit-source", type=click.Path(dir_okay=False, path_type=Path), help="Also write readable net.py.")
@click.option("--nhwc", is_flag=True, help="Generic path: take and return the Keras layout (NHWC) at the boundary.")
@click.option("--mean", help="Preprocessing to record: per-channel mean, e.g. '123.68,116.78,103.94'.")
@click.option("--std", help="Preprocessing to record: per-channel std.")
@click.option("--scale", type=float, default=1.0, show_default=True, help="Preprocessing to record: input scale.")
@click.option("--channel-order", type=click.Choice(["RGB", "BGR"]), default="RGB", show_default=True)
@_PARITY
@_KEEP
def keras2torch(
    h5: Path,
    output: Path,
    arch: str,
    fmt: str | None,
    input_size: int,
    bn_eps: float | None,
    config: Path | None,
    generic: bool,
    emit_source: Path | None,
    nhwc: bool,
    mean: str | None,
    std: str | None,
    scale: float,
    channel_order: str,
    parity_case: Path | None,
    keep_on_failure: bool,
) -> None:
    """Convert a Keras model to PyTorch: full-model .h5, Keras 3 .keras, or weights (.h5 / .weights.h5) with
    --config arch.json. PSPNet-Keras weights keep their named mapping unless --generic."""
    check_keras_outputs(output, fmt, emit_source)  # before the file is even opened
    generic = generic or arch == "generic"
    named = not generic and config is None and _is_pspnet_keras(h5)
    if arch in ("pspnet50", "pspnet101") and not named:
        if generic:
            raise ConversionError(f"--arch {arch} and --generic contradict each other")
        named = True  # the named path says why the file is not PSPNet-Keras
    if named:
        if emit_source or nhwc:
            raise ConversionError("--emit-source and --nhwc apply to the generic path (add --generic)")
        report = convert_keras_files(h5, output, arch=arch, fmt=fmt, input_size=input_size, bn_eps=bn_eps,
                                     parity_case=parity_case, keep_on_failure=keep_on_failure)  # fmt: skip
        print_report(report)
    else:
        pre = _preprocessing(_floats(mean), _floats(std), scale, channel_order)
        report = convert_keras_generic_files(h5, output, config=config, fmt=fmt, nhwc=nhwc, emit_source=emit_source,
                                             preprocessing=pre, parity_case=parity_case,
                                             keep_on_failure=keep_on_failure)  # fmt: skip
        print_generic_report(report)
    if "parity" in report and not report["parity"].ok:
        raise click.exceptions.Exit(1)

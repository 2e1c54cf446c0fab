"""``segconvert slim2torch``: TF-Slim checkpoints to PyTorch (``keras2torch`` is in :mod:`.convert_keras`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from segconvert.commands._args import ExistingPath
from segconvert.errors import ConversionError

# --arch names slim2torch takes: resnet_v1_N = the backbone of that depth (the slim names users know)
SLIM_ARCH_NAMES = (
    "auto", "resnet", "resnet_v1_50", "resnet_v1_101", "resnet_v1_152", "pspnet50", "pspnet101", "icnet",
)  # fmt: skip


def _finish(
    conv,
    output: Path,
    fmt: str | None,
    files: list[Path],
    parity_case: Path | None,
    source: dict,
    keep_on_failure: bool = False,
) -> dict:
    """Optional parity run, metadata, atomic write. Returns a report dict.

    A failed parity check writes nothing (``report["written"]`` False) unless ``keep_on_failure``."""
    from segconvert.weights.inputs import conversion_inputs
    from segconvert.weights.provenance import source_entry
    from segconvert.weights.store import save_converted

    timings: dict[str, float] = {}
    report: dict[str, Any] = {"conversion": conv}
    meta: dict[str, Any] = {
        "arch": conv.arch,
        "config": conv.config,
        "num_classes": conv.config.get("num_classes"),
        "input_size": conv.config.get("input_size"),
        "preprocessing": conv.preprocessing,
        "inputs": conversion_inputs(conv),
        "source": {**source, "files": [source_entry(p) for p in files]},
        "conversion": {
            "tensors": len(conv.state_dict),
            "source_tensors": len(set(conv.sources.values())),
            "dropped": [list(d) for d in conv.dropped],
            "notes": conv.notes,
        },
    }
    if parity_case is not None:
        import numpy as np

        from segconvert.converters._tf_common import nhwc_parity

        t = time.perf_counter()
        model = conv.build_model()
        inp = np.load(parity_case / "input.npy")
        outputs = dict(np.load(parity_case / "outputs.npz"))
        parity, _ = nhwc_parity(model, conv.tap_map, inp, outputs, source=str(parity_case))
        timings["parity"] = time.perf_counter() - t
        if not parity.rows:
            raise ConversionError("no output in outputs.npz matches a layer of the model", file=parity_case)
        # the folder's name only (no local absolute path); max_rel inf (a shape mismatch) becomes null
        meta["parity"] = parity.summary(parity_case.name)
        report["parity"] = parity
    t = time.perf_counter()
    report["written"] = "parity" not in report or parity.ok or keep_on_failure
    if report["written"]:
        save_converted(output, conv.state_dict, meta, fmt=fmt, progress=True)
    timings["write"] = time.perf_counter() - t
    report.update(meta=meta, timings=timings, output=output)
    return report


def convert_slim_files(
    checkpoint: str | Path,
    output: Path,
    *,
    arch: str = "auto",
    fmt: str | None = None,
    output_stride: int | None = None,
    bn_eps: float = 1e-5,
    scope: str | None = None,
    classifier: bool = False,
    stride_in: str | None = None,
    input_size: int | None = None,
    parity_case: Path | None = None,
    keep_on_failure: bool = False,
) -> dict[str, Any]:
    """The whole slim2torch job; returns a report dict. Output paths are checked before the work."""
    from segconvert.converters.keras import convert_hellochick, is_caffe_named_checkpoint
    from segconvert.converters.slim import convert_slim
    from segconvert.formats.tf_checkpoint import open_checkpoint
    from segconvert.weights.store import check_weights_output

    if arch not in SLIM_ARCH_NAMES:
        raise ConversionError(f"unknown --arch {arch!r}; slim2torch knows: {', '.join(SLIM_ARCH_NAMES)}")
    depth = int(arch.rsplit("_", 1)[1]) if arch.startswith("resnet_v1_") else None
    arch = "resnet" if depth else arch
    check_weights_output(output, fmt)  # weights + sidecar: one line, exit 2, before the checkpoint is read
    t0 = time.perf_counter()
    with open_checkpoint(checkpoint) as ckpt:
        from segconvert.converters.tf_icnet import convert_icnet_tf, icnet_tf_layout

        if icnet_tf_layout(ckpt.keys()) or arch == "icnet":  # hellochick/ICNet-tensorflow, fast-semantic-seg.
            if arch not in ("auto", "icnet") or stride_in or output_stride not in (None, 8) or scope or input_size:
                raise ConversionError(
                    "a TF ICNet checkpoint converts as icnet only; --arch, --stride-in, --output-stride, --scope "
                    "and --input-size do not apply",
                    file=ckpt.files[0],
                )
            conv = convert_icnet_tf(ckpt, file=ckpt.files[0], bn_eps=bn_eps)
        elif is_caffe_named_checkpoint(ckpt.keys()):  # hellochick/PSPNet-tensorflow: Caffe layer names
            if arch == "resnet" or stride_in or output_stride not in (None, 8) or scope or classifier:
                raise ConversionError(
                    "a Caffe-named (hellochick PSPNet-tensorflow) checkpoint converts as pspnet50/101 only; "
                    "--arch resnet, --stride-in, --output-stride, --scope and --with-classifier do not apply",
                    file=ckpt.files[0],
                )
            conv = convert_hellochick(ckpt, arch=arch, input_size=input_size or 473, bn_eps=bn_eps)
        else:
            if input_size is not None:
                raise ConversionError("--input-size applies to Caffe-named (hellochick) checkpoints only")
            conv = convert_slim(
                ckpt,
                arch=arch,
                output_stride=output_stride,
                bn_eps=bn_eps,
                scope=scope,
                classifier=classifier,
                stride_in=stride_in,
            )
            if depth is not None and conv.config.get("depth") != depth:
                raise ConversionError(
                    f"--arch resnet_v1_{depth}, but the checkpoint is a resnet_v1_{conv.config.get('depth')}",
                    file=ckpt.files[0],
                )
        t1 = time.perf_counter()
        source = {"format": f"tf-{ckpt.format}"}
        report = _finish(conv, output, fmt, list(ckpt.files), parity_case, source, keep_on_failure)
    report["timings"].update(read_and_map=t1 - t0, total=time.perf_counter() - t0)
    return report


def __getattr__(name: str) -> Any:
    """``convert_keras_files`` moved to :mod:`segconvert.commands.convert_keras` (kept importable from here)."""
    if name == "convert_keras_files":
        from segconvert.commands.convert_keras import convert_keras_files

        return convert_keras_files
    raise AttributeError(name)


def print_report(report: dict[str, Any]) -> None:
    conv, meta, t = report["conversion"], report["meta"], report["timings"]
    keys = ("depth", "output_stride", "num_classes", "input_size", "stride_in", "bn_eps")
    click.echo(f"architecture: {conv.arch}  " + " ".join(f"{k}={conv.config[k]}" for k in keys if k in conv.config))
    click.echo(
        f"mapped {meta['conversion']['source_tensors']} source tensors onto {len(conv.state_dict)} tensors "
        f"({sum(v.numel() for v in conv.state_dict.values()):,} values)"
    )
    if conv.dropped:
        click.echo("dropped (not used by the model): " + ", ".join(f"{n} ({why})" for n, why in conv.dropped))
    for note in conv.notes:
        click.echo(f"note: {note}")
    from segconvert.commands.convert_caffe import describe_preprocessing

    click.echo(f"expects: {describe_preprocessing(meta['preprocessing'])}")
    if "parity" in report:
        click.echo(report["parity"].format(every=10))
    if not report.get("written", True):
        click.echo(f"wrote nothing: the parity check failed (--keep-on-failure writes {report['output']} anyway)")
        return
    click.echo(f"wrote {report['output']} (+ .json sidecar) in {t['total']:.2f}s")


_FORMAT = click.option("--format", "fmt", type=click.Choice(["safetensors", "pth"]), help="Default: from the suffix.")
_OUTPUT = click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
_PARITY = click.option(
    "--parity",
    "parity_case",
    type=ExistingPath(folder=True),
    help="A folder with input.npy (NHWC) and outputs.npz (NHWC, keyed by end-point / layer name) to check against.",
)


_KEEP = click.option(
    "--keep-on-failure", is_flag=True, help="With --parity: write the output even when the check fails."
)


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))  # a prefix: open_checkpoint says what it tried
@_OUTPUT
@click.option(
    "--arch",
    default="auto",
    show_default=True,
    help=f"One of: {', '.join(SLIM_ARCH_NAMES)}. resnet = backbone only (logits dropped; resnet_v1_50/101/152 "
    "also check the depth); pspnet50/101 = with the detected PSPNet head (PSPNet-TF-Reproduce <scope>/psp, "
    "fast-semantic-segmentation PSPModule, or hellochick's Caffe-named layers).",
)
@_FORMAT
@click.option("--output-stride", type=click.Choice(["8", "16", "32"]), help="Default: 8 for PSPNet, 32 for resnet.")
@click.option("--bn-eps", type=float, default=1e-5, show_default=True, help="BatchNorm epsilon of the source graph.")
@click.option("--scope", help="Variable scope of the network (default: detected, e.g. resnet_v1_50).")
@click.option("--with-classifier", is_flag=True, help="Keep an ImageNet 'logits' layer as the backbone's fc.")
@click.option(
    "--stride-in",
    type=click.Choice(["3x3_last", "3x3"]),
    help="Where blocks 1-3 stride: 3x3_last = TF-Slim (3x3 conv of the last unit), 3x3 = first unit (3x3 conv "
    "and shortcut, PSPNet-TF-Reproduce's own backbone). Default: 3x3 for a PSPNet-TF-Reproduce head, else 3x3_last.",
)
@click.option(
    "--input-size",
    type=int,
    help="Caffe-named (hellochick PSPNet-tensorflow) checkpoints: the crop its fixed pyramid-pooling kernels are "
    "made for (473 ADE20K PSPNet50, 713 Cityscapes PSPNet101). Default 473.",
)
@_PARITY
@_KEEP
def slim2torch(
    checkpoint: Path,
    output: Path,
    arch: str,
    fmt: str | None,
    output_stride: str | None,
    bn_eps: float,
    scope: str | None,
    with_classifier: bool,
    stride_in: str | None,
    input_size: int | None,
    parity_case: Path | None,
    keep_on_failure: bool,
) -> None:
    """Convert a TF-Slim resnet_v1 CHECKPOINT (V2 prefix / .index, or a V1 .ckpt file) to PyTorch weights.

    Also PSPNet checkpoints of fast-semantic-segmentation and PSPNet-TF-Reproduce (slim variable names) and of
    hellochick/PSPNet-tensorflow (Caffe layer names)."""
    report = convert_slim_files(
        checkpoint,
        output,
        arch=arch,
        fmt=fmt,
        output_stride=int(output_stride) if output_stride else None,
        bn_eps=bn_eps,
        scope=scope,
        classifier=with_classifier,
        stride_in=stride_in,
        input_size=input_size,
        parity_case=parity_case,
        keep_on_failure=keep_on_failure,
    )
    print_report(report)
    if "parity" in report and not report["parity"].ok:
        raise click.exceptions.Exit(1)

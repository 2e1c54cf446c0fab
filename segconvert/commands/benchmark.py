"""``segconvert benchmark``: forward latency of converted weights (median, p90), images/s, peak memory."""

from __future__ import annotations

import json

import click

from segconvert.commands._args import CHECK_OPTION


@click.command("benchmark")
@click.argument("weights", type=click.Path(exists=True, dir_okay=False))
@click.option("--input-size", nargs=2, type=int, default=None, metavar="H W", help="Default: the weights' size.")
@click.option("--batch", type=int, default=1, show_default=True, help="Images per forward.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, mps, auto.")
@click.option("--amp", type=click.Choice(["bf16", "fp16"]), default=None, help="Autocast dtype (default: float32).")
@click.option(
    "--channels-last/--no-channels-last",
    default=None,
    help="channels_last memory format for weights and input (default: on when fused, off with --no-fuse).",
)
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model (compile time is in warm-up).")
@click.option("--no-fuse", is_flag=True, help="Time the plain converted module (no BatchNorm folding).")
@CHECK_OPTION
@click.option("--no-onednn", is_flag=True, help="Fused, but convolutions through eager F.conv2d (no oneDNN pass).")
@click.option(
    "--keep-freed-memory/--release-freed-memory",
    default=True,
    show_default=True,
    help="glibc keeps freed activations for the next forward, as a serving process's steady state does (no "
    "page faults; higher peak RSS), or returns them to the system at once (eval's policy: lowest RSS).",
)
@click.option(
    "--flush-denormal/--keep-denormal",
    default=True,
    show_default=True,
    help="CPU: subnormal floats flushed to zero in every torch thread (FTZ/DAZ, as TensorFlow's CPU runtime "
    "does); values change only below 1.2e-38, where random-weight softmaxes otherwise take the slow path.",
)
@click.option("--warmup", type=int, default=2, show_default=True)
@click.option("--runs", type=int, default=10, show_default=True)
@click.option("--threads", type=int, default=None, help="torch CPU threads (default: torch's).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def benchmark(
    weights: str,
    input_size: tuple[int, int] | None,
    batch: int,
    device: str,
    amp: str | None,
    channels_last: bool | None,
    compile_: bool,
    no_fuse: bool,
    check: bool,
    no_onednn: bool,
    keep_freed_memory: bool,
    flush_denormal: bool,
    warmup: int,
    runs: int,
    threads: int | None,
    as_json: bool,
) -> None:
    """Time the forward of converted WEIGHTS on synthetic inputs of the net's input shapes."""
    import torch

    from segconvert.inference.floats import denormals_flushed

    # first thing: torch's OpenMP workers, started by the first parallel op, inherit this thread's float mode
    with denormals_flushed(flush_denormal) as flushed:
        from segconvert.eval.runner import resolve_device
        from segconvert.inference.benchmark import benchmark_model
        from segconvert.inference.prepare import amp_dtype, prepare_model
        from segconvert.weights.inputs import input_specs, synthetic_inputs
        from segconvert.weights.store import load_model, read_metadata

        if batch < 1 or runs < 1 or warmup < 0:
            raise click.UsageError("--batch and --runs must be >= 1, --warmup >= 0")
        try:
            dev = resolve_device(device)
            dtype = amp_dtype(amp, dev)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
        if threads:
            torch.set_num_threads(threads)
        from segconvert.inference.memory import fix_mmap_threshold
        from segconvert.inference.memory import keep_freed_memory as keep

        if keep_freed_memory:  # latency: a serving process's steady state (the default)
            keep()
        else:  # eval's policy: freed activations go back at once (lowest peak RSS)
            fix_mmap_threshold(1.0)
        meta = read_metadata(weights)
        inputs = synthetic_inputs(input_specs(meta), size=input_size, batch=batch)
        model = load_model(weights, device=str(dev))
        model = prepare_model(
            model,
            fuse=not no_fuse,
            check=check and not no_fuse,
            channels_last=channels_last,
            compile=compile_,
            onednn=False if no_onednn or dtype is not None else None,
            inputs=[x[:1] for x in inputs],
            source=weights,
        )
        onednn = getattr(model, "segconvert_onednn", None)
        channels_last = bool(getattr(model, "segconvert_channels_last", False))
        settings = {
            "fused": not no_fuse,
            "onednn": bool(onednn and onednn.convs),
            "amp": amp,
            "channels_last": channels_last,
            "compile": compile_,
            "keep_freed_memory": keep_freed_memory,
            "flush_denormal": flushed,
            "threads": torch.get_num_threads(),
        }
        res = benchmark_model(
            model, inputs, warmup=warmup, runs=runs, amp_dtype=dtype, channels_last=channels_last, settings=settings
        )
        if as_json:
            click.echo(json.dumps({"weights": str(weights), **res.to_json()}, indent=1))
            return
        shapes = ", ".join("x".join(map(str, s)) for s in res.input_shapes)
        on = [k for k in ("fused", "onednn", "channels_last", "compile") if settings[k]] + ([amp] if amp else [])
        click.echo(
            f"{weights}  input {shapes}  {res.device}  {', '.join(on) or 'eager'}  threads {settings['threads']}"
        )
        click.echo(
            f"{'median ms':>10} {'p90 ms':>9} {'images/s':>9} {'peak MiB':>9}  ({res.runs} runs after {res.warmup})"
        )
        click.echo(
            f"{res.median_ms:>10.2f} {res.p90_ms:>9.2f} {res.images_per_second:>9.2f} {res.peak_memory_mib:>9.0f}"
        )
        click.echo(f"peak memory: {res.memory_kind}")


__all__ = ["benchmark"]

"""``segconvert eval``, ``score``, ``zoo`` and ``reproduce``."""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

import click

from segconvert.commands._args import (
    AMP_OPTION,
    CHANNELS_LAST_OPTION,
    CHECK_OPTION,
    COMPILE_OPTION,
    DATASET_CHOICE,
    ExistingPath,
    ProtocolChoice,
    check_amp,
    preprocessing_options,
    resolve_preprocessing,
)


def _emit(result: Any, as_json: bool, extra: dict[str, Any] | None = None) -> None:
    from segconvert.eval.report import class_table, summary_line, to_json_text

    if as_json:
        payload = result.to_json()
        if extra:
            payload.update(extra)
        click.echo(to_json_text(payload))
    else:
        click.echo(class_table(result))
        click.echo(summary_line(result))


def _make_protocol(name: str, dataset: str, scales: str | None, flip: bool | None, **overrides: Any) -> Any:
    from segconvert.eval.protocols import get_protocol, parse_scales

    try:
        proto = get_protocol(name, dataset, scales=parse_scales(scales), flip=flip, **overrides)
        proto.plan(513, 513)  # validates option combinations (e.g. deeplab-msc without scales)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    return proto


def _run_options(f: Any) -> Any:
    """Options shared by ``eval`` and ``reproduce``: how the images run and what is printed or saved."""
    options = [
        click.option("--limit", type=int, default=None, help="Evaluate the first N images only."),
        click.option(
            "--save-pred", type=click.Path(file_okay=False), default=None, help="Write labels/, color/, overlay/."
        ),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, mps."),
        click.option("--batch-size", type=int, default=None, help="Crops per forward (default: 8 on CUDA, 1 on CPU)."),
        click.option(
            "--batch-memory",
            type=click.FloatRange(min=1),
            default=None,
            help="MiB: crops per forward from this budget, measured on the first crop (instead of --batch-size).",
        ),
        click.option(
            "--workers",
            type=click.IntRange(min=0),
            default=None,
            help="Processes decoding images (default: half the CPUs, at most 4; 0: in the main process).",
        ),
        AMP_OPTION,
        CHANNELS_LAST_OPTION,
        COMPILE_OPTION,
        CHECK_OPTION,
        click.option("--json", "as_json", is_flag=True, help="Print the results as JSON."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
        click.option("--no-fuse", is_flag=True, help="Run the plain converted module (no BatchNorm folding)."),
        click.option(
            "--no-onednn", is_flag=True, help="Fused, but convolutions through eager F.conv2d (no oneDNN pass)."
        ),
        click.option("--benchmark", is_flag=True, help="Print images/s split into decode, protocol, network, metrics."),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


def _load_model(weights: str, device: str) -> tuple[Any, Any]:
    """(model rebuilt from the converted weights, torch device); a bad --device is a usage error."""
    from segconvert.eval.runner import load_weights, resolve_device

    try:
        dev = resolve_device(device)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    return load_weights(weights, dev), dev


def _check_save_pred(run: dict[str, Any]) -> None:
    """``--save-pred`` must be a folder segconvert can create or fill: checked before the model is loaded."""
    if run.get("save_pred"):
        from segconvert.fileio import check_output_path

        check_output_path(run["save_pred"], directory=True)


def _preprocessing(weights: str, meta: dict[str, Any], mean: str | None, std: str | None, order: str | None) -> Any:
    """:func:`segconvert.commands._args.resolve_preprocessing` with ``order`` 'BGR' / 'RGB' / None."""
    return resolve_preprocessing(weights, meta, mean, std, None if order is None else order.upper() == "BGR")


def _run(
    model: Any, ds: Any, proto: Any, dev: Any, run: dict[str, Any], preprocessing: Any = None, source: Any = None
) -> Any:
    """:func:`segconvert.eval.session.run_cli_evaluation`, printing its ``--benchmark`` line on stderr."""
    from segconvert.eval.session import run_cli_evaluation

    if run.get("batch_size") and run.get("batch_memory"):
        raise click.UsageError("give --batch-size (crops per forward) or --batch-memory (a budget), not both")
    check_amp(run.get("amp"), dev)
    result, bench = run_cli_evaluation(model, ds, proto, dev, run, preprocessing, source=source)
    if bench:
        click.echo(bench, err=True)
    return result


# -------------------------------------------------------------------------------------------------- eval


@click.command("eval")
@click.argument("weights", type=ExistingPath(text=True))
@click.option("--dataset", type=DATASET_CHOICE, required=True, help="Dataset in its released layout.")
@click.option("--root", type=click.Path(), required=True, help="Dataset root folder.")
@click.option("--split", default="val", show_default=True)
@click.option("--protocol", type=ProtocolChoice(), default=None, help="Inference protocol preset.")
@click.option("--scales", default=None, help="'ss', 'ms' or comma-separated scales (default: the preset's).")
@click.option("--flip/--no-flip", default=None, help="Flip augmentation (default: the preset's).")
@click.option("--crop", type=int, default=None, help="Crop size (default: the weights' input size / preset).")
@click.option("--base-size", type=int, default=None, help="Base size of the scale rule (pspnet/semseg).")
@preprocessing_options
@_run_options
def eval_cmd(
    weights: str,
    dataset: str,
    root: str,
    split: str,
    protocol: str | None,
    scales: str | None,
    flip: bool | None,
    crop: int | None,
    base_size: int | None,
    mean: str | None,
    std: str | None,
    bgr: bool | None,
    as_json: bool,
    **run: Any,
) -> None:
    """Evaluate converted WEIGHTS on a dataset with a published protocol.

    The input normalisation is the one the weights record; --mean/--std/--bgr/--rgb replace it (and are
    needed for conversions that record none, such as generic Caffe nets)."""
    from segconvert.eval.datasets import get_dataset
    from segconvert.inference.predict import crop_from_meta, default_protocol_name

    dataset = dataset.lower()
    _check_save_pred(run)
    ds = get_dataset(dataset, root, split)
    model, dev = _load_model(weights, run["device"])
    meta = getattr(model, "segconvert_meta", {}) or {}
    from segconvert.eval.session import check_model_fits

    check_model_fits(weights, meta, ds)  # before any forward pass
    prep = resolve_preprocessing(weights, meta, mean, std, bgr)
    name = protocol or default_protocol_name(meta)
    overrides: dict[str, Any] = {}
    if name in ("pspnet", "semseg", "deeplab-msc", "mmseg-slide"):
        overrides["crop"] = crop or (crop_from_meta(meta) if name != "mmseg-slide" else None)
    if base_size and name in ("pspnet", "semseg"):
        overrides["base_size"] = base_size
    proto = _make_protocol(name, dataset, scales, flip, **overrides)
    result = _run(model, ds, proto, dev, run, prep, source=weights)
    result.info["weights"] = str(weights)
    from segconvert.eval.distributed import is_main_process

    if is_main_process():  # torchrun: every rank holds the reduced result; rank 0 prints it
        _emit(result, as_json)


# ------------------------------------------------------------------------------------------------- score


@click.command("score")
@click.option("--dataset", type=DATASET_CHOICE, required=True)
@click.option("--root", type=click.Path(), required=True, help="Dataset root folder (ground truth).")
@click.option("--pred", "pred_dir", type=click.Path(), required=True, help="Folder of prediction label PNGs.")
@click.option("--split", default="val", show_default=True)
@click.option(
    "--pred-ids",
    type=click.Choice(["labelIds", "trainIds", "one-based", "zero-based", "index"], case_sensitive=False),
    default=None,
    help="Cityscapes: labelIds (official, default) or trainIds. ADE20K: one-based (SceneParsing, default) or "
    "zero-based. VOC: index.",
)
@click.option("--limit", type=int, default=None)
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("--quiet", is_flag=True)
def score(
    dataset: str,
    root: str,
    pred_dir: str,
    split: str,
    pred_ids: str | None,
    limit: int | None,
    device: str,
    as_json: bool,
    quiet: bool,
) -> None:
    """Score existing prediction PNGs (from any tool) with the same metrics and tables."""
    from segconvert.eval.datasets import get_dataset
    from segconvert.eval.runner import score_folder

    dataset = dataset.lower()
    allowed = {"cityscapes": ("labelids", "trainids"), "ade20k": ("one-based", "zero-based"), "voc": ("index",)}
    if pred_ids is not None and pred_ids.lower() not in allowed[dataset]:
        raise click.UsageError(f"--pred-ids {pred_ids} does not apply to {dataset} (use {'/'.join(allowed[dataset])})")
    if dataset == "cityscapes":
        # an explicit --pred-ids labelIds scores as labelIds even if the values look like trainIds (warning)
        mode = {None: "labelIds", "labelids": "labelIds-forced", "trainids": "trainIds"}[pred_ids and pred_ids.lower()]
    elif dataset == "ade20k":
        mode = (pred_ids or "one-based").lower()
    else:
        mode = "index"
    ds = get_dataset(dataset, root, split)
    import torch

    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)  # bincount/compare are memory-bound: one thread is as fast and never contended
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = score_folder(ds, pred_dir, pred_ids=mode, device=device, limit=limit, progress=not quiet)
    finally:
        torch.set_num_threads(threads)
    seen = set()
    for w in caught:
        msg = str(w.message)
        if msg not in seen:
            seen.add(msg)
            click.echo(f"warning: {msg}", err=True)
    if seen:
        result.info["warnings"] = sorted(seen)
    _emit(result, as_json)


# --------------------------------------------------------------------------------------------------- zoo


@click.command("zoo")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest (or one entry) as JSON.")
def zoo(name: str | None, as_json: bool) -> None:
    """List the released checkpoints and their published scores."""
    from segconvert.weights import zoo as zoo_mod

    if name:
        entry = zoo_mod.get_entry(name)
        click.echo(json.dumps(entry, indent=2) if as_json else _entry_table(entry))
        return
    if as_json:
        click.echo(json.dumps(zoo_mod.entries(), indent=2))
    else:
        click.echo(zoo_mod.zoo_table())


def _describe_pre(pre: dict[str, Any]) -> str:
    if not pre:
        return "-"
    std = f", std {pre['std']}" if pre.get("std") is not None else ""
    return f"{pre.get('channel_order')} 0-255, mean {pre.get('mean')}{std}"


def _entry_table(entry: dict[str, Any]) -> str:
    """One zoo entry as text: what it is, its files, how to run it, then its published scores (percent)."""
    pre = entry.get("preprocessing") or {}
    proto = entry.get("protocol") or {}
    rows = [
        ("source", entry.get("source_project")),
        ("format", entry.get("format")),
        ("arch", entry.get("arch")),
        ("dataset", f"{entry.get('dataset') or '-'} ({entry.get('num_classes')} classes: {entry.get('classes')})"),
        ("input size", "x".join(map(str, entry.get("input_size") or [])) or "-"),
        ("preprocessing", _describe_pre(pre)),
        ("protocol", ", ".join(f"{k} {v}" for k, v in proto.items()) or "-"),
    ]
    rows += [(f"file ({f['role']})", f["name"]) for f in entry.get("files", [])]
    width = max(len(k) for k, _ in rows)
    lines = [entry["name"], *(f"  {k:<{width}}  {v}" for k, v in rows if v is not None)]
    if entry.get("scores"):
        lines.append(f"  {'metric':<6} {'value %':>7}  {'split':<5} {'setting':<12} source")
        for sc in entry["scores"]:
            setting = sc["setting"] + ("+flip" if sc.get("flip") else "") + (" crf" if sc.get("crf") else "")
            flag = "" if sc.get("comparable", True) else "  [not comparable]"
            lines.append(
                f"  {sc['metric']:<6} {sc['value']:>7.2f}  {sc['split']:<5} {setting:<12} {sc['source']}{flag}"
            )
    for note in entry.get("notes") or []:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- reproduce


def _ours(result: Any, metric: str) -> float | None:
    value = {"mIoU": result.mIoU, "mAcc": result.mAcc, "aAcc": result.aAcc, "iIoU": result.iIoU}.get(metric)
    return None if value is None or math.isnan(value) else 100.0 * value


@click.command("reproduce")
@click.argument("name")
@click.option("--root", type=click.Path(), required=True, help="Dataset root folder.")
@click.option("--weights", type=ExistingPath(text=True), required=True, help="Converted weights.")
@click.option("--setting", type=click.Choice(["ss", "ms"]), default="ss", show_default=True)
@click.option("--split", default="val", show_default=True)
@click.option("--allow-noncomparable", is_flag=True, help="Run even without a comparable published score.")
@_run_options
def reproduce(
    name: str,
    root: str,
    weights: str,
    setting: str,
    split: str,
    allow_noncomparable: bool,
    as_json: bool,
    **run: Any,
) -> None:
    """Run zoo entry NAME's own protocol and print ours vs published with the difference."""
    from segconvert.eval.datasets import get_dataset
    from segconvert.eval.protocols import MS_SCALES
    from segconvert.weights import zoo as zoo_mod

    entry = zoo_mod.get_entry(name)
    if not entry.get("protocol") or not entry.get("dataset"):
        why = "not a segmentation checkpoint" if not entry.get("dataset") else "no segconvert protocol is its own"
        raise zoo_mod.ZooError(f"'{name}': nothing to reproduce ({why}; {' '.join(entry['notes'])})")
    pconf = dict(entry["protocol"])
    pname = pconf.pop("name")
    scales = "1" if setting == "ss" else ",".join(str(s) for s in MS_SCALES)
    if pname == "deeplab-msc" and setting == "ms":
        raise click.UsageError("deeplab-msc has no multi-scale setting (MSC is inside the net)")
    proto = _make_protocol(pname, entry["dataset"], scales, None, **pconf)
    flip = bool(getattr(proto, "flip", False))
    same, other = zoo_mod.split_scores(entry, protocol=pname, setting=setting, flip=flip, split=split)
    if not same and not allow_noncomparable:
        lines = [f"{s['metric']} {s['value']} ({s['split']}, {s['setting']}): {why}" for s, why in other]
        raise zoo_mod.ZooError(
            f"no published {split} score of '{name}' matches this run ({pname}, {setting}); "
            + ("; ".join(lines) if lines else "none published")
            + " (pass --allow-noncomparable to run anyway)"
        )
    _check_save_pred(run)
    ds = get_dataset(entry["dataset"], root, split)
    model, dev = _load_model(weights, run["device"])
    meta = getattr(model, "segconvert_meta", {}) or {}
    from segconvert.eval.session import check_model_fits

    check_model_fits(weights, meta, ds)  # before any forward pass
    notes = []
    if meta.get("arch") and meta["arch"] != entry["arch"]:
        notes.append(f"weights are arch '{meta['arch']}', the zoo entry is '{entry['arch']}'")
    prep = meta.get("preprocessing") or {}
    if prep and (
        prep.get("channel_order") != entry["preprocessing"]["channel_order"]
        or [round(float(v), 3) for v in prep.get("mean", [])]
        != [round(float(v), 3) for v in entry["preprocessing"]["mean"]]
    ):
        notes.append(f"weights preprocessing {prep} differs from the release's {entry['preprocessing']}")
    limit = run["limit"]
    if limit is not None and limit < len(ds):
        notes.append(f"only {limit} of {len(ds)} images: the comparison is indicative only")
    result = _run(model, ds, proto, dev, run, source=weights)
    from segconvert.eval.distributed import is_main_process

    if not is_main_process():  # torchrun: every rank holds the reduced result; rank 0 prints the comparison
        return
    rows = []
    for s in same:
        ours = _ours(result, s["metric"])
        rows.append(
            {
                "metric": s["metric"],
                "published": s["value"],
                "ours": ours,
                "diff": None if ours is None else ours - s["value"],
                "source": s["source"],
                "note": s.get("note"),
            }
        )
    if as_json:
        _emit(
            result,
            True,
            {
                "zoo_entry": name,
                "setting": setting,
                "comparison": rows,
                "notes": notes,
                "not_comparable": [{"metric": s["metric"], "value": s["value"], "why": why} for s, why in other],
            },
        )
        return
    _emit(result, False)
    click.echo("")
    click.echo(f"{name}: ours vs published ({split}, {setting}{'+flip' if flip else ''}, protocol {pname})")
    click.echo(f"{'metric':<7} {'published':>9} {'ours':>8} {'diff':>7}  source")
    for r in rows:
        ours = "n/a" if r["ours"] is None else f"{r['ours']:.2f}"
        diff = "n/a" if r["diff"] is None else f"{r['diff']:+.2f}"
        click.echo(f"{r['metric']:<7} {r['published']:>9.2f} {ours:>8} {diff:>7}  {r['source']}")
    for s, why in other:
        click.echo(f"  (not compared: {s['metric']} {s['value']:.2f} {s['split']} {s['setting']} - {why})")
    for n in notes:
        click.echo(f"note: {n}", err=True)


__all__ = ["eval_cmd", "score", "zoo", "reproduce"]

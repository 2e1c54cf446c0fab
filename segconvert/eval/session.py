"""What ``segconvert eval`` / ``reproduce`` run once the model, dataset and protocol are known.

:func:`run_cli_evaluation` takes the click values of the shared run options: the inference form of the model
(unless ``--no-fuse``), the eval loop with its decode workers and crop batching, the fuse report and the
``--benchmark`` split. :func:`check_model_fits` refuses weights made for another dataset before any forward.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from segconvert.errors import WeightsFileError
from segconvert.eval.metrics import EvalResult

__all__ = ["check_model_fits", "run_cli_evaluation"]


def check_model_fits(weights: str, meta: Mapping[str, Any], ds: Any) -> None:
    """Refuse weights whose recorded class count is not the dataset's, before any forward pass."""
    n = meta.get("num_classes")
    if isinstance(n, int) and n and n != ds.num_classes:
        raise WeightsFileError(
            f"the weights predict {n} classes but {ds.name} has {ds.num_classes}: wrong dataset or wrong weights",
            file=weights,
            key="num_classes",
        )


def run_cli_evaluation(
    model: Any, ds: Any, proto: Any, dev: Any, run: Mapping[str, Any], preprocessing: Any = None, source: Any = None
) -> tuple[EvalResult, str | None]:
    """(result, the ``--benchmark`` line or None). ``run``: the click values of the shared run options;
    ``source``: the weights file, named by a failed ``--check``.

    The process's glibc mmap threshold is pinned first (:mod:`segconvert.inference.memory`: freed
    activations go back to the system; results unchanged)."""
    from segconvert.eval.loader import default_workers
    from segconvert.eval.runner import evaluate, timing_split
    from segconvert.inference.memory import fix_mmap_threshold

    fix_mmap_threshold()
    fuse, compile_ = not run.get("no_fuse"), bool(run.get("compile_"))
    if fuse or compile_:  # --no-fuse alone: the plain module, as loaded
        from segconvert.inference.prepare import prepare_model

        cpu_amp = bool(run.get("amp")) and getattr(dev, "type", str(dev)) == "cpu"  # bf16: no oneDNN pass
        onednn = False if run.get("no_onednn") or cpu_amp else None
        # the inference form (or the plain module, compiled); the weights file is not touched
        check = bool(run.get("check")) and fuse
        model = prepare_model(model, fuse=fuse, check=check, onednn=onednn, compile=compile_, source=source)
    workers = run.get("workers")
    result = evaluate(
        model,
        ds,
        proto,
        device=dev,
        batch_size=run.get("batch_size"),
        batch_memory=run.get("batch_memory"),
        workers=default_workers(dev) if workers is None else int(workers),
        amp=run.get("amp"),
        channels_last=run.get("channels_last"),
        limit=run.get("limit"),
        save_pred=run.get("save_pred"),
        preprocessing=preprocessing,
        progress=not run.get("quiet"),
        time_network=bool(run.get("benchmark")),
    )
    report = getattr(model, "segconvert_fuse", None)
    result.info["fused_layers"] = len(report.folded) if report is not None else 0  # 0: the plain module ran
    return result, timing_split(result.info["timing"]) if run.get("benchmark") else None

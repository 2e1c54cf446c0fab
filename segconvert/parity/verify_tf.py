"""``verify`` on TF checkpoints: every tensor as TF reads it, then the checkpoint's own tf_slim graph per end-point."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segconvert.errors import SegconvertError
from segconvert.parity.verify_common import (
    DEFAULT_TOLERANCE,
    FIRST_TOLERANCE,
    MEMORY_BUDGET,
    RuntimeUse,
)


def _tf_conversion(meta: dict[str, Any], prefix: Path) -> Any:
    """The conversion of the checkpoint as ``meta`` says it was converted (TFConversion)."""
    from segconvert.converters.keras import convert_hellochick, is_caffe_named_checkpoint
    from segconvert.converters.slim import convert_slim
    from segconvert.formats.tf_checkpoint import open_checkpoint

    cfg = meta.get("config", {})
    with open_checkpoint(prefix) as ckpt:
        if is_caffe_named_checkpoint(ckpt.keys()):  # hellochick/PSPNet-tensorflow: Caffe layer names
            return convert_hellochick(
                ckpt, arch=meta["arch"], input_size=cfg.get("input_size") or 473, bn_eps=cfg.get("bn_eps", 1e-5)
            )
        return convert_slim(
            ckpt,
            arch=meta["arch"] if meta["arch"] in ("resnet", "pspnet50", "pspnet101") else "auto",
            output_stride=cfg.get("output_stride"),
            bn_eps=cfg.get("bn_eps", 1e-5),
            classifier=bool(cfg.get("num_classes")) and meta["arch"] == "resnet",
            stride_in=cfg.get("stride_in"),
        )


def verify_tf_checkpoint(model: Any, meta: dict[str, Any], prefix: Path, conv: Any = None) -> RuntimeUse:
    """Every checkpoint tensor as TensorFlow reads it, in PyTorch layout, against the converted tensor."""
    from segconvert.parity.report import ParityReport, compare

    use = RuntimeUse("tensorflow")
    try:
        from segconvert.parity.tf_runtime import import_tensorflow

        tf = import_tensorflow()
    except ImportError:
        use.reason, use.install = "not installed", "'segconvert[parity]'"
        return use
    conv = conv if conv is not None else _tf_conversion(meta, prefix)
    reader = tf.train.load_checkpoint(str(prefix))
    state = model.state_dict()
    rep = ParityReport(source=f"TensorFlow {tf.__version__} checkpoint reader")
    for key, src in conv.sources.items():
        if src.startswith("<") or key not in state:
            continue
        value = np.asarray(reader.get_tensor(src), dtype=np.float64)
        if value.ndim == 4:
            value = value.transpose(3, 2, 0, 1)
        elif value.ndim == 2:
            value = value.T
        row = compare(key, "tensor", state[key].detach().cpu().numpy(), value, tolerance=0.0)
        row.note = src if not row.ok else ""
        rep.rows.append(row)
    use.version, use.used, use.report = tf.__version__, True, rep
    use.what = f"{len(rep.rows)} checkpoint tensors"
    return use


def _has_weights(model: Any, path: str) -> bool:
    """Whether the module at ``path`` exists and holds converted tensors."""
    try:
        module = model.get_submodule(path) if path else model
    except AttributeError:
        return False
    return module is not None and any(True for _ in module.state_dict())


def verify_tf_graph(
    model: Any,
    meta: dict[str, Any],
    prefix: Path,
    x: np.ndarray,
    *,
    conv: Any = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> tuple[RuntimeUse, list[tuple[str, str]]]:
    """The checkpoint's own network run by TensorFlow (tf_slim graph) against the model, per end-point.

    ``x`` is the NCHW model input (fed to TF as NHWC). Returns (runtime, layers no runtime could check).
    """
    from segconvert.converters._tf_common import nhwc_parity
    from segconvert.parity.caffe import depth_tolerance

    use = RuntimeUse("tensorflow (graph)")
    whole = "every layer's output"
    try:
        from segconvert.parity.tf_runtime import graph_unsupported, import_slim, run_slim_checkpoint

        tf = import_slim()[0]
        import tf_keras  # noqa: F401  (TF imports it lazily for slim's batch_norm: missing, it fails mid-graph)
    except ImportError as exc:
        use.reason, use.install = f"not installed ({exc.name or 'tensorflow / tf_slim'})", "'segconvert[parity]'"
        return use, [(whole, "TensorFlow / tf_slim is not installed")]
    use.version = tf.__version__
    conv = conv if conv is not None else _tf_conversion(meta, prefix)
    if conv.source_format.startswith("keras") or not any(v.endswith("stem.relu1") for v in conv.tap_map.values()):
        use.reason = "no graph builder for this checkpoint layout (hellochick PSPNet-tensorflow / Caffe layer names)"
        return use, [(whole, f"the checkpoint holds tensors only and {use.reason}")]
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    why = graph_unsupported(meta["arch"], conv.config, conv.tap_map, (x_nhwc.shape[1], x_nhwc.shape[2]))
    if why is not None:
        use.reason = f"no graph builder: {why}"
        return use, [(whole, use.reason)]
    try:
        # both sides' end-points are held at once: keep TensorFlow's under half the budget
        refs, desc = run_slim_checkpoint(prefix, meta["arch"], conv.config, conv.tap_map, x_nhwc, MEMORY_BUDGET // 2)
    except (SegconvertError, ValueError, tf.errors.OpError) as exc:
        text = exc.one_line() if isinstance(exc, SegconvertError) else f"{type(exc).__name__}: {exc}"
        use.reason = f"failed: {' '.join(text.split())[:300]}"
        return use, [(whole, use.reason)]
    rep, _ = nhwc_parity(model, conv.tap_map, x_nhwc, refs, source=f"TensorFlow {tf.__version__}: {desc}")
    first = min(FIRST_TOLERANCE, tolerance)
    last = max(len(rep.rows) - 1, 1)
    for i, row in enumerate(rep.rows):  # graph order; float32 rounding grows with depth, as in verify_caffe
        row.tolerance = depth_tolerance(i, last + 1, first, tolerance)
        row.ok = bool(row.rel <= row.tolerance)
    use.used, use.report, use.what = True, rep, f"{len(rep.rows)} layers"
    thinned = "end-points fetched" in desc
    reason = "not fetched (end-points thinned to the memory budget)" if thinned else "no TensorFlow end-point for it"
    unchecked = [
        (k, reason)
        for k, path in conv.tap_map.items()
        if k not in refs and _has_weights(model, path)  # an identity / subsample shortcut converts nothing
    ]
    if meta["arch"] == "resnet" and conv.config.get("num_classes"):
        unchecked.append(("fc", "the classifier is not compared (TF's logits are globally pooled)"))
    return use, unchecked

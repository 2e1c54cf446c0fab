"""``segconvert verify``: check converted weights against independent runtimes running the *source* files.

Runtimes, each used when available: pycaffe (if importable) and OpenCV dnn for Caffe prototxt + caffemodel
(per layer, through the conversion's tap map), TensorFlow for TF checkpoints (every checkpoint tensor as TF
reads it against the converted tensor, then the checkpoint's own tf_slim graph run per end-point),
onnxruntime for an exported ONNX file (final output). The input is a
user image or a seeded synthetic image with the model's preprocessing (metadata). The report says which
runtimes ran, which were not available and why, and which layers no runtime could check.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np

from segconvert.commands._args import ExistingPath
from segconvert.errors import SegconvertError
from segconvert.parity.report import evenly_within

# Outputs kept for the per-layer comparison (ours + one reference); bigger nets compare an even subset.
MEMORY_BUDGET = 2 << 30
FIRST_TOLERANCE = 1e-4  # relative tolerance at the first compared layer (grows geometrically with depth)
DEFAULT_TOLERANCE = 2e-3  # at the last layer: float32 rounding through ResNet-101 (fixtures README)
ONNX_TOLERANCE = 1e-4


@dataclass
class RuntimeUse:
    """One runtime: used (with a parity report) or not available (with the reason)."""

    name: str
    version: str | None = None
    used: bool = False
    what: str = ""  # what it checked ("205 layers", "final output", "320 checkpoint tensors")
    reason: str = ""  # why it was not used
    report: Any = None  # ParityReport
    install: str = ""  # what to pip install when it is missing (printed once, in summary())

    def label(self) -> str:
        return f"{self.name} {self.version}" if self.version else self.name


def group_unchecked(unchecked: Sequence[tuple[str, str]], *, keep: int = 3) -> list[str]:
    """One line per layer, except a reason shared by more than ``keep`` layers: one line for all of them."""
    by_reason: dict[str, list[str]] = {}
    for name, why in unchecked:
        by_reason.setdefault(why, []).append(name)
    lines = []
    for why, names in by_reason.items():
        if len(names) > keep:
            lines.append(f"  {len(names)} layers ({names[0]} ... {names[-1]}): {why}")
        else:
            lines += [f"  {name}: {why}" for name in names]
    return lines


@dataclass
class VerifyResult:
    weights: Path
    arch: str
    input_desc: str
    runtimes: list[RuntimeUse] = field(default_factory=list)
    unchecked: list[tuple[str, str]] = field(default_factory=list)  # (layer, reason) no runtime could check
    notes: list[str] = field(default_factory=list)

    @property
    def compared(self) -> int:
        return sum(len(r.report.rows) for r in self.runtimes if r.used and r.report is not None)

    @property
    def ok(self) -> bool:
        return self.compared > 0 and all(r.report.ok for r in self.runtimes if r.used and r.report is not None)

    def first_failure(self) -> tuple[str, Any] | None:
        for r in self.runtimes:
            if r.used and r.report is not None and r.report.first_failure is not None:
                return r.label(), r.report.first_failure
        return None

    def summary(self) -> list[str]:
        used = [f"{r.label()} ({r.what})" for r in self.runtimes if r.used]
        missing = [f"{r.label()} ({r.reason})" for r in self.runtimes if not r.used]
        lines = [
            f"runtimes used: {', '.join(used) or 'none'}"
            + (f"; not available: {', '.join(missing)}" if missing else "")
        ]
        installs = sorted({r.install for r in self.runtimes if not r.used and r.install})
        if installs:
            lines.append(f"to check with the missing runtimes: pip install {' '.join(installs)}")
        if self.unchecked:
            lines.append(f"layers no runtime could check ({len(self.unchecked)}):")
            lines += group_unchecked(self.unchecked)
        else:
            lines.append("layers no runtime could check: none")
        bad = self.first_failure()
        if self.compared == 0:
            lines.append("result: NOTHING CHECKED (no runtime could compare anything)")
        elif bad is None:
            lines.append(f"result: OK, {self.compared} comparisons within tolerance")
        else:
            runtime, row = bad
            lines.append(
                f"result: FAILED, first layer over tolerance: {row.name} ({row.type}) against {runtime}, "
                f"relative {row.rel:.3e} > {row.tolerance:.1e}"
            )
        return lines

    def to_dict(self) -> dict[str, Any]:
        bad = self.first_failure()
        return {
            "weights": str(self.weights),
            "arch": self.arch,
            "input": self.input_desc,
            "ok": self.ok,
            "compared": self.compared,
            "first_failure": None if bad is None else {"runtime": bad[0], "layer": bad[1].name, "type": bad[1].type},
            "runtimes": [
                {
                    "name": r.name,
                    "version": r.version,
                    "used": r.used,
                    "what": r.what,
                    "reason": r.reason,
                    "report": r.report.to_dict() if r.report is not None else None,
                }
                for r in self.runtimes
            ],
            "unchecked_layers": [{"layer": n, "reason": w} for n, w in self.unchecked],
            "notes": self.notes,
        }


# ------------------------------------------------------------------------------------------- sources


def classify_sources(paths: Sequence[Path]) -> dict[str, Path]:
    """``{"prototxt", "caffemodel", "checkpoint", "keras"}`` -> path, by suffix (a TF checkpoint is its prefix)."""
    kinds: dict[str, Path] = {}

    def put(kind: str, p: Path) -> None:
        if kind in kinds:
            raise SegconvertError(f"two {kind} files given ({kinds[kind].name}, {p.name})", file=p)
        kinds[kind] = p

    for p in paths:
        suffix = p.suffix.lower()
        if suffix in (".prototxt", ".pbtxt"):
            put("prototxt", p)
        elif suffix == ".caffemodel":
            put("caffemodel", p)
        elif suffix in (".h5", ".hdf5", ".keras"):
            put("keras", p)
        elif suffix == ".index" or p.name.endswith(".data-00000-of-00001"):
            put("checkpoint", p.with_suffix("") if suffix == ".index" else Path(str(p).split(".data-")[0]))
        elif p.with_name(p.name + ".index").is_file() or (p.is_file() and suffix in (".ckpt",)):
            put("checkpoint", p)
        else:
            raise SegconvertError(
                "unknown source file type (expected .prototxt + .caffemodel, a TF checkpoint prefix, or .h5)", file=p
            )
    if ("prototxt" in kinds) != ("caffemodel" in kinds):
        raise SegconvertError("a Caffe source needs both the .prototxt and the .caffemodel")
    return kinds


def _hash_notes(meta: dict[str, Any], paths: Sequence[Path]) -> list[str]:
    from segconvert.weights.provenance import sha256_file

    recorded = {f.get("path"): f.get("sha256") for f in (meta.get("source") or {}).get("files", [])}
    notes = []
    for p in paths:
        if p.is_file() and p.name in recorded and recorded[p.name] and sha256_file(p) != recorded[p.name]:
            notes.append(f"{p.name} differs from the file that was converted (sha256 mismatch)")
    return notes


# -------------------------------------------------------------------------------------------- Caffe


def _caffe_taps(net: Any, arch: str) -> dict[str, Any]:
    """The conversion's tap map (blob or layer -> Tap), rebuilt from the prototxt alone."""
    if arch == "caffe_generic":
        from segconvert.converters.caffe_generic import convert_caffe_generic

        return convert_caffe_generic(net, require_weights=False).tap_map
    from segconvert.converters import convert_caffe_net

    return convert_caffe_net(net, arch=arch, require_weights=False).tap_map


def _depths(net: Any) -> dict[str, int]:
    """Each layer's depth: the longest chain of layers from the input to its output (MSC branches: per branch)."""
    blob: dict[str, int] = {}
    out: dict[str, int] = {}
    for layer in net.layers:
        d = 1 + max((blob.get(b, 0) for b in layer.bottoms), default=0)
        out[layer.name] = d
        for top in layer.tops:
            blob[top] = d
    return out


def _budget(taps: list[tuple[str, Any]], sizes: dict[str, int], budget: int) -> list[tuple[str, Any]]:
    """An even subset of ``taps`` (always the last) whose outputs fit ``budget`` bytes twice (ours + reference)."""
    kept = set(evenly_within([k for k, _ in taps], sizes, budget // 2))
    return [(k, t) for k, t in taps if k in kept]


def _pycaffe(
    prototxt: Path, caffemodel: Path, x: np.ndarray | dict[str, np.ndarray], blobs: dict[str, str]
) -> tuple[dict[str, np.ndarray], str]:
    """Run real Caffe (pycaffe); return {layer: final value of its blob} for ``blobs`` (layer -> blob).
    ``x``: the input of a one-input net, or ``{input name: array}``."""
    import caffe  # type: ignore[import-not-found]

    caffe.set_mode_cpu()
    net = caffe.Net(str(prototxt), str(caffemodel), caffe.TEST)
    feeds = x if isinstance(x, dict) else {net.inputs[0]: x}
    for name, value in feeds.items():
        net.blobs[name].reshape(*value.shape)
        net.blobs[name].data[...] = value
    net.forward()
    out = {layer: np.array(net.blobs[blob].data) for layer, blob in blobs.items() if blob in net.blobs}
    return out, str(getattr(caffe, "__version__", ""))


def _capture(model: Any, inputs: Any, taps: dict[str, tuple[str, int]]) -> tuple[Any, dict[str, Any]]:
    """``capture_outputs`` for one input tensor or a tuple of them (a multi-input net's ``forward(*inputs)``)."""
    from torch import nn

    from segconvert.reference_models import capture_outputs

    if not isinstance(inputs, tuple):
        return capture_outputs(model, inputs, taps)

    class _Star(nn.Module):  # forward(tuple) -> model(*tuple); the model's modules sit under "m."
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, xs: tuple) -> Any:
            return self.m(*xs)

    prefixed = {k: (f"m.{path}" if path else "m", call) for k, (path, call) in taps.items()}
    return capture_outputs(_Star(), inputs, prefixed)


def _pycaffe_status() -> str | None:
    """None when pycaffe can be imported, else why not."""
    if importlib.util.find_spec("caffe") is None:
        return "not importable"
    try:
        import caffe  # type: ignore[import-not-found]  # noqa: F401
    except Exception as exc:  # a broken build
        return f"import failed: {type(exc).__name__}"
    return None


def verify_caffe(
    model: Any,
    meta: dict[str, Any],
    prototxt: Path,
    caffemodel: Path,
    x: np.ndarray | dict[str, np.ndarray],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    budget: int = MEMORY_BUDGET,
) -> tuple[list[RuntimeUse], list[tuple[str, str]], list[str]]:
    """Per-layer comparison of ``model`` with pycaffe and OpenCV dnn running the source files.

    ``x``: the input of a one-input net, or ``{input name: array}`` for every input (in the model's order).

    Returns (runtimes, layers no runtime could check, notes).
    """
    import torch

    from segconvert.graph import load_net
    from segconvert.parity.caffe import depth_tolerance
    from segconvert.parity.opencv_runtime import net_input, opencv_run, opencv_version
    from segconvert.parity.report import ParityReport, compare

    declared = load_net(prototxt)
    if isinstance(x, dict):  # several inputs: fed by name
        input_name = None
        shapes = {n: tuple(v.shape) for n, v in x.items() if n in declared.inputs}
        net = load_net(prototxt, input_shapes=shapes or None)
        model_in: Any = tuple(torch.from_numpy(v) for v in x.values())
    else:
        input_name, _ = net_input(declared)
        net = load_net(prototxt, input_shapes={input_name: tuple(x.shape)} if input_name in declared.inputs else None)
        model_in = torch.from_numpy(x)
    taps = _caffe_taps(net, meta["arch"])
    layers = {layer.name: layer for layer in net.layers}
    order = {layer.name: i for i, layer in enumerate(net.layers)}
    items = sorted(((k, t) for k, t in taps.items() if t.layer in layers), key=lambda kv: (order[kv[1].layer], kv[0]))
    sizes = {}
    for k, t in items:
        shape = layers[t.layer].output_shapes[0] if layers[t.layer].output_shapes else None
        sizes[k] = 4 * math.prod(shape) if shape else 0
    chosen = _budget(items, sizes, budget)
    notes = []
    if len(chosen) < len(items):
        notes.append(f"compared {len(chosen)} of {len(items)} mapped layers (outputs kept under {budget >> 30} GiB)")
    _, ours = _capture(model, model_in, {k: (t.module, t.call) for k, t in chosen})
    last_writer: dict[str, str] = {}  # blob -> last layer writing it (pycaffe only keeps final values)
    for layer in net.layers:
        for top in layer.tops:
            last_writer[top] = layer.name

    depth = _depths(net)
    deepest = max((depth[t.layer] for _, t in chosen), default=1) or 1
    first = min(FIRST_TOLERANCE, tolerance)

    def report(source: str, refs: dict[str, np.ndarray]) -> Any:
        rep = ParityReport(source=source)
        for k, t in chosen:
            if t.layer in refs:
                tol = depth_tolerance(depth[t.layer], deepest + 1, first, tolerance)  # rounding grows with depth
                rep.rows.append(compare(t.layer, layers[t.layer].type, ours[k].numpy(), refs[t.layer], tolerance=tol))
        return rep

    runtimes: list[RuntimeUse] = []
    checked: set[str] = set()
    why_not: dict[str, str] = {}
    # pycaffe
    status = _pycaffe_status()
    use = RuntimeUse("pycaffe", reason=status or "")
    if status is None:
        blobs = {
            t.layer: layers[t.layer].tops[0]
            for _, t in chosen
            if layers[t.layer].tops and last_writer.get(layers[t.layer].tops[0]) == t.layer
        }
        try:
            refs, version = _pycaffe(prototxt, caffemodel, x, blobs)
            use.version, use.used, use.what = version or None, True, f"{len(refs)} layers"
            use.report = report("pycaffe", refs)
            checked.update(refs)
        except Exception as exc:
            use.reason = f"failed: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    runtimes.append(use)
    # OpenCV dnn
    version = opencv_version()
    use = RuntimeUse("opencv-dnn", version=version)
    if version is None:
        use.reason, use.install = "not installed", "opencv-python-headless"
    else:
        try:
            res = opencv_run(prototxt, caffemodel, x, layers=[t.layer for _, t in chosen], input_name=input_name)
            use.used, use.what = True, f"{len(res.outputs)} layers"
            use.report = report("opencv-dnn", res.outputs)
            checked.update(res.outputs)
            why_not.update(dict(res.unchecked))
            if res.rewrites:
                kinds = sorted({r.split(" ")[0] for _, r in res.rewrites})
                notes.append(f"OpenCV ran a rewritten twin of the net ({len(res.rewrites)} layers: {', '.join(kinds)})")
        except SegconvertError as exc:
            use.reason = f"failed: {exc.message}"
    runtimes.append(use)
    unchecked = []
    for _, t in chosen:
        if t.layer not in checked and t.layer not in {n for n, _ in unchecked}:
            unchecked.append((t.layer, why_not.get(t.layer, "no reference runtime available for it")))
    return runtimes, unchecked, notes


# ---------------------------------------------------------------------------------------- TensorFlow


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


# -------------------------------------------------------------------------------------------- ONNX


def verify_onnx(model: Any, onnx_path: Path, x: np.ndarray | Sequence[np.ndarray]) -> RuntimeUse:
    """onnxruntime on the exported file against the converted model (final output); ``x``: one array per input."""
    from segconvert.parity.report import LayerParity, ParityReport

    use = RuntimeUse("onnxruntime")
    try:
        import onnxruntime
    except ImportError:
        use.reason, use.install = "not installed", "'segconvert[export]'"
        return use
    from segconvert.export.onnx import check_onnx, input_mismatch

    use.version = onnxruntime.__version__
    xs = [x] if isinstance(x, np.ndarray) else list(x)
    try:
        mismatch = input_mismatch(onnx_path, [tuple(v.shape) for v in xs])
        if mismatch:  # a shape question, not a numeric one: say so instead of comparing
            use.reason = mismatch
            return use
        check = check_onnx(onnx_path, model, xs, tolerance=ONNX_TOLERANCE)
    except SegconvertError as exc:
        use.reason = f"failed: {exc.message}"
        return use
    rep = ParityReport(source=f"onnxruntime {use.version}: {onnx_path.name}")
    note = check.note
    if check.float32_floor is not None:
        note = f"fp32 floor {check.float32_floor:.2e}, vs fp64 {check.rel_to_float64:.2e}; {note}".strip("; ")
    rep.rows.append(
        LayerParity(
            "output", "ONNX", check.shape, check.max_abs, check.absmax, check.rel, check.cosine,
            check.tolerance, check.ok, note,
        )
    )  # fmt: skip
    use.used, use.what, use.report = True, "final output", rep
    return use


# -------------------------------------------------------------------------------------------- driver


def verify_conversion(
    weights: Path,
    sources: Sequence[Path] = (),
    *,
    onnx: Path | None = None,
    image: Path | None = None,
    input_size: Sequence[int] | None = None,
    seed: int = 0,
    tolerance: float = DEFAULT_TOLERANCE,
    input_shapes: Sequence[str] = (),
) -> VerifyResult:
    """Run every available runtime; see the module docstring. The check inputs have the net's declared
    shapes (:mod:`segconvert.weights.inputs`; ``input_shapes``: ``NAME:N,C,H,W`` overrides)."""
    from segconvert.weights.store import load_model

    kinds = classify_sources(sources)
    if not kinds and onnx is None:
        raise SegconvertError("nothing to verify against: give the source files and/or --onnx FILE")
    model = load_model(weights)
    meta = model.segconvert_meta
    specs, xs = check_inputs(meta, image=image, input_size=input_size, seed=seed, input_shapes=input_shapes)
    x: Any = xs[0] if len(xs) == 1 else {s.name: v for s, v in zip(specs, xs, strict=True)}
    desc = _input_desc(specs, xs, image, seed)
    result = VerifyResult(weights, meta["arch"], desc, notes=_hash_notes(meta, sources))
    if "prototxt" in kinds:
        runtimes, unchecked, notes = verify_caffe(
            model, meta, kinds["prototxt"], kinds["caffemodel"], x, tolerance=tolerance
        )
        result.runtimes += runtimes
        result.unchecked += unchecked
        result.notes += notes
    if "checkpoint" in kinds:
        conv = _tf_conversion(meta, kinds["checkpoint"])
        result.runtimes.append(verify_tf_checkpoint(model, meta, kinds["checkpoint"], conv))
        use, unchecked = verify_tf_graph(model, meta, kinds["checkpoint"], x, conv=conv, tolerance=tolerance)
        result.runtimes.append(use)
        result.unchecked += unchecked
    if "keras" in kinds and meta["arch"] == "keras_generic":  # the graph is in the file: run it in Keras
        from segconvert.parity.keras_runtime import verify_keras

        use = RuntimeUse(**verify_keras(model, kinds["keras"], list(xs), tolerance=tolerance))
        result.runtimes.append(use)
        if not use.used:
            result.unchecked.append(("every layer", use.reason))
    elif "keras" in kinds:
        result.runtimes.append(
            RuntimeUse("tensorflow/keras", reason="a Keras weights file has no graph; it needs the model's code to run")
        )
        result.unchecked.append(("every layer", "no runtime can run a weights-only Keras file"))
    if onnx is not None:
        result.runtimes.append(verify_onnx(model, onnx, xs))
    return result


def check_inputs(
    meta: dict[str, Any],
    *,
    image: Path | None = None,
    input_size: Sequence[int] | None = None,
    seed: int = 0,
    input_shapes: Sequence[str] = (),
) -> tuple[list[Any], list[np.ndarray]]:
    """(input specs, one float32 array per input): synthetic inputs of the declared shapes, or ``image`` for a
    net whose one input is a 1- or 3-channel image (grey for 1 channel), with the recorded preprocessing."""
    from segconvert.parity.inputs import load_image
    from segconvert.weights.inputs import (
        InputShapeError,
        apply_input_shapes,
        image_input,
        input_specs,
        synthetic_inputs,
    )

    specs = apply_input_shapes(input_specs(meta), list(input_shapes))
    size = [int(v) for v in input_size] if input_size else None
    if image is None:
        return specs, [t.numpy() for t in synthetic_inputs(specs, size=size, seed=seed)]
    if len(specs) != 1 or not specs[0].is_image:
        which = ", ".join(s.describe() for s in specs)
        raise InputShapeError(
            f"--image needs a net with one 1- or 3-channel image input; this one takes {which}: "
            "drop --image (synthetic inputs of these shapes are used)",
            file=image,
        )
    return specs, [image_input(load_image(image), specs[0], size)]


def _input_desc(specs: Sequence[Any], xs: Sequence[np.ndarray], image: Path | None, seed: int) -> str:
    parts = []
    for spec, x in zip(specs, xs, strict=True):
        shape = "x".join(map(str, x.shape))
        if spec.is_image:
            pre = spec.preprocessing
            what = f"image {image.name}" if image is not None else f"synthetic image (seed {seed})"
            how = f"{pre.get('channel_order', 'RGB')} minus mean {pre.get('mean')}" if pre else "raw pixels"
            how += f", std {pre['std']}" if pre.get("std") else ""
            parts.append(f"{what}, {shape}, {how}")
        else:
            parts.append(f"synthetic tensor (seed {seed}), {shape}")
        if len(specs) > 1:
            parts[-1] = f"{spec.name}: {parts[-1]}"
    return "; ".join(parts)


def print_result(result: VerifyResult) -> None:
    click.echo(f"verify {result.weights.name}: {result.arch}; input: {result.input_desc}")
    for note in result.notes:
        click.echo(f"note: {note}")
    for r in result.runtimes:
        if r.used and r.report is not None:
            every = max(1, len(r.report.rows) // 25)
            click.echo(r.report.format(every=every))
    for line in result.summary():
        click.echo(line)


@click.command()
@click.argument("weights", type=ExistingPath())
@click.argument("sources", nargs=-1, type=click.Path(path_type=Path))
@click.option("--onnx", "onnx_file", type=ExistingPath())
@click.option("--image", type=ExistingPath(), help="Default: synthetic.")
@click.option("--input-size", nargs=2, type=int, default=None, metavar="H W", help="Default: the model's.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic input image.")
@click.option(
    "--tolerance",
    type=float,
    default=DEFAULT_TOLERANCE,
    show_default=True,
    help="Allowed max|d| / max|ref| at the last layer (1e-4 at the first, geometric in between).",
)
@click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="NAME:N,C,H,W",
    help="Shape of one net input (repeatable); default: the shapes recorded at conversion.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def verify(
    weights: Path,
    sources: tuple[Path, ...],
    onnx_file: Path | None,
    image: Path | None,
    input_size: tuple[int, int] | None,
    seed: int,
    tolerance: float,
    input_shapes: tuple[str, ...],
    as_json: bool,
) -> None:
    """Check converted WEIGHTS against independent runtimes running the SOURCES they came from.

    SOURCES: the Caffe .prototxt and .caffemodel, a TF checkpoint prefix, or a Keras .h5. Exits 1 when a
    compared layer is over tolerance or nothing could be compared.
    """
    from segconvert.formats.detect import describe_foreign_file

    foreign = describe_foreign_file(weights)
    if foreign is not None:  # a source model or an export given as WEIGHTS: say what it is
        raise SegconvertError(f"not a segconvert weights file but {foreign}", file=weights)
    for p in sources:
        if not p.exists() and not p.with_name(p.name + ".index").exists():
            raise SegconvertError("no such file", file=p)
    result = verify_conversion(
        weights,
        list(sources),
        onnx=onnx_file,
        image=image,
        input_size=input_size,
        seed=seed,
        tolerance=tolerance,
        input_shapes=input_shapes,
    )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=1, default=float))
    else:
        print_result(result)
    if not result.ok:
        raise click.exceptions.Exit(1)

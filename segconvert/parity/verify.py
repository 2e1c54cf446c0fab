"""``segconvert verify``: check converted weights against independent runtimes running the *source* files.

Runtimes, each used when available: pycaffe (if importable) and OpenCV dnn for Caffe prototxt + caffemodel
(per layer, through the conversion's tap map), TensorFlow for TF checkpoints (every checkpoint tensor as TF
reads it against the converted tensor, then the checkpoint's own tf_slim graph run per end-point),
onnxruntime for an exported ONNX file (final output). The input is a
user image or a seeded synthetic image with the model's preprocessing (metadata). The report says which
runtimes ran, which were not available and why, and which layers no runtime could check.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segconvert.errors import SegconvertError
from segconvert.parity.verify_caffe import verify_caffe
from segconvert.parity.verify_common import (
    DEFAULT_TOLERANCE,
    ONNX_TOLERANCE,
    RuntimeUse,
    VerifyResult,
)
from segconvert.parity.verify_tf import _tf_conversion, verify_tf_checkpoint, verify_tf_graph

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

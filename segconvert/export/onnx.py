"""ONNX export of the reference models, Caffe-exact, checked with onnxruntime.

:func:`export_onnx` traces the model with PyTorch's TorchScript-based exporter (``dynamo=False``: the
``torch.export`` exporter needs ``onnxscript``, which segconvert does not depend on). Before tracing, the
modules whose eager implementation does not export exactly are swapped for export twins, and put back after:

- Caffe pooling (:class:`~segconvert.reference_models.ops.CaffePool2d`) becomes ``MaxPool``/``AveragePool``
  with ``ceil_mode=1`` and ``count_include_pad=1`` (Caffe's ceil rounding and AVE divisor, which onnxruntime
  computes exactly as Caffe). Where the last window would start in the padding (Caffe's clip rule), floor
  rounding gives Caffe's size and ``ceil_mode=0`` is written, so ONNX shape inference agrees with the
  runtime. Anything else (pad > kernel/2, rules differing per axis) is written as Pad + pooling + Slice with
  the exact divisor as a constant. The eager module's ``divisor_override`` has no ONNX equivalent: exported
  as is it would silently average twice.
- Caffe ``Interp`` is a ``Resize`` with ``coordinate_transformation_mode=align_corners`` (equal sizes: no node).
- PSPNet's fixed-kernel pyramid pooling stays a fixed-kernel ``AveragePool`` (kernel = stride = feature//bin).

The graph has one input per net input (``input_names``, ``input_shape``: one shape per input; 2-D images or
any N, C, ... tensor such as 1-D signals). The export twins live in :mod:`segconvert.export.onnx_twins`; TF
``SAME`` pads, TF1 legacy resize indices and per-size pyramid pooling are computed as Python ints, so static
exports are exact at any input size. With ``check_inputs`` the graph is run in onnxruntime against PyTorch
before anything is written (a failed check writes nothing).

``dynamic=True`` makes batch and spatial axes symbolic (or ``{input: [axes]}`` per axis). Output sizes (Interp
rules, the final crop) are then computed in the graph. Models whose pads, kernels or resize indices are fixed at
build time or computed in Python per input size are refused with :class:`ExportError`: PSPNet with fixed
pyramid-pooling kernels (the Caffe release: the net is only defined at its crop size, so export it at that size
and pad inputs), TF ``SAME`` padding, TF1 legacy resize, adaptive pooling (the exporter needs its input size).
DeepLab-v2 graphs are valid where the Caffe net is (H, W = 8k+1; MSC 32k+1); the exported graph is run in
onnxruntime at a second size (spatial axes + 32, batch + 1) and compared with PyTorch before it is written.

Files are written atomically (temp file + ``os.replace``); weights over ``external_data_threshold`` bytes
(default just under protobuf's 2 GiB limit) go to ``<name>.data`` beside the model, also atomically.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from segconvert.errors import SegconvertError
from segconvert.export.onnx_check import (
    DEFAULT_TOLERANCE,
    ExportError,
    OnnxCheck,
    _check,
    _compare,
    _flat,
    _require_onnx,
    _session,
    _short,
    check_onnx,
    input_mismatch,
)
from segconvert.export.onnx_twins import TWINNED, pool_plan
from segconvert.export.onnx_twins import dynamic_blockers as _dynamic_blockers
from segconvert.export.onnx_twins import export_twins as _export_twins
from segconvert.fileio import open_mode

__all__ = [
    "ExportError",
    "ExportResult",
    "OnnxCheck",
    "export_onnx",
    "refuse_dynamic",
    "check_onnx",
    "input_mismatch",
    "pool_plan",
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "MAX_OPSET",
    "EXTERNAL_DATA_THRESHOLD",
    "DEFAULT_TOLERANCE",
]

DEFAULT_OPSET = 17
MIN_OPSET = 11  # Resize with coordinate_transformation_mode
MAX_OPSET = 20  # the TorchScript-based exporter's maximum
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26  # protobuf's 2 GiB limit, minus room for the graph itself
INPUT_NAME, OUTPUT_NAME = "input", "logits"


@dataclass
class ExportResult:
    path: Path
    data_path: Path | None  # external data file, when the weights were too big for one protobuf
    opset: int
    input_shape: tuple[int, ...]
    dynamic: bool
    file_bytes: int
    weight_bytes: int
    ops: dict[str, int]  # op type -> count
    pooling: dict[str, int]  # export plan -> count ("ceil", "floor", "explicit", "global")
    checked_sizes: list[tuple[int, ...]] = field(default_factory=list)  # dynamic: extra sizes run in onnxruntime
    seconds: float = 0.0
    input_names: list[str] = field(default_factory=list)
    input_shapes: list[tuple[int, ...]] = field(default_factory=list)  # one per input (input_shape: the first)
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    check: OnnxCheck | None = None  # with check_inputs: onnxruntime vs PyTorch before writing
    written: bool = True  # False when the check failed (nothing was written)


# ------------------------------------------------------------------------------------------- export


def _weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


Shapes = Sequence[Sequence[int]]
DynamicAxes = bool | Mapping[str, Sequence[int]]


def _input_names(names: Sequence[str] | None, count: int) -> list[str]:
    if names is None:
        return [INPUT_NAME] if count == 1 else [f"{INPUT_NAME}_{i}" for i in range(count)]
    names = [str(n) for n in names]
    if len(names) != count or len(set(names)) != count:
        raise ExportError(f"need {count} distinct input names, got {names}")
    return names


def _axes_of(names: list[str], shapes: list[tuple[int, ...]], dynamic: DynamicAxes) -> dict[str, dict[int, str]]:
    """``dynamic_axes`` for the exporter: ``True`` = batch and every axis after C; a mapping = those axes per input."""
    if not dynamic:
        return {}
    every = {n: [0, *range(2, len(s))] for n, s in zip(names, shapes, strict=True)}
    chosen = dynamic if isinstance(dynamic, Mapping) else every
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise ExportError(f"dynamic axes name unknown input(s) {unknown}; the inputs are {names}")
    spatial = {3: ["length"], 4: ["height", "width"], 5: ["depth", "height", "width"]}
    out: dict[str, dict[int, str]] = {}
    for name, shape in zip(names, shapes, strict=True):
        axes = sorted({int(a) for a in chosen.get(name, ())})
        if any(not 0 <= a < len(shape) for a in axes):
            raise ExportError(f"input {name!r} has {len(shape)} axes; dynamic axes {axes} are out of range")
        if axes:
            labels = spatial.get(len(shape), [f"dim{i}" for i in range(2, len(shape))])
            prefix = "" if len(names) == 1 else f"{name}_"
            out[name] = {a: "batch" if a == 0 else f"{prefix}{labels[a - 2] if a >= 2 else 'channels'}" for a in axes}
    return out


def _trace(
    model: nn.Module,
    examples: tuple[Tensor, ...],
    target: Any,
    opset: int,
    names: list[str],
    axes: dict[str, dict[int, str]],
    plans: Counter,
) -> None:
    """``torch.onnx.export``; output shapes of a dynamic graph are inferred (symbolic) by the exporter."""
    out_names = getattr(model, "output_names", None)
    outputs = [str(n) for n in out_names] if isinstance(out_names, (list, tuple)) and out_names else [OUTPUT_NAME]
    outputs = [f"{o}_out" if o in names else o for o in outputs]  # an ONNX value has one name
    with _export_twins(model, bool(axes), plans), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about Python ints are expected for static sizes
        torch.onnx.export(
            model,
            examples,
            target,
            dynamo=False,
            opset_version=opset,
            input_names=names,
            output_names=outputs,
            dynamic_axes=axes or None,
            do_constant_folding=True,
        )


def _shapes(input_shape: Sequence[int] | Shapes) -> list[tuple[int, ...]]:
    """One shape (ints) or one per input; each N first with positive sizes."""
    items = list(input_shape)
    many = bool(items) and not isinstance(items[0], (int, np.integer))
    shapes = [tuple(int(d) for d in s) for s in items] if many else [tuple(int(d) for d in items)]
    for s in shapes:
        if len(s) < 3 or min(s) < 1:
            raise ExportError(
                f"input shape must be N,C,H,W (or N,C,L for 1-D inputs) with positive sizes, got {list(s)}"
            )
    return shapes


def refuse_dynamic(model: nn.Module, file: str | os.PathLike[str] | None = None) -> None:
    """Raise :class:`ExportError` naming the modules whose sizes are fixed for one input size (no dynamic export)."""
    blockers = _dynamic_blockers(model)
    if blockers:
        raise ExportError(
            "--dynamic needs sizes computed in the graph, but these are fixed for one input size: "
            + "; ".join(blockers)
            + ". Export at the model's input size without --dynamic (pad inputs to it)",
            file=file,
        )


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    input_shape: Sequence[int] | Shapes,
    opset: int = DEFAULT_OPSET,
    dynamic: DynamicAxes = False,
    *,
    input_names: Sequence[str] | None = None,
    check_inputs: Sequence[np.ndarray | Tensor] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    progress: Callable[[str], None] | None = None,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    seed: int = 0,
) -> ExportResult:
    """Export ``model`` (eval mode, float32 inputs of ``input_shape``: one shape, or one per input) to ``path``.

    ``input_names``: the ONNX input names (default ``input``; ``input_0, input_1, ..`` for several inputs).
    ``dynamic``: ``True`` for symbolic batch and spatial axes of every input, or ``{name: [axes]}``.
    ``check_inputs``: run the graph in onnxruntime on these before writing (:func:`check_onnx`); when the check
    fails nothing is written and ``result.written`` is False. ``progress`` gets a line per stage.
    See the module docstring for what is exported how.
    """
    onnx, ort = _require_onnx()
    t0 = time.perf_counter()
    path = Path(path)
    shapes = _shapes(input_shape)
    names = _input_names(input_names, len(shapes))
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset must be in {MIN_OPSET}..{MAX_OPSET} (Resize modes need 11; exporter max {MAX_OPSET})")
    axes = _axes_of(names, shapes, dynamic)
    if axes:
        refuse_dynamic(model)
    if isinstance(model, TWINNED):
        model = nn.Sequential(model)  # twins replace submodules
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    examples = tuple(torch.randn(s, generator=gen) for s in shapes)
    plans: Counter = Counter()
    weight_bytes = _weight_bytes(model)
    say = progress or (lambda _msg: None)
    path.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".export"))
    check: OnnxCheck | None = None
    data_path: Path | None = None
    try:
        say(f"tracing the model ({weight_bytes / 1e6:.0f} MB of weights) ...")
        if weight_bytes < EXTERNAL_DATA_THRESHOLD:
            buf = io.BytesIO()
            _trace(model, examples, buf, opset, names, axes, plans)
            proto = onnx.load_from_string(buf.getvalue())
            session_source: Any = buf.getvalue()
        else:  # the exporter writes tensors beside the file itself above protobuf's limit
            traced = workdir / "model.onnx"
            _trace(model, examples, str(traced), opset, names, axes, plans)
            proto = onnx.load(str(traced), load_external_data=True)
            session_source = str(traced)
        checked: list[tuple[int, ...]] = []
        if axes:
            say("running the dynamic graph at a second size in onnxruntime ...")
            checked = _check_dynamic(session_source, model, names, shapes, axes, ort, seed)
        if check_inputs is not None:
            say("comparing onnxruntime with PyTorch ...")
            check = _check(session_source, model, check_inputs, tolerance, ort, path)
        if check is None or check.ok:
            say(f"writing {path} ...")
            data_path = _write(proto, path, external_data_threshold)
    except SegconvertError:
        raise
    except Exception as exc:  # exporter / onnx failures become one typed line
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {_short(exc)}", file=path) from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        model.train(was_training)
    ops = Counter(n.op_type for n in proto.graph.node)
    written = check is None or check.ok
    size = (path.stat().st_size + (data_path.stat().st_size if data_path else 0)) if written else 0
    return ExportResult(
        path=path,
        data_path=data_path,
        opset=opset,
        input_shape=shapes[0],
        dynamic=bool(axes),
        file_bytes=size,
        weight_bytes=weight_bytes,
        ops=dict(sorted(ops.items())),
        pooling=dict(sorted(plans.items())),
        checked_sizes=checked,
        seconds=time.perf_counter() - t0,
        input_names=names,
        input_shapes=shapes,
        dynamic_axes=axes,
        check=check,
        written=written,
    )


def _check_dynamic(
    source: Any,
    model: nn.Module,
    names: list[str],
    shapes: list[tuple[int, ...]],
    axes: dict[str, dict[int, str]],
    ort: Any,
    seed: int,
) -> list[tuple[int, ...]]:
    """Run the dynamic graph at a second size (batch + 1, dynamic spatial axes + 32: DeepLab MSC needs H = 32k+1)
    against the eager model."""
    others = []
    for name, shape in zip(names, shapes, strict=True):
        dims = list(shape)
        for a in axes.get(name, {}):
            dims[a] += 1 if a == 0 else 32
        others.append(tuple(dims))
    gen = torch.Generator().manual_seed(seed + 1)
    xs = [torch.randn(o, generator=gen) for o in others]
    shown = others[0] if len(others) == 1 else others
    sess = _session(source, ort)
    try:
        ys = sess.run(None, {n: x.numpy() for n, x in zip(names, xs, strict=True)})
    except Exception as exc:
        raise ExportError(f"the dynamic ONNX graph does not run at input {_dims(shown)}: {_short(exc)}") from None
    with torch.no_grad():
        refs = _flat(model(*xs))
    stats = _compare(ys, refs)
    if stats is None:
        raise ExportError(
            f"the dynamic ONNX graph gives {[list(y.shape) for y in ys]} at input {_dims(shown)}, PyTorch "
            f"{[list(r.shape) for r in refs]}: some size is fixed in the graph; export without --dynamic"
        )
    rel = stats[0] / max(stats[1], 1e-30)
    if rel > 1e-3:
        raise ExportError(
            f"the dynamic ONNX graph differs from PyTorch at input {_dims(shown)} (relative {rel:.2e}): "
            "some size is fixed in the graph; export without --dynamic"
        )
    return others


def _dims(shape: Any) -> Any:
    return list(shape) if shape and isinstance(shape[0], int) else [list(s) for s in shape]


def _atomic_bytes(path: Path, data: bytes | None, write: Any = None) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        open_mode(tmp)
        with os.fdopen(fd, "wb") as fh:
            if data is not None:
                fh.write(data)
            else:
                write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write(proto: Any, path: Path, threshold: int) -> Path | None:
    """Write the model atomically; initializers over ``threshold`` bytes in total go to ``<name>.data``."""
    from onnx.external_data_helper import convert_model_to_external_data, write_external_data_tensors

    init_bytes = sum(len(t.raw_data) for t in proto.graph.initializer)
    if init_bytes <= threshold:
        _atomic_bytes(path, proto.SerializeToString())
        return None
    data_path = path.with_name(path.name + ".data")
    fd, tmp_data = tempfile.mkstemp(dir=path.parent, prefix=f".{data_path.name}.", suffix=".tmp")
    os.close(fd)
    Path(tmp_data).unlink()  # the helper appends to the file at `location`
    try:
        convert_model_to_external_data(proto, all_tensors_to_one_file=True, location=Path(tmp_data).name)
        write_external_data_tensors(proto, str(path.parent))
        for tensor in proto.graph.initializer:  # point at the final name before the model is written
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = data_path.name
        os.replace(tmp_data, data_path)
        _atomic_bytes(path, proto.SerializeToString())
    except BaseException:
        Path(tmp_data).unlink(missing_ok=True)
        raise
    return data_path

"""``verify`` on Caffe sources: pycaffe (if importable) and OpenCV dnn, layer by layer through the tap map."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np

from segconvert.errors import SegconvertError
from segconvert.parity.report import evenly_within
from segconvert.parity.verify_common import (
    DEFAULT_TOLERANCE,
    FIRST_TOLERANCE,
    MEMORY_BUDGET,
    RuntimeUse,
)


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

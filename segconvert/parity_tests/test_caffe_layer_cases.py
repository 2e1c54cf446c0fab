"""Single-layer cases dumped from *your* Caffe build, through the generic path, within 1e-5 x |output|.

``--caffe-layer-cases DIR``: one sub-folder per case with ``net.prototxt``, ``weights.caffemodel`` (when the
layer has weights), ``input.npy`` and ``outputs.npz`` keyed ``"<layer>/<top index>"`` (the layout of
segconvert's own Caffe fixtures). Useful to check that a fork's layer semantics are the ones we implement.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

TOLERANCE = 1e-5  # of max |reference|: single layers leave no room for float32 accumulation differences


def _cases(config: pytest.Config) -> list[Path]:
    root = config.getoption("--caffe-layer-cases")
    if not root:
        return []
    root = Path(root).expanduser()
    if not root.is_dir():
        raise pytest.UsageError(f"--caffe-layer-cases {root}: not a folder")
    return sorted(p for p in root.iterdir() if (p / "net.prototxt").is_file())


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "layer_case" in metafunc.fixturenames:
        cases = _cases(metafunc.config)
        metafunc.parametrize("layer_case", cases or [None], ids=[c.name for c in cases] or ["no-cases"])


def test_layer_case_matches_caffe(layer_case: Path | None) -> None:
    if layer_case is None:
        pytest.skip("needs --caffe-layer-cases")
    from segconvert.converters import convert_caffe_generic
    from segconvert.graph import load_net

    weights = layer_case / "weights.caffemodel"
    net = load_net(layer_case / "net.prototxt", weights if weights.exists() else None)
    conv = convert_caffe_generic(net)
    model = conv.build_model()
    inp = np.load(layer_case / "input.npy")
    ref = np.load(layer_case / "outputs.npz")
    with torch.no_grad():
        ours = model.layer_outputs(torch.from_numpy(np.ascontiguousarray(inp)))
    compared = 0
    for key in ref.files:
        if key not in ours:
            continue  # implicit layers (input, *_split) have no module
        want, got = ref[key], ours[key].numpy()
        assert got.shape == want.shape, f"{key}: shape {list(got.shape)}, Caffe {list(want.shape)}"
        scale = max(float(np.abs(want).max()), 1e-12)
        err = float(np.abs(got.astype(np.float64) - want).max()) / scale
        assert err <= TOLERANCE, f"{key}: max |diff| / max |ref| = {err:.2e} > {TOLERANCE:.0e}"
        compared += 1
    assert compared, f"no output of {layer_case.name} matched a layer of the net"

"""Checks a converted weights file (``--converted``): it loads and runs, and it is the conversion of the given
sources (``--caffe-prototxt`` + ``--caffe-model``, ``--tf-checkpoint`` or ``--keras-h5``): same sha256 as
recorded at conversion time, and every tensor equal to a fresh conversion of those files."""

from __future__ import annotations

import pytest
import torch

from segconvert.parity_tests._helpers import reconvert, source_files
from segconvert.parity_tests.plugin import UserFiles


def test_converted_file_loads_and_runs(user_files: UserFiles) -> None:
    """The metadata is complete, the model rebuilds strictly from it, and it runs at its input size."""
    user_files.need("converted")
    from segconvert.weights.store import load_model, read_metadata

    meta = read_metadata(user_files.converted)
    for key in ("arch", "config", "preprocessing", "source", "segconvert_version"):
        assert key in meta, f"metadata lacks {key!r}"
    model = load_model(user_files.converted)  # strict: every tensor present, shapes right
    from segconvert.weights.inputs import input_specs, synthetic_inputs

    specs = input_specs(meta)  # the net's declared inputs (one image for the named nets)
    size = None if all(d > 0 for d in specs[0].shape[2:]) else [65] * (len(specs[0].shape) - 2)
    xs = synthetic_inputs(specs, size=size, seed=0)
    with torch.no_grad():
        y = model(*xs)
    outs = list(y.values()) if isinstance(y, dict) else list(y) if isinstance(y, list | tuple) else [y]
    for out in outs:
        assert torch.isfinite(out).all(), "the model's output holds NaN/inf"
    segmentation = meta["arch"] not in ("resnet", "caffe_generic", "keras_generic")
    if segmentation:  # segmentation nets answer at the input resolution (a backbone at its stride)
        assert outs[0].shape[-2:] == xs[0].shape[-2:], f"output {tuple(outs[0].shape)} for input {tuple(xs[0].shape)}"


def test_converted_file_matches_its_sources(user_files: UserFiles) -> None:
    """The sha256 of every given source is one the file recorded, and every tensor equals a fresh conversion."""
    user_files.need("converted")
    from segconvert.weights.provenance import sha256_file
    from segconvert.weights.store import load_model, read_metadata

    u = user_files
    kind, files = source_files(u.prototxt, u.caffemodel, u.tf_checkpoint, u.keras_h5)
    if kind is None:
        pytest.skip("needs the sources: --caffe-prototxt and --caffe-model, --tf-checkpoint, or --keras-h5")
    meta = read_metadata(u.converted)
    source = meta.get("source") or {}
    recorded = {f["sha256"]: f["path"] for f in source.get("files", [])}
    described = ", ".join(f"{name} ({sha[:12]})" for sha, name in recorded.items()) or "no source files"
    for given in files:
        sha = sha256_file(given)
        assert sha in recorded, (
            f"{u.converted.name} was not converted from {given} (sha256 {sha[:12]}): it records "
            f"{source.get('format', '?')} sources {described}"
        )
    if kind == "caffe" and len(files) < 2:
        pytest.skip("the hash matched; a fresh Caffe conversion needs both --caffe-prototxt and --caffe-model")
    fresh = reconvert(kind, meta, files, u.arch)
    state = load_model(u.converted).state_dict()
    stored = {k: v for k, v in state.items() if k in fresh or not k.startswith("aux.")}
    assert set(fresh) == set(stored), (
        f"tensor names differ from a fresh conversion: only in the file {sorted(set(stored) - set(fresh))[:5]}, "
        f"only in the fresh one {sorted(set(fresh) - set(stored))[:5]}"
    )
    differ = [k for k, t in fresh.items() if not torch.equal(stored[k], t)]
    assert not differ, f"{len(differ)} of {len(fresh)} tensors differ from a fresh conversion: {differ[:5]}"

"""Inference: the fused form of converted models, ``predict`` on images, latency benchmarks.

Submodules are imported on use (``segconvert.inference.fuse``, ``.onednn``, ``.prepare``, ``.predict``,
``.benchmark``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["fuse_model", "onednn_model", "prepare_model", "predict", "benchmark_model"]

_WHERE = {
    "fuse_model": "segconvert.inference.fuse",
    "onednn_model": "segconvert.inference.onednn",
    "prepare_model": "segconvert.inference.prepare",
    "predict": "segconvert.inference.predict",
    "benchmark_model": "segconvert.inference.benchmark",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'segconvert.inference' has no attribute {name!r}")

"""Training converted Caffe nets in PyTorch with Caffe's exact solver semantics (``segconvert train``).

Modules: :mod:`.solver` (solver.prototxt), :mod:`.schedules` (lr policies), :mod:`.optim` (Caffe's solvers),
:mod:`.losses`, :mod:`.caffe_net` (a TRAIN-phase net), :mod:`.data` / :mod:`.data_hdf5` (data layers),
:mod:`.engine` (the loop, hooks, state), :mod:`.build` (solver file -> trainer), :mod:`.snapshots`.
Names below are imported on first use, so ``import segconvert.train`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Trainer": ".engine",
    "StepRecord": ".engine",
    "trainer_from_solver": ".build",
    "read_solver": ".solver",
    "parse_solver": ".solver",
    "SolverConfig": ".solver",
    "CaffeOptimizer": ".optim",
    "caffe_learning_rate": ".schedules",
    "CaffeTrainNet": ".caffe_net",
    "SnapshotHook": ".snapshots",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

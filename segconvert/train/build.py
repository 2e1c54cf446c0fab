"""From a ``solver.prototxt`` (and initial weights) to a ready :class:`~segconvert.train.engine.Trainer`.

:func:`trainer_from_solver` reads the solver, loads its train net in the TRAIN phase with the ``init.caffemodel``
(``weights``) or takes the weights of a converted generic model (``init``: a ``segconvert caffe2torch --generic``
safetensors file of the same net), builds the generic Caffe module, wraps it as a
:class:`~segconvert.train.caffe_net.CaffeTrainNet`, and picks the data source from the net's data layer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from segconvert.errors import ConversionError, WeightsFileError

from .solver import SolverConfig, read_solver

__all__ = ["TrainSetup", "trainer_from_solver", "load_train_net"]


class TrainSetup:
    """Where a run came from: solver, net and weights files (for snapshot metadata)."""

    def __init__(self, solver: SolverConfig, net_path: Path, weights: Path | None, init: Path | None) -> None:
        self.solver, self.net_path, self.weights, self.init = solver, net_path, weights, init

    def source_files(self) -> list[Path]:
        files = [p for p in (self.solver.path, self.net_path, self.weights, self.init) if p is not None]
        return [Path(p) for p in files]


def load_train_net(
    solver: SolverConfig,
    weights: str | os.PathLike[str] | None = None,
    init: str | os.PathLike[str] | None = None,
    arch: str = "auto",
) -> Any:
    """The solver's train net with its initial weights: the named DeepLab-v2 model when ``arch="auto"`` and it
    reproduces the net exactly (:func:`~segconvert.train.named_net.named_deeplab_net`, from a caffemodel), else
    a :class:`CaffeTrainNet` over the generic module (``arch="generic"`` always). ``.arch_path`` says which."""
    from segconvert.converters.caffe_generic import convert_caffe_generic
    from segconvert.graph import load_net
    from segconvert.reference_models.caffe_generic import CaffeGenericNet

    from .caffe_net import CaffeTrainNet

    if solver.net_path is None:
        where = "net_param" if "net_param" in solver.set_fields else "train_net_param"
        raise ConversionError(
            f"an inline {where} is not supported: put the net in a file and name it with net:", **solver.where(where)
        )
    if weights is not None and init is not None:
        raise ConversionError("give initial weights as a caffemodel or as a converted file, not both")
    if weights is None and init is None and solver.weights:
        from .solver import resolve_path

        weights = resolve_path(solver.weights[0], solver.path.parent if solver.path is not None else None)
        if weights is None or len(solver.weights) > 1:
            why = "not found" if weights is None else "more than one file is not supported"
            raise ConversionError(f"weights {solver.weights}: {why}", **solver.where("weights"))
    if weights is None and init is None:
        raise ConversionError(
            "initial weights are needed (--weights init.caffemodel or --init converted.safetensors)", file=solver.path
        )
    if arch not in ("auto", "generic"):
        raise ValueError(f"arch must be 'auto' or 'generic', got {arch!r}")
    if weights is not None:
        net = load_net(solver.net_path, Path(weights), phase="TRAIN")
        reason = "requested"
        if arch == "auto":
            from .named_net import named_deeplab_net

            named, reason = named_deeplab_net(net)
            if named is not None:
                return named
        conv = convert_caffe_generic(net)
        model = CaffeGenericNet(**conv.config)
        model.load_state_dict(conv.state_dict)
        wrapped = CaffeTrainNet(net, model)
        wrapped.arch_path = f"generic ({reason})"
        return wrapped
    from segconvert.weights.store import load_model

    net = load_net(solver.net_path, phase="TRAIN")
    model = load_model(Path(init))
    if str(getattr(model, "arch_name", "")).startswith("deeplabv2") and arch == "auto":
        from .named_net import named_deeplab_from_model

        named, reason = named_deeplab_from_model(net, model)
        if named is None:
            raise WeightsFileError(f"a DeepLab-v2 init does not fit the train net: {reason}", file=init)
        return named
    if getattr(model, "arch_name", None) != "caffe_generic":
        raise WeightsFileError(
            f"training starts from a generic conversion of the train net; this file holds {model.arch_name!r} "
            "(convert with caffe2torch --generic, or give --weights init.caffemodel)",
            file=init,
        )
    from .caffe_net import _DATA_TYPES, LOSS_TYPES, METRIC_TYPES

    converted = {spec["name"]: spec["type"] for spec in model.config["layers"]}
    side = {*_DATA_TYPES, *LOSS_TYPES, *METRIC_TYPES, "Silence", "Interp", "Split"}
    missing = [
        f"{layer.name} ({layer.type})"
        for layer in net.layers
        if converted.get(layer.name) != layer.type and layer.type not in side
    ]
    if missing:
        raise WeightsFileError(
            f"the converted net lacks layers of the train net: {', '.join(missing[:5])} "
            "(convert the net's deploy prototxt with caffe2torch --generic)",
            file=init,
        )
    wrapped = CaffeTrainNet(net, model)
    wrapped.arch_path = "generic (--init)"
    return wrapped


def trainer_from_solver(
    solver: str | os.PathLike[str] | SolverConfig,
    *,
    weights: str | os.PathLike[str] | None = None,
    init: str | os.PathLike[str] | None = None,
    data: Any = None,
    device: str = "cpu",
    max_iter: int | None = None,
    hooks: list[Any] | None = None,
    arithmetic: str = "fma",
    form: str = "caffe",
    arch: str = "auto",
) -> Any:
    """A :class:`Trainer` for ``solver`` (a path or a parsed config). ``data``: a data source overriding the net's
    data layer (required for nets fed by ``Input`` layers: any iterable of ``{top: array}`` batches)."""
    from .data import data_source_for
    from .data_hdf5 import InputSource
    from .engine import Trainer

    cfg = solver if isinstance(solver, SolverConfig) else read_solver(solver)
    net = load_train_net(cfg, weights, init, arch)
    seed = int(cfg.random_seed) if int(cfg.random_seed) >= 0 else 0
    if data is None:
        data = data_source_for(net.net, seed=seed)
        if data is None:
            raise ConversionError(
                "the train net has no data layer (Input only): pass its batches as data=", file=net.net.prototxt
            )
    elif not hasattr(data, "next_batch"):
        data = InputSource(data)
    if seed >= 0:
        import torch

        torch.manual_seed(seed)
    trainer = Trainer(
        net, cfg, data, device=device, hooks=hooks or [], max_iter=max_iter, arithmetic=arithmetic, form=form
    )
    caffemodel = getattr(net.net, "caffemodel", None)  # also the solver's own weights: field
    trainer.setup = TrainSetup(
        cfg, Path(net.net.prototxt), Path(caffemodel) if caffemodel else None, Path(init) if init else None
    )
    return trainer

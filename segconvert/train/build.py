"""From a ``solver.prototxt`` (and initial weights) to a ready :class:`~segconvert.train.engine.Trainer`.

:func:`trainer_from_solver` reads the solver, loads its train net (a file or the inline ``net_param``, in the
TRAIN phase and the solver's ``train_state``, :mod:`segconvert.train.netspec`) with the ``init.caffemodel``
(``weights``), the weights of a converted generic model (``init``: a ``segconvert caffe2torch --generic``
safetensors file of the same net) or, with neither, the layers' fillers (:mod:`segconvert.train.fillers`),
builds the generic Caffe module, wraps it as a :class:`~segconvert.train.caffe_net.CaffeTrainNet`, picks the
data source from the net's data layer, and adds the solver's test phase
(:class:`~segconvert.train.solver_test.SolverTestHook`, ``trainer.solver_test``) when it has test nets.
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

    def __init__(self, solver: SolverConfig, net_path: Path | None, weights: Path | None, init: Path | None) -> None:
        self.solver, self.net_path, self.weights, self.init = solver, net_path, weights, init

    def source_files(self) -> list[Path]:
        files = [p for p in (self.solver.path, self.net_path, self.weights, self.init) if p is not None]
        return [Path(p) for p in files]


def load_train_net(
    solver: SolverConfig,
    weights: str | os.PathLike[str] | None = None,
    init: str | os.PathLike[str] | None = None,
    arch: str = "auto",
    data: Any = None,
) -> Any:
    """The solver's train net with its initial weights: the named DeepLab-v2 model when ``arch="auto"`` and it
    reproduces the net exactly (:func:`~segconvert.train.named_net.named_deeplab_net`, from a caffemodel or the
    fillers), else a :class:`CaffeTrainNet` over the generic module (``arch="generic"`` always). ``.arch_path``
    says which. Without ``weights``/``init`` (and no solver ``weights:``) the parameters come from the layers'
    fillers (:mod:`segconvert.train.fillers`, seeded by ``random_seed``); then the net's data source (``data``,
    or one built from its data layer) gives the data shapes and is kept as ``.filler_data``."""
    from .netspec import load_spec, train_net_spec

    spec = train_net_spec(solver)
    if weights is not None and init is not None:
        raise ConversionError("give initial weights as a caffemodel or as a converted file, not both")
    if weights is None and init is None and solver.weights:
        from .solver import resolve_path

        weights = resolve_path(solver.weights[0], solver.path.parent if solver.path is not None else None)
        if weights is None or len(solver.weights) > 1:
            why = "not found" if weights is None else "more than one file is not supported"
            raise ConversionError(f"weights {solver.weights}: {why}", **solver.where("weights"))
    if arch not in ("auto", "generic"):
        raise ValueError(f"arch must be 'auto' or 'generic', got {arch!r}")
    if weights is not None:
        return _from_graph(load_spec(spec, Path(weights)), arch)
    if init is None:
        from .data import data_source_for
        from .fillers import fill_net
        from .solver_test import data_top_shapes

        net = load_spec(spec)
        source = data if data is not None else data_source_for(net, seed=solver_seed(solver))
        fill_net(net, solver_seed(solver), data_top_shapes(source) if source is not None else None)
        wrapped = _from_graph(net, arch, reason_prefix="fillers, ")
        wrapped.filler_data = source
        return wrapped
    from segconvert.weights.store import load_model

    net = load_spec(spec)
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
    from .caffe_net import _DATA_TYPES, LOSS_TYPES, METRIC_TYPES, CaffeTrainNet

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


def solver_seed(solver: SolverConfig) -> int:
    """The seed of fillers, data shuffling and torch: ``random_seed``, or 0 when it is unset (-1)."""
    return int(solver.random_seed) if int(solver.random_seed) >= 0 else 0


def _from_graph(net: Any, arch: str, reason_prefix: str = "") -> Any:
    """The train module of a graph net that holds its blobs (from a caffemodel or the fillers)."""
    from segconvert.reference_models.caffe_generic import CaffeGenericNet

    from .caffe_net import CaffeTrainNet
    from .fillers import convert_filled

    reason = "requested"
    if arch == "auto":
        from .named_net import named_deeplab_net

        named, reason = named_deeplab_net(net)
        if named is not None:
            return named
    conv = convert_filled(net)
    model = CaffeGenericNet(**conv.config)
    model.load_state_dict(conv.state_dict)
    wrapped = CaffeTrainNet(net, model)
    wrapped.arch_path = f"generic ({reason_prefix}{reason})"
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
    import torch

    from .data import data_source_for
    from .data_hdf5 import InputSource
    from .engine import Trainer

    cfg = solver if isinstance(solver, SolverConfig) else read_solver(solver)
    if data is not None and not hasattr(data, "next_batch"):
        data = InputSource(data)
    net = load_train_net(cfg, weights, init, arch, data=data)
    seed = solver_seed(cfg)
    if data is None:
        data = getattr(net, "filler_data", None) or data_source_for(net.net, seed=seed)
        if data is None:
            raise ConversionError(
                "the train net has no data layer (Input only): pass its batches as data=", file=net.net.prototxt
            )
    torch.manual_seed(seed)
    trainer = Trainer(
        net, cfg, data, device=device, hooks=hooks or [], max_iter=max_iter, arithmetic=arithmetic, form=form
    )
    caffemodel = getattr(net.net, "caffemodel", None)  # also the solver's own weights: field
    trainer.setup = TrainSetup(
        cfg,
        Path(net.net.prototxt) if net.net.prototxt else None,
        Path(caffemodel) if caffemodel else None,
        Path(init) if init else None,
    )
    trainer.solver_test = None
    if len(cfg.test_iter):
        from .solver_test import SolverTestHook, build_test_nets

        with torch.random.fork_rng(devices=[]):  # building modules draws from torch's RNG: keep training's stream
            nets = build_test_nets(cfg, net, weights=caffemodel, seed=seed, device=trainer.device)
        trainer.solver_test = SolverTestHook(cfg, nets)
        trainer.hooks.insert(0, trainer.solver_test)
    return trainer

"""The solver's test phase: Caffe's ``Solver::TestAll`` every ``test_interval`` iterations.

:class:`SolverTestHook` is a trainer hook (:mod:`segconvert.train.engine`). Caffe runs ``TestAll`` at the start
of ``Step``'s loop when ``iter_ % test_interval == 0`` (at ``iter_ == 0`` only with ``test_initialization``,
default true) and once more after the last iteration when ``max_iter % test_interval == 0``; here that is
``on_train_start`` at iteration 0 and ``on_step_end`` whenever ``trainer.iteration % test_interval == 0``, the
same weights. A resumed run does not repeat the test of the iteration it resumes at (the first run did it).

Each test net (:func:`~segconvert.train.netspec.test_net_specs`) is built once in its TEST phase and shares every
blob of a same-named train layer, as ``Net::ShareTrainedLayersWith`` does (the tensors are the train net's: its
BatchNorm statistics included); its other layers keep their filled (or caffemodel) blobs. A test is
``test_iter[i]`` forward passes in eval mode without gradients (BatchNorm with the stored statistics, Dropout
off), each on the next batch of the test net's own data layer, whose position carries over from one test to the
next. Each output blob (Caffe's net outputs: the unconsumed tops, sorted by name) is summed over the passes in
float32 and divided by ``test_iter`` in float32; ``test_compute_loss`` also averages the net's total loss. The
lines are Caffe's (``Iteration N, Testing net (#i)``, ``Test net output #k: name = v (* w = w*v loss)``) and each
test is one ``{"iter", "event": "test", "net", "outputs", ...}`` record of ``train_log.jsonl``. Training is not
disturbed: no gradients, no RNG draw, no BatchNorm update, its own data source.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TextIO

import numpy as np
import torch

from segconvert.errors import ConversionError

from .log import caffe_number

__all__ = ["SolverTestHook", "build_test_nets", "tie_to_train_net"]


def _module_of(model: Any) -> dict[str, Any]:
    return {
        spec["name"]: model.get_submodule(spec["module"])
        for spec in model.config["layers"]
        if spec.get("module") and not spec.get("shared_from")
    }


def tie_to_train_net(test: Any, train: Any) -> int:
    """Make ``test``'s layers use the tensors of ``train``'s same-named layers (both
    :class:`~segconvert.train.caffe_net.CaffeTrainNet`); returns how many layers share. A shape mismatch is
    Caffe's "Cannot share param" error."""
    if not hasattr(train, "model") or not hasattr(train.model, "config"):
        raise ConversionError(
            f"the solver's test phase needs the generic train module, not {getattr(train, 'arch_path', '?')}: "
            "train with --generic (arch='generic')",
            file=getattr(train.net, "prototxt", None),
        )
    src, dst = _module_of(train.model), _module_of(test.model)
    shared = 0
    for name, target in dst.items():
        source = src.get(name)
        if source is None:
            continue
        own = dict(target.named_parameters(recurse=False)) | dict(target.named_buffers(recurse=False))
        theirs = dict(source.named_parameters(recurse=False)) | dict(source.named_buffers(recurse=False))
        if sorted(own) != sorted(theirs):
            raise ConversionError(f"incompatible number of blobs for layer {name}", file=test.net.prototxt, layer=name)
        for key, tensor in own.items():
            other = theirs[key]
            if tuple(tensor.shape) != tuple(other.shape):
                raise ConversionError(
                    f"cannot share {key} weights from layer '{name}': shape mismatch, source {list(other.shape)}, "
                    f"target {list(tensor.shape)}",
                    file=test.net.prototxt,
                    layer=name,
                )
            if key in target._parameters:
                target._parameters[key] = other
            else:
                target._buffers[key] = other
        shared += 1
    return shared


def build_test_nets(cfg: Any, train: Any, *, weights: Any = None, seed: int = 0, device: Any = "cpu") -> list[Any]:
    """One ``(spec, CaffeTrainNet, data source)`` per test net of solver ``cfg``, tied to ``train``."""
    from segconvert.formats.caffemodel import read_caffemodel
    from segconvert.reference_models.caffe_generic import CaffeGenericNet

    from .caffe_net import CaffeTrainNet
    from .data import data_source_for
    from .fillers import convert_filled, fill_net
    from .netspec import load_spec, test_net_specs

    specs = test_net_specs(cfg)
    if not specs:
        return []
    model_file = read_caffemodel(weights) if weights is not None else None
    by_name = {layer.name: layer for layer in model_file.layers} if model_file is not None else {}
    in_train = {layer.name for layer in train.net.layers}
    nets = []
    for spec in specs:
        net = load_spec(spec)
        for layer in net.layers:  # layers not in the train net start from the caffemodel (Caffe: weights:)
            src = by_name.get(layer.name)
            if src is not None and src.blobs and layer.name not in in_train:
                layer.blobs = list(src.blobs)
        data = data_source_for(net, seed=seed)
        if data is None:
            raise ConversionError(f"the test net ({spec.what}) has no data layer in its TEST phase", file=net.prototxt)
        fill_net(net, seed, data_top_shapes(data))
        conv = convert_filled(net)
        model = CaffeGenericNet(**conv.config)
        model.load_state_dict(conv.state_dict)
        wrapped = CaffeTrainNet(net, model).to(device)
        tie_to_train_net(wrapped, train)
        nets.append((spec, wrapped, data))
    return nets


def data_top_shapes(data: Any) -> dict[str, tuple[int, ...]] | None:
    """The data layer's top shapes as its source delivers them (``top_shapes()``), when it can tell."""
    fn = getattr(data, "top_shapes", None)
    return fn() if fn is not None else None


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.ascontiguousarray(v)).to(device) for k, v in batch.items()}


class SolverTestHook:
    """Caffe's test phase as a trainer hook (module docstring). ``jsonl``: a :class:`~segconvert.train.log.JsonlLog`
    for the ``"event": "test"`` records; ``stream``: where Caffe's lines are printed (None: kept in ``lines``)."""

    def __init__(self, cfg: Any, nets: list[Any], *, jsonl: Any = None, stream: TextIO | None = None) -> None:
        self.cfg, self.nets, self.jsonl, self.stream = cfg, nets, jsonl, stream
        self.tensorboard: Any = None  # a TensorBoardLog: scalars test<net>/<output>
        self.interval = int(cfg.test_interval)
        self.test_iter = [int(n) for n in cfg.test_iter]
        self.initialization = bool(cfg.test_initialization)
        self.compute_loss = bool(cfg.test_compute_loss)
        self.results: list[dict[str, Any]] = []
        self.lines: list[str] = []

    def _print(self, line: str) -> None:
        self.lines.append(line)
        if self.stream is not None:
            print(line, file=self.stream, flush=True)

    def on_train_start(self, trainer: Any) -> None:
        if trainer.iteration == 0 and self.interval > 0 and self.initialization:
            self.test_all(trainer)

    def on_step_end(self, trainer: Any, record: Any) -> None:
        if self.interval > 0 and trainer.iteration % self.interval == 0:
            self.test_all(trainer)

    def test_all(self, trainer: Any) -> list[dict[str, Any]]:
        """Every test net once, at the trainer's current weights (``Solver::TestAll``)."""
        return [self.test(trainer, i) for i in range(len(self.nets))]

    @torch.no_grad()
    def test(self, trainer: Any, index: int) -> dict[str, Any]:
        """``Solver::Test(index)``: ``test_iter[index]`` passes, the mean of each output."""
        spec, net, data = self.nets[index]
        device = trainer.device
        self._print(f"Iteration {trainer.iteration}, Testing net (#{index})")
        outputs = net.output_blobs()
        was_training = net.training
        net.eval()
        sums: list[np.ndarray] | None = None
        loss = np.float32(0)
        n = self.test_iter[index]
        for _ in range(n):
            out = net(_to_device(data.next_batch(), device))
            loss = np.float32(loss + np.float32(out.total.item()))
            values = [out.blobs[name].detach().float().reshape(-1).cpu().numpy() for name, _ in outputs]
            sums = values if sums is None else [np.float32(a + b) for a, b in zip(sums, values, strict=True)]
        net.train(was_training)
        record: dict[str, Any] = {"iter": trainer.iteration, "event": "test", "net": index, "test_iter": n}
        if self.compute_loss:
            record["loss"] = float(np.float32(loss / np.float32(n))) if n else 0.0
            self._print(f"Test loss: {caffe_number(record['loss'])}")
        means: dict[str, Any] = {}
        k = 0
        for (name, weight), total in zip(outputs, sums or [], strict=False):
            mean = (total / np.float32(n)).astype(np.float32)
            for v in mean:
                tail = f" (* {caffe_number(weight)} = {caffe_number(np.float32(weight) * v)} loss)" if weight else ""
                self._print(f"    Test net output #{k}: {name} = {caffe_number(v)}{tail}")
                k += 1
            means[name] = float(mean[0]) if mean.size == 1 else [float(v) for v in mean]
        record["outputs"] = means
        record["loss_weights"] = {name: w for name, w in outputs if w}
        self.results.append(record)
        if self.jsonl is not None:
            self.jsonl.write(record)
        if self.tensorboard is not None:
            scalars = {k: v for k, v in means.items() if not isinstance(v, list)}
            if "loss" in record:
                scalars["total_loss"] = record["loss"]
            self.tensorboard.scalars(f"test{index}", scalars, trainer.iteration)
        return record

    # --------------------------------------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        """The test data sources' positions (a resumed run reads the same test batches)."""
        return {"data": [data.state_dict() for _, _, data in self.nets]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for (_, _, data), s in zip(self.nets, state.get("data", []), strict=False):
            data.load_state_dict(s)

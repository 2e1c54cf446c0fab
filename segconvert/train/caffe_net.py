"""A Caffe TRAIN-phase net as a trainable PyTorch module: the generic Caffe model plus labels, losses, metrics.

:class:`CaffeTrainNet` wraps :class:`~segconvert.reference_models.caffe_generic.CaffeGenericNet` (built by the
generic converter from the TRAIN-phase net) and runs what inference leaves out, in Caffe's semantics:

- the label branch (e.g. DeepLab's ``label_shrink`` ``Interp`` of the float label, then truncation by the loss);
- loss layers ``SoftmaxWithLoss``, ``SigmoidCrossEntropyLoss``, ``EuclideanLoss`` with ``loss_weight`` (the net's
  total is ``sum(loss_weight * loss)``, Caffe's ``Net::ForwardFromTo`` value) and metrics ``Accuracy`` /
  ``SegAccuracy`` (reported, no gradient);
- parameters: :meth:`CaffeTrainNet.param_groups` lists each learnable blob once (shared blobs, Caffe param names,
  belong to their owner's module, so autograd sums every sharer's gradient, e.g. the three MSC branches), with
  its ``lr_mult``/``decay_mult``. Blobs with ``lr_mult: 0`` get ``requires_grad=False`` and are never updated
  (no weight decay either), exactly as Caffe leaves them;
- ``BatchNorm``: ``use_global_stats: true`` uses the stored statistics also under ``model.train()`` (frozen);
  otherwise batch statistics in training, and Caffe's moving-average update of its three blobs
  (``s = f*s + 1``, ``mean_acc = batch_mean + f*mean_acc``, ``var_acc = m/(m-1)*batch_var + f*var_acc``) kept in
  :attr:`CaffeTrainNet.bn_blobs`; the module's ``running_mean``/``running_var`` follow as ``acc / s``.
  PSPNet ``BN`` layers train only when frozen (``bn_param { frozen: true }``, the released recipes);
- ``Dropout`` drops (scaled by ``1/(1-p)``) in training, as Caffe's TRAIN phase.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from segconvert.errors import ConversionError
from segconvert.graph import Net
from segconvert.graph.shapes import interp_args
from segconvert.reference_models.caffe_generic import CaffeGenericNet
from segconvert.reference_models.caffe_ops import BatchNorm
from segconvert.reference_models.ops import Interp

from . import losses

__all__ = ["CaffeTrainNet", "NetOutput", "ParamEntry", "LOSS_TYPES", "METRIC_TYPES", "layer_line"]

LOSS_TYPES = ("SoftmaxWithLoss", "SigmoidCrossEntropyLoss", "EuclideanLoss")
METRIC_TYPES = ("Accuracy", "SegAccuracy")
_DATA_TYPES = ("HDF5Data", "Input", "Data", "ImageData", "ImageSegData", "MemoryData", "WindowData", "DummyData")
_NORMALIZATION = {0: "FULL", 1: "VALID", 2: "BATCH_SIZE", 3: "NONE"}


def layer_line(path: Path | None, name: str) -> int | None:
    """Line of layer ``name``'s ``name:`` field in a prototxt (best effort)."""
    if path is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    m = re.search(r'name\s*:\s*"' + re.escape(name) + r'"', text)
    return text.count("\n", 0, m.start()) + 1 if m else None


@dataclass
class ParamEntry:
    """One learnable Caffe blob: key ``"layer/blob index"``, its tensor, multipliers and the layers sharing it."""

    key: str
    tensor: Tensor
    lr_mult: float
    decay_mult: float
    state_key: str = ""  # its key in the generic module's state_dict (``conv1.weight``)
    shared_by: list[str] = field(default_factory=list)


@dataclass
class NetOutput:
    total: Tensor  # sum of loss_weight * loss, what backward starts from
    losses: dict[str, Tensor]  # loss layer -> its (unweighted) top
    metrics: dict[str, float]
    valid_counts: dict[str, int]
    blobs: dict[str, Tensor] = field(default_factory=dict)  # the net's output blobs (:meth:`output_blobs`)


class CaffeTrainNet(nn.Module):
    """The TRAIN-phase net ``net`` (a :class:`~segconvert.graph.Net` loaded with ``phase="TRAIN"``), generic module
    ``model`` and its converted config; ``forward(batch)`` takes the data layers' tops by name."""

    def __init__(self, net: Net, model: CaffeGenericNet) -> None:
        super().__init__()
        self.net = net
        self.model = model
        self.data_layers = [layer for layer in net.layers if layer.type in _DATA_TYPES]
        self.input_names = list(model.input_names)
        self.data_tops = [t for layer in self.data_layers for t in layer.tops]
        in_model = {spec["name"] for spec in model.config["layers"]}
        self.extra: list[Any] = []  # label-branch, loss and metric layers, in net order
        self.label_modules = nn.ModuleDict()
        for layer in net.layers:
            if layer.name in in_model or layer.type in _DATA_TYPES or layer.type == "Silence":
                continue
            if layer.type in LOSS_TYPES or layer.type in METRIC_TYPES:
                self.extra.append(layer)
            elif layer.type == "Interp":
                self.label_modules[_key(layer.name)] = Interp(**interp_args(layer.param.interp_param))
                self.extra.append(layer)
            elif layer.type == "Split":
                self.extra.append(layer)
            else:
                raise self._fail(f"{layer.type} layer is not supported in training", layer.name)
        if net.phase == "TRAIN" and not any(layer.type in LOSS_TYPES for layer in self.extra):
            raise self._fail(
                "the train net has no supported loss layer (SoftmaxWithLoss, SigmoidCrossEntropyLoss, EuclideanLoss)"
            )
        self._entries = self._param_entries()
        self._outputs = self._find_outputs()
        self.bn_blobs: dict[str, list[Tensor]] = {}
        self._bn_setup()

    # --------------------------------------------------------------------------------------------- setup
    def _fail(self, message: str, layer: str | None = None) -> ConversionError:
        path = self.net.prototxt
        return ConversionError(message, file=path, line=layer_line(path, layer) if layer else None, layer=layer)

    def _param_entries(self) -> list[ParamEntry]:
        entries: list[ParamEntry] = []
        owner_entries: dict[str, list[ParamEntry]] = {}
        for spec in self.model.config["layers"]:
            module_name = spec.get("module")
            if module_name is None:
                continue
            if spec.get("shared_from"):
                for e in owner_entries.get(spec["shared_from"], []):
                    e.shared_by.append(spec["name"])
                continue
            if spec["name"] not in self.net:  # e.g. a deploy net's extra layer (--init): no multipliers declared
                own = [
                    ParamEntry(f"{spec['name']}/{i}", p, 1.0, 1.0, f"{module_name}.{n}")
                    for i, (n, p) in enumerate(self.model.get_submodule(module_name).named_parameters(recurse=False))
                ]
                owner_entries[spec["name"]] = own
                entries.extend(own)
                continue
            layer = self.net.layer(spec["name"])
            module = self.model.get_submodule(module_name)
            if spec["type"] == "BN":
                frozen = layer.param.bn_param.frozen if layer.param.HasField("bn_param") else False
                if not frozen:
                    raise self._fail("PSPNet BN with frozen: false (batch statistics) is not supported", layer.name)
            own: list[ParamEntry] = []
            for i, (pname, p) in enumerate(module.named_parameters(recurse=False)):
                ps = layer.param.param[i] if i < len(layer.param.param) else None
                lr = float(ps.lr_mult) if ps is not None else 1.0
                decay = float(ps.decay_mult) if ps is not None else 1.0
                e = ParamEntry(f"{layer.name}/{i}", p, lr, decay, f"{module_name}.{pname}")
                p.requires_grad_(lr != 0)
                own.append(e)
            owner_entries[layer.name] = own
            entries.extend(own)
        return entries

    def _bn_setup(self) -> None:
        for spec in self.model.config["layers"]:
            if spec["type"] != "BatchNorm" or spec["name"] not in self.net:
                continue
            layer = self.net.layer(spec["name"])
            module = self.model.get_submodule(spec["module"])
            p = layer.param.batch_norm_param
            test = self.net.phase == "TEST"
            train_global = bool(p.use_global_stats) if p.HasField("use_global_stats") else test  # Caffe's default
            if test and not train_global:
                raise self._fail(
                    "BatchNorm with use_global_stats: false in a TEST-phase net (batch statistics, updating the "
                    "shared moving averages) is not supported",
                    layer.name,
                )
            if module.use_global_stats != train_global:  # e.g. --init from a deploy (TEST-phase) conversion
                module.use_global_stats = train_global
                spec["params"]["use_global_stats"] = train_global
            if train_global or spec.get("shared_from"):
                continue
            if layer.blobs and len(layer.blobs) == 3:
                raw = [torch.from_numpy(np.array(b, dtype=np.float32).reshape(-1)) for b in layer.blobs]
            else:
                raw = [module.running_mean.clone(), module.running_var.clone(), torch.ones(1)]
            self.bn_blobs[spec["name"]] = raw
            module.register_forward_hook(
                _bn_moving_average(self, spec["name"], float(np.float32(p.moving_average_fraction)))
            )

    # --------------------------------------------------------------------------------------------- API
    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer groups (``params``, ``name``, ``lr_mult``, ``decay_mult``) of the trainable blobs, each once."""
        return [
            {"params": [e.tensor], "name": e.key, "lr_mult": e.lr_mult, "decay_mult": e.decay_mult}
            for e in self._entries
            if e.lr_mult != 0
        ]

    def param_entries(self) -> list[ParamEntry]:
        """Every learnable blob (frozen ones included), owners only."""
        return list(self._entries)

    def blob(self, key: str) -> Tensor:
        """The tensor of Caffe blob ``"layer/index"`` (learnable blobs; BatchNorm: the module's statistics)."""
        for e in self._entries:
            if e.key == key:
                return e.tensor
        raise KeyError(key)

    def forward(self, batch: dict[str, Tensor]) -> NetOutput:  # type: ignore[override]
        missing = [n for n in (*self.input_names, *self._label_inputs()) if n not in batch]
        if missing:
            raise ValueError(f"batch lacks {missing}")
        blobs: dict[str, Tensor] = dict(self.model._run(tuple(batch[n] for n in self.input_names), None))
        for name, value in batch.items():
            blobs.setdefault(name, value)
        terms: dict[str, Tensor] = {}
        weights: dict[str, float] = {}
        metrics: dict[str, float] = {}
        counts: dict[str, int] = {}
        for layer in self.extra:
            bottoms = [blobs[b] for b in layer.bottoms]
            if layer.type == "Interp":
                blobs[layer.tops[0]] = self.label_modules[_key(layer.name)](bottoms[0].to(torch.float32))
            elif layer.type == "Split":
                for t in layer.tops:
                    blobs[t] = bottoms[0]
            elif layer.type in LOSS_TYPES:
                value, count = self._loss(layer, bottoms)
                name = layer.tops[0] if layer.tops else layer.name
                terms[layer.name] = value
                counts[layer.name] = count
                weights[layer.name] = float(layer.param.loss_weight[0]) if len(layer.param.loss_weight) else 1.0
                blobs[name] = value
            else:
                values = self._metric(layer, bottoms)
                metrics.update(values)
                if layer.tops:
                    blobs[layer.tops[0]] = torch.tensor(list(values.values()), dtype=torch.float32)
        device = next(iter(terms.values())).device if terms else next(iter(batch.values())).device
        total = sum(
            (w * terms[n] if w != 1 else terms[n] for n, w in weights.items() if w != 0),
            torch.zeros((), device=device),
        )
        outputs = {name: blobs[name] for name, _ in self.output_blobs() if name in blobs}  # not the activations
        return NetOutput(total=total, losses=terms, metrics=metrics, valid_counts=counts, blobs=outputs)

    def output_blobs(self) -> list[tuple[str, float]]:
        """Caffe's net outputs: the tops no later layer reads, sorted by name (``Net::Init`` keeps them in a
        ``std::set``), each with its loss weight (a loss layer's ``loss_weight``, default 1; 0 otherwise)."""
        return list(self._outputs)

    def _find_outputs(self) -> list[tuple[str, float]]:
        available: set[str] = set()
        weight: dict[str, float] = {}
        for layer in self.net.layers:
            available.difference_update(layer.bottoms)
            available.update(layer.tops)
            for top in layer.tops:
                weight[top] = 0.0
            if layer.type in LOSS_TYPES and layer.tops:
                w = layer.param.loss_weight
                weight[layer.tops[0]] = float(np.float32(w[0])) if len(w) else 1.0
        return [(name, weight[name]) for name in sorted(available)]

    def _label_inputs(self) -> list[str]:
        return [t for t in self.data_tops if t not in self.input_names]

    def _loss(self, layer: Any, bottoms: list[Tensor]) -> tuple[Tensor, int]:
        lp = layer.param.loss_param
        ignore = int(lp.ignore_label) if lp.HasField("ignore_label") else None
        if layer.type == "SoftmaxWithLoss":
            mode = _mode(lp, "VALID")
            axis = int(layer.param.softmax_param.axis) if layer.param.HasField("softmax_param") else 1
            return losses.softmax_with_loss(bottoms[0], bottoms[1], ignore_label=ignore, normalization=mode, axis=axis)
        if layer.type == "SigmoidCrossEntropyLoss":
            mode = _mode(lp, "BATCH_SIZE")
            value = losses.sigmoid_cross_entropy_loss(bottoms[0], bottoms[1], ignore_label=ignore, normalization=mode)
            return value, int(bottoms[1].numel())
        return losses.euclidean_loss(bottoms[0], bottoms[1]), int(bottoms[0].shape[0])

    def _metric(self, layer: Any, bottoms: list[Tensor]) -> dict[str, float]:
        if layer.type == "Accuracy":
            p = layer.param.accuracy_param
            ignore = int(p.ignore_label) if p.HasField("ignore_label") else None
            value = losses.accuracy(bottoms[0], bottoms[1], top_k=int(p.top_k), ignore_label=ignore, axis=int(p.axis))
            return {layer.tops[0] if layer.tops else layer.name: value}
        p = layer.param.seg_accuracy_param
        ignore = tuple(int(v) for v in p.ignore_label) or (255,)
        res = losses.seg_accuracy(bottoms[0], bottoms[1], ignore_labels=ignore)
        return {f"{layer.name}/{k}": v for k, v in res.items()}


def _key(name: str) -> str:
    return re.sub(r"\W", "_", name)


def _mode(lp: Any, default: str) -> str:
    if lp.HasField("normalization"):
        return _NORMALIZATION[int(lp.normalization)]
    if lp.HasField("normalize"):
        return "VALID" if lp.normalize else "BATCH_SIZE"
    return default


def _bn_moving_average(owner: CaffeTrainNet, name: str, fraction: float):
    """Forward hook: Caffe BatchNorm's moving-average update of its blobs in training (use_global_stats false)."""

    def hook(module: BatchNorm, inputs: tuple[Tensor, ...], _out: Tensor) -> None:
        if not module.training:
            return
        x = inputs[0].detach()
        dims = [0, *range(2, x.dim())]
        mean = x.mean(dims)
        var = (x - mean.reshape(1, -1, *([1] * (x.dim() - 2)))).pow(2).mean(dims)
        m = x.numel() // x.shape[1]
        correction = float(np.float32(m) / np.float32(m - 1)) if m > 1 else 1.0
        blobs = [b.to(x.device) for b in owner.bn_blobs[name]]
        s = blobs[2] * fraction + 1
        blobs = [mean + fraction * blobs[0], correction * var + fraction * blobs[1], s]
        owner.bn_blobs[name] = blobs
        factor = torch.where(s == 0, torch.zeros_like(s), 1 / s)
        module.running_mean.copy_(blobs[0] * factor)
        module.running_var.copy_(blobs[1] * factor)

    return hook

"""Caffe DeepLab-v2 / PSPNet -> reference-model state_dict, with strict accounting and a parity tap map.

:func:`convert_caffe_net` detects the architecture (:mod:`.caffe_detect`), builds the target model on the
``meta`` device, checks every Caffe layer's hyper-parameters against the matching module, and fills each
target tensor exactly once from blobs that are each used exactly once. MSC scale copies (``*_res075``,
``*_res05``, shared through param names) must equal their owner and are skipped. Data / loss / accuracy
layers are reported as skipped. Anything else left over raises :class:`ConversionError`.

Tap map: ``{caffe_blob: Tap(module, call, layer, top_index)}``. The blob's final value (after its in-place
chain, e.g. ``conv1`` after ``bn_conv1``/``scale_conv1``/``conv1_relu``) equals the output of
``model.get_submodule(module)`` on its ``call``-th invocation in one forward pass (MSC: 0 = 1x, 1 = 0.75x,
2 = 0.5x); ``f"{layer}/{top_index}"`` is the key of that value in a Caffe per-layer dump (fixtures'
``outputs.npz``). Use :func:`segconvert.reference_models.capture_outputs` to collect them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from segconvert.errors import ConversionError
from segconvert.graph import Layer, Net
from segconvert.graph.shapes import conv_geometry, interp_args, pool_geometry
from segconvert.reference_models.ops import (
    CaffePool2d,
    FrozenBatchNorm2d,
    Interp,
    caffe_bn_scale_to_params,
    interp_size,
    psp_bn_to_params,
)
from segconvert.reference_models.registry import create_model

from .caffe_detect import MSC_SUFFIXES, DetectedArch, detect_caffe_arch

__all__ = ["Tap", "CaffeConversion", "convert_caffe_net", "SKIPPED_TYPES"]

# Layers that are not part of the inference graph: inputs, labels, losses, metrics, post-processing.
SKIPPED_TYPES = {
    "Input": "input",
    "Data": "data layer",
    "ImageData": "data layer",
    "ImageSegData": "data layer",
    "HDF5Data": "data layer",
    "MemoryData": "data layer",
    "WindowData": "data layer",
    "DummyData": "data layer",
    "SoftmaxWithLoss": "loss",
    "SigmoidCrossEntropyLoss": "loss",
    "EuclideanLoss": "loss",
    "Accuracy": "metric",
    "SegAccuracy": "metric",
    "Silence": "no-op",
    "MatWrite": "writes results to disk",
    "DenseCRF": "CRF post-processing",
    "ArgMax": "post-processing",
    "Softmax": "post-processing (the model returns logits)",
}
_NORM_TYPES = ("BatchNorm", "Scale", "BN")
_WEIGHTED = ("Convolution", "BatchNorm", "Scale", "BN")


def _as_tensor(arr: np.ndarray) -> torch.Tensor:
    """A tensor sharing the (read-only, memory-mapped) blob's memory: no copy of the weights.

    Consumers only read it (``load_state_dict`` copies into the parameters, the writer streams it)."""
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the given NumPy array is not writable"
        return torch.from_numpy(arr)


class Tap(NamedTuple):
    """Where a Caffe blob's final value appears in the reference model (see module docstring)."""

    module: str
    call: int
    layer: str
    top_index: int = 0


@dataclass
class CaffeConversion:
    arch: str
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    skipped_layers: list[tuple[str, str, str]]  # (layer, type, reason)
    shared_copies: list[tuple[str, str]]  # (copy layer, owner layer)
    tap_map: dict[str, Tap]
    notes: list[str] = field(default_factory=list)

    def build_model(self, device: str | torch.device = "cpu") -> nn.Module:
        """``create_model(arch, **config)`` with the converted weights loaded (strict), in eval mode."""
        model = create_model(self.arch, **self.config)
        missing, unexpected = model.load_state_dict(self.state_dict, strict=False)
        missing = [k for k in missing if not k.startswith("aux.")]
        if missing or unexpected:
            raise ConversionError(f"state_dict does not fit {self.arch}: missing {missing}, unexpected {unexpected}")
        return model.to(device).eval()


class _Mapper:
    """Book-keeping: layer lookup, in-place chains, used blobs, filled targets, visited layers, taps."""

    def __init__(self, net: Net, model: nn.Module, with_weights: bool) -> None:
        self.net = net
        self.model = model
        self.with_weights = with_weights
        self.by_name = {layer.name: layer for layer in net.layers}
        self.targets = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        self.state: dict[str, torch.Tensor] = {}
        self.filled_from: dict[str, str] = {}
        self.used: dict[str, set[int]] = {}
        self.visited: set[str] = set()
        self.taps: dict[str, Tap] = {}
        self.notes: list[str] = []
        self.shared: list[tuple[str, str]] = []
        self.skipped: list[tuple[str, str, str]] = []
        self.chain: dict[str, list[str]] = {}  # head layer -> [head, in-place followers...]
        live: dict[str, str] = {}  # blob -> head of its current chain
        for layer in net.layers:
            if layer.in_place and layer.tops[0] in live:
                self.chain[live[layer.tops[0]]].append(layer.name)
            else:
                self.chain[layer.name] = [layer.name]
                for t in layer.tops:
                    live[t] = layer.name

    # ---------------------------------------------------------------- errors and lookups
    def fail(self, msg: str, layer: str | None = None) -> ConversionError:
        return ConversionError(msg, file=self.net.caffemodel or self.net.prototxt, layer=layer)

    def layer(self, name: str, type_: str | tuple[str, ...] | None = None) -> Layer:
        layer = self.by_name.get(name)
        if layer is None:
            raise self.fail(f"expected layer '{name}' is missing")
        types = (type_,) if isinstance(type_, str) else type_
        if types is not None and layer.type not in types:
            raise self.fail(f"expected {'/'.join(types)}, found {layer.type}", name)
        return layer

    def module(self, path: str) -> nn.Module:
        return self.model.get_submodule(path)

    # ---------------------------------------------------------------- weights
    def fill(self, key: str, value: np.ndarray, source: str) -> None:
        if key not in self.targets:
            raise self.fail(f"target tensor '{key}' does not exist in the model", source.split("[")[0])
        if key in self.filled_from:
            raise self.fail(f"target '{key}' filled twice ({self.filled_from[key]} and {source})")
        arr = np.asarray(value, dtype=np.float32)
        if tuple(arr.shape) != self.targets[key]:
            if arr.size != int(np.prod(self.targets[key], dtype=np.int64)):
                raise self.fail(
                    f"{source} has shape {list(arr.shape)}, target '{key}' needs {list(self.targets[key])}",
                    source.split("[")[0],
                )
            arr = arr.reshape(self.targets[key])
        self.filled_from[key] = source
        self.state[key] = _as_tensor(arr)

    def blobs(self, layer: Layer, *indices: int) -> list[np.ndarray]:
        if not self.with_weights:
            return []
        if len(layer.blobs) < (max(indices) + 1 if indices else 0):
            raise self.fail(f"{layer.type} has {len(layer.blobs)} blobs, needs {max(indices) + 1}", layer.name)
        used = self.used.setdefault(layer.name, set())
        for i in indices:
            if i in used:
                raise self.fail(f"blob {i} used twice", layer.name)
            used.add(i)
        return [layer.blobs[i] for i in indices]

    # ---------------------------------------------------------------- taps
    def tap(self, layer: Layer, module: str, call: int) -> None:
        chain = self.chain.get(layer.name, [layer.name])
        self.taps[layer.tops[0]] = Tap(module, call, chain[-1], 0)

    # ---------------------------------------------------------------- layer checks
    def check_conv(self, layer: Layer, conv: nn.Module) -> None:
        if not isinstance(conv, nn.Conv2d):
            raise self.fail(f"target {type(conv).__name__} is not a convolution", layer.name)
        p = layer.param.convolution_param
        g = conv_geometry(p)
        got = dict(
            num_output=int(p.num_output),
            kernel=g["kernel"],
            stride=g["stride"],
            pad=g["pad"],
            dilation=g["dilation"],
            group=int(p.group),
            bias_term=bool(p.bias_term),
        )
        want = dict(
            num_output=conv.out_channels,
            kernel=tuple(conv.kernel_size),
            stride=tuple(conv.stride),
            pad=tuple(conv.padding),
            dilation=tuple(conv.dilation),
            group=conv.groups,
            bias_term=conv.bias is not None,
        )
        diff = {k: (got[k], want[k]) for k in got if got[k] != want[k]}
        if diff:
            detail = ", ".join(f"{k} {a} (model {b})" for k, (a, b) in diff.items())
            raise self.fail(f"convolution differs from the reference model: {detail}", layer.name)

    def check_pool(self, layer: Layer, pool: nn.Module) -> None:
        p = layer.param.pooling_param
        mode = {0: "max", 1: "ave"}.get(int(p.pool), "stochastic")
        if not isinstance(pool, CaffePool2d):
            raise self.fail(f"target {type(pool).__name__} is not a Caffe pooling", layer.name)
        if p.global_pooling or pool.global_pooling:
            ok = bool(p.global_pooling) == pool.global_pooling and mode == pool.mode
        else:
            g = pool_geometry(p)
            ok = (mode, g["kernel"], g["stride"], g["pad"]) == (
                pool.mode,
                pool.kernel_size,
                pool.stride,
                pool.pad,
            )
        if not ok:
            raise self.fail(
                f"pooling {mode} {pool_geometry(p) if not p.global_pooling else 'global'} "
                f"differs from the model's {pool.extra_repr()}",
                layer.name,
            )
        if hasattr(p, "round_mode") and p.HasField("round_mode") and int(p.round_mode) != 0:
            raise self.fail("FLOOR round_mode pooling is not supported (the forks always use ceil)", layer.name)

    def check_interp(self, layer: Layer, interp: nn.Module | None = None, in_hw=None, out_hw=None) -> None:
        args = interp_args(layer.param.interp_param)
        if interp is not None:
            if not isinstance(interp, Interp):
                raise self.fail(f"target {type(interp).__name__} is not an Interp", layer.name)
            if args != {k: v for k, v in interp._params().items() if v is not None}:
                raise self.fail(f"Interp {args} differs from the model's ({interp.extra_repr()})", layer.name)
        if in_hw is not None and out_hw is not None:
            if tuple(interp_size(*in_hw, **args)) != tuple(out_hw):
                raise self.fail(f"Interp {args} on {in_hw} does not give {out_hw}", layer.name)

    def check_eltwise(self, layer: Layer, op: str, n: int | None = None) -> None:
        p = layer.param.eltwise_param
        names = {0: "PROD", 1: "SUM", 2: "MAX"}
        got = names.get(int(p.operation), "?")
        if got != op:
            raise self.fail(f"Eltwise {got}, expected {op}", layer.name)
        if len(p.coeff) and any(float(c) != 1.0 for c in p.coeff):
            raise self.fail(f"Eltwise coefficients {list(p.coeff)} are not supported", layer.name)
        if n is not None and len(layer.bottoms) != n:
            raise self.fail(f"Eltwise has {len(layer.bottoms)} inputs, expected {n}", layer.name)

    # ---------------------------------------------------------------- compound: conv + in-place chain
    def conv_chain(
        self,
        name: str,
        conv_path: str,
        bn_path: str | None,
        relu_path: str | None,
        *,
        call: int = 0,
        owner: bool = True,
        extra: dict[str, str] | None = None,
    ) -> Layer:
        """Map a Convolution and its in-place BatchNorm/Scale | BN, ReLU (and ``extra`` types -> paths)."""
        layer = self.layer(name, "Convolution")
        self.check_conv(layer, self.module(conv_path))
        self.visited.add(name)
        if owner:
            blobs = self.blobs(layer, *range(2 if layer.param.convolution_param.bias_term else 1))
            if blobs:
                self.fill(f"{conv_path}.weight", blobs[0], f"{name}[0]")
                if len(blobs) > 1:
                    self.fill(f"{conv_path}.bias", blobs[1], f"{name}[1]")
        by_type: dict[str, Layer] = {}
        tail_path = conv_path
        for follower in self.chain[name][1:]:
            f = self.by_name[follower]
            if f.type in by_type:
                raise self.fail(f"two {f.type} layers in place on '{layer.tops[0]}'", follower)
            by_type[f.type] = f
            self.visited.add(follower)
            if f.type in _NORM_TYPES:
                if bn_path is None:
                    raise self.fail(f"unexpected {f.type} after {name}", follower)
                tail_path = bn_path
            elif f.type == "ReLU":
                if relu_path is None:
                    raise self.fail(f"unexpected ReLU after {name}", follower)
                if f.param.relu_param.negative_slope != 0:
                    raise self.fail("leaky ReLU is not supported", follower)
                tail_path = relu_path
            elif extra and f.type in extra:
                tail_path = extra[f.type]
            else:
                raise self.fail(f"unexpected in-place {f.type} layer after {name}", follower)
        if bn_path is not None:
            self._norm(name, bn_path, by_type, owner)
        if relu_path is not None and "ReLU" not in by_type:
            raise self.fail(f"no ReLU after {name}", name)
        self.tap(layer, tail_path, call)
        return layer

    def _norm(self, name: str, bn_path: str, by_type: dict[str, Layer], owner: bool) -> None:
        bn_mod = self.module(bn_path)
        if "BN" in by_type:
            if "BatchNorm" in by_type or "Scale" in by_type:
                raise self.fail(f"both BN and BatchNorm/Scale after {name}", name)
            params = psp_bn_to_params(self.blobs(by_type["BN"], 0, 1, 2, 3)) if owner and self.with_weights else None
            src = by_type["BN"].name
            srcs = {k: f"{src}[{i}]" for i, k in enumerate(("weight", "bias", "running_mean", "running_var"))}
        elif "BatchNorm" in by_type:
            bn = by_type["BatchNorm"]
            if (
                bn.param.batch_norm_param.HasField("use_global_stats")
                and not bn.param.batch_norm_param.use_global_stats
            ):
                self.notes.append(f"{bn.name}: use_global_stats false (Caffe would use batch statistics)")
            sc = by_type.get("Scale")
            params = None
            if owner and self.with_weights:
                bn_blobs = self.blobs(bn, 0, 1, 2)
                sc_blobs = None
                if sc is not None:
                    if len(sc.bottoms) != 1:
                        raise self.fail("two-bottom Scale is not supported here", sc.name)
                    sc_blobs = self.blobs(sc, *range(2 if sc.param.scale_param.bias_term else 1))
                params = caffe_bn_scale_to_params(bn_blobs, sc_blobs)
            srcs = {"running_mean": f"{bn.name}[0]/[2]", "running_var": f"{bn.name}[1]/[2]"}
            if sc is None:
                srcs.update(weight="1 (no Scale)", bias="0 (no Scale)")
                self.notes.append(f"{bn.name}: no Scale layer follows, gamma = 1, beta = 0")
            else:
                srcs["weight"] = f"{sc.name}[0]"
                srcs["bias"] = f"{sc.name}[1]" if sc.param.scale_param.bias_term else "0 (Scale without bias)"
        else:
            raise self.fail(f"no BatchNorm/BN after {name}", name)
        if isinstance(bn_mod, FrozenBatchNorm2d | nn.BatchNorm2d):
            eps = bn_mod.eps
            for t in ("BN", "BatchNorm"):
                if t in by_type:
                    p = by_type[t].param.bn_param if t == "BN" else by_type[t].param.batch_norm_param
                    src_eps = float(np.float32(p.eps)) if p.HasField("eps") else 1e-5
                    if np.float32(src_eps) != np.float32(eps):
                        raise self.fail(f"eps {src_eps} differs from the model's {eps}", by_type[t].name)
        if params is not None:
            for k, v in params.items():
                self.fill(f"{bn_path}.{k}", v, srcs[k])
            if f"{bn_path}.num_batches_tracked" in self.targets:
                self.filled_from[f"{bn_path}.num_batches_tracked"] = "0"
                self.state[f"{bn_path}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)

    def visit(self, name: str, type_: str | tuple[str, ...], module: str | None, call: int = 0) -> Layer:
        """Mark a weightless layer (and its in-place followers, which must be ``ReLU``/``Dropout``)."""
        layer = self.layer(name, type_)
        self.visited.add(name)
        for follower in self.chain[name][1:]:
            f = self.by_name[follower]
            if f.type not in ("ReLU", "Dropout"):
                raise self.fail(f"unexpected in-place {f.type} after {name}", follower)
            self.visited.add(follower)
        if module is not None:
            self.tap(layer, module, call)
        return layer

    # ---------------------------------------------------------------- final accounting
    def finish(self, det: DetectedArch) -> None:
        problems = []
        unsupported = []
        label_blobs = self._label_blobs()
        for layer in self.net.layers:
            if layer.name in self.visited:
                continue
            if layer.type in SKIPPED_TYPES:
                self.skipped.append((layer.name, layer.type, SKIPPED_TYPES[layer.type]))
            elif layer.type == "Split":
                self.skipped.append((layer.name, layer.type, "no-op"))
            elif layer.bottoms and all(b in label_blobs for b in layer.bottoms):
                self.skipped.append((layer.name, layer.type, "label / loss branch"))
            else:
                unsupported.append(f"{layer.name} ({layer.type})")
        if unsupported:
            problems.append(
                f"layers not part of the recognised {det.arch}: {', '.join(unsupported[:20])}"
                + (" ..." if len(unsupported) > 20 else "")
            )
        if self.with_weights:
            copies = {c for c, _ in self.shared}
            unused = []
            for layer in self.net.layers:
                if layer.blobs and layer.name not in copies:
                    left = set(range(len(layer.blobs))) - self.used.get(layer.name, set())
                    if left:
                        unused.append(f"{layer.name}{sorted(left)}")
            if unused:
                problems.append(f"unused source blobs: {', '.join(unused[:20])}" + (" ..." if len(unused) > 20 else ""))
            missing = [k for k in self.targets if k not in self.filled_from and not k.startswith("aux.")]
            if missing:
                problems.append(
                    f"target tensors not filled: {', '.join(missing[:20])}" + (" ..." if len(missing) > 20 else "")
                )
            if any(k.startswith("aux.") for k in self.targets):
                self.notes.append("aux.* (training-only auxiliary head) has no Caffe counterpart: left initialised")
        if problems:
            raise self.fail("; ".join(problems))

    def _label_blobs(self) -> set[str]:
        """Blobs computed only from data-layer labels (DeepLab ``label_shrink``...)."""
        label: set[str] = set()
        for layer in self.net.layers:
            if layer.type in SKIPPED_TYPES and "Data" in layer.type:
                label.update(layer.tops[1:])
            elif layer.bottoms and all(b in label for b in layer.bottoms):
                label.update(layer.tops)
        return label


# ------------------------------------------------------------------------------------ shared copies


def _shared_copies(m: _Mapper, suffixes: tuple[str, ...]) -> dict[str, str]:
    """Copy layer -> owner: the ``_res075``/``_res05`` copies and layers sharing all params by name."""
    owners: dict[str, str] = {}
    for layer in m.net.layers:
        owner = None
        if layer.type in _WEIGHTED:
            for sfx in suffixes:
                base = layer.name.replace(sfx, "", 1)
                if sfx in layer.name and base in m.by_name:
                    owner = base
        if owner is None and layer.shared_from:
            owner = layer.shared_from
        if owner is None:
            continue
        src = m.by_name[owner]
        if src.type != layer.type:
            raise m.fail(f"scale copy of '{owner}' has type {layer.type}, not {src.type}", layer.name)
        if m.with_weights and (layer.blobs or src.blobs):
            if len(layer.blobs) != len(src.blobs) or any(
                a.shape != b.shape or not np.array_equal(a, b) for a, b in zip(layer.blobs, src.blobs, strict=True)
            ):
                raise m.fail(
                    f"weights differ from the shared layer '{owner}' (MSC copies must be identical)", layer.name
                )
        owners[layer.name] = owner
        if layer.blobs or src.blobs:
            m.shared.append((layer.name, owner))
    return owners


# ----------------------------------------------------------------------------------- DeepLab-v2


def _map_deeplab(m: _Mapper, det: DetectedArch) -> None:
    cfg = det.config
    aspp = det.names["aspp"]
    calls = [("", 0)] + ([("_res075", 1), ("_res05", 2)] if cfg["msc"] else [])
    _shared_copies(m, MSC_SUFFIXES if cfg["msc"] else ())
    units = det.names["units"]
    for sfx, call in calls:
        owner = sfx == ""
        m.conv_chain(
            f"conv1{sfx}", "backbone.stem.conv1", "backbone.stem.bn1", "backbone.stem.relu1", call=call, owner=owner
        )
        pool = m.visit(f"pool1{sfx}", "Pooling", "backbone.stem.pool", call)
        m.check_pool(pool, m.module("backbone.stem.pool"))
        for s in (2, 3, 4, 5):
            for i, blk in enumerate(units[s]):
                p = f"backbone.layer{s - 1}.{i}"
                base = f"res{s}{blk}"
                m.conv_chain(f"{base}_branch2a{sfx}", f"{p}.conv1", f"{p}.bn1", f"{p}.relu1", call=call, owner=owner)
                m.conv_chain(f"{base}_branch2b{sfx}", f"{p}.conv2", f"{p}.bn2", f"{p}.relu2", call=call, owner=owner)
                m.conv_chain(f"{base}_branch2c{sfx}", f"{p}.conv3", f"{p}.bn3", None, call=call, owner=owner)
                if i == 0:
                    m.conv_chain(
                        f"{base}_branch1{sfx}", f"{p}.downsample.0", f"{p}.downsample.1", None, call=call, owner=owner
                    )
                add = m.visit(f"{base}{sfx}", "Eltwise", p, call)
                m.check_eltwise(add, "SUM", 2)
                if "ReLU" not in [m.by_name[n].type for n in m.chain[add.name]]:
                    raise m.fail("no ReLU after the residual sum", add.name)
        for i in range(len(cfg["aspp_rates"])):
            m.conv_chain(f"{aspp}{sfx}_c{i}", f"aspp.convs.{i}", None, None, call=call, owner=owner)
        total = m.visit(f"{aspp}{sfx}", "Eltwise", "aspp", call)
        m.check_eltwise(total, "SUM", len(cfg["aspp_rates"]))
        if total.bottoms != [m.by_name[f"{aspp}{sfx}_c{i}"].tops[0] for i in range(len(cfg["aspp_rates"]))]:
            raise m.fail("ASPP sum inputs are not the branches in order", total.name)
    if cfg["msc"]:
        for name, path in (
            ("data_res075", "resize075"),
            ("data_res05", "resize05"),
            (f"{aspp}_res075_interp", "upsample075"),
            (f"{aspp}_res05_interp", "upsample05"),
        ):
            m.check_interp(m.visit(name, "Interp", path), m.module(path))
        fusion = m.visit("fc_fusion", "Eltwise", "fuse")
        m.check_eltwise(fusion, "MAX", 3)
        want = [aspp, f"{aspp}_res075_interp", f"{aspp}_res05_interp"]
        if fusion.bottoms != want:
            raise m.fail(f"fc_fusion inputs {fusion.bottoms}, expected {want}", "fc_fusion")
    _final_interp(m, det)


def _final_interp(m: _Mapper, det: DetectedArch) -> None:
    name = det.names.get("final_interp")
    if name is None:
        return
    layer = m.visit(name, "Interp", "upsample.interp")
    m.check_interp(layer, m.module("upsample.interp"))


# ---------------------------------------------------------------------------------------- PSPNet


def _map_pspnet(m: _Mapper, det: DetectedArch) -> None:
    cfg = det.config
    _shared_copies(m, ())
    for i, name in enumerate(det.names["stem"], 1):
        m.conv_chain(name, f"backbone.stem.conv{i}", f"backbone.stem.bn{i}", f"backbone.stem.relu{i}")
    pool = m.visit("pool1_3x3_s2", "Pooling", "backbone.stem.pool")
    m.check_pool(pool, m.module("backbone.stem.pool"))
    units = det.names["units"]
    for s in (2, 3, 4, 5):
        for i, k in enumerate(units[s]):
            p = f"backbone.layer{s - 1}.{i}"
            base = f"conv{s}_{k}"
            m.conv_chain(f"{base}_1x1_reduce", f"{p}.conv1", f"{p}.bn1", f"{p}.relu1")
            m.conv_chain(f"{base}_3x3", f"{p}.conv2", f"{p}.bn2", f"{p}.relu2")
            m.conv_chain(f"{base}_1x1_increase", f"{p}.conv3", f"{p}.bn3", None)
            if i == 0:
                m.conv_chain(f"{base}_1x1_proj", f"{p}.downsample.0", f"{p}.downsample.1", None)
            add = m.visit(base, "Eltwise", p)
            m.check_eltwise(add, "SUM", 2)
            if "ReLU" not in [m.by_name[n].type for n in m.chain[add.name]]:
                raise m.fail("no ReLU after the residual sum", add.name)
    feat = m.model.backbone.feature_size(*cfg["input_size"]) if cfg["input_size"] else None
    for b in cfg["ppm_bins"]:
        br = f"ppm.pool{b}"
        pool = m.visit(f"conv5_3_pool{b}", "Pooling", f"{br}.pool")
        ppm_pool = m.module(f"{br}.pool")
        if ppm_pool.mode == "fixed":
            m.check_pool(pool, ppm_pool.pool)
        m.conv_chain(f"conv5_3_pool{b}_conv", f"{br}.conv", f"{br}.bn", f"{br}.relu")
        interp = m.visit(f"conv5_3_pool{b}_interp", "Interp", f"{br}.upsample")
        if feat is not None and ppm_pool.mode == "fixed":
            pooled = ppm_pool.pool.output_size(*feat)
            m.check_interp(interp, None, pooled, feat)
    concat = m.visit("conv5_3_concat", "Concat", "ppm")
    if concat.param.concat_param.axis != 1:
        raise m.fail("concat axis is not 1", concat.name)
    m.conv_chain("conv5_4", "head.conv", "head.bn", "head.relu", extra={"Dropout": "head.dropout"})
    m.conv_chain("conv6", "head.classifier", None, None)
    _final_interp(m, det)


# ------------------------------------------------------------------------------------------- API


def check_bottoms_produced(net: Net) -> None:
    """Every layer reads only net inputs and blobs an earlier layer wrote (else the file names a blob that
    does not exist, e.g. a typo): one error naming the layer and the blob."""
    available = set(net.inputs)
    for layer in net.layers:
        missing = [b for b in layer.bottoms if b not in available]
        if missing:
            raise ConversionError(
                f"reads blobs {missing} that nothing produced before it", file=net.prototxt, layer=layer.name
            )
        available.update(layer.tops)


def convert_caffe_net(
    net: Net,
    arch: str | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    require_weights: bool = True,
    detected: DetectedArch | None = None,
) -> CaffeConversion:
    """Convert a loaded Caffe net (``segconvert.graph.load_net``) to a reference-model state_dict.

    ``arch``/``overrides``: see :func:`detect_caffe_arch` (or pass its result as ``detected``). With
    ``require_weights=False`` a prototxt-only net is checked structurally and gets a tap map, with an empty
    state_dict.
    """
    check_bottoms_produced(net)
    det = detected if detected is not None else detect_caffe_arch(net, arch=arch, overrides=overrides)
    with_weights = any(layer.blobs for layer in net.layers)
    if require_weights and not with_weights:
        raise ConversionError("the net has no weights (prototxt only)", file=net.prototxt)
    with torch.device("meta"):
        model = create_model(det.arch, **det.config)
    m = _Mapper(net, model, with_weights)
    if det.family == "deeplab":
        _map_deeplab(m, det)
    else:
        _map_pspnet(m, det)
    m.finish(det)
    state = {k: m.state[k] for k in m.targets if k in m.state}
    return CaffeConversion(
        arch=det.arch,
        config=det.config,
        state_dict=state,
        skipped_layers=m.skipped,
        shared_copies=m.shared,
        tap_map=m.taps,
        notes=det.notes + m.notes,
    )

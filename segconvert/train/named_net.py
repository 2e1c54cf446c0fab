"""A DeepLab-v2 train net as the named :class:`~segconvert.reference_models.DeepLabV2` model, when that is exact.

:func:`named_deeplab_net` converts a TRAIN-phase net detected as DeepLab-v2 with the named converter and wraps
the model in :class:`~segconvert.train.recipe_net.DeepLabRecipeNet` (the released MSC loss). It is used only
when it reproduces the prototxt exactly: the four released loss layers (``SoftmaxWithLoss``, ignore 255, VALID,
weight 1) or the single-scale ``loss_res1``... and every learnable blob's ``lr_mult``/``decay_mult`` equal to
the recipe net's (backbone one pair, ASPP weights and biases one pair each). Otherwise (or for any other net)
it returns the reason, and training uses the generic module, which runs any prototxt as written.

The wrapper gains ``net`` (the :class:`~segconvert.graph.Net`) and ``param_entries()`` (Caffe blob keys
``"layer/index"`` of every trained blob, found by value in the freshly converted model), like
:class:`~segconvert.train.caffe_net.CaffeTrainNet`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from segconvert.errors import ConversionError

from .caffe_net import ParamEntry

__all__ = ["named_deeplab_net", "named_deeplab_from_model"]

_MSC_LOSSES = {"loss": "fc_fusion", "loss_res1": "fc1_voc12", "loss_res075": "fc1_voc12_res075_interp",
               "loss_res05": "fc1_voc12_res05"}  # fmt: skip


def _digest(a: np.ndarray) -> tuple[tuple[int, ...], str]:
    arr = np.ascontiguousarray(a, dtype=np.float32)
    return tuple(arr.shape), hashlib.sha1(arr.tobytes()).hexdigest()


def _losses_match(net: Any) -> str | None:
    found = {}
    for layer in net.layers:
        if "Loss" in layer.type:  # metrics (Accuracy, SegAccuracy) do not change the training
            if layer.type != "SoftmaxWithLoss":
                return f"loss layer {layer.name} is {layer.type}"
            lp = layer.param.loss_param
            weight = float(layer.param.loss_weight[0]) if len(layer.param.loss_weight) else 1.0
            ignore = int(lp.ignore_label) if lp.HasField("ignore_label") else None
            mode_ok = not lp.HasField("normalization") or int(lp.normalization) == 1
            if lp.HasField("normalize") and not lp.HasField("normalization") and not lp.normalize:
                mode_ok = False
            if ignore != 255 or weight != 1.0 or not mode_ok:
                return f"loss layer {layer.name} is not SoftmaxWithLoss(ignore 255, VALID, weight 1)"
            found[layer.name] = layer.bottoms[0]
    if found == _MSC_LOSSES or found == {"loss_res1": "fc1_voc12"}:
        return None
    return f"loss layers {sorted(found)} are not the released DeepLab-v2 ones"


def named_deeplab_net(net: Any) -> tuple[Any, str | None]:
    """``(wrapper, None)`` when the named model trains ``net`` exactly, else ``(None, reason)``."""
    from segconvert.converters.caffe_detect import detect_caffe_arch
    from segconvert.converters.caffe_names import convert_caffe_net

    from .recipe_net import DeepLabRecipeNet

    try:
        det = detect_caffe_arch(net)
    except ConversionError as exc:
        return None, f"not a DeepLab-v2 / PSPNet net ({exc.message})"
    if det.family != "deeplab":
        return None, f"{det.arch} trains with the generic module"
    reason = _losses_match(net)
    if reason:
        return None, reason
    try:
        model = convert_caffe_net(net, detected=det).build_model()
    except ConversionError as exc:
        return None, f"the named converter refused it ({exc.message})"
    by_value: dict[tuple[tuple[int, ...], str], str] = {}
    for name, p in model.named_parameters():
        by_value.setdefault(_digest(p.detach().numpy()), name)
    params = dict(model.named_parameters())
    entries: list[ParamEntry] = []
    mults: dict[str, tuple[float, float]] = {}
    for layer in net.layers:
        if layer.shared_from or layer.type != "Convolution":
            continue
        for i, blob in enumerate(layer.blobs):
            name = by_value.get(_digest(blob))
            if name is None:
                return None, f"blob {layer.name}/{i} has no single counterpart in the named model"
            spec = layer.param.param[i] if i < len(layer.param.param) else None
            pair = (float(spec.lr_mult), float(spec.decay_mult)) if spec is not None else (1.0, 1.0)
            kind = (
                ("head_bias" if name.endswith(".bias") else "head_weight") if name.startswith("aspp.") else "backbone"
            )
            if mults.setdefault(kind, pair) != pair:
                return None, f"{layer.name}/{i} has lr_mult/decay_mult {pair}, other {kind} blobs {mults[kind]}"
            entries.append(ParamEntry(f"{layer.name}/{i}", params[name], pair[0], pair[1], name))
    if len(entries) != len(params):
        return None, "some parameters of the named model have no Caffe blob"
    mults.setdefault("head_bias", (1.0, 1.0))
    wrapper = DeepLabRecipeNet(model, mults)
    wrapper.net = net
    wrapper.arch_path = f"named {det.arch}"
    wrapper.param_entries = lambda: list(entries)
    for e in entries:
        e.tensor.requires_grad_(e.lr_mult != 0)
    return wrapper, None


def named_deeplab_from_model(net: Any, model: Any) -> tuple[Any, str | None]:
    """Wrap an already converted DeepLab-v2 ``model`` (``--init``) for ``net``: multipliers from the prototxt
    (ASPP: the convolutions with a bias; backbone: the others), checked to be one pair per kind."""
    from .recipe_net import DeepLabRecipeNet

    reason = _losses_match(net)
    if reason:
        return None, reason
    mults: dict[str, tuple[float, float]] = {}
    for layer in net.layers:
        if layer.shared_from or layer.type != "Convolution":
            continue
        has_bias = layer.param.convolution_param.bias_term
        specs = list(layer.param.param) + [None] * 2
        for i, kind in enumerate(("head_weight", "head_bias") if has_bias else ("backbone",)):
            spec = specs[i]
            pair = (float(spec.lr_mult), float(spec.decay_mult)) if spec is not None else (1.0, 1.0)
            if mults.setdefault(kind, pair) != pair:
                return None, f"{layer.name}/{i} has lr_mult/decay_mult {pair}, other {kind} blobs {mults[kind]}"
    mults.setdefault("head_bias", (1.0, 1.0))
    mults.setdefault("head_weight", (1.0, 1.0))
    mults.setdefault("backbone", (1.0, 1.0))
    wrapper = DeepLabRecipeNet(model, mults)
    wrapper.net = net
    wrapper.arch_path = f"named {model.arch_name} (--init)"
    groups = {g["name"]: g for g in wrapper.param_groups()}
    entries = [
        ParamEntry(name, p, groups[name]["lr_mult"] if name in groups else 0.0,
                   groups[name]["decay_mult"] if name in groups else 0.0, name)
        for name, p in model.named_parameters()
    ]  # fmt: skip
    wrapper.param_entries = lambda: list(entries)
    return wrapper, None

"""Run a TF-Slim checkpoint's own network in real TensorFlow (graph mode) and return its end-points.

Graphs: TF-Slim ``resnet_v1_{50,101,152}`` (``tf_slim.nets.resnet_v1``, slim's stride placement and
output-stride rule), optionally with a PSPNet-TF-Reproduce ``psp`` head on it (the fixtures' construction);
holyseven/PSPNet-TF-Reproduce's own ``pspnet_with_list`` (stride in the first unit); and
oandrienko/fast-semantic-segmentation's PSPNet. Each builder is rebuilt from the project's code at inference
with TF ops, so the result is an independent reference for the converted PyTorch model. Variables are set
from ``tf.train.load_checkpoint``; every graph variable must be in the checkpoint. TensorFlow and tf_slim are
imported lazily (the ``parity`` extra).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from segconvert.errors import CheckpointError
from segconvert.parity.report import evenly_within

__all__ = [
    "import_tensorflow",
    "import_slim",
    "graph_unsupported",
    "slim_resnet_graph",
    "slim_psp_head",
    "holyseven_graph",
    "oandrienko_graph",
    "run_slim_checkpoint",
]

_UNITS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def import_tensorflow() -> Any:
    """``tensorflow``, imported (the first time) with plain Eigen kernels as the fixtures and its C++ logs off."""
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow as tf

    return tf


def import_slim() -> tuple[Any, Any, Any]:
    """``(tensorflow, tf_slim, tf_slim.nets.resnet_v1)``; raises ImportError when the parity extra is absent.

    tf_slim's batch_norm imports ``tf_keras.legacy_tf_layers.normalization``, which tf_keras >= 2.16 ships
    as ``tf_keras.src.legacy_tf_layers.normalization``: the old names are registered first.
    """
    tf = import_tensorflow()

    try:
        import tf_keras.src.legacy_tf_layers as legacy
        import tf_keras.src.legacy_tf_layers.normalization as legacy_norm
    except ImportError:  # an older tf_keras that still has the public path
        pass
    else:
        sys.modules.setdefault("tf_keras.legacy_tf_layers", legacy)
        sys.modules.setdefault("tf_keras.legacy_tf_layers.normalization", legacy_norm)
    import tf_slim as slim
    from tf_slim.nets import resnet_v1

    return tf, slim, resnet_v1


# ---------------------------------------------------------------------------------------------- graphs


def slim_resnet_graph(
    tf: Any,
    slim: Any,
    resnet_v1: Any,
    x: Any,
    *,
    depth: int,
    widths: list[int],
    out_widths: list[int],
    output_stride: int | None,
    num_classes: int | None = None,
    scope: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """slim ``resnet_v1(blocks, global_pool=num_classes is not None, is_training=False)`` under
    ``resnet_arg_scope()``, with the bottleneck / output widths per block. Returns ``(net, taps)``: every
    end-point of the scope, ``<scope>/pool1`` (the max-pool) and ``net`` (block4, also with a classifier)."""
    from tf_slim.nets import resnet_utils

    scope = scope or f"resnet_v1_{depth}"
    blocks = []
    for i, (w, d, n) in enumerate(zip(widths, out_widths, _UNITS[depth], strict=True)):
        unit = {"depth": d, "depth_bottleneck": w, "stride": 1}
        last = dict(unit, stride=1 if i == 3 else 2)  # slim: the stride sits in the last unit of blocks 1-3
        blocks.append(resnet_utils.Block(f"block{i + 1}", resnet_v1.bottleneck, [unit] * (n - 1) + [last]))
    with slim.arg_scope(resnet_v1.resnet_arg_scope()):
        net, end_points = resnet_v1.resnet_v1(
            x, blocks, num_classes=num_classes, is_training=False, global_pool=num_classes is not None,
            output_stride=None if output_stride == 32 else output_stride, scope=scope,
        )  # fmt: skip
    taps = {k: v for k, v in end_points.items() if k.startswith(scope)}
    taps[f"{scope}/pool1"] = x.graph.get_tensor_by_name(f"{scope}/pool1/MaxPool:0")
    taps["net"] = net if num_classes is None else end_points[f"{scope}/block4"]
    return net, taps


def slim_psp_head(
    tf: Any,
    slim: Any,
    net: Any,
    taps: dict[str, Any],
    *,
    scope: str,
    size: list[int],
    ppm_width: int,
    head_width: int,
    num_classes: int,
) -> None:
    """PSPNet-TF-Reproduce's head (``<scope>/psp/pool{6,3,2,1}``, ``block4/unit_4``, ``logits``) on ``net``,
    with k = the real feature size // bin (TF SAME avg pool) and TF1 legacy resizes; adds its taps."""
    from tf_slim.nets import resnet_v1

    arg_scope = slim.arg_scope(resnet_v1.resnet_arg_scope())  # conv -> BN (eps 1e-5) -> ReLU, as the backbone
    with arg_scope, slim.arg_scope([slim.batch_norm], is_training=False), tf.compat.v1.variable_scope(scope):
        fh, fw = net.shape[1], net.shape[2]
        branches = [net]
        for r in (6, 3, 2, 1):
            k = [max(1, fh // r), max(1, fw // r)]
            p = taps[f"{scope}/psp/pool{r}/avg_pool"] = tf.nn.avg_pool2d(net, k, k, "SAME")
            p = taps[f"{scope}/psp/pool{r}"] = slim.conv2d(p, ppm_width, [1, 1], scope=f"psp/pool{r}")
            p = taps[f"{scope}/psp/pool{r}/resize"] = tf.compat.v1.image.resize_bilinear(p, [fh, fw])
            branches.append(p)
        cat = taps[f"{scope}/psp/concat"] = tf.concat(branches, 3)
        y = taps[f"{scope}/block4/unit_4"] = slim.conv2d(cat, head_width, [3, 3], scope="block4/unit_4")
        logits = taps[f"{scope}/logits"] = slim.conv2d(
            y, num_classes, [1, 1], activation_fn=None, normalizer_fn=None, scope="logits"
        )
        taps[f"{scope}/up_sample"] = tf.compat.v1.image.resize_bilinear(logits, list(size))


def holyseven_graph(tf, x, *, depth, filters, num_classes, image_size, aux_units=None):
    """PSPNet-TF-Reproduce ``pspnet_with_list`` at inference (model/pspnet_mg.py + model/utils_mg.py):
    7x7 stem, first-unit strides [1, 2, 1, 1], rates [1, 1, 2, 4], TF SAME avg-pool PPM with
    k = image_size // 8 // bin, TF1 legacy resize, block4/unit_4, logits, up_sample. ``aux_units`` also
    creates the training-only aux branch's variables (``block3/unit_{aux_units + 1}``, ``aux_logits``).
    Returns the taps."""
    v1 = tf.compat.v1
    taps = {}

    def conv(x, cout, k, stride=1, rate=1, bias=False):
        w = v1.get_variable("weights", [k, k, x.shape[-1], cout])
        if stride == 1 and rate > 1:
            y = tf.nn.atrous_conv2d(x, w, rate, "SAME")
        elif stride == 1:
            y = tf.nn.conv2d(x, w, 1, "SAME")
        else:  # explicit symmetric pad, then VALID (holyseven never strides a dilated conv)
            pad = [(k - 1) // 2, k - 1 - (k - 1) // 2]
            y = tf.nn.conv2d(tf.pad(x, [[0, 0], pad, pad, [0, 0]]), w, stride, "VALID")
        return tf.nn.bias_add(y, v1.get_variable("biases", [cout])) if bias else y

    def bn(x):
        with v1.variable_scope("BatchNorm"):
            n = x.shape[-1]
            beta, gamma = v1.get_variable("beta", [n]), v1.get_variable("gamma", [n])
            mean, var = v1.get_variable("moving_mean", [n]), v1.get_variable("moving_variance", [n])
        return tf.nn.batch_normalization(x, mean, var, beta, gamma, 1e-5)

    scope = f"resnet_v1_{depth}"
    units = _UNITS[depth]
    strides, rates = (1, 2, 1, 1), (1, 1, 2, 4)
    with v1.variable_scope(scope):
        with v1.variable_scope("conv1"):
            x = taps[f"{scope}/conv1"] = tf.nn.relu(bn(conv(x, 64, 7, 2)))
        x = taps[f"{scope}/pool1"] = tf.nn.max_pool2d(x, 3, 2, "SAME")
        for b, n in enumerate(units):
            for u in range(n):
                name = f"block{b + 1}/unit_{u + 1}/bottleneck_v1"
                stride = strides[b] if u == 0 else 1
                rate = 1 if stride > 1 else rates[b]
                with v1.variable_scope(name):
                    with v1.variable_scope("conv1"):
                        r = taps[f"{scope}/{name}/conv1"] = tf.nn.relu(bn(conv(x, filters[b] // 4, 1)))
                    with v1.variable_scope("conv2"):
                        r = taps[f"{scope}/{name}/conv2"] = tf.nn.relu(bn(conv(r, filters[b] // 4, 3, stride, rate)))
                    with v1.variable_scope("conv3"):
                        r = taps[f"{scope}/{name}/conv3"] = bn(conv(r, filters[b], 1))
                    if x.shape[-1] != filters[b]:
                        with v1.variable_scope("shortcut"):
                            x = taps[f"{scope}/{name}/shortcut"] = bn(conv(x, filters[b], 1, stride))
                    elif stride > 1:
                        x = tf.nn.max_pool2d(x, 1, 2, "SAME")
                    x = taps[f"{scope}/{name}"] = tf.nn.relu(x + r)
            taps[f"{scope}/block{b + 1}"] = x
            if b == 2 and aux_units is not None:  # the training-only aux branch: variables only
                with v1.variable_scope(f"block3/unit_{aux_units + 1}"):
                    bn(conv(x, 16, 3))
                with v1.variable_scope("aux_logits"):
                    conv(x, num_classes, 1, bias=True)
        taps["net"] = x
        size = image_size // 8
        branches = [x]
        with v1.variable_scope("psp"):
            for r in (6, 3, 2, 1):
                k = size // r
                with v1.variable_scope(f"pool{r}"):
                    p = taps[f"{scope}/psp/pool{r}/avg_pool"] = tf.nn.avg_pool2d(x, k, k, "SAME")
                    p = taps[f"{scope}/psp/pool{r}"] = tf.nn.relu(bn(conv(p, filters[3] // 4, 1)))
                    p = taps[f"{scope}/psp/pool{r}/resize"] = v1.image.resize_bilinear(p, [size, size])
                branches.append(p)
        x = taps[f"{scope}/psp/concat"] = tf.concat(branches, 3)
        with v1.variable_scope("block4/unit_4"):
            x = taps[f"{scope}/block4/unit_4"] = tf.nn.relu(bn(conv(x, filters[3] // 4, 3)))
        with v1.variable_scope("logits"):
            x = taps[f"{scope}/logits"] = conv(x, num_classes, 1, bias=True)
        taps[f"{scope}/up_sample"] = v1.image.resize_bilinear(x, [image_size, image_size])
    return taps


def oandrienko_graph(tf, slim, x, *, base, psp_width, num_classes, aux=False):
    """fast-semantic-segmentation's PSPNet at evaluation (architectures/pspnet_architecture.py,
    extractors/{pspnet_icnet_resnet_v1,dilated_resnet_v1}.py): slim resnet_v1_50 under SharedFeatureExtractor
    with the block3/4 ``overide_rate`` 2/4, PSPModule (VALID avg pools, ReLU6 from the model arg_scope),
    Predictions/Conv, Interp x8 with align_corners. ``aux`` also creates the training-only AuxPredictions
    variables. Returns the taps."""
    from tf_slim.nets import resnet_utils, resnet_v1

    v1 = tf.compat.v1
    units = {}

    @slim.add_arg_scope
    def bottleneck(inputs, depth, depth_bottleneck, stride, overide_rate=1, rate=1, outputs_collections=None):
        with v1.variable_scope(None, "bottleneck_v1", [inputs]) as sc:
            if depth == inputs.shape[-1]:
                shortcut = resnet_utils.subsample(inputs, stride, "shortcut")
            else:
                shortcut = slim.conv2d(inputs, depth, [1, 1], stride=stride, activation_fn=None, scope="shortcut")
            r = slim.conv2d(inputs, depth_bottleneck, [1, 1], stride=1, scope="conv1")
            r = resnet_utils.conv2d_same(r, depth_bottleneck, 3, stride, rate=rate * overide_rate, scope="conv2")
            r = slim.conv2d(r, depth, [1, 1], stride=1, activation_fn=None, scope="conv3")
            out = units[sc.name] = tf.nn.relu(shortcut + r)
            return out

    def block(name, d, n, stride, rate=1):
        unit = {"depth": d * 4, "depth_bottleneck": d, "overide_rate": rate}
        return resnet_utils.Block(name, bottleneck, [dict(unit, stride=1)] * (n - 1) + [dict(unit, stride=stride)])

    blocks = [
        block("block1", base[0], 3, 2),
        block("block2", base[1], 4, 2),
        block("block3", base[2], 6, 2, rate=2),
        block("block4", base[3], 3, 1, rate=4),
    ]
    bn_params = {"decay": 0.9997, "center": True, "scale": True, "epsilon": 1e-5, "is_training": False}
    model_scope = slim.arg_scope(
        [slim.conv2d], activation_fn=tf.nn.relu6, normalizer_fn=slim.batch_norm, normalizer_params=bn_params
    )
    with model_scope, slim.arg_scope([slim.batch_norm], **bn_params):
        with v1.variable_scope("SharedFeatureExtractor"):
            with slim.arg_scope(resnet_utils.resnet_arg_scope(batch_norm_epsilon=1e-5, batch_norm_scale=True)):
                net, end_points = resnet_v1.resnet_v1(
                    x, blocks, num_classes=None, is_training=False, global_pool=False, output_stride=8,
                    include_root_block=True, scope="resnet_v1_50",
                )  # fmt: skip
        scope = "SharedFeatureExtractor/resnet_v1_50"
        taps = {k: v for k, v in end_points.items() if k.startswith(scope)}
        taps.update(units)
        taps[f"{scope}/pool1"] = x.graph.get_tensor_by_name(f"{scope}/pool1/MaxPool:0")
        taps["net"] = net
        h, w = net.shape[1], net.shape[2]
        with v1.variable_scope("PSPModule"):
            merge = [net]
            for i, b in enumerate((1, 2, 3, 6)):
                name = "PSPModule/Conv" + (f"_{i}" if i else "")
                k = [h // b, w // b]
                p = taps[f"{name}/avg_pool"] = slim.avg_pool2d(net, k, stride=k)  # slim's default: VALID
                p = taps[name] = slim.conv2d(p, psp_width, (1, 1), stride=1, normalizer_fn=slim.batch_norm)
                p = taps[f"{name}/resize"] = v1.image.resize_bilinear(p, (h, w), align_corners=True)
                merge.append(p)
            cat = taps["PSPModule/concat"] = tf.concat(merge, -1)
            out = taps["PSPModule/Conv_4"] = slim.conv2d(cat, psp_width, (3, 3), stride=1)
        with v1.variable_scope("Predictions"):
            pred = taps["Predictions/Conv"] = slim.conv2d(
                out, num_classes, 1, 1, activation_fn=None, normalizer_fn=None
            )
            size = [(h - 1) * 8 + 1, (w - 1) * 8 + 1]
            taps["Predictions/Interp"] = v1.image.resize_bilinear(pred, size, align_corners=True)
        if aux:
            with v1.variable_scope("AuxPredictions"):  # training only: variables, no output
                slim.conv2d(end_points[f"{scope}/block2"], num_classes, 1, 1, activation_fn=None, normalizer_fn=None)
    return taps


# ---------------------------------------------------------------------------------------------- runner


def _head(tap_map: dict[str, str]) -> str:
    if any("/psp/" in k for k in tap_map):
        return "psp"
    if any(k.endswith("PSPModule/concat") for k in tap_map):
        return "pspmodule"
    return "none"


def _scope(tap_map: dict[str, str]) -> str:
    return next(k for k, v in tap_map.items() if v.endswith("stem.relu1"))[: -len("/conv1")]


def graph_unsupported(arch: str, config: dict[str, Any], tap_map: dict[str, str], hw: tuple[int, int]) -> str | None:
    """Why no graph builder fits this conversion (None when one does)."""
    head = _head(tap_map)
    if config.get("depth") not in _UNITS:
        return f"no slim resnet_v1 graph of depth {config.get('depth')}"
    if config.get("stem") != "7x7" or config.get("padding") != "tf_same":
        return "not a TF-Slim resnet_v1 layout (stem / padding)"
    if head == "none" and config.get("stem_widths") != [64]:
        return "slim's resnet_v1 hard-codes a 64-channel conv1"
    if head == "none" and config.get("stride_in") != "3x3_last":
        return "a slim backbone with its stride in the first unit has no slim graph"
    if head == "psp" and config.get("stride_in") == "3x3":
        if hw[0] != hw[1] or hw[0] % 8:
            return f"PSPNet-TF-Reproduce's graph needs a square input, a multiple of 8 (got {hw[0]}x{hw[1]})"
        if config["depth"] == 152:
            return "PSPNet-TF-Reproduce has no resnet_v1_152"
    if head == "pspmodule" and (config["depth"] != 50 or _scope(tap_map) != "SharedFeatureExtractor/resnet_v1_50"):
        return "fast-semantic-segmentation's graph is resnet_v1_50 under SharedFeatureExtractor only"
    return None


def run_slim_checkpoint(
    prefix: str | os.PathLike[str],
    arch: str,
    config: dict[str, Any],
    tap_map: dict[str, str],
    x_nhwc: np.ndarray,
    max_bytes: int | None = None,
) -> tuple[dict[str, np.ndarray], str]:
    """Build the graph that fits a slim conversion (``arch``, ``config``, ``tap_map``), set its variables from
    the checkpoint ``prefix``, run it on ``x_nhwc`` and return ``({end-point: NHWC value}, graph description)``,
    the end-points in the graph's order.

    ``max_bytes``: fetch an evenly spaced subset of the end-points (always the last) whose float32 values fit
    in it, for full-width nets at full resolution; the description says how many were kept.

    Raises ImportError without TensorFlow / tf_slim, :class:`CheckpointError` when a graph variable is missing
    from the checkpoint or has another shape, ValueError when no builder fits (see :func:`graph_unsupported`).
    """
    tf, slim, resnet_v1 = import_slim()
    x_nhwc = np.ascontiguousarray(x_nhwc, dtype=np.float32)
    hw = (int(x_nhwc.shape[1]), int(x_nhwc.shape[2]))
    why = graph_unsupported(arch, config, tap_map, hw)
    if why is not None:
        raise ValueError(why)
    head, scope, depth = _head(tap_map), _scope(tap_map), config["depth"]
    v1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default():
        x = v1.placeholder(tf.float32, list(x_nhwc.shape))
        if head == "psp" and config.get("stride_in") == "3x3":
            taps = holyseven_graph(
                tf, x, depth=depth, filters=config["out_widths"], num_classes=config["num_classes"], image_size=hw[0]
            )
            desc = "PSPNet-TF-Reproduce pspnet_with_list graph"
        elif head == "pspmodule":
            taps = oandrienko_graph(
                tf, slim, x, base=config["widths"], psp_width=config["ppm_width"], num_classes=config["num_classes"]
            )
            desc = "fast-semantic-segmentation PSPNet graph (tf_slim resnet_v1_50)"
        else:
            classes = config.get("num_classes") or None if arch == "resnet" else None
            net, taps = slim_resnet_graph(
                tf, slim, resnet_v1, x, depth=depth, widths=config["widths"], out_widths=config["out_widths"],
                output_stride=config.get("output_stride"), num_classes=classes, scope=scope,
            )  # fmt: skip
            desc = f"tf_slim resnet_v1 graph (output_stride {config.get('output_stride')})"
            if head == "psp":
                slim_psp_head(
                    tf, slim, net, taps, scope=scope, size=list(hw), ppm_width=config["ppm_width"],
                    head_width=config["head_width"], num_classes=config["num_classes"],
                )  # fmt: skip
                desc += " + PSPNet-TF-Reproduce psp head"
        reader = tf.train.load_checkpoint(str(prefix))
        have = reader.get_variable_to_shape_map()
        variables = v1.global_variables()
        feed = {}
        for v in variables:
            name = v.op.name
            if name not in have:
                raise CheckpointError(f"the {desc} needs a variable the checkpoint lacks", file=Path(prefix), key=name)
            value = np.asarray(reader.get_tensor(name), np.float32)
            if list(value.shape) != v.shape.as_list():
                raise CheckpointError(
                    f"checkpoint shape {list(value.shape)} does not fit the graph's {v.shape.as_list()}",
                    file=Path(prefix),
                    key=name,
                )
            feed[v.initial_value] = value
        position = {op.name: i for i, op in enumerate(g.get_operations())}  # graph (execution) order
        wanted = sorted((k for k in taps if k in tap_map), key=lambda k: position[taps[k].op.name])
        kept = evenly_within(wanted, {k: 4 * (taps[k].shape.num_elements() or 0) for k in wanted}, max_bytes)
        if len(kept) < len(wanted):
            desc += f", {len(kept)} of {len(wanted)} end-points fetched (kept under {max_bytes >> 20} MiB)"
        with v1.Session(graph=g) as sess:
            sess.run([v.initializer for v in variables], feed)
            outputs = sess.run({k: taps[k] for k in kept}, {x: x_nhwc})
    return {k: np.asarray(outputs[k]) for k in kept}, f"{desc}, {len(variables)} variables restored"

"""Small SSD-fork nets written by the tests (prototxt text + random-weight caffemodel) and OpenCV dnn runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segconvert.formats.caffemodel_writer import random_weights_for, write_caffemodel
from segconvert.graph import load_net


def layer(name: str, ltype: str, bottoms: list[str], tops: list[str] | None = None, body: str = "") -> str:
    b = "".join(f'  bottom: "{x}"\n' for x in bottoms)
    t = "".join(f'  top: "{x}"\n' for x in (tops if tops is not None else [name]))
    return f'layer {{\n  name: "{name}"\n  type: "{ltype}"\n{b}{t}{body}}}\n'


def conv(name: str, bottom: str, out: int, k: int = 3, s: int = 1, p: int = 1) -> str:
    body = f"  convolution_param {{\n    num_output: {out}\n    kernel_size: {k}\n    stride: {s}\n    pad: {p}\n  }}\n"
    return layer(name, "Convolution", [bottom], body=body)


def net_text(name: str, shape: tuple[int, ...], body: str) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return (
        f'name: "{name}"\n' + layer("data", "Input", [], ["data"], f"  input_param {{ shape {{ {dims} }} }}\n") + body
    )


def ssd_text(num_classes: int = 3, size: int = 32, keep_top_k: int = 20, conf_threshold: float = 0.3) -> str:
    """An SSD-style head on two feature maps: Normalize, Permute/Flatten heads, PriorBox, Concat, DetectionOutput."""
    body = conv("conv1", "data", 8, s=2) + layer("relu1", "ReLU", ["conv1"], ["conv1"])
    body += layer(
        "conv1_norm",
        "Normalize",
        ["conv1"],
        body="  norm_param {\n    across_spatial: false\n    channel_shared: false\n  }\n",
    )
    body += conv("conv2", "conv1", 8, s=2) + layer("relu2", "ReLU", ["conv2"], ["conv2"])
    heads = {"loc": [], "conf": [], "prior": []}
    priors = {
        "conv1_norm": "min_size: 6.0\n    max_size: 12.0\n    aspect_ratio: 2.0\n    flip: true\n    clip: false\n"
        "    variance: 0.1\n    variance: 0.1\n    variance: 0.2\n    variance: 0.2\n    step: 4\n    offset: 0.5\n",
        "conv2": "min_size: 12.0\n    max_size: 24.0\n    aspect_ratio: 2.0\n    aspect_ratio: 3.0\n    flip: true\n"
        "    clip: true\n    variance: 0.1\n    variance: 0.1\n    variance: 0.2\n    variance: 0.2\n    offset: 0.5\n",
    }
    counts = {"conv1_norm": 4, "conv2": 6}
    for src, spec in priors.items():
        n = counts[src]
        for kind, out in (("loc", n * 4), ("conf", n * num_classes)):
            head = f"{src}_mbox_{kind}"
            body += conv(head, src, out, k=3, p=1)
            body += layer(
                f"{head}_perm",
                "Permute",
                [head],
                body="  permute_param {\n    order: 0\n    order: 2\n    order: 3\n    order: 1\n  }\n",
            )
            body += layer(f"{head}_flat", "Flatten", [f"{head}_perm"], body="  flatten_param {\n    axis: 1\n  }\n")
            heads[kind].append(f"{head}_flat")
        body += layer(f"{src}_mbox_priorbox", "PriorBox", [src, "data"], body=f"  prior_box_param {{\n    {spec}  }}\n")
        heads["prior"].append(f"{src}_mbox_priorbox")
    body += layer("mbox_loc", "Concat", heads["loc"], body="  concat_param {\n    axis: 1\n  }\n")
    body += layer("mbox_conf", "Concat", heads["conf"], body="  concat_param {\n    axis: 1\n  }\n")
    body += layer("mbox_priorbox", "Concat", heads["prior"], body="  concat_param {\n    axis: 2\n  }\n")
    body += layer(
        "mbox_conf_reshape",
        "Reshape",
        ["mbox_conf"],
        body=f"  reshape_param {{\n    shape {{\n      dim: 0\n      dim: -1\n      dim: {num_classes}\n    }}\n  }}\n",
    )
    body += layer("mbox_conf_softmax", "Softmax", ["mbox_conf_reshape"], body="  softmax_param {\n    axis: 2\n  }\n")
    body += layer("mbox_conf_flatten", "Flatten", ["mbox_conf_softmax"], body="  flatten_param {\n    axis: 1\n  }\n")
    body += layer(
        "detection_out",
        "DetectionOutput",
        ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"],
        body=(
            f"  detection_output_param {{\n    num_classes: {num_classes}\n    share_location: true\n"
            "    background_label_id: 0\n    nms_param {\n      nms_threshold: 0.45\n      top_k: 100\n    }\n"
            f"    code_type: CENTER_SIZE\n    keep_top_k: {keep_top_k}\n    confidence_threshold: {conf_threshold}\n"
            "  }\n"
        ),
    )
    return net_text("tiny_ssd", (1, 3, size, size), body)


def write_net(tmp: Path, text: str, seed: int = 0, scale: float = 1.0) -> tuple[Path, Path]:
    """``net.prototxt`` + ``weights.caffemodel`` (random weights in the real layout, times ``scale``)."""
    proto = tmp / "net.prototxt"
    proto.write_text(text)
    layers = random_weights_for(load_net(proto), seed=seed)
    layers = [(p, [b * np.float32(scale) for b in blobs]) for p, blobs in layers]
    model = write_caffemodel(tmp / "weights.caffemodel", layers)
    return proto, model


def opencv_outputs(proto: Path, model: Path | None, inputs: np.ndarray, names: list[str]) -> list[np.ndarray]:
    """OpenCV dnn's outputs of the layers ``names`` for one input blob ``data``."""
    import cv2

    net = (
        cv2.dnn.readNetFromCaffe(str(proto), str(model)) if model is not None else cv2.dnn.readNetFromCaffe(str(proto))
    )
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setInput(inputs.astype(np.float32), "data")
    outs = net.forward(names)
    return [np.asarray(o) for o in outs]

"""Keras pooling, resize, padding / reshape, merge, Dot, Rescaling / Normalization and SegNet layers -> module
specs (the rest of :func:`segconvert.converters.keras_layers.translate`)."""

from __future__ import annotations

from typing import Any

from .keras_layer_spec import _K1_MERGE, _MERGE, Ctx, LayerSpec, Unsupported, _image, _pair

__all__ = ["SHAPE_TABLE"]


def _pool(c: Ctx) -> LayerSpec:
    cfg, rank = c.cfg, c.ranks[0] - 2
    lay = _image(cfg)
    k = _pair(cfg.get("pool_size", 2), rank)
    s = _pair(cfg.get("strides") or k, rank)
    pad = str(cfg.get("padding", "valid")).lower()
    mode = "max" if c.cls.startswith("Max") else "avg"
    if pad == "valid" and rank <= 2:
        ctor = f"nn.{'Max' if mode == 'max' else 'Avg'}Pool{rank}d"
        return LayerSpec(ctor, [k, s], {}, [lay], lay)
    return LayerSpec("Pool", [mode, k, s], {"padding": pad}, [lay], lay)


def _global_pool(c: Ctx) -> LayerSpec:
    keep = bool(c.cfg.get("keepdims", False))
    lay = _image(c.cfg)
    mode = "max" if "Max" in c.cls else "avg"
    return LayerSpec("GlobalPool", [mode], {"keepdims": keep}, [lay], lay, [c.ranks[0] if keep else 2])


def _resize(c: Ctx) -> LayerSpec:
    cfg, cls = c.cfg, c.cls
    lay = _image(cfg)
    interp = str(cfg.get("interpolation", "nearest" if cls.startswith("UpSampling") else "bilinear"))
    if cls.startswith("UpSampling"):
        rank = c.ranks[0] - 2
        size = _pair(cfg.get("size", 2), rank)
        if interp not in ("nearest", "bilinear") or (interp == "bilinear" and rank != 2):
            raise Unsupported(f"interpolation {interp!r}")
        return LayerSpec("Resize", [interp], {"scale": size}, [lay], lay)
    if cls == "BilinearUpsampling":
        if cfg.get("output_size"):
            kw = {"size": [int(v) for v in cfg["output_size"]]}
        else:
            kw = {"scale": _pair(cfg.get("upsampling", 2), 2)}
        return LayerSpec("Resize", ["bilinear"], {**kw, "align_corners": True}, [lay], lay)
    if cfg.get("crop_to_aspect_ratio") or cfg.get("pad_to_aspect_ratio"):
        raise Unsupported("crop/pad to aspect ratio")
    if interp not in ("nearest", "bilinear"):
        raise Unsupported(f"interpolation {interp!r}")
    mode = "nearest-exact" if interp == "nearest" else "bilinear"
    return LayerSpec("Resize", [mode], {"size": [int(cfg["height"]), int(cfg["width"])]}, [lay], lay)


def _pads(v: Any, rank: int) -> list[list[int]]:
    if isinstance(v, int):
        return [[v, v]] * rank
    v = list(v)
    if rank == 1:
        return [[int(v[0]), int(v[1])]] if len(v) == 2 else [[int(v[0])] * 2]
    if len(v) == 4 and all(isinstance(x, int) for x in v):  # Keras 1 (top, bottom, left, right)
        return [[v[0], v[1]], [v[2], v[3]]]
    return [[int(x), int(x)] if isinstance(x, int) else [int(x[0]), int(x[1])] for x in v]


def _shape_ops(c: Ctx) -> LayerSpec:
    cls, cfg, rank = c.cls, c.cfg, c.ranks[0]
    if cls.startswith("ZeroPadding") or cls.startswith("Cropping"):
        lay = _image(cfg)
        key = "padding" if cls.startswith("Zero") else "cropping"
        return LayerSpec("ZeroPad" if key == "padding" else "Crop", [_pads(cfg.get(key, 1), rank - 2)], {}, [lay], lay)
    if cls == "Flatten":
        if cfg.get("data_format") == "channels_first" and rank > 2:  # Keras moves the channels last first
            return LayerSpec("Flatten", [], {"channels_first": True}, ["keras"], "keras", [2])
        return LayerSpec("nn.Flatten", [], {}, ["keras"], "keras", [2])
    if cls == "Reshape":
        shape = [int(v) for v in cfg["target_shape"]]
        return LayerSpec("Reshape", [shape], {}, ["keras"], "keras", [len(shape) + 1])
    if cls == "Permute":
        return LayerSpec("Permute", [[int(v) for v in cfg["dims"]]], {}, ["keras"], "keras")
    if cls == "RepeatVector":
        return LayerSpec("RepeatVector", [int(cfg["n"])], {}, ["keras"], "keras", [3])
    raise Unsupported()


def _merge(c: Ctx) -> LayerSpec:
    cls, cfg = c.cls, c.cfg
    lay = c.layouts[0]
    if len(set(c.ranks)) != 1:
        raise Unsupported(f"inputs of different ranks {c.ranks}")
    if cls == "Merge":
        mode = cfg.get("mode", "sum")
        if mode == "concat":
            cls = "Concatenate"
        elif mode in _K1_MERGE:
            return LayerSpec("Merge", [_K1_MERGE[mode]], {}, [lay] * len(c.ranks), lay)
        else:
            raise Unsupported(f"mode {mode!r}")
    if cls == "Concatenate":
        axis = int(cfg.get("axis", -1))
        return LayerSpec("Concat", [c.axis(axis, c.ranks[0], lay)], {}, [lay] * len(c.ranks), lay)
    return LayerSpec("Merge", [_MERGE[cls]], {}, [lay] * len(c.ranks), lay)


def _affine(c: Ctx) -> LayerSpec:
    cfg = c.cfg
    if c.cls == "Rescaling":
        return LayerSpec("Affine", [], {"scale": float(cfg.get("scale", 1.0)), "offset": float(cfg.get("offset", 0.0))})
    axis = cfg.get("axis", -1)
    axis = axis[0] if isinstance(axis, list | tuple) and len(axis) == 1 else axis
    if not isinstance(axis, int) or cfg.get("invert"):
        raise Unsupported(f"axis {axis}" if not isinstance(axis, int) else "invert=True")
    names = [n for n, _ in c.weights]
    w = c.take(["mean", "variance", "count"][: len(c.weights)] if None in names else names)
    mean, var = w["mean"].reshape(-1), w["variance"].reshape(-1)
    spec = LayerSpec("Affine", [], {"num_features": int(mean.shape[0]), "dim": c.axis(axis, c.ranks[0], c.layouts[0])})
    spec.state = {"mean": mean, "variance": var}
    return spec


def _segnet(c: Ctx) -> LayerSpec:
    cfg = c.cfg
    if c.cls == "MaxPoolingWithArgmax2D":
        k = _pair(cfg.get("pool_size", 2), 2)
        s = _pair(cfg.get("strides") or k, 2)
        spec = LayerSpec(
            "MaxPoolWithArgmax", [k, s], {"padding": str(cfg.get("padding", "same")).lower()}, ["nc"], "nc"
        )
        spec.out_ranks = [4, 4]
        return spec
    return LayerSpec("MaxUnpool", [_pair(cfg.get("size", 2), 2)], {}, ["nc", "nc"], "nc")


def _dot(c: Ctx) -> LayerSpec:
    """Keras Dot of two rank-2/3 tensors (axes counted with the batch axis as 0, negative allowed)."""
    ranks = list(c.ranks)
    if len(ranks) != 2 or not set(ranks) <= {2, 3}:
        raise Unsupported(f"inputs of rank {ranks} (Dot is mapped for 2-D / 3-D inputs)")
    axes = c.cfg.get("axes", -1)
    axes = [axes, axes] if isinstance(axes, int) else list(axes)
    axes = [int(a) % r for a, r in zip(axes, ranks, strict=True)]
    if 0 in axes:
        raise Unsupported("axes over the batch axis")
    normalize = bool(c.cfg.get("normalize", False))
    return LayerSpec("Dot", [axes], {"normalize": normalize}, ["keras", "keras"], "keras", [max(2, sum(ranks) - 2)])


SHAPE_TABLE = {
    **dict.fromkeys(("MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D"), _pool),
    **dict.fromkeys(
        ("GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D"), _global_pool
    ),
    **dict.fromkeys(("UpSampling1D", "UpSampling2D", "Resizing", "BilinearUpsampling"), _resize),
    **dict.fromkeys(
        ("ZeroPadding1D", "ZeroPadding2D", "Cropping1D", "Cropping2D", "Flatten", "Reshape", "Permute", "RepeatVector"),
        _shape_ops,
    ),
    **dict.fromkeys(("Merge", "Concatenate", *_MERGE), _merge),
    "Dot": _dot,
    **dict.fromkeys(("Rescaling", "Normalization"), _affine),
    **dict.fromkeys(("MaxPoolingWithArgmax2D", "MaxUnpooling2D"), _segnet),
}

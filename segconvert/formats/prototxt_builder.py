"""Build prototxt text for PSPNet in the released deploy layout (hszhao/PSPNet layer names and wiring).

Used for the demo's embedded default and for tests: widths can be reduced, everything else (names, BN
layers, stride placement, dilations, fixed pyramid kernels, Interp layers, concat order) follows SPEC §4.
"""

from __future__ import annotations


def _layer(name: str, ltype: str, bottoms: list[str], tops: list[str], body: str = "") -> str:
    b = "".join(f'  bottom: "{x}"\n' for x in bottoms)
    t = "".join(f'  top: "{x}"\n' for x in tops)
    return f'layer {{\n  name: "{name}"\n  type: "{ltype}"\n{b}{t}{body}}}\n'


def _conv(name: str, bottom: str, out: int, k: int, *, s: int = 1, p: int = 0, d: int = 1, bias: bool = False) -> str:
    extra = f"    dilation: {d}\n" if d > 1 else ""
    pad = f"    pad: {p}\n" if p else ""
    body = (
        f"  convolution_param {{\n    num_output: {out}\n    bias_term: {'true' if bias else 'false'}\n"
        f"{pad}    kernel_size: {k}\n    stride: {s}\n{extra}  }}\n"
    )
    return _layer(name, "Convolution", [bottom], [name], body)


def _bn(name: str, relu: bool = True) -> str:
    out = _layer(f"{name}/bn", "BN", [name], [name], "  bn_param {\n    momentum: 0.95\n    frozen: true\n  }\n")
    if relu:
        out += _layer(f"{name}/relu", "ReLU", [name], [name])
    return out


def pspnet_prototxt(
    depth: int = 50,
    num_classes: int = 150,
    input_size: int = 473,
    width_divisor: int = 1,
    stride_in: str = "1x1",
    name: str | None = None,
) -> str:
    """The deploy prototxt of PSPNet50/101 at 473 or 713 (kernels derived from the 1/8 feature size)."""
    blocks = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    w = lambda c: max(1, c // width_divisor)  # noqa: E731
    feat = ((input_size - 1) // 8) + 1
    text = f'name: "{name or f"pspnet{depth}_{input_size}"}"\ninput: "data"\n'
    text += f"input_dim: 1\ninput_dim: 3\ninput_dim: {input_size}\ninput_dim: {input_size}\n"
    text += _conv("conv1_1_3x3_s2", "data", w(64), 3, s=2, p=1) + _bn("conv1_1_3x3_s2")
    text += _conv("conv1_2_3x3", "conv1_1_3x3_s2", w(64), 3, p=1) + _bn("conv1_2_3x3")
    text += _conv("conv1_3_3x3", "conv1_2_3x3", w(128), 3, p=1) + _bn("conv1_3_3x3")
    pool = "  pooling_param {\n    pool: MAX\n    kernel_size: 3\n    stride: 2\n    pad: 1\n  }\n"
    text += _layer("pool1_3x3_s2", "Pooling", ["conv1_3_3x3"], ["pool1_3x3_s2"], pool)
    prev = "pool1_3x3_s2"
    for si, n in enumerate(blocks):
        stage = si + 2
        mid, out = w(64 * 2**si), w(256 * 2**si)
        dil = {4: 2, 5: 4}.get(stage, 1)
        for k in range(1, n + 1):
            base = f"conv{stage}_{k}"
            stride = 2 if stage == 3 and k == 1 else 1
            s1, s3 = (stride, 1) if stride_in == "1x1" else (1, stride)
            text += _conv(f"{base}_1x1_reduce", prev, mid, 1, s=s1) + _bn(f"{base}_1x1_reduce")
            text += _conv(f"{base}_3x3", f"{base}_1x1_reduce", mid, 3, s=s3, p=dil, d=dil) + _bn(f"{base}_3x3")
            text += _conv(f"{base}_1x1_increase", f"{base}_3x3", out, 1) + _bn(f"{base}_1x1_increase", relu=False)
            shortcut = prev
            if k == 1:
                text += _conv(f"{base}_1x1_proj", prev, out, 1, s=stride) + _bn(f"{base}_1x1_proj", relu=False)
                shortcut = f"{base}_1x1_proj"
            text += _layer(
                base,
                "Eltwise",
                [shortcut, f"{base}_1x1_increase"],
                [base],
                "  eltwise_param {\n    operation: SUM\n  }\n",
            )
            text += _layer(f"{base}/relu", "ReLU", [base], [base])
            prev = base
    branches = []
    for bins in (1, 2, 3, 6):
        k = feat // bins if feat % bins == 0 else -(-feat // bins)
        pname = f"conv5_3_pool{bins}"
        body = f"  pooling_param {{\n    pool: AVE\n    kernel_size: {k}\n    stride: {k}\n  }}\n"
        text += _layer(pname, "Pooling", ["conv5_3"], [pname], body)
        text += _conv(f"{pname}_conv", pname, w(512), 1) + _bn(f"{pname}_conv")
        interp = f"  interp_param {{\n    height: {feat}\n    width: {feat}\n  }}\n"
        text += _layer(f"{pname}_interp", "Interp", [f"{pname}_conv"], [f"{pname}_interp"], interp)
        branches.append(f"{pname}_interp")
    concat_in = ["conv5_3", *reversed(branches)]
    text += _layer("conv5_3_concat", "Concat", concat_in, ["conv5_3_concat"], "  concat_param {\n    axis: 1\n  }\n")
    text += _conv("conv5_4", "conv5_3_concat", w(512), 3, p=1) + _bn("conv5_4")
    text += _layer(
        "conv5_4/dropout", "Dropout", ["conv5_4"], ["conv5_4"], "  dropout_param {\n    dropout_ratio: 0.1\n  }\n"
    )
    text += _conv("conv6", "conv5_4", num_classes, 1, bias=True)
    text += _layer("conv6_interp", "Interp", ["conv6"], ["conv6_interp"], "  interp_param {\n    zoom_factor: 8\n  }\n")
    return text

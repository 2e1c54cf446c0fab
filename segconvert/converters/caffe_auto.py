"""Which Caffe conversion a net gets: the named reference model when it is one, else the generic path."""

from __future__ import annotations

from segconvert.errors import ConversionError
from segconvert.graph import Net

from .caffe_detect import detect_caffe_arch
from .caffe_generic import convert_caffe_generic
from .caffe_icnet import convert_caffe_icnet, is_icnet
from .caffe_names import CaffeConversion, convert_caffe_net

NAMED_PATH = "named architecture (use --generic for one module per Caffe layer)"


def convert_caffe_auto(
    net: Net, arch: str | None = None, generic_reason: str | None = None
) -> tuple[CaffeConversion, str]:
    """Convert ``net`` and say which path was taken and why.

    ``generic_reason`` forces the generic path. Otherwise ``arch`` (a reference-model name) forces the named
    path; without it a detected DeepLab-v2 / PSPNet / ICNet takes the named path and any other net the generic one.
    """
    if generic_reason:
        if arch is not None:
            raise ConversionError("an architecture name and the generic (layer by layer) path exclude each other")
        return convert_caffe_generic(net), f"generic ({generic_reason})"
    if arch == "icnet" or (arch is None and is_icnet(net)):
        return convert_caffe_icnet(net), NAMED_PATH
    if arch is not None:
        return convert_caffe_net(net, arch=arch), NAMED_PATH
    try:
        detected = detect_caffe_arch(net)
    except ConversionError as exc:
        try:
            conv = convert_caffe_generic(net)
        except ConversionError as gen:
            raise ConversionError(
                f"not a DeepLab-v2 / PSPNet net ({exc.message}), and the generic path failed: {gen.message}",
                file=gen.file,
                layer=gen.layer,
            ) from None
        return conv, f"generic (not a DeepLab-v2 / PSPNet net: {exc.message})"
    return convert_caffe_net(net, detected=detected), NAMED_PATH

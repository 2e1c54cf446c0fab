"""The zoo manifest: released checkpoints and every published score with the exact setting it was measured in.

Pure data (read by :mod:`segconvert.weights.zoo`). Scores are in percent. ``checksums`` are the ones the
source publishes; none of these projects publishes one, so they are null (never computed here and passed off
as published). ``comparable`` is False for numbers that an evaluation of the released file on a validation
split cannot reproduce (test-server numbers, CRF post-processing, per-image averaging, other weights), with
the reason in ``note``. Sources are named as ``owner/repo:path``; "(secondary)" marks a number quoted by a
third party, "(unverified)" one not confirmed in a primary source.
"""

from __future__ import annotations

from typing import Any

_CAFFE_PSP_PREP = {"channel_order": "BGR", "mean": [103.939, 116.779, 123.68], "std": None, "scale": 1.0}
_DEEPLAB_PREP = {"channel_order": "BGR", "mean": [104.008, 116.669, 122.675], "std": None, "scale": 1.0}
_SEMSEG_PREP = {
    "channel_order": "RGB",
    "mean": [123.675, 116.28, 103.53],
    "std": [58.395, 57.12, 57.375],
    "scale": 1.0,
}
_SLIM_PREP = {"channel_order": "RGB", "mean": [123.68, 116.78, 103.94], "std": None, "scale": 1.0}

_MS = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]


def _score(
    value: float,
    *,
    metric: str = "mIoU",
    split: str = "val",
    setting: str = "ss",
    protocol: str,
    flip: bool,
    crf: bool = False,
    source: str,
    comparable: bool = True,
    note: str | None = None,
) -> dict[str, Any]:
    return {
        "metric": metric,
        "value": value,
        "split": split,
        "setting": setting,
        "scales": [1.0] if setting == "ss" else _MS if setting == "ms" else None,
        "flip": flip,
        "crf": crf,
        "protocol": protocol,
        "source": source,
        "comparable": comparable,
        "note": note,
    }


_PSP_README = "hszhao/PSPNet:README.md"
_SEMSEG_README = "hszhao/semseg:README.md"

ZOO: list[dict[str, Any]] = [
    # ------------------------------------------------------------------------------------ DeepLab-v2
    {
        "name": "deeplabv2_resnet101_msc_voc12",
        "source_project": "DeepLab-v2 (Liang-Chieh Chen et al.), Caffe fork deeplab-public-ver2",
        "format": "caffe",
        "archive": "http://liangchiehchen.com/projects/released/deeplab_aspp_resnet101/prototxt_and_model.zip",
        "files": [
            {"name": "train_iter_20000.caffemodel", "role": "weights (VOC12 train_aug, COCO init)", "checksums": None},
            {
                "name": "train2_iter_20000.caffemodel",
                "role": "weights (second VOC12 model of the release)",
                "checksums": None,
            },
            {"name": "init.caffemodel", "role": "COCO initialisation (not a VOC model)", "checksums": None},
            {
                "name": "test.prototxt",
                "role": "deploy net: talent518/deeplab-public-ver2:exper/voc12/config/"
                "resnet101/test.prototxt (templated) or isht7/pytorch-deeplab-resnet:data/test.prototxt",
                "checksums": None,
            },
        ],
        "weights_file": "train_iter_20000.caffemodel",
        "arch": "deeplabv2_resnet101",
        "config": {"msc": True, "num_classes": 21, "input_size": [513, 513]},
        "dataset": "voc",
        "num_classes": 21,
        "classes": "PASCAL VOC 2012 (21 incl. background; 255 void)",
        "input_size": [513, 513],
        "preprocessing": _DEEPLAB_PREP,
        "protocol": {"name": "deeplab-msc", "crop": 513},
        "scores": [
            _score(
                76.35,
                protocol="deeplab-msc",
                flip=False,
                source="kazuto1011/deeplab-pytorch:README.md (secondary)",
                note="DeepLab-v2 R101 ASPP+MSC, COCO init, train_aug; Caffe, 513, fused MSC, no CRF",
            ),
            _score(
                75.54,
                protocol="deeplab-msc",
                flip=False,
                source="isht7/pytorch-deeplab-resnet:README.md",
                note="train_iter_20000.caffemodel converted (PyTorch = Caffe): 513 zero-pad after mean, one "
                "MSC forward, dataset histogram, 255 ignored, no CRF; the gap to 76.35 is unexplained "
                "(isht7/pytorch-deeplab-resnet#44)",
            ),
            _score(
                77.69,
                protocol="deeplab-msc",
                flip=False,
                crf=True,
                source="kazuto1011/deeplab-pytorch:README.md (secondary)",
                comparable=False,
                note="includes DenseCRF post-processing, which segconvert does not run",
            ),
            _score(
                79.7,
                split="test",
                protocol="deeplab-msc",
                flip=False,
                crf=True,
                source="DeepLab-v2 paper abstract (secondary)",
                comparable=False,
                note="VOC test server, final system",
            ),
            _score(
                78.48,
                protocol="deeplab-msc",
                flip=False,
                source="isht7/pytorch-deeplab-resnet:README.md history",
                comparable=False,
                note="per-image mIoU with 255 -> 0: not a dataset-level score (isht7/pytorch-deeplab-resnet#5)",
            ),
            _score(
                74.39,
                protocol="deeplab-msc",
                flip=False,
                source="isht7/pytorch-deeplab-resnet:README.md history",
                comparable=False,
                note="255 counted as background (before isht7 151698b)",
            ),
        ],
        "notes": ["Scores are for the MSC net's fused output (fc_fusion -> fc1_interp), argmax, no CRF."],
    },
    # --------------------------------------------------------------------------------- PSPNet (Caffe)
    {
        "name": "pspnet50_ade20k",
        "source_project": "hszhao/PSPNet (Caffe)",
        "format": "caffe",
        "files": [
            {"name": "pspnet50_ADE20K.caffemodel", "role": "weights", "checksums": None},
            {"name": "evaluation/prototxt/pspnet50_ADE20K_473.prototxt", "role": "deploy net", "checksums": None},
        ],
        "weights_file": "pspnet50_ADE20K.caffemodel",
        "arch": "pspnet50",
        "config": {
            "num_classes": 150,
            "stem": "deep",
            "stride_in": "1x1",
            "padding": "caffe",
            "input_size": [473, 473],
            "ppm_mode": "fixed",
            "resize": "align_corners",
        },
        "dataset": "ade20k",
        "num_classes": 150,
        "classes": "ADE20K SceneParsing 150 (annotation 0 ignored, v -> v - 1)",
        "input_size": [473, 473],
        "preprocessing": _CAFFE_PSP_PREP,
        "protocol": {"name": "pspnet", "base_size": 512, "crop": 473},
        "scores": [
            _score(41.68, protocol="pspnet", flip=True, source=_PSP_README),
            _score(80.04, metric="aAcc", protocol="pspnet", flip=True, source=_PSP_README, note="pAcc"),
            _score(42.78, setting="ms", protocol="pspnet", flip=True, source=_PSP_README),
            _score(80.76, metric="aAcc", setting="ms", protocol="pspnet", flip=True, source=_PSP_README, note="pAcc"),
            _score(
                40.00,
                protocol="hellochick-whole",
                flip=False,
                source="hellochick/PSPNet-tensorflow:README.md",
                comparable=False,
                note="TF port of these weights, whole image, not the official protocol",
            ),
            _score(
                40.67,
                protocol="hellochick-whole",
                flip=True,
                source="hellochick/PSPNet-tensorflow:README.md",
                comparable=False,
                note="TF port of these weights, whole image + flip",
            ),
        ],
        "notes": ["PSPNet50-ADE strides conv3_1_1x1_reduce (the 1x1), unlike PSPNet101."],
    },
    {
        "name": "pspnet101_voc2012",
        "source_project": "hszhao/PSPNet (Caffe)",
        "format": "caffe",
        "files": [
            {"name": "pspnet101_VOC2012.caffemodel", "role": "weights", "checksums": None},
            {"name": "evaluation/prototxt/pspnet101_VOC2012_473.prototxt", "role": "deploy net", "checksums": None},
        ],
        "weights_file": "pspnet101_VOC2012.caffemodel",
        "arch": "pspnet101",
        "config": {
            "num_classes": 21,
            "stem": "deep",
            "stride_in": "3x3",
            "padding": "caffe",
            "input_size": [473, 473],
            "ppm_mode": "fixed",
            "resize": "align_corners",
        },
        "dataset": "voc",
        "num_classes": 21,
        "classes": "PASCAL VOC 2012 (21 incl. background; 255 void)",
        "input_size": [473, 473],
        "preprocessing": _CAFFE_PSP_PREP,
        "protocol": {"name": "pspnet", "base_size": 512, "crop": 473},
        "scores": [
            _score(
                85.41,
                split="test",
                setting="ms",
                protocol="pspnet",
                flip=True,
                source=_PSP_README,
                comparable=False,
                note="VOC 2012 TEST SERVER number: there is no published val score; never use "
                "VOC val as its target (kazuto1011/pspnet-pytorch#2)",
            ),
            _score(
                91.0,
                protocol="unknown",
                flip=True,
                source="meetps/pytorch-semseg#59 (secondary, approximate)",
                comparable=False,
                note="val score of the released model; val was probably in its training data (unverified)",
            ),
            _score(
                88.1,
                protocol="kazuto1011/pspnet-pytorch",
                flip=True,
                source="kazuto1011/pspnet-pytorch:README.md (secondary)",
                comparable=False,
                note="val, ss; val probably seen in training (unverified)",
            ),
            _score(
                88.6,
                setting="ms",
                protocol="kazuto1011/pspnet-pytorch",
                flip=True,
                source="kazuto1011/pspnet-pytorch:README.md (secondary)",
                comparable=False,
                note="val, ms; val probably seen in training (unverified)",
            ),
        ],
        "notes": ["No reproducible validation target: `reproduce` refuses unless --allow-noncomparable."],
    },
    {
        "name": "pspnet101_cityscapes",
        "source_project": "hszhao/PSPNet (Caffe)",
        "format": "caffe",
        "files": [
            {"name": "pspnet101_cityscapes.caffemodel", "role": "weights", "checksums": None},
            {"name": "evaluation/prototxt/pspnet101_cityscapes_713.prototxt", "role": "deploy net", "checksums": None},
        ],
        "weights_file": "pspnet101_cityscapes.caffemodel",
        "arch": "pspnet101",
        "config": {
            "num_classes": 19,
            "stem": "deep",
            "stride_in": "3x3",
            "padding": "caffe",
            "input_size": [713, 713],
            "ppm_mode": "fixed",
            "resize": "align_corners",
        },
        "dataset": "cityscapes",
        "num_classes": 19,
        "classes": "Cityscapes 19 trainIds (fine)",
        "input_size": [713, 713],
        "preprocessing": _CAFFE_PSP_PREP,
        "protocol": {"name": "pspnet", "base_size": 2048, "crop": 713},
        "scores": [
            _score(79.70, protocol="pspnet", flip=True, source=_PSP_README),
            _score(96.38, metric="aAcc", protocol="pspnet", flip=True, source=_PSP_README, note="pAcc"),
            _score(80.91, setting="ms", protocol="pspnet", flip=True, source=_PSP_README),
            _score(96.59, metric="aAcc", setting="ms", protocol="pspnet", flip=True, source=_PSP_README, note="pAcc"),
            _score(
                76.99,
                protocol="hellochick-whole",
                flip=False,
                source="hellochick/PSPNet-tensorflow:README.md",
                comparable=False,
                note="TF port of these weights, whole image",
            ),
            _score(
                77.23,
                protocol="hellochick-whole",
                flip=True,
                source="hellochick/PSPNet-tensorflow:README.md",
                comparable=False,
                note="TF port of these weights, whole image + flip",
            ),
        ],
        "notes": [
            "Official scoring uses trainIds (eval_acc.m); the cityscapesScripts class IoU is the same "
            "number for a trainId model."
        ],
    },
]

# ----------------------------------------------------------------------------------- semseg (PyTorch)
_SEMSEG = [
    # (dataset, layers, epochs, crop, base, ss mIoU/mAcc/aAcc, ms mIoU/mAcc/aAcc), from hszhao/semseg:README.md
    ("ade20k", 50, 100, 473, 512, (41.89, 52.27, 80.39), (42.84, 52.66, 81.06)),
    ("ade20k", 101, 100, 473, 512, (43.10, 53.75, 81.07), (44.15, 54.26, 81.72)),
    ("voc2012", 50, 50, 473, 512, (77.05, 85.13, 94.89), (78.02, 85.80, 95.13)),
    ("voc2012", 101, 50, 473, 512, (79.07, 86.36, 95.34), (79.63, 86.77, 95.50)),
    ("cityscapes", 50, 200, 713, 2048, (77.30, 84.31, 95.97), (78.38, 84.86, 96.17)),
    ("cityscapes", 101, 200, 713, 2048, (78.63, 85.77, 96.14), (79.29, 85.91, 96.38)),
]
_DS = {"ade20k": ("ade20k", 150), "voc2012": ("voc", 21), "cityscapes": ("cityscapes", 19)}

for _ds, _layers, _epochs, _crop, _base, _ss, _ms in _SEMSEG:
    _key, _ncls = _DS[_ds]
    _scores = []
    for _setting, _vals in (("ss", _ss), ("ms", _ms)):
        for _metric, _v in zip(("mIoU", "mAcc", "aAcc"), _vals, strict=True):
            _scores.append(
                _score(
                    _v,
                    metric=_metric,
                    setting=_setting,
                    protocol="semseg",
                    flip=True,
                    source=_SEMSEG_README,
                    note="semseg-trained weights; 'ss' includes flip",
                )
            )
    ZOO.append(
        {
            "name": f"semseg_pspnet{_layers}_{_key}",
            "source_project": "hszhao/semseg (PyTorch)",
            "format": "pytorch",
            "files": [
                {
                    "name": f"exp/{_ds}/pspnet{_layers}/model/train_epoch_{_epochs}.pth",
                    "role": f"weights (path from config/{_ds}/{_ds}_pspnet{_layers}.yaml TEST.model_path)",
                    "checksums": None,
                }
            ],
            "weights_file": f"train_epoch_{_epochs}.pth",
            "arch": f"pspnet{_layers}",
            "config": {
                "num_classes": _ncls,
                "stem": "deep",
                "stride_in": "3x3",
                "padding": "caffe",
                "input_size": [_crop, _crop],
                "ppm_mode": "adaptive",
                "resize": "align_corners",
            },
            "dataset": _key,
            "num_classes": _ncls,
            "classes": {"ade20k": "ADE20K 150", "voc": "PASCAL VOC 21", "cityscapes": "Cityscapes 19 trainIds"}[_key],
            "input_size": [_crop, _crop],
            "preprocessing": _SEMSEG_PREP,
            "protocol": {"name": "semseg", "base_size": _base, "crop": _crop},
            "scores": _scores,
            "notes": ["Trained by semseg, not converted from Caffe: do not compare with the PSPNet Caffe numbers."],
        }
    )

# ------------------------------------------------------------------------------ TF-Slim backbones
for _depth in (50, 101):
    ZOO.append(
        {
            "name": f"slim_resnet_v1_{_depth}_imagenet",
            "source_project": "tensorflow/models research/slim",
            "format": "tf-checkpoint",
            "files": [
                {"name": f"resnet_v1_{_depth}_2016_08_28.tar.gz", "role": "archive", "checksums": None},
                {"name": f"resnet_v1_{_depth}.ckpt", "role": "TF checkpoint inside the archive", "checksums": None},
            ],
            "weights_file": f"resnet_v1_{_depth}.ckpt",
            "arch": "resnet",
            "config": {
                "depth": _depth,
                "num_classes": 1000,
                "stem": "7x7",
                "stride_in": "3x3_last",
                "padding": "tf_same",
            },
            "dataset": None,
            "num_classes": 1000,
            "classes": "ImageNet-1k (backbone for segmentation; no segmentation score)",
            "input_size": None,
            "preprocessing": _SLIM_PREP,
            "protocol": None,
            "scores": [],
            "notes": ["Backbone only: used to initialise the TF PSPNet ports; nothing to reproduce here."],
        }
    )

"""The zoo manifest: released checkpoints and every published score with the exact setting it was measured in.

Pure data (read by :mod:`segconvert.weights.zoo`). Scores are in percent. ``checksums`` are the ones the
source publishes; none of these projects publishes one, so they are null (never computed here and passed off
as published). ``comparable`` is False for numbers that an evaluation of the released file on a validation
split with a segconvert protocol cannot reproduce (test-server numbers, CRF post-processing, per-image
averaging, other weights or another program's protocol), with the reason in ``note``. Sources are named as
``owner/repo:path``; "(secondary)" marks a number quoted by a third party, "(unverified)" one not confirmed in a
primary source.
"""

from __future__ import annotations

from typing import Any

_CAFFE_PSP_PREP = {"channel_order": "BGR", "mean": [103.939, 116.779, 123.68], "std": None, "scale": 1.0}
_DEEPLAB_PREP = {"channel_order": "BGR", "mean": [104.008, 116.669, 122.675], "std": None, "scale": 1.0}
_SEMSEG_PREP = {"channel_order": "RGB", "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375], "scale": 1.0}
_SLIM_PREP = {"channel_order": "RGB", "mean": [123.68, 116.78, 103.94], "std": None, "scale": 1.0}

_MS = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
_PACC = {"aAcc": "pAcc in the source (pixel accuracy over labelled pixels)"}
_CLASSES = {
    "voc": ("PASCAL VOC 2012 (21 incl. background; 255 void)", 21),
    "ade20k": ("ADE20K SceneParsing 150 (annotation 0 ignored, v -> v - 1)", 150),
    "cityscapes": ("Cityscapes 19 trainIds (fine)", 19),
}

_PSP_README = "hszhao/PSPNet:README.md"
_SEMSEG_README = "hszhao/semseg:README.md"
_HELLOCHICK = "hellochick/PSPNet-tensorflow:README.md"
_KAZUTO_DL = "kazuto1011/deeplab-pytorch:README.md"
_ISHT7 = "isht7/pytorch-deeplab-resnet:README.md"


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


def _file(name: str, role: str) -> dict[str, Any]:
    return {"name": name, "role": role, "checksums": None}


def _entry(
    name: str,
    *,
    source_project: str,
    fmt: str,
    files: list[dict[str, Any]],
    arch: str,
    config: dict[str, Any],
    dataset: str | None,
    preprocessing: dict[str, Any],
    protocol: dict[str, Any] | None,
    scores: list[dict[str, Any]],
    notes: list[str],
    input_size: list[int] | None = None,
    classes: str | None = None,
    archive: str | None = None,
) -> dict[str, Any]:
    """One manifest entry; ``weights_file`` is the first file's name, ``classes`` the dataset's by default."""
    described, num_classes = _CLASSES[dataset] if dataset else ("", config.get("num_classes"))
    return {
        "name": name,
        "source_project": source_project,
        "format": fmt,
        **({"archive": archive} if archive else {}),
        "files": files,
        "weights_file": files[0]["name"].split("/")[-1],
        "arch": arch,
        "config": config,
        "dataset": dataset,
        "num_classes": num_classes,
        "classes": classes or described,
        "input_size": input_size,
        "preprocessing": preprocessing,
        "protocol": protocol,
        "scores": scores,
        "notes": notes,
    }


def _pspnet_config(num_classes: int, crop: int, stride_in: str, ppm_mode: str) -> dict[str, Any]:
    return {
        "num_classes": num_classes,
        "stem": "deep",
        "stride_in": stride_in,
        "padding": "caffe",
        "input_size": [crop, crop],
        "ppm_mode": ppm_mode,
        "resize": "align_corners",
    }


def _published(protocol: str, source: str, rows: list[tuple[str, str, float]], note: str | None = None) -> list:
    """Comparable val scores with flip (the PSPNet-family habit): (setting, metric, value) rows."""
    return [
        _score(v, metric=m, setting=s, protocol=protocol, flip=True, source=source, note=note or _PACC.get(m))
        for s, m, v in rows
    ]


def _not_comparable(value: float, note: str, source: str, *, protocol: str, flip: bool = False, **kw: Any) -> dict:
    """A published number that no segconvert run can be compared with; ``note`` says why."""
    return _score(value, source=source, comparable=False, note=note, protocol=protocol, flip=flip, **kw)


# ------------------------------------------------------------------------------------------ DeepLab-v2
_DEEPLAB_CAFFE = _entry(
    "deeplabv2_resnet101_msc_voc12",
    source_project="DeepLab-v2 (Liang-Chieh Chen et al.), Caffe fork deeplab-public-ver2",
    fmt="caffe",
    archive="http://liangchiehchen.com/projects/released/deeplab_aspp_resnet101/prototxt_and_model.zip",
    files=[
        _file("train_iter_20000.caffemodel", "weights (VOC12 train_aug, COCO init)"),
        _file("train2_iter_20000.caffemodel", "weights (second VOC12 model of the release)"),
        _file("init.caffemodel", "COCO initialisation (not a VOC model)"),
        _file(
            "test.prototxt",
            "deploy net: talent518/deeplab-public-ver2:exper/voc12/config/resnet101/test.prototxt (templated) "
            "or isht7/pytorch-deeplab-resnet:data/test.prototxt",
        ),
    ],
    arch="deeplabv2_resnet101",
    config={"msc": True, "num_classes": 21, "input_size": [513, 513]},
    dataset="voc",
    input_size=[513, 513],
    preprocessing=_DEEPLAB_PREP,
    protocol={"name": "deeplab-msc", "crop": 513},
    scores=[
        _score(
            76.35,
            protocol="deeplab-msc",
            flip=False,
            source=f"{_KAZUTO_DL} (secondary)",
            note="DeepLab-v2 R101 ASPP+MSC, COCO init, train_aug; Caffe, 513, fused MSC, no CRF",
        ),
        _score(
            75.54,
            protocol="deeplab-msc",
            flip=False,
            source=_ISHT7,
            note="train_iter_20000.caffemodel converted (PyTorch = Caffe): 513 zero-pad after mean, one MSC "
            "forward, output[3] align_corners to 513, crop, dataset histogram, 255 ignored, no CRF; the gap to "
            "76.35 is unexplained (isht7/pytorch-deeplab-resnet#44)",
        ),
        _not_comparable(
            77.69,
            "includes DenseCRF post-processing, which segconvert does not run",
            f"{_KAZUTO_DL} (secondary)",
            protocol="deeplab-msc",
            crf=True,
        ),
        _not_comparable(
            79.7,
            "VOC test server, final system",
            "DeepLab-v2 paper abstract (secondary)",
            split="test",
            protocol="deeplab-msc",
            crf=True,
        ),
        _not_comparable(
            78.48,
            "per-image mIoU with 255 -> 0 (78.46-78.49 across isht7 commits, e.g. 7b52988): not a dataset-level "
            "score (isht7/pytorch-deeplab-resnet#5)",
            f"{_ISHT7} history",
            protocol="deeplab-msc",
        ),
        _not_comparable(
            74.39,
            "255 counted as background (before isht7 151698b)",
            f"{_ISHT7} history",
            protocol="deeplab-msc",
        ),
    ],
    notes=["Scores are for the MSC net's fused output (fc_fusion -> fc1_interp), argmax, no CRF."],
)

_DEEPLAB_KAZUTO = _entry(
    "kazuto1011_deeplabv2_resnet101_msc_vocaug",
    source_project="kazuto1011/deeplab-pytorch (PyTorch re-training of DeepLab-v2)",
    fmt="pytorch",
    files=[_file("deeplabv2_resnet101_msc-vocaug-20000.pth", "weights (kazuto1011/deeplab-pytorch release v1.0)")],
    arch="deeplabv2_resnet101",
    config={"msc": True, "num_classes": 21},
    dataset="voc",
    preprocessing=_DEEPLAB_PREP,
    protocol=None,
    scores=[
        _not_comparable(value, note, _KAZUTO_DL, metric=metric, protocol="kazuto1011/deeplab-pytorch", crf=crf)
        for metric, value, crf, note in (
            ("mIoU", 76.65, False, "PyTorch-trained weights; MSC resized with align_corners=False"),
            ("aAcc", 94.64, False, "pixel accuracy, same run"),
            ("mAcc", 86.50, False, "mean accuracy, same run"),
            ("mIoU", 77.93, True, "with DenseCRF"),
            ("aAcc", 95.04, True, "with DenseCRF"),
            ("mAcc", 86.64, True, "with DenseCRF"),
        )
    ],
    notes=[
        "Not the Caffe release: trained by kazuto1011 in PyTorch, its MSC resizes with align_corners=False "
        "(`torch2torch` keeps them: msc_resize='kazuto', resize='half_pixel'), but no segconvert protocol is "
        "its evaluation, so these numbers are not reproduced."
    ],
)

# -------------------------------------------------------------------------------------- PSPNet (Caffe)


def _hellochick(plain: float, flipped: float) -> list[dict[str, Any]]:
    """hellochick/PSPNet-tensorflow's val numbers for its TF port of the Caffe weights (without / with flip)."""
    note = "TF port of these weights (hellochick), whole image{}, not the official protocol"
    return [
        _not_comparable(v, note.format(extra), _HELLOCHICK, protocol="hellochick-whole", flip=f)
        for v, f, extra in ((plain, False, ""), (flipped, True, " + flip"))
    ]


def _caffe_pspnet(
    name: str, depth: int, dataset: str, caffemodel: str, prototxt: str, crop: int, base: int, stride_in: str
) -> dict[str, Any]:
    return _entry(
        name,
        source_project="hszhao/PSPNet (Caffe)",
        fmt="caffe",
        files=[_file(caffemodel, "weights"), _file(f"evaluation/prototxt/{prototxt}", "deploy net")],
        arch=f"pspnet{depth}",
        config=_pspnet_config(_CLASSES[dataset][1], crop, stride_in, "fixed"),
        dataset=dataset,
        input_size=[crop, crop],
        preprocessing=_CAFFE_PSP_PREP,
        protocol={"name": "pspnet", "base_size": base, "crop": crop},
        scores=[],
        notes=[],
    )


_PSP50_ADE = _caffe_pspnet(
    "pspnet50_ade20k", 50, "ade20k", "pspnet50_ADE20K.caffemodel", "pspnet50_ADE20K_473.prototxt", 473, 512, "1x1"
)
_PSP50_ADE["scores"] = _published(
    "pspnet", _PSP_README, [("ss", "mIoU", 41.68), ("ss", "aAcc", 80.04), ("ms", "mIoU", 42.78), ("ms", "aAcc", 80.76)]
) + _hellochick(40.00, 40.67)
_PSP50_ADE["notes"] = ["PSPNet50-ADE strides conv3_1_1x1_reduce (the 1x1), unlike PSPNet101."]

_PSP101_VOC = _caffe_pspnet(
    "pspnet101_voc2012", 101, "voc", "pspnet101_VOC2012.caffemodel", "pspnet101_VOC2012_473.prototxt", 473, 512, "3x3"
)
_VAL_SEEN = "val probably seen in training (unverified)"
_PSP101_VOC["scores"] = [
    _not_comparable(
        85.41,
        "VOC 2012 TEST SERVER number: there is no published val score; never use VOC val as its target "
        "(kazuto1011/pspnet-pytorch#2)",
        _PSP_README,
        split="test",
        setting="ms",
        protocol="pspnet",
        flip=True,
    ),
    _not_comparable(
        91.0,
        "val score of the released model; " + _VAL_SEEN,
        "meetps/pytorch-semseg#59 (secondary, approximate)",
        protocol="unknown",
        flip=True,
    ),
    _not_comparable(
        88.1,
        "val, ss; " + _VAL_SEEN,
        "kazuto1011/pspnet-pytorch:README.md (secondary)",
        protocol="kazuto1011/pspnet-pytorch",
        flip=True,
    ),
    _not_comparable(
        88.6,
        "val, ms; " + _VAL_SEEN,
        "kazuto1011/pspnet-pytorch:README.md (secondary)",
        setting="ms",
        protocol="kazuto1011/pspnet-pytorch",
        flip=True,
    ),
]
_PSP101_VOC["notes"] = ["No reproducible validation target: `reproduce` refuses unless --allow-noncomparable."]

_PSP101_CS = _caffe_pspnet(
    "pspnet101_cityscapes",
    101,
    "cityscapes",
    "pspnet101_cityscapes.caffemodel",
    "pspnet101_cityscapes_713.prototxt",
    713,
    2048,
    "3x3",
)
_PSP101_CS["scores"] = _published(
    "pspnet", _PSP_README, [("ss", "mIoU", 79.70), ("ss", "aAcc", 96.38), ("ms", "mIoU", 80.91), ("ms", "aAcc", 96.59)]
) + _hellochick(76.99, 77.23)
_PSP101_CS["notes"] = [
    "Official scoring uses trainIds (eval_acc.m); the cityscapesScripts class IoU is the same number for a "
    "trainId model."
]

# ------------------------------------------------------------------------------------ semseg (PyTorch)
# (dataset folder, layers, epochs, crop, base, ss mIoU/mAcc/aAcc, ms mIoU/mAcc/aAcc), from hszhao/semseg:README.md
_SEMSEG_ROWS = [
    ("ade20k", 50, 100, 473, 512, (41.89, 52.27, 80.39), (42.84, 52.66, 81.06)),
    ("ade20k", 101, 100, 473, 512, (43.10, 53.75, 81.07), (44.15, 54.26, 81.72)),
    ("voc2012", 50, 50, 473, 512, (77.05, 85.13, 94.89), (78.02, 85.80, 95.13)),
    ("voc2012", 101, 50, 473, 512, (79.07, 86.36, 95.34), (79.63, 86.77, 95.50)),
    ("cityscapes", 50, 200, 713, 2048, (77.30, 84.31, 95.97), (78.38, 84.86, 96.17)),
    ("cityscapes", 101, 200, 713, 2048, (78.63, 85.77, 96.14), (79.29, 85.91, 96.38)),
]


def _semseg(folder: str, layers: int, epochs: int, crop: int, base: int, ss: tuple, ms: tuple) -> dict[str, Any]:
    dataset = {"voc2012": "voc"}.get(folder, folder)
    metrics = ("mIoU", "mAcc", "aAcc")
    rows = [(s, m, v) for s, vals in (("ss", ss), ("ms", ms)) for m, v in zip(metrics, vals, strict=True)]
    return _entry(
        f"semseg_pspnet{layers}_{dataset}",
        source_project="hszhao/semseg (PyTorch)",
        fmt="pytorch",
        files=[
            _file(
                f"exp/{folder}/pspnet{layers}/model/train_epoch_{epochs}.pth",
                f"weights (path from config/{folder}/{folder}_pspnet{layers}.yaml TEST.model_path)",
            )
        ],
        arch=f"pspnet{layers}",
        config=_pspnet_config(_CLASSES[dataset][1], crop, "3x3", "adaptive"),
        dataset=dataset,
        input_size=[crop, crop],
        preprocessing=_SEMSEG_PREP,
        protocol={"name": "semseg", "base_size": base, "crop": crop},
        scores=_published("semseg", _SEMSEG_README, rows, note="semseg-trained weights; 'ss' includes flip"),
        notes=["Trained by semseg, not converted from Caffe: do not compare with the PSPNet Caffe numbers."],
    )


# ------------------------------------------------------------------------------------ TF-Slim backbones
def _slim(depth: int) -> dict[str, Any]:
    return _entry(
        f"slim_resnet_v1_{depth}_imagenet",
        source_project="tensorflow/models research/slim",
        fmt="tf-checkpoint",
        files=[
            _file(f"resnet_v1_{depth}.ckpt", "TF checkpoint inside the archive"),
            _file(f"resnet_v1_{depth}_2016_08_28.tar.gz", "archive"),
        ],
        arch="resnet",
        config={"depth": depth, "num_classes": 1000, "stem": "7x7", "stride_in": "3x3_last", "padding": "tf_same"},
        dataset=None,
        classes="ImageNet-1k (backbone for segmentation; no segmentation score)",
        preprocessing=_SLIM_PREP,
        protocol=None,
        scores=[],
        notes=["Backbone only: used to initialise the TF PSPNet ports; nothing to reproduce here."],
    )


# ------------------------------------------------------------------------------------------------ ICNet
_ICNET_README = "hszhao/ICNet:README.md"
_ICNET_TF = "hellochick/ICNet-tensorflow:README.md"
_FSS_ZOO = "oandrienko/fast-semantic-segmentation:docs/model_zoo.md"
_ICNET_PROTO = "hszhao/ICNet evaluation/eval_sub.m (no segconvert protocol)"
_ICNET_WHY = (
    "the release's own evaluation (bilinear resize to 1025x2049, scores resized back; eval_sub.m) is not a "
    "segconvert protocol"
)


def _icnet_caffe(name: str, weights: str, md5: str, role: str, scores: list[dict[str, Any]]) -> dict[str, Any]:
    return _entry(
        name,
        source_project="hszhao/ICNet (Caffe)",
        fmt="caffe",
        files=[
            _file(weights, role),
            _file("evaluation/prototxt/icnet_cityscapes.prototxt", "deploy net (BN merged)"),
        ],
        arch="icnet",
        config={"num_classes": 19, "input_size": [1025, 2049], "batchnorm": False, "input_scale": True},
        dataset="cityscapes",
        input_size=[1025, 2049],
        preprocessing=_CAFFE_PSP_PREP,
        protocol=None,
        scores=scores,
        notes=[
            "The fixed pyramid-pooling kernels are made for 1025x2049 inputs (the release resizes to it).",
            f"{_ICNET_README} gives md5 {md5} for {weights} (an md5, not the sha256 segconvert records).",
        ],
    )


_ICNET_30K = _icnet_caffe(
    "icnet_cityscapes_train_30k",
    "icnet_cityscapes_train_30k.caffemodel",
    "c7038630c4b6c869afaaadd811bdb539",
    "weights (Cityscapes train, 30k iterations)",
    [
        _not_comparable(67.7, _ICNET_WHY, _ICNET_README, protocol=_ICNET_PROTO),
        _not_comparable(94.5, _ICNET_WHY, _ICNET_README, metric="aAcc", protocol=_ICNET_PROTO),
        _not_comparable(
            67.26, "hellochick's TF port of these weights, its own evaluate.py", _ICNET_TF, protocol="hellochick"
        ),
        _not_comparable(
            67.31, "hellochick's TF port of the bnnomerge weights (train_30k_bn)", _ICNET_TF, protocol="hellochick"
        ),
    ],
)
_ICNET_90K = _icnet_caffe(
    "icnet_cityscapes_trainval_90k",
    "icnet_cityscapes_trainval_90k.caffemodel",
    "4f4dd9eecd465dd8de7e4cf88ba5d5d5",
    "weights (Cityscapes train+val, 90k iterations)",
    [
        _not_comparable(69.5, "Cityscapes TEST server", _ICNET_README, split="test", protocol=_ICNET_PROTO),
        _not_comparable(
            80.90, "val was in its training set (trainval); hellochick's TF port", _ICNET_TF, protocol="hellochick"
        ),
    ],
)


def _fss_icnet(name: str, width: str, value: float) -> dict[str, Any]:
    c = lambda n: int(n * float(width))  # noqa: E731  (its filter_scale)
    return _entry(
        f"fss_icnet_{width}_1025_resnet_v1",
        source_project="oandrienko/fast-semantic-segmentation (TF, own training)",
        fmt="tf-checkpoint",
        files=[_file("model.ckpt", f"TF checkpoint inside {name}.tar.gz"), _file(f"{name}.tar.gz", "archive")],
        arch="icnet",
        config={
            "num_classes": 19,
            "backbone": "slim",
            "padding": "tf_same",
            "ppm_mode": "tf_valid",
            "head_act": "relu6",
            "stem_widths": [c(64)],
            "widths": [c(64), c(128), c(256), c(512)],
            "ppm_width": c(512),
            "cff_width": c(256),
            "sub1_widths": [c(64), c(64), c(128), c(256)],
        },  # fmt: skip
        dataset="cityscapes",
        preprocessing={"channel_order": "RGB", "mean": [123.68, 116.779, 103.939], "std": None, "scale": 1.0},
        protocol=None,
        scores=[
            _not_comparable(
                value,
                "TF-trained weights, whole 1024x2048 image in one forward by its own eval.py (logits resize to "
                "the label not pinned here)",
                _FSS_ZOO,
                protocol="fast-semantic-segmentation-whole",
            )
        ],
        notes=["Not hszhao's ICNet: slim resnet_v1_50 backbone, wider fusion, trained from its PSPNet50."],
    )


ZOO: list[dict[str, Any]] = [
    _DEEPLAB_CAFFE,
    _DEEPLAB_KAZUTO,
    _PSP50_ADE,
    _PSP101_VOC,
    _PSP101_CS,
    *(_semseg(*row) for row in _SEMSEG_ROWS),
    *(_slim(depth) for depth in (50, 101)),
    _ICNET_30K,
    _ICNET_90K,
    _fss_icnet("0818_icnet_1.0_1025_resnet_v1", "1.0", 69.8),
    _fss_icnet("0818_icnet_0.5_1025_resnet_v1", "0.5", 65.8),
]

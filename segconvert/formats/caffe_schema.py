"""Caffe's protobuf messages, defined here and built at run time (no protoc step, protobuf 4.x to 7.x).

Field numbers are BVLC Caffe's (``src/caffe/proto/caffe.proto``) plus the fork fields the released
DeepLab-v2 and PSPNet checkpoints use: ``LayerParameter.interp_param = 143`` (both forks) and
``LayerParameter.bn_param = 152`` (PSPNet). BVLC's ``input_param`` is also number 143; the two are told
apart by layer type when a binary file is read (see :mod:`segconvert.formats.caffemodel`), so this schema
gives ``input_param`` a private number that never appears on the wire.

A few fork-only fields whose numbers the released forks do not agree on (DeepLab's ``seg_accuracy_param``,
``mat_write_param``, ``dense_crf_param``, ``transform_param.scale_factors``, ...) are given private numbers
too: they matter for reading prototxt text only, where names count and numbers do not.

Other forks' layers, each at its own fork's number (:mod:`.caffe_schema_forks`, merged here): the SSD fork
(weiliu89/caffe, branch ``ssd``: ``permute_param = 202``, ``prior_box_param = 203``, ``detection_output_param =
204``, ``norm_param = 206``, ...), BVLC master's late additions (``swish_param = 147``, ``clip_param = 148``),
farmingyard/ShuffleNet (``shuffle_channel_param = 164``), the YOLOv3 Caffe fork ChenYingpeng/caffe-yolov3
(``upsample_param = 149``; SegNet, alexgkendall/caffe-segnet, puts the same message at 137, accepted by layer
type), the MobileNetV2 ReLU6 fork rog93/Caffe-MobileNetV2-ReLU6 (``relu6_param = 100000``) and NVCaffe
(NVIDIA/caffe: ``BlobProto.raw_data_type = 10`` / ``raw_data = 12`` and the per-layer precision fields).
hujie-frank/SENet's ``Axpy`` has no parameter message.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from segconvert.formats.caffe_schema_forks import (
    FORK_ENUMS,
    FORK_LAYER_FIELDS,
    FORK_MESSAGES,
    UPSAMPLE_PARAM,
)

PACKAGE = "segconvert.caffe"

# Private numbers (never written by any Caffe) for fields that only matter in text form.
INPUT_PARAM_PRIVATE = 90143
_TEXT_ONLY = 91000

# Fork numbering (binary): the released forks put these at the numbers below.
INTERP_PARAM = 143
BN_PARAM = 152
BVLC_INPUT_PARAM = 143
# An older hszhao/PSPNet commit numbers them differently; accepted by layer type when read.
ALT_FORK_NUMBERS = {"BN": {137: BN_PARAM}, "Interp": {163: INTERP_PARAM}, "Upsample": {137: UPSAMPLE_PARAM}}

# (name, number, label, type, options). label: o(ptional) r(epeated). type: scalar name, a message
# name, or "enum:Name". options: default / packed.
_F = tuple[str, int, str, str, dict[str, Any]]


def f(name: str, number: int, label: str, ftype: str, **opts: Any) -> _F:
    return (name, number, label, ftype, opts)


ENUMS: dict[str, list[tuple[str, int]]] = {
    "Phase": [("TRAIN", 0), ("TEST", 1)],
    "VarianceNorm": [("FAN_IN", 0), ("FAN_OUT", 1), ("AVERAGE", 2)],
    "DimCheckMode": [("STRICT", 0), ("PERMISSIVE", 1)],
    "Engine": [("DEFAULT", 0), ("CAFFE", 1), ("CUDNN", 2)],
    "PoolMethod": [("MAX", 0), ("AVE", 1), ("STOCHASTIC", 2)],
    "RoundMode": [("CEIL", 0), ("FLOOR", 1)],
    "EltwiseOp": [("PROD", 0), ("SUM", 1), ("MAX", 2)],
    "NormRegion": [("ACROSS_CHANNELS", 0), ("WITHIN_CHANNEL", 1)],
    "NormalizationMode": [("FULL", 0), ("VALID", 1), ("BATCH_SIZE", 2), ("NONE", 3)],
    "ReductionOp": [("SUM", 1), ("ASUM", 2), ("SUMSQ", 3), ("MEAN", 4)],
    "DB": [("LEVELDB", 0), ("LMDB", 1)],
    # DeepLab-v2 ImageSegData: label_type
    "LabelType": [("NONE", 0), ("IMAGE", 1), ("PIXEL", 2)],
    **FORK_ENUMS,
    "V1LayerType": [
        ("NONE", 0),
        ("ABSVAL", 35),
        ("ACCURACY", 1),
        ("ARGMAX", 30),
        ("BNLL", 2),
        ("CONCAT", 3),
        ("CONTRASTIVE_LOSS", 37),
        ("CONVOLUTION", 4),
        ("DATA", 5),
        ("DECONVOLUTION", 39),
        ("DROPOUT", 6),
        ("DUMMY_DATA", 32),
        ("EUCLIDEAN_LOSS", 7),
        ("ELTWISE", 25),
        ("EXP", 38),
        ("FLATTEN", 8),
        ("HDF5_DATA", 9),
        ("HDF5_OUTPUT", 10),
        ("HINGE_LOSS", 28),
        ("IM2COL", 11),
        ("IMAGE_DATA", 12),
        ("INFOGAIN_LOSS", 13),
        ("INNER_PRODUCT", 14),
        ("LRN", 15),
        ("MEMORY_DATA", 29),
        ("MULTINOMIAL_LOGISTIC_LOSS", 16),
        ("MVN", 34),
        ("POOLING", 17),
        ("POWER", 26),
        ("RELU", 18),
        ("SIGMOID", 19),
        ("SIGMOID_CROSS_ENTROPY_LOSS", 27),
        ("SILENCE", 36),
        ("SOFTMAX", 20),
        ("SOFTMAX_LOSS", 21),
        ("SPLIT", 22),
        ("SLICE", 33),
        ("TANH", 23),
        ("WINDOW_DATA", 24),
        ("THRESHOLD", 31),
    ],
}

_ENGINE = "enum:Engine"

MESSAGES: dict[str, list[_F]] = {
    "BlobShape": [f("dim", 1, "r", "int64", packed=True)],
    "BlobProto": [
        f("shape", 7, "o", "BlobShape"),
        f("data", 5, "r", "float", packed=True),
        f("diff", 6, "r", "float", packed=True),
        f("double_data", 8, "r", "double", packed=True),
        f("double_diff", 9, "r", "double", packed=True),
        f("raw_data_type", 10, "o", "enum:DataType"),  # NVCaffe
        f("raw_diff_type", 11, "o", "enum:DataType"),  # NVCaffe
        f("raw_data", 12, "o", "bytes"),  # NVCaffe
        f("raw_diff", 13, "o", "bytes"),  # NVCaffe
        f("num", 1, "o", "int32", default=0),
        f("channels", 2, "o", "int32", default=0),
        f("height", 3, "o", "int32", default=0),
        f("width", 4, "o", "int32", default=0),
    ],
    "FillerParameter": [
        f("type", 1, "o", "string", default="constant"),
        f("value", 2, "o", "float", default=0.0),
        f("min", 3, "o", "float", default=0.0),
        f("max", 4, "o", "float", default=1.0),
        f("mean", 5, "o", "float", default=0.0),
        f("std", 6, "o", "float", default=1.0),
        f("sparse", 7, "o", "int32", default=-1),
        f("variance_norm", 8, "o", "enum:VarianceNorm", default="FAN_IN"),
    ],
    "NetState": [
        f("phase", 1, "o", "enum:Phase", default="TEST"),
        f("level", 2, "o", "int32", default=0),
        f("stage", 3, "r", "string"),
    ],
    "NetStateRule": [
        f("phase", 1, "o", "enum:Phase"),
        f("min_level", 2, "o", "int32"),
        f("max_level", 3, "o", "int32"),
        f("stage", 4, "r", "string"),
        f("not_stage", 5, "r", "string"),
    ],
    "ParamSpec": [
        f("name", 1, "o", "string"),
        f("share_mode", 2, "o", "enum:DimCheckMode"),
        f("lr_mult", 3, "o", "float", default=1.0),
        f("decay_mult", 4, "o", "float", default=1.0),
    ],
    "NetParameter": [
        f("name", 1, "o", "string"),
        f("input", 3, "r", "string"),
        f("input_shape", 8, "r", "BlobShape"),
        f("input_dim", 4, "r", "int32"),
        f("force_backward", 5, "o", "bool", default=False),
        f("state", 6, "o", "NetState"),
        f("debug_info", 7, "o", "bool", default=False),
        f("layer", 100, "r", "LayerParameter"),
        f("layers", 2, "r", "V1LayerParameter"),
        # NVCaffe: net-wide precision defaults and training options
        f("default_forward_type", 11, "o", "enum:DataType", default="FLOAT"),
        f("default_backward_type", 12, "o", "enum:DataType", default="FLOAT"),
        f("default_forward_math", 13, "o", "enum:DataType", default="FLOAT"),
        f("default_backward_math", 14, "o", "enum:DataType", default="FLOAT"),
        f("global_grad_scale", 15, "o", "float", default=1.0),
        f("global_grad_scale_adaptive", 16, "o", "bool", default=False),
        f("default_conv_algos_override", 17, "o", "string", default="-1,-1,-1"),
        f("reduce_buckets", 18, "o", "int32", default=6),
        f("default_cudnn_math_override", 19, "o", "int32", default=-1),
        f("eltwise_mem_sharing", 20, "o", "bool", default=True),
    ],
    "TransformationParameter": [
        f("scale", 1, "o", "float", default=1.0),
        f("mirror", 2, "o", "bool", default=False),
        f("crop_size", 3, "o", "uint32", default=0),
        f("mean_file", 4, "o", "string"),
        f("mean_value", 5, "r", "float"),
        f("force_color", 6, "o", "bool", default=False),
        f("force_gray", 7, "o", "bool", default=False),
        f("scale_factors", _TEXT_ONLY + 1, "r", "float"),  # DeepLab-v2 fork
        # SSD fork
        f("crop_h", 11, "o", "uint32", default=0),
        f("crop_w", 12, "o", "uint32", default=0),
        f("resize_param", 8, "o", "ResizeParameter"),
        f("noise_param", 9, "o", "NoiseParameter"),
        f("distort_param", 13, "o", "DistortionParameter"),
        f("expand_param", 14, "o", "ExpansionParameter"),
        f("emit_constraint", 10, "o", "EmitConstraint"),
    ],
    "LossParameter": [
        f("ignore_label", 1, "o", "int32"),
        f("normalization", 3, "o", "enum:NormalizationMode", default="VALID"),
        f("normalize", 2, "o", "bool"),
    ],
    "AccuracyParameter": [
        f("top_k", 1, "o", "uint32", default=1),
        f("axis", 2, "o", "int32", default=1),
        f("ignore_label", 3, "o", "int32"),
    ],
    "ArgMaxParameter": [
        f("out_max_val", 1, "o", "bool", default=False),
        f("top_k", 2, "o", "uint32", default=1),
        f("axis", 3, "o", "int32"),
    ],
    "ConcatParameter": [f("axis", 2, "o", "int32", default=1), f("concat_dim", 1, "o", "uint32", default=1)],
    "BatchNormParameter": [
        f("use_global_stats", 1, "o", "bool"),
        f("moving_average_fraction", 2, "o", "float", default=0.999),
        f("eps", 3, "o", "float", default=1e-5),
        f("update_global_stats", 4, "o", "bool", default=False),  # DeepLab-v2 fork
        f("scale_filler", 5, "o", "FillerParameter"),  # NVCaffe
        f("bias_filler", 6, "o", "FillerParameter"),  # NVCaffe
        f("scale_bias", 7, "o", "bool", default=False),  # NVCaffe: two more blobs (scale, bias)
        f("engine", 15, "o", _ENGINE, default="DEFAULT"),  # NVCaffe
    ],
    "BiasParameter": [
        f("axis", 1, "o", "int32", default=1),
        f("num_axes", 2, "o", "int32", default=1),
        f("filler", 3, "o", "FillerParameter"),
    ],
    "ContrastiveLossParameter": [
        f("margin", 1, "o", "float", default=1.0),
        f("legacy_version", 2, "o", "bool", default=False),
    ],
    "ConvolutionParameter": [
        f("num_output", 1, "o", "uint32"),
        f("bias_term", 2, "o", "bool", default=True),
        f("pad", 3, "r", "uint32"),
        f("kernel_size", 4, "r", "uint32"),
        f("stride", 6, "r", "uint32"),
        f("dilation", 18, "r", "uint32"),
        f("pad_h", 9, "o", "uint32", default=0),
        f("pad_w", 10, "o", "uint32", default=0),
        f("kernel_h", 11, "o", "uint32"),
        f("kernel_w", 12, "o", "uint32"),
        f("stride_h", 13, "o", "uint32"),
        f("stride_w", 14, "o", "uint32"),
        f("group", 5, "o", "uint32", default=1),
        f("weight_filler", 7, "o", "FillerParameter"),
        f("bias_filler", 8, "o", "FillerParameter"),
        f("engine", 15, "o", _ENGINE, default="DEFAULT"),
        f("axis", 16, "o", "int32", default=1),
        f("force_nd_im2col", 17, "o", "bool", default=False),
        f("cudnn_convolution_algo_seeker", 19, "o", "enum:AlgoSeeker", default="FINDEX"),  # NVCaffe
        f("conv_algos_override", 20, "o", "string", default="-1,-1,-1"),  # NVCaffe
    ],
    "CropParameter": [f("axis", 1, "o", "int32", default=2), f("offset", 2, "r", "uint32")],
    "DataParameter": [
        f("source", 1, "o", "string"),
        f("batch_size", 4, "o", "uint32"),
        f("rand_skip", 7, "o", "uint32", default=0),
        f("backend", 8, "o", "enum:DB", default="LEVELDB"),
        f("scale", 2, "o", "float", default=1.0),
        f("mean_file", 3, "o", "string"),
        f("crop_size", 5, "o", "uint32", default=0),
        f("mirror", 6, "o", "bool", default=False),
        f("force_encoded_color", 9, "o", "bool", default=False),
        f("prefetch", 10, "o", "uint32", default=4),
    ],
    "DropoutParameter": [f("dropout_ratio", 1, "o", "float", default=0.5)],
    "DummyDataParameter": [
        f("data_filler", 1, "r", "FillerParameter"),
        f("shape", 6, "r", "BlobShape"),
        f("num", 2, "r", "uint32"),
        f("channels", 3, "r", "uint32"),
        f("height", 4, "r", "uint32"),
        f("width", 5, "r", "uint32"),
    ],
    "EltwiseParameter": [
        f("operation", 1, "o", "enum:EltwiseOp", default="SUM"),
        f("coeff", 2, "r", "float"),
        f("stable_prod_grad", 3, "o", "bool", default=True),
    ],
    "ELUParameter": [f("alpha", 1, "o", "float", default=1.0)],
    "EmbedParameter": [
        f("num_output", 1, "o", "uint32"),
        f("input_dim", 2, "o", "uint32"),
        f("bias_term", 3, "o", "bool", default=True),
        f("weight_filler", 4, "o", "FillerParameter"),
        f("bias_filler", 5, "o", "FillerParameter"),
    ],
    "ExpParameter": [
        f("base", 1, "o", "float", default=-1.0),
        f("scale", 2, "o", "float", default=1.0),
        f("shift", 3, "o", "float", default=0.0),
    ],
    "FlattenParameter": [f("axis", 1, "o", "int32", default=1), f("end_axis", 2, "o", "int32", default=-1)],
    "HDF5DataParameter": [
        f("source", 1, "o", "string"),
        f("batch_size", 2, "o", "uint32"),
        f("shuffle", 3, "o", "bool", default=False),
    ],
    "HDF5OutputParameter": [f("file_name", 1, "o", "string")],
    "HingeLossParameter": [f("norm", 1, "o", "int32", default=1)],
    "ImageDataParameter": [
        f("source", 1, "o", "string"),
        f("batch_size", 4, "o", "uint32", default=1),
        f("rand_skip", 7, "o", "uint32", default=0),
        f("shuffle", 8, "o", "bool", default=False),
        f("new_height", 9, "o", "uint32", default=0),
        f("new_width", 10, "o", "uint32", default=0),
        f("is_color", 11, "o", "bool", default=True),
        f("scale", 2, "o", "float", default=1.0),
        f("mean_file", 3, "o", "string"),
        f("crop_size", 5, "o", "uint32", default=0),
        f("mirror", 6, "o", "bool", default=False),
        f("root_folder", 12, "o", "string", default=""),
        f("label_type", _TEXT_ONLY + 2, "o", "enum:LabelType"),  # DeepLab-v2 fork
        f("ignore_label", _TEXT_ONLY + 3, "o", "int32"),  # DeepLab-v2 fork
    ],
    "InfogainLossParameter": [f("source", 1, "o", "string")],
    "InnerProductParameter": [
        f("num_output", 1, "o", "uint32"),
        f("bias_term", 2, "o", "bool", default=True),
        f("weight_filler", 3, "o", "FillerParameter"),
        f("bias_filler", 4, "o", "FillerParameter"),
        f("axis", 5, "o", "int32", default=1),
        f("transpose", 6, "o", "bool", default=False),
    ],
    "InputParameter": [f("shape", 1, "r", "BlobShape")],
    "LogParameter": [
        f("base", 1, "o", "float", default=-1.0),
        f("scale", 2, "o", "float", default=1.0),
        f("shift", 3, "o", "float", default=0.0),
    ],
    "LRNParameter": [
        f("local_size", 1, "o", "uint32", default=5),
        f("alpha", 2, "o", "float", default=1.0),
        f("beta", 3, "o", "float", default=0.75),
        f("norm_region", 4, "o", "enum:NormRegion", default="ACROSS_CHANNELS"),
        f("k", 5, "o", "float", default=1.0),
        f("engine", 6, "o", _ENGINE, default="DEFAULT"),
    ],
    "MemoryDataParameter": [
        f("batch_size", 1, "o", "uint32"),
        f("channels", 2, "o", "uint32"),
        f("height", 3, "o", "uint32"),
        f("width", 4, "o", "uint32"),
    ],
    "MVNParameter": [
        f("normalize_variance", 1, "o", "bool", default=True),
        f("across_channels", 2, "o", "bool", default=False),
        f("eps", 3, "o", "float", default=1e-9),
    ],
    "ParameterParameter": [f("shape", 1, "o", "BlobShape")],
    "PoolingParameter": [
        f("pool", 1, "o", "enum:PoolMethod", default="MAX"),
        f("pad", 4, "o", "uint32", default=0),
        f("pad_h", 9, "o", "uint32", default=0),
        f("pad_w", 10, "o", "uint32", default=0),
        f("kernel_size", 2, "o", "uint32"),
        f("kernel_h", 5, "o", "uint32"),
        f("kernel_w", 6, "o", "uint32"),
        f("stride", 3, "o", "uint32", default=1),
        f("stride_h", 7, "o", "uint32"),
        f("stride_w", 8, "o", "uint32"),
        f("engine", 11, "o", _ENGINE, default="DEFAULT"),
        f("global_pooling", 12, "o", "bool", default=False),
        f("round_mode", 13, "o", "enum:RoundMode", default="CEIL"),
        f("torch_pooling", 40, "o", "bool", default=False),  # NVCaffe
    ],
    "PowerParameter": [
        f("power", 1, "o", "float", default=1.0),
        f("scale", 2, "o", "float", default=1.0),
        f("shift", 3, "o", "float", default=0.0),
    ],
    "PReLUParameter": [
        f("filler", 1, "o", "FillerParameter"),
        f("channel_shared", 2, "o", "bool", default=False),
    ],
    "PythonParameter": [
        f("module", 1, "o", "string"),
        f("layer", 2, "o", "string"),
        f("param_str", 3, "o", "string", default=""),
        f("share_in_parallel", 4, "o", "bool", default=False),
    ],
    "ReductionParameter": [
        f("operation", 1, "o", "enum:ReductionOp", default="SUM"),
        f("axis", 2, "o", "int32", default=0),
        f("coeff", 3, "o", "float", default=1.0),
    ],
    "ReLUParameter": [
        f("negative_slope", 1, "o", "float", default=0.0),
        f("engine", 2, "o", _ENGINE, default="DEFAULT"),
    ],
    "ReshapeParameter": [
        f("shape", 1, "o", "BlobShape"),
        f("axis", 2, "o", "int32", default=0),
        f("num_axes", 3, "o", "int32", default=-1),
    ],
    "ScaleParameter": [
        f("axis", 1, "o", "int32", default=1),
        f("num_axes", 2, "o", "int32", default=1),
        f("filler", 3, "o", "FillerParameter"),
        f("bias_term", 4, "o", "bool", default=False),
        f("bias_filler", 5, "o", "FillerParameter"),
    ],
    "SigmoidParameter": [f("engine", 1, "o", _ENGINE, default="DEFAULT")],
    "SliceParameter": [
        f("axis", 3, "o", "int32", default=1),
        f("slice_point", 2, "r", "uint32"),
        f("slice_dim", 1, "o", "uint32", default=1),
    ],
    "SoftmaxParameter": [
        f("engine", 1, "o", _ENGINE, default="DEFAULT"),
        f("axis", 2, "o", "int32", default=1),
    ],
    "TanHParameter": [f("engine", 1, "o", _ENGINE, default="DEFAULT")],
    "TileParameter": [f("axis", 1, "o", "int32", default=1), f("tiles", 2, "o", "int32")],
    "ThresholdParameter": [f("threshold", 1, "o", "float", default=0.0)],
    "WindowDataParameter": [
        f("source", 1, "o", "string"),
        f("scale", 2, "o", "float", default=1.0),
        f("mean_file", 3, "o", "string"),
        f("batch_size", 4, "o", "uint32"),
        f("crop_size", 5, "o", "uint32", default=0),
        f("mirror", 6, "o", "bool", default=False),
        f("fg_threshold", 7, "o", "float", default=0.5),
        f("bg_threshold", 8, "o", "float", default=0.5),
        f("fg_fraction", 9, "o", "float", default=0.25),
        f("context_pad", 10, "o", "uint32", default=0),
        f("crop_mode", 11, "o", "string", default="warp"),
        f("cache_images", 12, "o", "bool", default=False),
        f("root_folder", 13, "o", "string", default=""),
    ],
    "SPPParameter": [
        f("pyramid_height", 1, "o", "uint32"),
        f("pool", 2, "o", "enum:PoolMethod", default="MAX"),
        f("engine", 6, "o", _ENGINE, default="DEFAULT"),
    ],
    # Fork messages -------------------------------------------------------------------------------
    "InterpParameter": [
        f("height", 1, "o", "int32", default=0),
        f("width", 2, "o", "int32", default=0),
        f("zoom_factor", 3, "o", "int32", default=1),
        f("shrink_factor", 4, "o", "int32", default=1),
        f("pad_beg", 5, "o", "int32", default=0),
        f("pad_end", 6, "o", "int32", default=0),
    ],
    "BNParameter": [
        f("slope_filler", 1, "o", "FillerParameter"),
        f("bias_filler", 2, "o", "FillerParameter"),
        f("momentum", 3, "o", "float", default=0.9),
        f("eps", 4, "o", "float", default=1e-5),
        f("frozen", 5, "o", "bool", default=False),
        f("engine", 6, "o", _ENGINE, default="DEFAULT"),
    ],
    "SegAccuracyParameter": [f("ignore_label", 1, "r", "int32"), f("reset", 2, "o", "bool", default=True)],
    "MatWriteParameter": [
        f("prefix", 1, "o", "string"),
        f("source", 2, "o", "string"),
        f("strip", 3, "o", "int32", default=0),
        f("period", 4, "o", "int32", default=1),
    ],
    "DenseCRFParameter": [
        f("max_iter", 1, "o", "int32", default=10),
        f("pos_w", 2, "r", "float"),
        f("pos_xy_std", 3, "r", "float"),
        f("bi_w", 4, "r", "float"),
        f("bi_xy_std", 5, "r", "float"),
        f("bi_rgb_std", 6, "r", "float"),
    ],
    **FORK_MESSAGES,
}

_LAYER_PARAMS: list[_F] = [
    f("transform_param", 100, "o", "TransformationParameter"),
    f("loss_param", 101, "o", "LossParameter"),
    f("accuracy_param", 102, "o", "AccuracyParameter"),
    f("argmax_param", 103, "o", "ArgMaxParameter"),
    f("batch_norm_param", 139, "o", "BatchNormParameter"),
    f("bias_param", 141, "o", "BiasParameter"),
    f("concat_param", 104, "o", "ConcatParameter"),
    f("contrastive_loss_param", 105, "o", "ContrastiveLossParameter"),
    f("convolution_param", 106, "o", "ConvolutionParameter"),
    f("crop_param", 144, "o", "CropParameter"),
    f("data_param", 107, "o", "DataParameter"),
    f("dropout_param", 108, "o", "DropoutParameter"),
    f("dummy_data_param", 109, "o", "DummyDataParameter"),
    f("eltwise_param", 110, "o", "EltwiseParameter"),
    f("elu_param", 140, "o", "ELUParameter"),
    f("embed_param", 137, "o", "EmbedParameter"),
    f("exp_param", 111, "o", "ExpParameter"),
    f("flatten_param", 135, "o", "FlattenParameter"),
    f("hdf5_data_param", 112, "o", "HDF5DataParameter"),
    f("hdf5_output_param", 113, "o", "HDF5OutputParameter"),
    f("hinge_loss_param", 114, "o", "HingeLossParameter"),
    f("image_data_param", 115, "o", "ImageDataParameter"),
    f("infogain_loss_param", 116, "o", "InfogainLossParameter"),
    f("inner_product_param", 117, "o", "InnerProductParameter"),
    f("input_param", INPUT_PARAM_PRIVATE, "o", "InputParameter"),
    f("log_param", 134, "o", "LogParameter"),
    f("lrn_param", 118, "o", "LRNParameter"),
    f("memory_data_param", 119, "o", "MemoryDataParameter"),
    f("mvn_param", 120, "o", "MVNParameter"),
    f("parameter_param", 145, "o", "ParameterParameter"),
    f("pooling_param", 121, "o", "PoolingParameter"),
    f("power_param", 122, "o", "PowerParameter"),
    f("prelu_param", 131, "o", "PReLUParameter"),
    f("python_param", 130, "o", "PythonParameter"),
    f("reduction_param", 136, "o", "ReductionParameter"),
    f("relu_param", 123, "o", "ReLUParameter"),
    f("reshape_param", 133, "o", "ReshapeParameter"),
    f("scale_param", 142, "o", "ScaleParameter"),
    f("sigmoid_param", 124, "o", "SigmoidParameter"),
    f("softmax_param", 125, "o", "SoftmaxParameter"),
    f("spp_param", 132, "o", "SPPParameter"),
    f("slice_param", 126, "o", "SliceParameter"),
    f("tanh_param", 127, "o", "TanHParameter"),
    f("threshold_param", 128, "o", "ThresholdParameter"),
    f("tile_param", 138, "o", "TileParameter"),
    f("window_data_param", 129, "o", "WindowDataParameter"),
    # forks
    f("interp_param", INTERP_PARAM, "o", "InterpParameter"),
    f("bn_param", BN_PARAM, "o", "BNParameter"),
    f("seg_accuracy_param", _TEXT_ONLY + 10, "o", "SegAccuracyParameter"),
    f("mat_write_param", _TEXT_ONLY + 11, "o", "MatWriteParameter"),
    f("dense_crf_param", _TEXT_ONLY + 12, "o", "DenseCRFParameter"),
    *FORK_LAYER_FIELDS,
]

MESSAGES["LayerParameter"] = [
    f("name", 1, "o", "string"),
    f("type", 2, "o", "string"),
    f("bottom", 3, "r", "string"),
    f("top", 4, "r", "string"),
    f("phase", 10, "o", "enum:Phase"),
    f("loss_weight", 5, "r", "float"),
    f("param", 6, "r", "ParamSpec"),
    f("blobs", 7, "r", "BlobProto"),
    f("propagate_down", 11, "r", "bool"),
    f("include", 8, "r", "NetStateRule"),
    f("exclude", 9, "r", "NetStateRule"),
    *_LAYER_PARAMS,
]

MESSAGES["V1LayerParameter"] = [
    f("bottom", 2, "r", "string"),
    f("top", 3, "r", "string"),
    f("name", 4, "o", "string"),
    f("include", 32, "r", "NetStateRule"),
    f("exclude", 33, "r", "NetStateRule"),
    f("type", 5, "o", "enum:V1LayerType"),
    f("blobs", 6, "r", "BlobProto"),
    f("param", 1001, "r", "string"),
    f("blob_share_mode", 1002, "r", "enum:DimCheckMode"),
    f("blobs_lr", 7, "r", "float"),
    f("weight_decay", 8, "r", "float"),
    f("loss_weight", 35, "r", "float"),
    f("accuracy_param", 27, "o", "AccuracyParameter"),
    f("argmax_param", 23, "o", "ArgMaxParameter"),
    f("concat_param", 9, "o", "ConcatParameter"),
    f("contrastive_loss_param", 40, "o", "ContrastiveLossParameter"),
    f("convolution_param", 10, "o", "ConvolutionParameter"),
    f("data_param", 11, "o", "DataParameter"),
    f("dropout_param", 12, "o", "DropoutParameter"),
    f("dummy_data_param", 26, "o", "DummyDataParameter"),
    f("eltwise_param", 24, "o", "EltwiseParameter"),
    f("exp_param", 41, "o", "ExpParameter"),
    f("hdf5_data_param", 13, "o", "HDF5DataParameter"),
    f("hdf5_output_param", 14, "o", "HDF5OutputParameter"),
    f("hinge_loss_param", 29, "o", "HingeLossParameter"),
    f("image_data_param", 15, "o", "ImageDataParameter"),
    f("infogain_loss_param", 16, "o", "InfogainLossParameter"),
    f("inner_product_param", 17, "o", "InnerProductParameter"),
    f("lrn_param", 18, "o", "LRNParameter"),
    f("memory_data_param", 22, "o", "MemoryDataParameter"),
    f("mvn_param", 34, "o", "MVNParameter"),
    f("pooling_param", 19, "o", "PoolingParameter"),
    f("power_param", 21, "o", "PowerParameter"),
    f("relu_param", 30, "o", "ReLUParameter"),
    f("sigmoid_param", 38, "o", "SigmoidParameter"),
    f("softmax_param", 39, "o", "SoftmaxParameter"),
    f("slice_param", 31, "o", "SliceParameter"),
    f("tanh_param", 37, "o", "TanHParameter"),
    f("threshold_param", 25, "o", "ThresholdParameter"),
    f("window_data_param", 20, "o", "WindowDataParameter"),
    f("transform_param", 36, "o", "TransformationParameter"),
    f("loss_param", 42, "o", "LossParameter"),
]

_SCALARS = {
    "double": descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE,
    "float": descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT,
    "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    "uint64": descriptor_pb2.FieldDescriptorProto.TYPE_UINT64,
    "int32": descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
    "uint32": descriptor_pb2.FieldDescriptorProto.TYPE_UINT32,
    "bool": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
    "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
    "bytes": descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
}


def _format_default(ftype: str, value: Any) -> str:
    if ftype == "bool":
        return "true" if value else "false"
    if ftype == "float" or ftype == "double":
        return repr(float(value))
    return str(value)


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(name="segconvert_caffe.proto", package=PACKAGE, syntax="proto2")
    for ename, values in ENUMS.items():
        enum = fdp.enum_type.add(name=ename)
        for vname, number in values:
            enum.value.add(name=vname, number=number)
    for mname, fields in MESSAGES.items():
        msg = fdp.message_type.add(name=mname)
        for name, number, label, ftype, opts in fields:
            fld = msg.field.add(name=name, number=number)
            fld.label = (
                descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
                if label == "r"
                else descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
            )
            if ftype in _SCALARS:
                fld.type = _SCALARS[ftype]
            elif ftype.startswith("enum:"):
                fld.type = descriptor_pb2.FieldDescriptorProto.TYPE_ENUM
                fld.type_name = f".{PACKAGE}.{ftype[5:]}"
            else:
                fld.type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
                fld.type_name = f".{PACKAGE}.{ftype}"
            if "default" in opts:
                fld.default_value = _format_default(ftype, opts["default"])
            if opts.get("packed"):
                fld.options.packed = True
    return fdp


@cache
def _pool() -> descriptor_pool.DescriptorPool:
    fdp = _file_descriptor()
    # Enum values are scoped by their parent (SUM is in EltwiseOp and ReductionOp, NONE in several):
    # nest each enum in a holder message, as caffe.proto nests them in their parameter messages.
    holders: dict[str, descriptor_pb2.DescriptorProto] = {}
    for enum in list(fdp.enum_type):
        holder = fdp.message_type.add(name=f"_{enum.name}Scope")
        holder.enum_type.add().CopyFrom(enum)
        holders[enum.name] = holder
    del fdp.enum_type[:]
    for msg in fdp.message_type:
        for fld in msg.field:
            if fld.type == descriptor_pb2.FieldDescriptorProto.TYPE_ENUM:
                ename = fld.type_name.rsplit(".", 1)[1]
                fld.type_name = f".{PACKAGE}._{ename}Scope.{ename}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return pool


@cache
def message_class(name: str) -> type:
    """The generated message class for ``name`` (e.g. ``"NetParameter"``)."""
    desc = _pool().FindMessageTypeByName(f"{PACKAGE}.{name}")
    get_class = getattr(message_factory, "GetMessageClass", None)
    if get_class is not None:
        return get_class(desc)
    return message_factory.MessageFactory(_pool()).GetPrototype(desc)  # protobuf < 4.22


def NetParameter() -> Any:  # noqa: N802 - mirrors the message name
    return message_class("NetParameter")()


def LayerParameter() -> Any:  # noqa: N802
    return message_class("LayerParameter")()


def V1_TYPE_NAMES() -> dict[int, str]:  # noqa: N802
    """V1 enum value -> V2 type string, as Caffe's upgrade_proto does."""
    return dict(_V1_TO_V2)


_V1_TO_V2 = {
    0: "",
    35: "AbsVal",
    1: "Accuracy",
    30: "ArgMax",
    2: "BNLL",
    3: "Concat",
    37: "ContrastiveLoss",
    4: "Convolution",
    5: "Data",
    39: "Deconvolution",
    6: "Dropout",
    32: "DummyData",
    7: "EuclideanLoss",
    25: "Eltwise",
    38: "Exp",
    8: "Flatten",
    9: "HDF5Data",
    10: "HDF5Output",
    28: "HingeLoss",
    11: "Im2col",
    12: "ImageData",
    13: "InfogainLoss",
    14: "InnerProduct",
    15: "LRN",
    29: "MemoryData",
    16: "MultinomialLogisticLoss",
    34: "MVN",
    17: "Pooling",
    26: "Power",
    18: "ReLU",
    19: "Sigmoid",
    27: "SigmoidCrossEntropyLoss",
    36: "Silence",
    20: "Softmax",
    21: "SoftmaxWithLoss",
    22: "Split",
    33: "Slice",
    23: "TanH",
    24: "WindowData",
    31: "Threshold",
}

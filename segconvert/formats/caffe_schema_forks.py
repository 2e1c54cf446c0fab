"""Other Caffe forks' messages and ``LayerParameter`` fields, at each fork's numbers (merged into :mod:`.caffe_schema`).

SSD fork (weiliu89/caffe, branch ``ssd``, src/caffe/proto/caffe.proto), BVLC master's late additions (Recurrent,
Swish, Clip), farmingyard/ShuffleNet, ChenYingpeng/caffe-yolov3 and alexgkendall/caffe-segnet (Upsample),
rog93/Caffe-MobileNetV2-ReLU6, and NVCaffe (NVIDIA/caffe: blob ``raw_data``, precision fields). Each block names
its fork. Field tuples are ``(name, number, label, type, options)`` as in :mod:`.caffe_schema`.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "FORK_ENUMS",
    "FORK_LAYER_FIELDS",
    "FORK_MESSAGES",
    "NVCAFFE_PRIVATE",
    "NVCAFFE_VARINT_FIELDS",
    "UPSAMPLE_PARAM",
]

_F = tuple[str, int, str, str, dict[str, Any]]


def f(name: str, number: int, label: str, ftype: str, **opts: Any) -> _F:
    return (name, number, label, ftype, opts)


UPSAMPLE_PARAM = 149  # ChenYingpeng/caffe-yolov3
# NVCaffe (NVIDIA/caffe) LayerParameter precision fields: varints at numbers BVLC / other forks use for messages
# (145 parameter_param, 147 swish_param, 148 clip_param, 149 upsample_param); told apart by wire type.
NVCAFFE_VARINT_FIELDS = {145: "forward_type", 146: "backward_type", 147: "forward_math", 148: "backward_math"}
NVCAFFE_VARINT_FIELDS.update({149: "debug", 150: "cudnn_math_override"})
NVCAFFE_PRIVATE = 92000  # + the NVCaffe number: where those varints are put before protobuf decodes the layer

FORK_ENUMS: dict[str, list[tuple[str, int]]] = {
    # SSD fork (weiliu89/caffe, branch ssd)
    "CodeType": [("CORNER", 1), ("CENTER_SIZE", 2), ("CORNER_SIZE", 3)],
    "ResizeMode": [("WARP", 1), ("FIT_SMALL_SIZE", 2), ("FIT_LARGE_SIZE_AND_PAD", 3)],
    "PadMode": [("CONSTANT", 1), ("MIRRORED", 2), ("REPEAT_NEAREST", 3)],
    "InterpMode": [("LINEAR", 1), ("AREA", 2), ("NEAREST", 3), ("CUBIC", 4), ("LANCZOS4", 5)],
    "EmitType": [("CENTER", 0), ("MIN_OVERLAP", 1)],
    "AnnotationType": [("BBOX", 0)],
    "LocLossType": [("L2", 0), ("SMOOTH_L1", 1)],
    "ConfLossType": [("SOFTMAX", 0), ("LOGISTIC", 1)],
    "MatchType": [("BIPARTITE", 0), ("PER_PREDICTION", 1)],
    "MiningType": [("NONE", 0), ("MAX_NEGATIVE", 1), ("HARD_EXAMPLE", 2)],
    "VideoType": [("WEBCAM", 0), ("VIDEO", 1)],
    # NVCaffe (NVIDIA/caffe) ``Type``: blob storage and layer math precision
    "DataType": [("DOUBLE", 0), ("FLOAT", 1), ("FLOAT16", 2), ("INT", 3), ("UINT", 4), ("BOOL", 5)],
    "AlgoSeeker": [("GET", 0), ("FINDEX", 1)],
}

FORK_MESSAGES: dict[str, list[_F]] = {
    # SSD fork (weiliu89/caffe, branch ssd) -------------------------------------------------------
    "ResizeParameter": [
        f("prob", 1, "o", "float", default=1.0),
        f("resize_mode", 2, "o", "enum:ResizeMode", default="WARP"),
        f("height", 3, "o", "uint32", default=0),
        f("width", 4, "o", "uint32", default=0),
        f("height_scale", 8, "o", "uint32", default=0),
        f("width_scale", 9, "o", "uint32", default=0),
        f("pad_mode", 5, "o", "enum:PadMode", default="CONSTANT"),
        f("pad_value", 6, "r", "float"),
        f("interp_mode", 7, "r", "enum:InterpMode"),
    ],
    "SaltPepperParameter": [f("fraction", 1, "o", "float", default=0.0), f("value", 2, "r", "float")],
    "NoiseParameter": [
        f("prob", 1, "o", "float", default=0.0),
        f("hist_eq", 2, "o", "bool", default=False),
        f("inverse", 3, "o", "bool", default=False),
        f("decolorize", 4, "o", "bool", default=False),
        f("gauss_blur", 5, "o", "bool", default=False),
        f("jpeg", 6, "o", "float", default=-1.0),
        f("posterize", 7, "o", "bool", default=False),
        f("erode", 8, "o", "bool", default=False),
        f("saltpepper", 9, "o", "bool", default=False),
        f("saltpepper_param", 10, "o", "SaltPepperParameter"),
        f("clahe", 11, "o", "bool", default=False),
        f("convert_to_hsv", 12, "o", "bool", default=False),
        f("convert_to_lab", 13, "o", "bool", default=False),
    ],
    "DistortionParameter": [
        f("brightness_prob", 1, "o", "float", default=0.0),
        f("brightness_delta", 2, "o", "float", default=0.0),
        f("contrast_prob", 3, "o", "float", default=0.0),
        f("contrast_lower", 4, "o", "float", default=0.0),
        f("contrast_upper", 5, "o", "float", default=0.0),
        f("hue_prob", 6, "o", "float", default=0.0),
        f("hue_delta", 7, "o", "float", default=0.0),
        f("saturation_prob", 8, "o", "float", default=0.0),
        f("saturation_lower", 9, "o", "float", default=0.0),
        f("saturation_upper", 10, "o", "float", default=0.0),
        f("random_order_prob", 11, "o", "float", default=0.0),
    ],
    "ExpansionParameter": [
        f("prob", 1, "o", "float", default=1.0),
        f("max_expand_ratio", 2, "o", "float", default=1.0),
    ],
    "EmitConstraint": [f("emit_type", 1, "o", "enum:EmitType", default="CENTER"), f("emit_overlap", 2, "o", "float")],
    "Sampler": [
        f("min_scale", 1, "o", "float", default=1.0),
        f("max_scale", 2, "o", "float", default=1.0),
        f("min_aspect_ratio", 3, "o", "float", default=1.0),
        f("max_aspect_ratio", 4, "o", "float", default=1.0),
    ],
    "SampleConstraint": [
        f("min_jaccard_overlap", 1, "o", "float"),
        f("max_jaccard_overlap", 2, "o", "float"),
        f("min_sample_coverage", 3, "o", "float"),
        f("max_sample_coverage", 4, "o", "float"),
        f("min_object_coverage", 5, "o", "float"),
        f("max_object_coverage", 6, "o", "float"),
    ],
    "BatchSampler": [
        f("use_original_image", 1, "o", "bool", default=True),
        f("sampler", 2, "o", "Sampler"),
        f("sample_constraint", 3, "o", "SampleConstraint"),
        f("max_sample", 4, "o", "uint32"),
        f("max_trials", 5, "o", "uint32", default=100),
    ],
    "AnnotatedDataParameter": [
        f("batch_sampler", 1, "r", "BatchSampler"),
        f("label_map_file", 2, "o", "string"),
        f("anno_type", 3, "o", "enum:AnnotationType"),
    ],
    "DetectionEvaluateParameter": [
        f("num_classes", 1, "o", "uint32"),
        f("background_label_id", 2, "o", "uint32", default=0),
        f("overlap_threshold", 3, "o", "float", default=0.5),
        f("evaluate_difficult_gt", 4, "o", "bool", default=True),
        f("name_size_file", 5, "o", "string"),
        f("resize_param", 6, "o", "ResizeParameter"),
    ],
    "NonMaximumSuppressionParameter": [
        f("nms_threshold", 1, "o", "float", default=0.3),
        f("top_k", 2, "o", "int32"),
        f("eta", 3, "o", "float", default=1.0),
    ],
    "SaveOutputParameter": [
        f("output_directory", 1, "o", "string"),
        f("output_name_prefix", 2, "o", "string"),
        f("output_format", 3, "o", "string"),
        f("label_map_file", 4, "o", "string"),
        f("name_size_file", 5, "o", "string"),
        f("num_test_image", 6, "o", "uint32"),
        f("resize_param", 7, "o", "ResizeParameter"),
    ],
    "DetectionOutputParameter": [
        f("num_classes", 1, "o", "uint32"),
        f("share_location", 2, "o", "bool", default=True),
        f("background_label_id", 3, "o", "int32", default=0),
        f("nms_param", 4, "o", "NonMaximumSuppressionParameter"),
        f("save_output_param", 5, "o", "SaveOutputParameter"),
        f("code_type", 6, "o", "enum:CodeType", default="CORNER"),
        f("variance_encoded_in_target", 8, "o", "bool", default=False),
        f("keep_top_k", 7, "o", "int32", default=-1),
        f("confidence_threshold", 9, "o", "float"),
        f("visualize", 10, "o", "bool", default=False),
        f("visualize_threshold", 11, "o", "float"),
        f("save_file", 12, "o", "string"),
    ],
    "MultiBoxLossParameter": [
        f("loc_loss_type", 1, "o", "enum:LocLossType", default="SMOOTH_L1"),
        f("conf_loss_type", 2, "o", "enum:ConfLossType", default="SOFTMAX"),
        f("loc_weight", 3, "o", "float", default=1.0),
        f("num_classes", 4, "o", "uint32"),
        f("share_location", 5, "o", "bool", default=True),
        f("match_type", 6, "o", "enum:MatchType", default="PER_PREDICTION"),
        f("overlap_threshold", 7, "o", "float", default=0.5),
        f("use_prior_for_matching", 8, "o", "bool", default=True),
        f("background_label_id", 9, "o", "uint32", default=0),
        f("use_difficult_gt", 10, "o", "bool", default=True),
        f("do_neg_mining", 11, "o", "bool"),
        f("neg_pos_ratio", 12, "o", "float", default=3.0),
        f("neg_overlap", 13, "o", "float", default=0.5),
        f("code_type", 14, "o", "enum:CodeType", default="CORNER"),
        f("encode_variance_in_target", 16, "o", "bool", default=False),
        f("map_object_to_agnostic", 17, "o", "bool", default=False),
        f("ignore_cross_boundary_bbox", 18, "o", "bool", default=False),
        f("bp_inside", 19, "o", "bool", default=False),
        f("mining_type", 20, "o", "enum:MiningType", default="MAX_NEGATIVE"),
        f("nms_param", 21, "o", "NonMaximumSuppressionParameter"),
        f("sample_size", 22, "o", "int32", default=64),
        f("use_prior_for_nms", 23, "o", "bool", default=False),
    ],
    "NormalizeParameter": [
        f("across_spatial", 1, "o", "bool", default=True),
        f("scale_filler", 2, "o", "FillerParameter"),
        f("channel_shared", 3, "o", "bool", default=True),
        f("eps", 4, "o", "float", default=1e-10),
    ],
    "PermuteParameter": [f("order", 1, "r", "uint32")],
    "PriorBoxParameter": [
        f("min_size", 1, "r", "float"),
        f("max_size", 2, "r", "float"),
        f("aspect_ratio", 3, "r", "float"),
        f("flip", 4, "o", "bool", default=True),
        f("clip", 5, "o", "bool", default=False),
        f("variance", 6, "r", "float"),
        f("img_size", 7, "o", "uint32"),
        f("img_h", 8, "o", "uint32"),
        f("img_w", 9, "o", "uint32"),
        f("step", 10, "o", "float"),
        f("step_h", 11, "o", "float"),
        f("step_w", 12, "o", "float"),
        f("offset", 13, "o", "float", default=0.5),
    ],
    "VideoDataParameter": [
        f("video_type", 1, "o", "enum:VideoType", default="WEBCAM"),
        f("device_id", 2, "o", "int32", default=0),
        f("video_file", 3, "o", "string"),
        f("skip_frames", 4, "o", "uint32", default=0),
    ],
    # BVLC master (2017-2019 additions) ---------------------------------------------------------
    "RecurrentParameter": [
        f("num_output", 1, "o", "uint32", default=0),
        f("weight_filler", 2, "o", "FillerParameter"),
        f("bias_filler", 3, "o", "FillerParameter"),
        f("debug_info", 4, "o", "bool", default=False),
        f("expose_hidden", 5, "o", "bool", default=False),
    ],
    "SwishParameter": [f("beta", 1, "o", "float", default=1.0)],
    "ClipParameter": [f("min", 1, "o", "float"), f("max", 2, "o", "float")],  # ``required`` in BVLC's proto
    # farmingyard/ShuffleNet
    "ShuffleChannelParameter": [f("group", 1, "o", "uint32", default=1)],
    # ChenYingpeng/caffe-yolov3 (``scale``, nearest neighbour) and alexgkendall/caffe-segnet (all fields: max
    # unpooling with the pooling mask as second bottom; SegNet's ``scale`` defaults to 2, the YOLOv3 fork's to 1)
    "UpsampleParameter": [
        f("scale", 1, "o", "uint32"),
        f("scale_h", 2, "o", "uint32"),
        f("scale_w", 3, "o", "uint32"),
        f("pad_out_h", 4, "o", "bool", default=False),
        f("pad_out_w", 5, "o", "bool", default=False),
        f("upsample_h", 6, "o", "uint32"),
        f("upsample_w", 7, "o", "uint32"),
    ],
    # rog93/Caffe-MobileNetV2-ReLU6
    "ReLU6Parameter": [f("negative_slope", 1, "o", "float", default=0.0)],
}

FORK_LAYER_FIELDS: list[_F] = [
    # SSD fork (weiliu89/caffe, branch ssd)
    f("annotated_data_param", 200, "o", "AnnotatedDataParameter"),
    f("multibox_loss_param", 201, "o", "MultiBoxLossParameter"),
    f("permute_param", 202, "o", "PermuteParameter"),
    f("prior_box_param", 203, "o", "PriorBoxParameter"),
    f("detection_output_param", 204, "o", "DetectionOutputParameter"),
    f("detection_evaluate_param", 205, "o", "DetectionEvaluateParameter"),
    f("norm_param", 206, "o", "NormalizeParameter"),
    f("video_data_param", 207, "o", "VideoDataParameter"),
    # BVLC master
    f("recurrent_param", 146, "o", "RecurrentParameter"),
    f("swish_param", 147, "o", "SwishParameter"),
    f("clip_param", 148, "o", "ClipParameter"),
    # farmingyard/ShuffleNet; ChenYingpeng/caffe-yolov3 (SegNet: 137); rog93/Caffe-MobileNetV2-ReLU6
    f("shuffle_channel_param", 164, "o", "ShuffleChannelParameter"),
    f("upsample_param", UPSAMPLE_PARAM, "o", "UpsampleParameter"),
    f("relu6_param", 100000, "o", "ReLU6Parameter"),
    # NVCaffe (NVIDIA/caffe) precision fields, at private numbers (see NVCAFFE_VARINT_FIELDS)
    f("forward_type", NVCAFFE_PRIVATE + 145, "o", "enum:DataType", default="FLOAT"),
    f("backward_type", NVCAFFE_PRIVATE + 146, "o", "enum:DataType", default="FLOAT"),
    f("forward_math", NVCAFFE_PRIVATE + 147, "o", "enum:DataType", default="FLOAT"),
    f("backward_math", NVCAFFE_PRIVATE + 148, "o", "enum:DataType", default="FLOAT"),
    f("debug", NVCAFFE_PRIVATE + 149, "o", "bool", default=False),
    f("cudnn_math_override", NVCAFFE_PRIVATE + 150, "o", "int32", default=-1),
]

"""Names of the real-Caffe single-layer fixture cases, shared by the tests that run them all."""

from __future__ import annotations

# Every case of fixtures/caffe/layers (its README: 76 single-layer edge cases); tests check the list is whole.
LAYER_CASES = (
    "absval argmax_axis1 argmax_axis1_top2_val batchnorm_default_test batchnorm_eps_factor batchnorm_factor0 "
    "batchnorm_global bias_axis1 bn_psp_eps_inplace bn_psp_frozen concat_axis1 concat_axis2 conv_depthwise "
    "conv_dilation2 conv_dilation3_stride2 conv_group2 conv_nobias_1x1 conv_rect conv_stride2 crop_axis2_offsets "
    "crop_axis2_single_offset deconv_bilinear_group deconv_plain dropout_inplace dropout_test eltwise_max "
    "eltwise_prod eltwise_sum_coeff elu flatten innerproduct_4d_bias innerproduct_axis2 innerproduct_nobias "
    "innerproduct_transpose interp_from1x1 interp_hw_down interp_hw_up interp_out1 interp_pad_neg_hw "
    "interp_pad_neg_zoom2 interp_same_size interp_shrink2 interp_shrink4_zoom3 interp_zoom2 interp_zoom4_shrink3 "
    "lrn_across lrn_within pool_ave_k2s2p1_clip pool_ave_k3s2p1_pad pool_ave_k4s3_ceil_partial pool_ave_k5s3p2 "
    "pool_global_ave pool_global_max pool_max_k2s2_ceil pool_max_k2s2p1_clip pool_max_k3s2p1 pool_max_rect power "
    "power_cube_neg prelu_channel prelu_shared relu_negative_slope relu_plain_inplace reshape scale_axis1_numaxes2 "
    "scale_axis2_all scale_bias scale_nobias scale_numaxes0 scale_two_bottoms sigmoid slice_axis1 slice_axis2 "
    "softmax_axis1 split_implicit tanh"
).split()
POOL_CASES = [c for c in LAYER_CASES if c.startswith("pool_")]

"""Name and layout mapping from source checkpoints onto :mod:`segconvert.reference_models`."""

from segconvert.converters.caffe_detect import DetectedArch, detect_caffe_arch
from segconvert.converters.caffe_generic import convert_caffe_generic
from segconvert.converters.caffe_names import CaffeConversion, Tap, convert_caffe_net

__all__ = ["CaffeConversion", "DetectedArch", "Tap", "convert_caffe_generic", "convert_caffe_net", "detect_caffe_arch"]

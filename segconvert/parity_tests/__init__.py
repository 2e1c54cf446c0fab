"""Pytest suites that check a conversion of *your own* files.

Run them on installed segconvert with the options of :mod:`segconvert.parity_tests.plugin` (loaded
automatically through the ``pytest11`` entry point)::

    python -m pytest --pyargs segconvert.parity_tests \\
        --caffe-prototxt deploy.prototxt --caffe-model weights.caffemodel \\
        [--caffe-dump DUMP_DIR] [--converted out.safetensors] [--caffe-arch NAME] [--caffe-layer-cases DIR]
    python -m pytest --pyargs segconvert.parity_tests \\
        --converted out.safetensors --tf-checkpoint model.ckpt   # or --keras-h5 weights.h5

Each test skips, saying which option it needs, when its inputs are not given. ``DUMP_DIR`` holds what a
real Caffe computed (``input.npy``, ``outputs.npz`` keyed ``"<layer>/<top>"``, optional ``meta.json``):
see :func:`segconvert.parity.caffe.load_dump` and the README for a pycaffe snippet that writes one.
"""

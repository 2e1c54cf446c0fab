"""A layer whose configuration has no exact module (not its class) is reported with every other one, in one
error, even when later layers read its output."""

from __future__ import annotations

import pytest

from tests.keras_cases import randomize, save, tf_keras


def test_unsupported_configs_listed_together(tmp_path):
    K = tf_keras()
    from segconvert.converters.keras_generic import convert_keras_generic
    from segconvert.errors import ConversionError

    L = K.layers
    inp = K.Input((8, 8, 3))
    x = L.UpSampling2D(2, interpolation="bicubic", name="up_bicubic")(L.Conv2D(4, 3, name="c1")(inp))
    x = L.Conv2D(4, 3, name="c2")(x)  # reads the unsupported layer's output
    y = L.Resizing(5, 5, interpolation="area", name="resize_area")(inp)
    m = K.Model(inp, [x, L.Conv2D(2, 1, name="c3")(y)])
    randomize(m)
    path, _ = save(m, tmp_path)
    with pytest.raises(ConversionError) as err:
        convert_keras_generic(path, None)
    msg = str(err.value)
    assert "2 unsupported layer(s)" in msg and "up_bicubic" in msg and "resize_area" in msg, msg
    assert "\n" not in msg

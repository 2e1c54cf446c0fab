"""Width-reduced builders of the Keras Cityscapes benchmark's families, written from the published architectures.

Fast-SCNN (Poudel et al. 2019: learning-to-downsample, bottleneck global feature extractor + pyramid pooling,
feature fusion, classifier), DeepLabV3+ as in bonlime/keras-deeplab-v3-plus (MobileNetV2 with output stride 8 or
16 through dilated inverted-residual blocks + image-pooling ASPP; Xception with separable ASPP and decoder), U-Net
(Ronneberger), separable U-Net, Bayesian SegNet (max pooling with argmax indices, dropout, unpooling at the
indices: ykamikawa/SegNet's custom layers, written again here). Random weights come from tests/keras_cases.
"""

from __future__ import annotations

import tensorflow as tf


def _bn_relu(L, x, relu6=False):
    x = L.BatchNormalization(epsilon=1e-3)(x)
    return L.ReLU(6.0)(x) if relu6 else L.ReLU()(x)


def fast_scnn(K, size, classes=5, w=1 / 4):
    L = K.layers
    c = [max(4, int(v * w)) for v in (32, 48, 64, 96, 128)]
    inp = K.Input((*size, 3))
    x = _bn_relu(L, L.Conv2D(c[0], 3, strides=2, padding="same", use_bias=False)(inp))
    x = _bn_relu(L, L.SeparableConv2D(c[1], 3, strides=2, padding="same", use_bias=False)(x))
    high = _bn_relu(L, L.SeparableConv2D(c[2], 3, strides=2, padding="same", use_bias=False)(x))
    x = high
    for ch, stride in ((c[2], 2), (c[3], 2), (c[4], 1)):
        for i in range(2):
            s = stride if i == 0 else 1
            y = _bn_relu(L, L.Conv2D(x.shape[-1] * 6, 1, use_bias=False)(x))
            y = _bn_relu(L, L.DepthwiseConv2D(3, strides=s, padding="same", use_bias=False)(y))
            y = L.BatchNormalization()(L.Conv2D(ch, 1, use_bias=False)(y))
            x = L.Add()([x, y]) if s == 1 and x.shape[-1] == ch else y
    h, wd = x.shape[1], x.shape[2]
    branches = [x]
    for b in (1, 2):
        p = L.AveragePooling2D((h // b, wd // b), strides=(h // b, wd // b))(x)
        p = _bn_relu(L, L.Conv2D(c[4] // 4, 1, use_bias=False)(p))
        branches.append(L.Resizing(h, wd, interpolation="bilinear")(p))
    x = _bn_relu(L, L.Conv2D(c[4], 1, use_bias=False)(L.Concatenate()(branches)))
    x = L.UpSampling2D(4, interpolation="bilinear")(x)
    x = _bn_relu(L, L.DepthwiseConv2D(3, padding="same", use_bias=False)(x))
    x = L.BatchNormalization()(L.Conv2D(c[4], 1)(x))
    y = L.BatchNormalization()(L.Conv2D(c[4], 1)(high))
    x = L.ReLU()(L.Add()([x, y]))
    for _ in range(2):
        x = _bn_relu(L, L.SeparableConv2D(c[4], 3, padding="same", use_bias=False)(x))
    x = L.Dropout(0.3)(L.Conv2D(classes, 1)(x))
    x = L.UpSampling2D(8, interpolation="bilinear")(x)
    return K.Model(inp, L.Softmax()(x), name="fast_scnn")


def _inverted_res(L, x, filters, stride, expansion, block, rate=1):
    cin = x.shape[-1]
    y = x
    if block:
        y = L.Conv2D(expansion * cin, 1, use_bias=False, name=f"expanded_conv_{block}_expand")(y)
        y = L.ReLU(6.0)(L.BatchNormalization(epsilon=1e-3, momentum=0.999)(y))
    y = L.DepthwiseConv2D(3, strides=stride, dilation_rate=rate, padding="same", use_bias=False)(y)
    y = L.ReLU(6.0)(L.BatchNormalization(epsilon=1e-3, momentum=0.999)(y))
    y = L.BatchNormalization()(L.Conv2D(filters, 1, use_bias=False)(y))
    return L.Add()([x, y]) if stride == 1 and cin == filters else y


def deeplab_mobilenetv2(K, size, os=16, classes=5, alpha=0.35):
    L = K.layers

    def ch(v):
        return max(8, int(v * alpha + 4) // 8 * 8)

    inp = K.Input((*size, 3))
    x = L.Conv2D(ch(32), 3, strides=2, padding="same", use_bias=False, name="Conv")(inp)
    x = L.ReLU(6.0)(L.BatchNormalization(name="Conv_BN")(x))
    x = _inverted_res(L, x, ch(16), 1, 1, 0)
    x = _inverted_res(L, x, ch(24), 2, 6, 1)
    x = _inverted_res(L, x, ch(24), 1, 6, 2)
    x = _inverted_res(L, x, ch(32), 2, 6, 3)
    x = _inverted_res(L, x, ch(32), 1, 6, 4)
    s, r = (1, 2) if os == 8 else (2, 1)
    x = _inverted_res(L, x, ch(64), s, 6, 5, rate=1)
    x = _inverted_res(L, x, ch(64), 1, 6, 6, rate=r)
    x = _inverted_res(L, x, ch(96), 1, 6, 7, rate=r)
    x = _inverted_res(L, x, ch(160), 1, 6, 8, rate=2 * r)
    x = _inverted_res(L, x, ch(320), 1, 6, 9, rate=2 * r)
    h, w = x.shape[1], x.shape[2]
    b4 = L.GlobalAveragePooling2D(keepdims=True)(x)
    b4 = L.ReLU()(L.BatchNormalization(epsilon=1e-5)(L.Conv2D(32, 1, use_bias=False, name="image_pooling")(b4)))
    b4 = L.Resizing(h, w, interpolation="bilinear")(b4)
    b0 = L.ReLU()(L.BatchNormalization(epsilon=1e-5)(L.Conv2D(32, 1, use_bias=False, name="aspp0")(x)))
    x = L.Concatenate()([b4, b0])
    x = L.ReLU()(L.BatchNormalization(epsilon=1e-5)(L.Conv2D(32, 1, use_bias=False)(x)))
    x = L.Dropout(0.1)(x)
    x = L.Conv2D(classes, 1, padding="same", name="logits_semantic")(x)
    x = L.Resizing(*size, interpolation="bilinear")(x)
    return K.Model(inp, x, name=f"deeplabv3plus_mobilenetv2_os{os}")


def _sep_bn(L, x, filters, stride=1, rate=1, depth_activation=False, eps=1e-3):
    if stride == 1:
        pad = "same"
    else:  # bonlime: explicit zero padding then 'valid' for strided separable convs
        k = 3 + 2 * (rate - 1)
        x = L.ZeroPadding2D(((k - 1) // 2, k - 1 - (k - 1) // 2))(x)
        pad = "valid"
    if not depth_activation:
        x = L.ReLU()(x)
    x = L.DepthwiseConv2D(3, strides=stride, dilation_rate=rate, padding=pad, use_bias=False)(x)
    x = L.BatchNormalization(epsilon=eps)(x)
    if depth_activation:
        x = L.ReLU()(x)
    x = L.BatchNormalization(epsilon=eps)(L.Conv2D(filters, 1, padding="same", use_bias=False)(x))
    return L.ReLU()(x) if depth_activation else x


def _xblock(L, x, widths, skip, stride, rate=1, depth_activation=False, return_skip=False):
    res, skip_out = x, None
    for i in range(3):
        res = _sep_bn(L, res, widths[i], stride if i == 2 else 1, rate, depth_activation)
        if i == 1:
            skip_out = res
    if skip == "conv":
        sc = L.BatchNormalization()(L.Conv2D(widths[-1], 1, strides=stride, padding="same", use_bias=False)(x))
        out = L.Add()([res, sc])
    elif skip == "sum":
        out = L.Add()([res, x])
    else:
        out = res
    return (out, skip_out) if return_skip else out


def deeplab_xception(K, size, classes=5, w=1 / 8):
    L = K.layers

    def c(v):
        return max(4, int(v * w))

    inp = K.Input((*size, 3))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(c(32), 3, strides=2, padding="same", use_bias=False)(inp)))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(c(64), 3, padding="same", use_bias=False)(x)))
    x = _xblock(L, x, [c(128)] * 3, "conv", 2, depth_activation=False)
    x, skip1 = _xblock(L, x, [c(256)] * 3, "conv", 2, return_skip=True)
    x = _xblock(L, x, [c(728)] * 3, "conv", 2)
    for _ in range(2):  # middle flow (16 units in the original)
        x = _xblock(L, x, [c(728)] * 3, "sum", 1)
    x = _xblock(L, x, [c(728), c(1024), c(1024)], "conv", 1, rate=1)
    x = _xblock(L, x, [c(1536), c(1536), c(2048)], "none", 1, rate=2, depth_activation=True)
    h, wd = x.shape[1], x.shape[2]
    b4 = L.GlobalAveragePooling2D(keepdims=True)(x)
    b4 = L.ReLU()(L.BatchNormalization(epsilon=1e-5)(L.Conv2D(c(256), 1, use_bias=False)(b4)))
    b4 = L.Resizing(h, wd, interpolation="bilinear")(b4)
    b0 = L.ReLU()(L.BatchNormalization(epsilon=1e-5)(L.Conv2D(c(256), 1, use_bias=False)(x)))
    branches = [b4, b0] + [_sep_bn(L, x, c(256), rate=r, depth_activation=True, eps=1e-5) for r in (6, 12, 18)]
    x = L.Concatenate()(branches)
    x = L.Dropout(0.1)(L.ReLU()(L.BatchNormalization(epsilon=1e-5)(L.Conv2D(c(256), 1, use_bias=False)(x))))
    x = L.Resizing(skip1.shape[1], skip1.shape[2], interpolation="bilinear")(x)
    s = L.ReLU()(L.BatchNormalization(epsilon=1e-5)(L.Conv2D(c(48), 1, use_bias=False)(skip1)))
    x = L.Concatenate()([x, s])
    x = _sep_bn(L, x, c(256), depth_activation=True, eps=1e-5)
    x = _sep_bn(L, x, c(256), depth_activation=True, eps=1e-5)
    x = L.Conv2D(classes, 1, padding="same")(x)
    x = L.Resizing(*size, interpolation="bilinear")(x)
    return K.Model(inp, L.Activation("softmax")(x), name="deeplabv3plus_xception")


def unet(K, size, classes=4, base=8, separable=False):
    L = K.layers
    conv = L.SeparableConv2D if separable else L.Conv2D

    def block(x, n):
        for _ in range(2):
            x = L.Activation("relu")(L.BatchNormalization()(conv(n, 3, padding="same")(x)))
        return x

    inp = K.Input((*size, 3))
    skips, x = [], inp
    for i in range(3):
        x = block(x, base * 2**i)
        skips.append(x)
        x = L.MaxPooling2D(2)(x)
    x = L.Dropout(0.5)(block(x, base * 8))
    for i in reversed(range(3)):
        up = L.Conv2DTranspose(base * 2**i, 2, strides=2, padding="same")(x) if i % 2 else L.UpSampling2D(2)(x)
        x = block(L.Concatenate()([skips[i], up]), base * 2**i)
    out = L.Conv2D(classes, 1, activation="softmax")(x)
    return K.Model(inp, out, name="separable_unet" if separable else "unet")


def segnet_layers(K):
    """MaxPoolingWithArgmax2D / MaxUnpooling2D as SegNet-Keras ports define them (TF flat NHWC indices)."""

    class MaxPoolingWithArgmax2D(K.layers.Layer):
        def __init__(self, pool_size=(2, 2), strides=(2, 2), padding="same", **kwargs):
            super().__init__(**kwargs)
            self.pool_size, self.strides, self.padding = pool_size, strides, padding

        def call(self, inputs):
            ksize, strides = [1, *self.pool_size, 1], [1, *self.strides, 1]
            out, argmax = tf.nn.max_pool_with_argmax(inputs, ksize, strides, self.padding.upper())
            return [out, tf.cast(argmax, tf.float32)]

        def get_config(self):
            return {**super().get_config(), "pool_size": self.pool_size, "strides": self.strides,
                    "padding": self.padding}  # fmt: skip

    class MaxUnpooling2D(K.layers.Layer):
        def __init__(self, size=(2, 2), **kwargs):
            super().__init__(**kwargs)
            self.size = size

        def call(self, inputs):
            updates, mask = inputs[0], tf.cast(inputs[1], "int32")
            shape = tf.shape(updates, out_type="int32")
            out_shape = (shape[0], shape[1] * self.size[0], shape[2] * self.size[1], shape[3])
            ones = tf.ones_like(mask)
            b = ones * tf.reshape(tf.range(out_shape[0]), [-1, 1, 1, 1])
            y = mask // (out_shape[2] * out_shape[3])
            x = (mask // out_shape[3]) % out_shape[2]
            f = ones * tf.range(out_shape[3])
            n = tf.size(updates)
            idx = tf.transpose(tf.reshape(tf.stack([b, y, x, f]), [4, n]))
            return tf.scatter_nd(idx, tf.reshape(updates, [n]), out_shape)

        def get_config(self):
            return {**super().get_config(), "size": self.size}

    return MaxPoolingWithArgmax2D, MaxUnpooling2D


def bayesian_segnet(K, size, classes=4, base=8):
    L = K.layers
    Pool, Unpool = segnet_layers(K)

    def block(x, n, reps=2):
        for _ in range(reps):
            x = L.Activation("relu")(L.BatchNormalization()(L.Conv2D(n, 3, padding="same")(x)))
        return x

    inp = K.Input((*size, 3))
    x, masks = inp, []
    for i in range(3):
        x, m = Pool()(block(x, base * 2**i))
        masks.append(m)
        x = L.Dropout(0.5)(x) if i else x
    for i in reversed(range(3)):
        x = Unpool((2, 2))([x, masks[i]])
        x = block(x, base * 2 ** max(i - 1, 0))
        x = L.Dropout(0.5)(x) if i else x
    x = L.Conv2D(classes, 1)(x)
    return K.Model(inp, L.Activation("softmax")(x), name="bayesian_segnet")

"""Tiny Keras models shared by the explain tests (32-64 px, a few thousand weights)."""

from __future__ import annotations

import keras
import numpy as np


def linear_model(size: int = 16, channels: int = 1, seed: int = 0) -> keras.Model:
    """Flatten + Dense(1): gradient = weights, everything has a closed form."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, channels))
    outputs = keras.layers.Dense(1, name="hc_px_input")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, outputs, name="linear")


def gap_model(size: int = 16, filters: int = 3, seed: int = 0) -> keras.Model:
    """Conv (ReLU, same padding) -> GAP -> Dense(1): Grad-CAM has a closed form."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 1))
    features = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name="conv")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D(name="gap")(features)
    outputs = keras.layers.Dense(1, name="hc_px_input")(pooled)
    return keras.Model(inputs, outputs, name="gap_model")


def tiny_cnn(size: int = 32, seed: int = 0) -> keras.Model:
    """Plain conv net: conv-BN-ReLU-pool x 2, conv, GAP, Dense(1).

    Biases are random (not Keras' zeros) so the net is not positively homogeneous: with zero
    biases f(a x) = a f(x) and IG from a zero baseline would be exact with one point."""
    keras.utils.set_random_seed(seed)
    bias = keras.initializers.RandomNormal(stddev=0.3, seed=seed)
    inputs = keras.Input((size, size, 1), name="image")
    x = inputs
    for block, width in enumerate((4, 8), start=1):
        x = keras.layers.Conv2D(width, 3, padding="same", bias_initializer=bias,
                                name=f"block{block}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{block}_bn")(x)
        x = keras.layers.ReLU(name=f"block{block}_relu")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", bias_initializer=bias,
                            name="top_conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(8, activation="relu", bias_initializer=bias, name="dense")(x)
    outputs = keras.layers.Dense(1, name="hc_px_input")(x)
    return keras.Model(inputs, outputs, name="tiny_cnn")


def tiny_residual(size: int = 32, seed: int = 0) -> keras.Model:
    """MobileNet-style: stem, inverted residual block (expand, depthwise, project, Add),
    strided depthwise separable block, GAP, Dense(1); plus an auxiliary 'ellipse' output."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 1), name="image")
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="stem_conv")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(6.0, name="stem_relu")(x)
    shortcut = x
    y = keras.layers.Conv2D(16, 1, name="expand")(x)
    y = keras.layers.ReLU(6.0, name="expand_relu")(y)
    y = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise")(y)
    y = keras.layers.BatchNormalization(name="depthwise_bn")(y)
    y = keras.layers.ReLU(6.0, name="depthwise_relu")(y)
    y = keras.layers.Conv2D(8, 1, name="project")(y)
    x = keras.layers.Add(name="residual_add")([shortcut, y])
    x = keras.layers.SeparableConv2D(16, 3, strides=2, padding="same", name="sep_conv")(x)
    x = keras.layers.ReLU(6.0, name="out_relu")(x)
    pooled = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    hc = keras.layers.Dense(1, name="hc_px_input")(pooled)
    ellipse = keras.layers.Dense(6, name="ellipse")(pooled)
    return keras.Model(inputs, [hc, ellipse], name="tiny_residual")


def random_images(n: int, size: int, seed: int = 0, channels: int = 1) -> np.ndarray:
    """Smooth-ish z-scored images: noise plus a bright ring (skull-like)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    images = []
    for _ in range(n):
        radius = rng.uniform(0.2, 0.4)
        ring = np.exp(-((np.hypot(xx, yy) - radius) ** 2) / 0.002)
        image = ring + 0.3 * rng.standard_normal((size, size))
        image = (image - image.mean()) / image.std()
        images.append(np.repeat(image[..., None], channels, axis=-1))
    return np.asarray(images, np.float32)


def randomise_statistics(model: keras.Model, seed: int = 0) -> None:
    """Random BatchNorm parameters / statistics and random biases, so that folding the
    BatchNorms and the biases are exercised (a freshly built backbone has identity BNs)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.moving_variance.shape
            if layer.scale:  # InceptionV3's BatchNorms have no gamma
                layer.gamma.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
            if layer.center:
                layer.beta.assign(rng.uniform(-0.1, 0.1, shape).astype(np.float32))
            layer.moving_mean.assign(rng.uniform(-0.1, 0.1, shape).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, shape).astype(np.float32))
        elif getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.uniform(-0.05, 0.05, layer.bias.shape).astype(np.float32))


def compiled_small_cnn(arrays, image_size: int) -> keras.Model:
    """fetalhc's small CNN (8, 16 filters) with its output standardised on ``arrays``'
    ``hc_px_input`` and compiled with the MAE in mm: the model the callback tests fit."""
    import fetalhc
    from fetalhc.losses import MillimetreMAE

    hc_px = arrays["hc_px_input"]
    model = fetalhc.models.build_model(
        "small_cnn", input_shape=(image_size, image_size, 1), small_cnn_filters=(8, 16),
        hc_mean_px=float(hc_px.mean()), hc_std_px=float(hc_px.std()),
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=MillimetreMAE())
    return model

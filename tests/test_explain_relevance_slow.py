"""Relevance methods on the fetalhc backbones (VGG16, ResNet50 at 64 px; small_cnn fast).

"Biases zeroed" for LRP-z = Input x Gradient means every additive constant below the output:
Conv/Dense biases and, since a BatchNormalization is ``gamma (x - mean) / sd + beta``, its
``beta`` and ``moving_mean`` too. The OutputAffine mean may stay: it sits after the last
linear layer, so it only removes its own share (reported as the conservation gap).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from explain_models import randomise_statistics

import fetalhc.explain as fe
from fetalhc.models import build_model

RELEVANCE_METHODS = ("lrp_z", "lrp_epsilon", "lrp_alpha2_beta1", "lrp_alpha1_beta0",
                     "lrp_zplus", "lrp_composite", "deep_taylor")
ALL_METHODS = RELEVANCE_METHODS + ("guided_backprop", "deconvnet")
MEAN_PX, SD_PX, PIXEL_SIZE = 300.0, 40.0, 0.2


def images(n, size, seed=0):
    return np.random.default_rng(seed).standard_normal((n, size, size, 1)).astype(np.float32)


def zero_biases(model):
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.beta.assign(tf.zeros_like(layer.beta))
            layer.moving_mean.assign(tf.zeros_like(layer.moving_mean))
        elif getattr(layer, "bias", None) is not None:
            layer.bias.assign(tf.zeros_like(layer.bias))


def check_backbone(backbone, size, methods, n=2):
    keras.utils.set_random_seed(0)  # the same weights whatever ran before (the check is tight)
    model = build_model(backbone, (size, size, 1), hc_mean_px=MEAN_PX, hc_std_px=SD_PX)
    randomise_statistics(model)
    x = images(n, size)
    for method in methods:
        result = fe.explain_batch(model, x, method=method, pixel_size=PIXEL_SIZE)
        assert result.maps.shape == (n, size, size), method
        assert np.all(np.isfinite(result.maps)) and np.abs(result.maps).max() > 0, method
        if method in RELEVANCE_METHODS:
            gap = result.metadata["conservation_gap"]
            assert gap.shape == (n,) and np.all(np.isfinite(gap)), method
    zero_biases(model)
    lrp = fe.explain_batch(model, x, method="lrp_z", pixel_size=PIXEL_SIZE)
    ixg = fe.explain(model, x, method="input_x_gradient", pixel_size=PIXEL_SIZE)
    scale = np.abs(ixg).max()
    np.testing.assert_allclose(lrp.maps, ixg, atol=1e-4 * scale)
    # what is left over is exactly the OutputAffine mean's share
    np.testing.assert_allclose(lrp.metadata["conservation_gap"], -MEAN_PX * PIXEL_SIZE,
                               rtol=1e-3)


def test_small_cnn_lrp_z_equals_input_x_gradient():
    check_backbone("small_cnn", 16, ())


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["vgg16", "resnet50"])
def test_backbones_every_method_and_lrp_z_equals_input_x_gradient(backbone):
    check_backbone(backbone, 64, ALL_METHODS)

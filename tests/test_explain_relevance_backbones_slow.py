"""Relevance methods on MobileNetV2, EfficientNetB0, DenseNet121, Xception and InceptionV3.

Each backbone is built by fetalhc at the smallest input it accepts (32 px; Xception 71,
InceptionV3 75) with random weights, random BatchNorm statistics and random biases (so
folding, biases and the ReLU6 clip are exercised). To keep the runtime to a few minutes the
relevance rules run eagerly through :func:`propagate_relevance` (the registered method's own
rule set, bounds = each image's min / max as the methods' default) and Guided Backprop /
DeConvNet through :func:`modified_gradient`; one method per backbone (``lrp_composite``)
also goes through the registry's traced path. Run with ``-s`` to see the conservation gaps.

Known answers after zeroing every additive constant below the output (Conv/Dense biases,
BatchNorm ``beta`` and ``moving_mean``):

- LRP-z conserves exactly up to the ``OutputAffine`` mean's share, on every backbone: the
  pre-processing passes relevance through, swish and ReLU6 use the identity rule and the
  squeeze-and-excitation gate is held constant, so nothing else absorbs relevance;
- on the ReLU backbones (DenseNet121, Xception, InceptionV3) LRP-z equals Input x Gradient
  taken at the adapted image, ``(x - x_ref) * gradient`` with ``x_ref = -offset / scale``
  of the ``GrayscaleAdapter`` (0 for DenseNet121); MobileNetV2 too when no ReLU6 unit is
  saturated (checked: a saturated unit has zero gradient but passes relevance on).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from explain_models import randomise_statistics

import fetalhc.explain as fe
from fetalhc.explain.deconvnet import deconvnet_rule
from fetalhc.explain.guided_backprop import guided_rule, modified_gradient
from fetalhc.explain.relevance_graph import get_plan
from fetalhc.explain.relevance_ops import RELU
from fetalhc.explain.relevance_rules import propagate_relevance
from fetalhc.models import build_model

RELEVANCE_METHODS = ("lrp_z", "lrp_epsilon", "lrp_alpha2_beta1", "lrp_alpha1_beta0",
                     "lrp_zplus", "lrp_composite", "deep_taylor")
MEAN_PX, SD_PX, PIXEL_SIZE = 300.0, 40.0, 0.2
SIZES = {"mobilenetv2": 32, "efficientnetb0": 32, "densenet121": 32, "xception": 71,
         "inceptionv3": 75}


def images(n, size, seed=0):
    return np.random.default_rng(seed).standard_normal((n, size, size, 1)).astype(np.float32)


def zero_biases(model):
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            if layer.center:
                layer.beta.assign(tf.zeros_like(layer.beta))
            layer.moving_mean.assign(tf.zeros_like(layer.moving_mean))
        elif getattr(layer, "bias", None) is not None:
            layer.bias.assign(tf.zeros_like(layer.bias))


def hc_mm(output):
    return output * PIXEL_SIZE


def relu6_saturated(model, plan, x) -> bool:
    """True when some ReLU6 unit of the replay is above its clip for these images."""
    values = {plan.input_key: tf.constant(x)}
    for step in plan.steps:
        inputs = [values[key] for key in step.inputs]
        if step.kind == RELU and step.max_value is not None:
            if float(tf.reduce_max(inputs[0])) >= step.max_value:
                return True
        values[step.output] = step.forward(inputs)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("backbone", sorted(SIZES))
def test_every_method_on_the_backbone_and_lrp_z_known_answers(backbone):
    size, n = SIZES[backbone], 2
    # seeded: the kernels of a fresh backbone come from Keras' global random state, so
    # without a seed they (and how near 0 the pre-activations fall) depended on which tests
    # ran before this one
    keras.utils.set_random_seed(0)
    model = build_model(backbone, (size, size, 1), hc_mean_px=MEAN_PX, hc_std_px=SD_PX)
    randomise_statistics(model)
    plan = get_plan(model)
    x = images(n, size)
    flat = x.reshape(n, -1)
    low, high = flat.min(axis=1), flat.max(axis=1)  # the methods' default z^B bounds
    prediction_mm = model(x)[:, 0].numpy() * PIXEL_SIZE

    for name in RELEVANCE_METHODS:
        rules = fe.get_method(name)().rules()
        result = propagate_relevance(plan, x, hc_mm, rules, low=low, high=high)
        relevance = result["relevance"].numpy()
        assert relevance.shape == x.shape, name
        assert np.all(np.isfinite(relevance)) and np.abs(relevance).max() > 0, name
        np.testing.assert_allclose(result["start"].numpy(), prediction_mm, rtol=1e-4,
                                   err_msg=name)  # the replay reproduces the model
        gap = result["conservation_gap"].numpy()
        assert np.all(np.isfinite(gap)), name
        # gap beyond the OutputAffine mean's share = what biases / epsilon / alpha-beta took
        print(f"GAP | {backbone} | {name} | {prediction_mm.mean():.3f} | "
              f"{result['input_sum'].numpy().mean():.3f} | {gap.mean():.3f} | "
              f"{gap.mean() + MEAN_PX * PIXEL_SIZE:.3f} |")
    for name, rule in (("guided_backprop", guided_rule), ("deconvnet", deconvnet_rule)):
        gradient = modified_gradient(plan, x, hc_mm, rule).numpy()
        assert gradient.shape == x.shape and np.all(np.isfinite(gradient)), name
        assert np.abs(gradient).max() > 0, name

    # the registry's traced path, with the default per-image bounds of the z^B rule
    explained = fe.explain_batch(model, x, method="lrp_composite", pixel_size=PIXEL_SIZE)
    assert explained.maps.shape == (n, size, size) and np.all(np.isfinite(explained.maps))
    eager = propagate_relevance(plan, x, hc_mm, fe.get_method("lrp_composite")().rules(),
                                low=low, high=high)
    np.testing.assert_allclose(explained.metadata["conservation_gap"],
                               eager["conservation_gap"].numpy(), rtol=1e-3, atol=1e-3)

    zero_biases(model)
    result = propagate_relevance(plan, x, hc_mm, fe.get_method("lrp_z")().rules())
    np.testing.assert_allclose(result["conservation_gap"].numpy(), -MEAN_PX * PIXEL_SIZE,
                               rtol=1e-3)
    if backbone == "efficientnetb0":
        return  # swish identity rule and constant gate: not a gradient identity
    if backbone == "mobilenetv2" and relu6_saturated(model, plan, x):
        pytest.skip("a ReLU6 unit is saturated: LRP-z differs from Input x Gradient there")
    adapter = model.get_layer("grayscale_adapter")
    x_ref = -adapter.offset / adapter.scale
    x_t = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x_t)
        value = hc_mm(model(x_t)[:, 0])
    expected = ((x - x_ref) * tape.gradient(value, x_t)).numpy()
    relevance = result["relevance"].numpy()
    np.testing.assert_allclose(relevance, expected, atol=1e-4 * np.abs(expected).max())

"""Relevance propagation and modified backward passes on tiny functional networks.

Known answers: LRP-z equals Input x Gradient on bias-free ReLU networks, relevance is
conserved layer by layer, Guided Backprop equals the gradient when every weight and input is
non-negative, DeConvNet on one linear layer gives its weights, z+ / alpha1-beta0 maps of a
positive output are non-negative, and a bias absorbs exactly its share of relevance.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import fetalhc.explain as fe
from fetalhc.explain.relevance_graph import build_plan, get_plan
from fetalhc.explain.relevance_ops import LINEAR, OPAQUE
from fetalhc.explain.relevance_rules import (
    deep_taylor_rules,
    lrp_alpha_beta_rules,
    lrp_z_rules,
    lrp_zplus_rules,
    propagate_relevance,
)
from fetalhc.models.layers import GrayscaleAdapter, OutputAffine

SIZE = 8
RELEVANCE_METHODS = ("lrp_z", "lrp_epsilon", "lrp_alpha2_beta1", "lrp_alpha1_beta0",
                     "lrp_zplus", "lrp_composite", "deep_taylor")
ALL_METHODS = RELEVANCE_METHODS + ("guided_backprop", "deconvnet")


def images(n=3, size=SIZE, channels=1, seed=0, nonnegative=False):
    x = np.random.default_rng(seed).standard_normal((n, size, size, channels)).astype(np.float32)
    return np.abs(x) if nonnegative else x


def randomise_batch_norms(model, seed=0, bias_free=True):
    """Random gamma / variance (gamma of both signs); beta and mean zero when bias_free."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.gamma.shape
            layer.gamma.assign(rng.uniform(-0.5, 1.5, shape).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, shape).astype(np.float32))
            if not bias_free:
                layer.beta.assign(rng.uniform(-0.5, 0.5, shape).astype(np.float32))
                layer.moving_mean.assign(rng.uniform(-0.5, 0.5, shape).astype(np.float32))


# ---------------------------------------------------------------- tiny bias-free blocks
def conv_block(x):
    return keras.layers.Conv2D(4, 3, padding="same", use_bias=False, activation="relu",
                               name="conv")(x)


def dense_block(x):
    x = keras.layers.Flatten(name="flatten")(x)
    return keras.layers.Dense(6, use_bias=False, activation="relu", name="dense")(x)


def maxpool_block(x):
    x = conv_block(x)
    return keras.layers.MaxPooling2D(2, name="maxpool")(x)


def avgpool_block(x):
    x = conv_block(x)
    x = keras.layers.AveragePooling2D(2, name="avgpool")(x)
    return keras.layers.GlobalAveragePooling2D(name="gap")(x)


def residual_block(x):
    x = conv_block(x)
    y = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv_b")(x)
    y = keras.layers.Activation("relu", name="relu_b")(y)
    x = keras.layers.Add(name="add")([x, y])
    return keras.layers.ReLU(name="relu_out")(x)


def batchnorm_block(x):
    x = keras.layers.ZeroPadding2D(1, name="pad")(x)
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="conv_bn")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Dropout(0.5, name="dropout")(x)
    return keras.layers.BatchNormalization(name="bn_alone")(x)  # not after a linear layer


def structural_block(x):
    a = conv_block(x)
    b = keras.layers.Conv2D(2, 1, use_bias=False, activation="relu", name="conv_1x1")(x)
    x = keras.layers.Concatenate(name="concat")([a, b])
    x = keras.layers.Cropping2D(1, name="crop")(x)
    x = keras.layers.UpSampling2D(2, name="upsample")(x)
    x = keras.layers.GlobalMaxPooling2D(name="gmp")(x)
    return keras.layers.Reshape((2, 3), name="reshape")(x)


BLOCKS = {
    "structural": structural_block,
    "conv": conv_block,
    "dense": dense_block,
    "maxpool": maxpool_block,
    "avgpool": avgpool_block,
    "residual": residual_block,
    "batchnorm": batchnorm_block,
}


def block_model(block, seed=0, size=SIZE, bias_free=True):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 1))
    x = BLOCKS[block](inputs)
    if len(x.shape) > 2:
        x = keras.layers.Flatten(name="head_flatten")(x)
    outputs = keras.layers.Dense(1, use_bias=not bias_free, name="hc_px_input")(x)
    model = keras.Model(inputs, outputs, name=f"block_{block}")
    randomise_batch_norms(model, seed, bias_free=bias_free)
    return model


def input_x_gradient(model, x, scale=1.0):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = model(x)[:, 0] * scale
    return (x * tape.gradient(value, x)).numpy()


@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_lrp_z_equals_input_x_gradient_and_conserves_layer_by_layer(block):
    model, x = block_model(block), images()
    plan = build_plan(model)
    result = propagate_relevance(plan, x, tf.fill([len(x)], 0.3), lrp_z_rules(),
                                 collect_layer_sums=True)
    expected = input_x_gradient(model, x, scale=0.3)
    np.testing.assert_allclose(result["relevance"].numpy(), expected, atol=1e-6)
    start = (model(x)[:, 0] * 0.3).numpy()
    np.testing.assert_allclose(result["start"].numpy(), start, rtol=1e-5)
    np.testing.assert_allclose(result["input_sum"].numpy(), start, rtol=1e-4, atol=1e-6)
    assert len(result["layer_sums"]) == len(plan.steps)
    branch_steps = {  # steps on parallel branches carry a share of the total
        "residual": {"conv_b", "relu_b"},
        "structural": {"conv", "conv.activation", "conv_1x1", "conv_1x1.activation"},
    }.get(block, set())
    for name, out_sum, in_sum in result["layer_sums"]:  # each step conserves locally
        np.testing.assert_allclose(in_sum.numpy(), out_sum.numpy(), rtol=1e-4, atol=1e-6,
                                   err_msg=name)
        if name not in branch_steps:  # every cut through the chain holds the total
            np.testing.assert_allclose(out_sum.numpy(), start, rtol=1e-4, atol=1e-6,
                                       err_msg=name)


def test_batchnorm_after_a_linear_layer_is_folded_and_a_lone_one_is_affine():
    plan = build_plan(block_model("batchnorm"))
    names = [step.name for step in plan.steps]
    assert "conv_bn+bn" in names and "bn" not in names
    lone = plan.steps[names.index("bn_alone")]
    assert lone.kind == LINEAR and lone.linear.family == "affine"


def test_lrp_z_through_the_registry_matches_input_x_gradient_for_every_target():
    model, x = block_model("residual", seed=3), images(4, seed=3)
    pixel_size = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    prediction_mm = model(x)[:, 0].numpy() * pixel_size
    reference = prediction_mm + np.array([1.0, -1.0, 2.0, -2.0], np.float32)  # both signs
    for target in ("hc_mm", "hc_px_input", "abs_error_mm"):
        lrp = fe.explain_batch(model, x, method="lrp_z", target=target,
                               pixel_size=pixel_size, reference=reference)
        ixg = fe.explain(model, x, method="input_x_gradient", target=target,
                         pixel_size=pixel_size, reference=reference)
        np.testing.assert_allclose(lrp.maps, ixg, atol=1e-6, err_msg=target)
        np.testing.assert_allclose(lrp.metadata["conservation_gap"], 0.0, atol=1e-5)
    # abs_error: the starting relevance carries the error's sign.
    sign = np.sign(prediction_mm - reference)
    np.testing.assert_allclose(lrp.metadata["relevance_start"], sign * prediction_mm, rtol=1e-5)


def test_a_bias_absorbs_exactly_its_share_of_relevance():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((4, 4, 1))
    dense = keras.layers.Dense(1, name="hc_px_input")
    model = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))
    dense.bias.assign([2.5])
    x, pixel_size = images(3, size=4), 0.2
    result = fe.explain_batch(model, x, method="lrp_z", pixel_size=pixel_size)
    np.testing.assert_allclose(result.metadata["conservation_gap"], -2.5 * pixel_size, atol=1e-5)
    np.testing.assert_allclose(result.metadata["relevance_start"],
                               model(x)[:, 0].numpy() * pixel_size, rtol=1e-5)


# ---------------------------------------------------------------- positive rules
def positive_output_model(seed=0):
    """Signed conv weights, positive last layer: the output is >= 0 for any input."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    y = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(5, activation="relu", name="dense")(x)
    last = keras.layers.Dense(1, name="hc_px_input")
    model = keras.Model(inputs, last(x))
    last.kernel.assign(tf.abs(last.kernel) + 0.1)
    for layer in model.layers:  # small biases of both signs
        if getattr(layer, "bias", None) is not None and layer is not last:
            layer.bias.assign(tf.random.uniform(layer.bias.shape, -0.05, 0.05, seed=seed))
    return model


@pytest.mark.parametrize("method", ["lrp_alpha1_beta0", "lrp_zplus", "deep_taylor"])
def test_positive_rules_give_non_negative_maps_for_a_positive_output(method):
    model, x = positive_output_model(), images(4, seed=5)
    assert np.all(model(x).numpy() > 0)
    maps = fe.explain(model, x, method=method, pixel_size=0.25)
    assert maps.min() >= -1e-7
    assert np.all(maps.reshape(len(x), -1).sum(axis=1) > 0)


def test_alpha1_beta0_and_zplus_conserve_without_biases():
    # (alpha2-beta1 does not: a unit whose contributions all have one sign passes on
    # alpha or -beta times its relevance; its gap is reported, not hidden.)
    model, x = block_model("residual", seed=2), images(3, seed=2)
    plan = build_plan(model)
    for rules in (lrp_alpha_beta_rules(1, 0), lrp_zplus_rules()):
        result = propagate_relevance(plan, x, tf.ones(len(x)), rules, collect_layer_sums=True)
        np.testing.assert_allclose(result["input_sum"].numpy(), result["start"].numpy(),
                                   rtol=1e-4, err_msg=rules.name)


def test_alpha2_beta1_differs_from_alpha1_beta0_and_keeps_negative_evidence():
    model, x = positive_output_model(), images(4, seed=5)
    assert np.all(model(x).numpy() > 0)
    a21 = fe.explain(model, x, method="lrp_alpha2_beta1", pixel_size=0.25)
    a10 = fe.explain(model, x, method="lrp_alpha1_beta0", pixel_size=0.25)
    assert a21.min() < 0 and not np.allclose(a21, a10)


def test_z_bounded_input_rule_conserves_and_bounds_are_checked():
    keras.utils.set_random_seed(7)
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Conv2D(3, 3, padding="same", use_bias=False, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    last = keras.layers.Dense(1, use_bias=False, name="hc_px_input")
    model = keras.Model(inputs, last(x))
    last.kernel.assign(tf.abs(last.kernel))
    x = images(3, seed=7)
    result = propagate_relevance(build_plan(model), x, tf.ones(3), deep_taylor_rules(),
                                 low=x.reshape(3, -1).min(1), high=x.reshape(3, -1).max(1))
    np.testing.assert_allclose(result["input_sum"].numpy(), result["start"].numpy(), rtol=1e-4)
    explained = fe.explain_batch(model, x, method="deep_taylor", pixel_size=1.0,
                                 low=-10.0, high=10.0)
    np.testing.assert_allclose(explained.metadata["conservation_gap"], 0.0, atol=1e-4)
    with pytest.raises(ValueError, match="bounds must hold every pixel"):
        fe.explain(model, x, method="deep_taylor", pixel_size=1.0, low=0.0)
    with pytest.raises(ValueError, match="needs input bounds|bounds low and high"):
        propagate_relevance(build_plan(model), x, tf.ones(3), deep_taylor_rules())


def test_fetalhc_adapter_and_output_affine_are_linear_steps():
    keras.utils.set_random_seed(8)
    inputs = keras.Input((SIZE, SIZE, 1))
    x = GrayscaleAdapter(channels=3, scale=2.0, offset=0.0, name="adapter")(inputs)
    x = keras.layers.ZeroPadding2D(1)(x)
    x = keras.layers.Conv2D(4, 3, use_bias=False, activation="relu")(x)
    x = keras.layers.GlobalMaxPooling2D()(x)
    z = keras.layers.Dense(1, use_bias=False, name="hc_z")(x)
    hc = OutputAffine(mean=50.0, std=4.0, name="hc_px_input")(z)
    ellipse = keras.layers.Dense(6, name="ellipse")(x)
    model = keras.Model(inputs, {"hc_px_input": hc, "ellipse": ellipse})
    x = images(3, seed=8)
    lrp = fe.explain_batch(model, x, method="lrp_z", pixel_size=0.5)
    ixg = fe.explain(model, x, method="input_x_gradient", pixel_size=0.5)
    np.testing.assert_allclose(lrp.maps, ixg, atol=1e-5)
    # the de-standardisation mean is a bias: its share (50 px * 0.5 mm/px) is the gap
    np.testing.assert_allclose(lrp.metadata["conservation_gap"], -25.0, atol=1e-4)
    kinds = [(step.name, step.kind) for step in get_plan(fe.hc_output_model(model)).steps]
    assert ("adapter.affine", "linear") in kinds and ("adapter.repeat", "structural") in kinds
    assert not any(name == "ellipse" for name, _ in kinds)  # auxiliary output pruned
    for method in ("deep_taylor",):
        maps = fe.explain(model, x, method=method, pixel_size=0.5)
        assert maps.shape == (3, SIZE, SIZE) and np.all(np.isfinite(maps))


# ---------------------------------------------------------------- modified gradients
def test_guided_backprop_equals_the_gradient_for_non_negative_weights_and_inputs():
    keras.utils.set_random_seed(9)
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Conv2D(3, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(3, 3, padding="same")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(4, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(1, name="hc_px_input")(x))
    for layer in model.layers:
        for weight in layer.weights:
            weight.assign(tf.abs(weight))
    x = images(3, seed=9, nonnegative=True)
    guided = fe.explain(model, x, method="guided_backprop", pixel_size=0.3)
    gradient = fe.explain(model, x, method="gradient", pixel_size=0.3)
    np.testing.assert_allclose(guided, gradient, rtol=1e-5, atol=1e-8)
    assert np.abs(gradient).max() > 0


def test_guided_backprop_and_deconvnet_differ_from_the_gradient_on_signed_weights():
    model, x = block_model("residual", seed=11), images(3, seed=11)
    gradient = fe.explain(model, x, method="gradient", pixel_size=0.3)
    guided = fe.explain(model, x, method="guided_backprop", pixel_size=0.3)
    deconv = fe.explain(model, x, method="deconvnet", pixel_size=0.3)
    assert not np.allclose(guided, gradient) and not np.allclose(deconv, gradient)
    # the model itself is untouched: its gradient is still the ordinary one
    assert model.get_layer("conv").activation is keras.activations.relu
    x_t = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x_t)
        value = model(x_t)[:, 0] * 0.3
    np.testing.assert_allclose(tape.gradient(value, x_t).numpy()[..., 0], gradient, atol=1e-7)


def test_deconvnet_on_one_linear_layer_gives_its_weights():
    keras.utils.set_random_seed(12)
    inputs = keras.Input((4, 4, 1))
    dense = keras.layers.Dense(1, activation="relu", name="hc_px_input")
    model = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))
    dense.bias.assign([-100.0])  # ReLU inactive: the gradient is zero, DeConvNet is not
    x = images(2, size=4, seed=12)
    weights = dense.kernel.numpy().reshape(4, 4)
    deconv = fe.explain(model, x, method="deconvnet", target="hc_px_input")
    np.testing.assert_allclose(deconv, np.broadcast_to(weights, deconv.shape), rtol=1e-6)
    gradient = fe.explain(model, x, method="gradient", target="hc_px_input")
    np.testing.assert_allclose(gradient, 0.0)


# ---------------------------------------------------------------- errors and plumbing
def test_unsupported_layers_raise_naming_layer_and_class():
    keras.utils.set_random_seed(13)
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Conv2D(2, 3, activation="tanh", name="tanh_conv")(inputs)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(1, name="hc_px_input")(x))
    for method in RELEVANCE_METHODS:
        with pytest.raises(ValueError, match=rf"{method}: no relevance rule for layer 'tanh_conv.activation' \(Conv2D\).*tanh"):
            fe.explain(model, images(), method=method, pixel_size=0.3)
    fe.explain(model, images(), method="guided_backprop", pixel_size=0.3)  # no ReLU: fine

    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.ReLU(threshold=0.5, name="thresholded")(inputs)  # not swappable
    x = keras.layers.LeakyReLU(name="leaky")(x)
    model = keras.Model(inputs, keras.layers.Dense(1, name="hc_px_input")(
        keras.layers.Flatten()(x)))
    plan = build_plan(model)
    assert [step.kind for step in plan.steps[:2]] == [OPAQUE, OPAQUE]
    with pytest.raises(ValueError, match=r"'thresholded' \(ReLU\)"):
        fe.explain(model, images(), method="lrp_z", pixel_size=0.3)
    with pytest.raises(ValueError, match=r"guided_backprop: layer 'thresholded'.*ReLU"):
        fe.explain(model, images(), method="guided_backprop", pixel_size=0.3)


def test_bad_options_raise():
    with pytest.raises(ValueError, match="epsilon"):
        fe.get_method("lrp_epsilon")(epsilon=-1.0)
    with pytest.raises(ValueError, match="conv_rule"):
        fe.get_method("lrp_composite")(conv_rule="nope")
    with pytest.raises(ValueError, match="unknown option"):
        fe.get_method("lrp_z")(epsilon=0.1)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_every_method_is_registered_batched_and_traced_once(method):
    model, x = block_model("batchnorm", seed=14, bias_free=False), images(5, seed=14)
    fe.clear_cache(model)
    for _ in range(2):
        result = fe.explain_batch(model, x, method=method, pixel_size=0.3, batch_size=2)
    assert result.maps.shape == (5, SIZE, SIZE) and result.maps.dtype == np.float32
    assert np.all(np.isfinite(result.maps)) and np.abs(result.maps).max() > 0
    counts = [count for key, count in fe.tracing_counts(model).items() if key[0] == method]
    assert counts == [1]  # batches of 2, 2, 1 images, twice: one trace
    if method in RELEVANCE_METHODS:
        gap = result.metadata["conservation_gap"]
        assert gap.shape == (5,) and np.all(np.isfinite(gap))
        np.testing.assert_allclose(result.metadata["relevance_sum"] - result.metadata[
            "relevance_start"], gap, atol=1e-5)
        assert result.info["rules"]["MaxPooling"] == "winner takes all"


@pytest.mark.parametrize("method", ["lrp_composite", "guided_backprop"])
def test_batch_size_does_not_change_maps(method):
    model, x = block_model("maxpool", seed=15, bias_free=False), images(5, seed=15)
    whole = fe.explain(model, x, method=method, pixel_size=0.3, batch_size=8)
    split = fe.explain(model, x, method=method, pixel_size=0.3, batch_size=2)
    np.testing.assert_allclose(split, whole, rtol=1e-5, atol=1e-7)

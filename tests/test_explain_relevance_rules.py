"""Relevance propagation through the layer types of MobileNetV2, EfficientNet, DenseNet,
Xception and InceptionV3, on tiny bias-free blocks with exact known answers.

- LRP-z equals Input x Gradient through DepthwiseConv2D (+ folded BN, ReLU6),
  SeparableConv2D (+ folded BN), Inception-style Concatenate branches and DenseNet-style
  pre-activation BatchNorm (BN -> ReLU -> Conv, an elementwise affine step), and every step
  conserves relevance.
- swish with the identity rule equals Input x Gradient with the swish's sigmoid held
  constant (swish(z) = z * sigma(z) as an elementwise rescaling); the squeeze-and-excitation
  gate is held constant: LRP-z equals Input x Gradient with the gate fixed, and no relevance
  enters the gate branch.
- Rescaling / Normalization before the first conv pass relevance to the image under the
  z^B rule with mapped bounds (conserving, non-negative shares).
- ReLU6 and swish under Guided Backprop and DeConvNet: hand-computed answers.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import fetalhc.explain as fe
from fetalhc.explain.relevance_graph import build_plan
from fetalhc.explain.relevance_ops import ACTIVATION, LINEAR, RELU
from fetalhc.explain.relevance_rules import deep_taylor_rules, lrp_z_rules, propagate_relevance
from fetalhc.models.layers import GrayscaleAdapter

SIZE = 8


def images(n=3, size=SIZE, channels=1, seed=0):
    return np.random.default_rng(seed).standard_normal((n, size, size, channels)).astype(
        np.float32)


def randomise_batch_norms(model, seed=0):
    """Random gamma (both signs) and variance; beta and moving mean 0 (bias-free)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.gamma.shape
            layer.gamma.assign(rng.uniform(-0.5, 1.5, shape).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, shape).astype(np.float32))


def conv(filters, kernel, name, activation=None, **kwargs):
    return keras.layers.Conv2D(filters, kernel, padding="same", use_bias=False,
                               activation=activation, name=name, **kwargs)


# ---------------------------------------------------------------- tiny bias-free blocks
def depthwise_block(x):  # MobileNetV2 inverted residual
    x = conv(3, 3, "stem", strides=1)(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(6.0, name="stem_relu6")(x)
    y = conv(6, 1, "expand")(x)
    y = keras.layers.ReLU(6.0, name="expand_relu6")(y)
    y = keras.layers.ZeroPadding2D(1, name="pad")(y)
    y = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False, name="dw")(y)
    y = keras.layers.BatchNormalization(name="dw_bn")(y)
    y = keras.layers.ReLU(6.0, name="dw_relu6")(y)
    y = conv(3, 1, "project")(y)
    x = keras.layers.Add(name="add")([x, y])
    return keras.layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False,
                                        activation="relu6", name="dw_act")(x)


def separable_block(x):  # Xception entry flow
    x = conv(4, 3, "stem", activation="relu")(x)
    y = keras.layers.SeparableConv2D(6, 3, padding="same", use_bias=False, depth_multiplier=2,
                                     name="sep1")(x)
    y = keras.layers.BatchNormalization(name="sep1_bn")(y)
    y = keras.layers.Activation("relu", name="sep1_act")(y)
    y = keras.layers.SeparableConv2D(6, 3, padding="same", use_bias=False, name="sep2")(y)
    y = keras.layers.BatchNormalization(name="sep2_bn")(y)
    y = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool")(y)
    shortcut = conv(6, 1, "shortcut", strides=2)(x)
    x = keras.layers.Add(name="add")([y, shortcut])
    return keras.layers.SeparableConv2D(4, 3, strides=2, padding="same", use_bias=False,
                                        activation="relu", name="sep3")(x)


def concatenate_block(x):  # InceptionV3 module
    x = conv(4, 3, "stem", activation="relu")(x)
    b1 = conv(2, 1, "b1x1", activation="relu")(x)
    b3 = conv(3, 1, "b3_reduce", activation="relu")(x)
    b3 = conv(3, 3, "b3x3", activation="relu")(b3)
    bp = keras.layers.AveragePooling2D(3, strides=1, padding="same", name="b_avg")(x)
    bp = conv(2, 1, "b_pool_proj", activation="relu")(bp)
    bm = keras.layers.MaxPooling2D(3, strides=1, padding="same", name="b_max")(x)
    return keras.layers.Concatenate(name="mixed")([b1, b3, bp, bm])


def preactivation_block(x):  # DenseNet conv_block: BN -> ReLU -> Conv, then concatenate
    x = conv(4, 3, "stem")(x)
    for index in (1, 2):
        y = keras.layers.BatchNormalization(name=f"pre_bn{index}")(x)  # cannot be folded
        y = keras.layers.Activation("relu", name=f"pre_relu{index}")(y)
        y = conv(4, 1, f"bottleneck{index}")(y)
        y = keras.layers.BatchNormalization(name=f"mid_bn{index}")(y)  # folded
        y = keras.layers.Activation("relu", name=f"mid_relu{index}")(y)
        y = conv(2, 3, f"grow{index}")(y)
        x = keras.layers.Concatenate(name=f"concat{index}")([x, y])
    x = keras.layers.BatchNormalization(name="final_bn")(x)
    return keras.layers.Activation("relu", name="final_relu")(x)


BLOCKS = {
    "depthwise": depthwise_block,
    "separable": separable_block,
    "concatenate": concatenate_block,
    "preactivation": preactivation_block,
}


def block_model(block, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Flatten(name="head_flatten")(BLOCKS[block](inputs))
    outputs = keras.layers.Dense(1, use_bias=False, name="hc_px_input")(x)
    model = keras.Model(inputs, outputs, name=f"block_{block}")
    randomise_batch_norms(model, seed)
    return model


def input_x_gradient(function, x):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = function(x)
    return (x * tape.gradient(value, x)).numpy()


def assert_conserved_step_by_step(result, start):
    np.testing.assert_allclose(result["input_sum"].numpy(), start, rtol=1e-4, atol=1e-6)
    for name, out_sum, in_sum in result["layer_sums"]:
        np.testing.assert_allclose(in_sum.numpy(), out_sum.numpy(), rtol=1e-4, atol=1e-6,
                                   err_msg=name)


@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_lrp_z_equals_input_x_gradient_and_conserves_layer_by_layer(block):
    model, x = block_model(block), images()
    plan = build_plan(model)
    result = propagate_relevance(plan, x, tf.fill([len(x)], 0.3), lrp_z_rules(),
                                 collect_layer_sums=True)
    expected = input_x_gradient(lambda t: model(t)[:, 0] * 0.3, x)
    scale = np.abs(expected).max()
    assert scale > 0
    np.testing.assert_allclose(result["relevance"].numpy(), expected, atol=1e-5 * scale)
    start = (model(x)[:, 0] * 0.3).numpy()
    np.testing.assert_allclose(result["start"].numpy(), start, rtol=1e-5, atol=1e-7)
    assert len(result["layer_sums"]) == len(plan.steps)
    assert_conserved_step_by_step(result, start)


def test_relu6_units_stay_below_the_clip_in_the_depthwise_block():
    # LRP-z = Input x Gradient needs the ReLU6 units unsaturated (a saturated unit has zero
    # gradient but still passes relevance): check the block's test inputs really are.
    model, x = block_model("depthwise"), images()
    for name in ("stem_relu6", "expand_relu6", "dw_relu6"):
        pre = keras.Model(model.input, model.get_layer(name).input)(x).numpy()
        assert pre.max() < 6.0 and pre.max() > 0, name


def test_plans_split_and_fold_the_new_layer_types():
    kinds = {s.name: s for s in build_plan(block_model("depthwise")).steps}
    assert kinds["dw+dw_bn"].kind == LINEAR and kinds["dw+dw_bn"].linear.family == "conv"
    assert kinds["dw_relu6"].kind == RELU and kinds["dw_relu6"].max_value == 6.0
    assert kinds["dw_act.activation"].kind == RELU and kinds["dw_act.activation"].max_value == 6
    names = [s.name for s in build_plan(block_model("separable")).steps]
    assert names[1:4] == ["stem.activation", "sep1.depthwise", "sep1+sep1_bn.pointwise"]
    steps = {s.name: s for s in build_plan(block_model("preactivation")).steps}
    assert steps["pre_bn1"].kind == LINEAR and steps["pre_bn1"].linear.family == "affine"
    assert "bottleneck1+mid_bn1" in steps and "mid_bn1" not in steps


def test_folded_depthwise_and_separable_with_biases_match_the_model():
    # BN folding into depthwise kernels (per channel x multiplier) and into the pointwise
    # part: with random biases, BN offsets and statistics the replay equals the model.
    for block in ("depthwise", "separable"):
        model, x = block_model(block, seed=4), images(seed=4)
        rng = np.random.default_rng(4)
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.beta.assign(rng.uniform(-0.5, 0.5, layer.beta.shape).astype(np.float32))
                layer.moving_mean.assign(rng.uniform(-0.5, 0.5, layer.beta.shape).astype(
                    np.float32))
        result = propagate_relevance(build_plan(model), x, tf.ones(3), lrp_z_rules())
        np.testing.assert_allclose(result["output"].numpy(), model(x)[:, 0].numpy(),
                                   rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- EfficientNet parts
def swish_se_model(seed=0):
    """conv -> swish -> squeeze-and-excitation gate -> swish conv -> dense (bias-free)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 1))
    x = conv(4, 3, "conv1")(inputs)
    x = keras.layers.Activation("swish", name="act1")(x)
    se = keras.layers.GlobalAveragePooling2D(name="se_squeeze")(x)
    se = keras.layers.Reshape((1, 1, 4), name="se_reshape")(se)
    se = keras.layers.Conv2D(2, 1, activation="silu", name="se_reduce")(se)
    se = keras.layers.Conv2D(4, 1, activation="sigmoid", name="se_expand")(se)
    x = keras.layers.Multiply(name="se_excite")([x, se])
    x = keras.layers.Conv2D(3, 1, use_bias=False, activation="swish", name="conv2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(1, use_bias=False, name="hc_px_input")(x)
    return keras.Model(inputs, outputs, name="swish_se")


def test_swish_identity_rule_and_constant_gate_equal_a_frozen_input_x_gradient():
    model, x = swish_se_model(), images(seed=1)
    plan = build_plan(model)
    steps = {s.name: s for s in plan.steps}
    assert steps["act1"].kind == ACTIVATION and steps["act1"].activation == "silu"
    assert steps["se_excite"].linear.relevant_inputs == 1
    result = propagate_relevance(plan, x, tf.ones(3), lrp_z_rules(), collect_layer_sums=True)

    # Known answer: every swish(z) = z * sigma(z) with sigma(z) held constant, and the gate
    # held constant, makes the bias-free network linear in x: LRP-z = x * d/dx of that.
    layer = model.get_layer
    gate = keras.Model(model.input, layer("se_expand").output)(x)

    def frozen(t):
        z1 = layer("conv1")(t)
        a1 = z1 * tf.stop_gradient(tf.sigmoid(z1))
        z2 = layer("conv2").convolution_op(a1 * gate, layer("conv2").kernel)
        a2 = z2 * tf.stop_gradient(tf.sigmoid(z2))
        return layer("hc_px_input")(layer("flatten")(a2))[:, 0]

    np.testing.assert_allclose(frozen(tf.constant(x)).numpy(), model(x)[:, 0].numpy(),
                               rtol=1e-5)
    expected = input_x_gradient(frozen, x)
    np.testing.assert_allclose(result["relevance"].numpy(), expected,
                               atol=1e-5 * np.abs(expected).max())
    assert_conserved_step_by_step(result, model(x)[:, 0].numpy())
    reached = {name for name, _, _ in result["layer_sums"]}
    assert "se_excite" in reached and "act1" in reached
    assert not reached & {"se_squeeze", "se_reshape", "se_reduce", "se_expand",
                          "se_reduce.activation", "se_expand.activation"}
    # ... and the plain gradient differs (the approximation is real, not a no-op)
    assert not np.allclose(expected, input_x_gradient(lambda t: model(t)[:, 0], x), atol=1e-4)


def test_every_relevance_method_runs_on_the_swish_se_model():
    model, x = swish_se_model(seed=2), images(seed=2)
    for method in ("lrp_epsilon", "lrp_alpha2_beta1", "lrp_alpha1_beta0", "lrp_zplus",
                   "lrp_composite", "deep_taylor", "guided_backprop", "deconvnet"):
        maps = fe.explain(model, x, method=method, pixel_size=0.3)
        assert maps.shape == (3, SIZE, SIZE) and np.all(np.isfinite(maps)), method
        assert np.abs(maps).max() > 0, method


def test_rescaling_and_normalization_before_the_first_conv_fold_into_the_z_b_rule():
    keras.utils.set_random_seed(5)
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Rescaling(scale=-2.0, offset=1.0, name="rescale")(inputs)  # flips bounds
    x = keras.layers.Normalization(mean=0.5, variance=4.0, name="normalize")(x)
    x = keras.layers.ZeroPadding2D(1, name="pad")(x)
    x = keras.layers.Conv2D(4, 3, use_bias=False, activation="relu", name="first")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    last = keras.layers.Dense(1, use_bias=False, name="hc_px_input")
    model = keras.Model(inputs, last(x))
    last.kernel.assign(tf.abs(last.kernel) + 0.1)  # positive output
    x = images(3, seed=5)
    steps = {s.name: s for s in build_plan(model).steps}
    assert steps["normalize"].kind == LINEAR and steps["normalize"].linear.family == "affine"
    flat = x.reshape(3, -1)
    result = propagate_relevance(build_plan(model), x, tf.ones(3), deep_taylor_rules(),
                                 low=flat.min(1), high=flat.max(1), collect_layer_sums=True)
    np.testing.assert_allclose(result["output"].numpy(), model(x)[:, 0].numpy(), rtol=1e-5)
    # the affine offsets are pass-through (part of the image's domain), so z^B conserves
    np.testing.assert_allclose(result["input_sum"].numpy(), result["start"].numpy(), rtol=1e-4)
    assert result["relevance"].numpy().min() >= -1e-7  # z^B shares of R > 0 are >= 0
    explained = fe.explain_batch(model, x, method="deep_taylor", pixel_size=0.5)
    np.testing.assert_allclose(explained.metadata["conservation_gap"], 0.0, atol=1e-4)
    np.testing.assert_allclose(explained.maps, result["relevance"].numpy()[..., 0] * 0.5,
                               rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------- modified gradients
def one_hidden_layer(activation):
    """x (2x2) -> Dense(4) -> activation -> Dense(1) with chosen pre-activations on one image."""
    inputs = keras.Input((2, 2, 1))
    flat = keras.layers.Flatten()(inputs)
    hidden = keras.layers.Dense(4, name="hidden")
    act = activation(hidden(flat))
    last = keras.layers.Dense(1, use_bias=False, name="hc_px_input")
    model = keras.Model(inputs, last(act))
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 2, 2, 1)).astype(np.float32)
    w1 = rng.standard_normal((4, 4)).astype(np.float32)
    z = np.array([3.0, 10.0, -3.0, 2.0], np.float32)  # active, saturated (ReLU6), off, active
    hidden.kernel.assign(w1)
    hidden.bias.assign(z - x.reshape(4) @ w1)
    w2 = np.array([[2.0], [3.0], [5.0], [-1.0]], np.float32)
    last.kernel.assign(w2)
    return model, x, w1, w2[:, 0], z


@pytest.mark.parametrize("relu6", [
    lambda t: keras.layers.ReLU(max_value=6.0)(t),
    lambda t: keras.layers.Activation("relu6")(t),
], ids=["ReLU_max_value", "Activation_relu6"])
def test_relu6_guided_backprop_and_deconvnet_known_answers(relu6):
    model, x, w1, w2, z = one_hidden_layer(relu6)
    guided = fe.explain(model, x, method="guided_backprop", target="hc_px_input")
    deconv = fe.explain(model, x, method="deconvnet", target="hc_px_input")
    gradient = fe.explain(model, x, method="gradient", target="hc_px_input")
    # gradient: units 0 and 3 (0 < z < 6); guided: only unit 0 (unit 3 has a negative
    # signal); deconvnet: every positive signal (units 0, 1, 2) whatever z was.
    np.testing.assert_allclose(gradient[0].ravel(), w1 @ (w2 * [1, 0, 0, 1]), rtol=1e-5)
    np.testing.assert_allclose(guided[0].ravel(), w1 @ (w2 * [1, 0, 0, 0]), rtol=1e-5)
    np.testing.assert_allclose(deconv[0].ravel(), w1 @ (w2 * [1, 1, 1, 0]), rtol=1e-5)


def test_swish_guided_backprop_and_deconvnet_known_answers():
    model, x, w1, w2, z = one_hidden_layer(keras.layers.Activation("swish"))
    sigma = 1.0 / (1.0 + np.exp(-z))
    slope = sigma * (1.0 + z * (1.0 - sigma))  # silu'(z); negative at z = -3
    guided = fe.explain(model, x, method="guided_backprop", target="hc_px_input")
    deconv = fe.explain(model, x, method="deconvnet", target="hc_px_input")
    gradient = fe.explain(model, x, method="gradient", target="hc_px_input")
    np.testing.assert_allclose(gradient[0].ravel(), w1 @ (w2 * slope), rtol=1e-4)
    np.testing.assert_allclose(guided[0].ravel(), w1 @ (w2 * slope * (w2 > 0)), rtol=1e-4)
    np.testing.assert_allclose(deconv[0].ravel(), w1 @ np.maximum(w2, 0.0), rtol=1e-4)


def test_the_se_gate_keeps_its_ordinary_gradient_in_guided_backprop():
    # Without any ReLU/swish on the path the modified backward pass equals the gradient:
    # a sigmoid gate is not a rectifier and is not swapped.
    keras.utils.set_random_seed(7)
    inputs = keras.Input((SIZE, SIZE, 1))
    x = conv(3, 3, "conv")(inputs)
    se = keras.layers.GlobalAveragePooling2D(keepdims=True, name="squeeze")(x)
    se = keras.layers.Conv2D(3, 1, activation="sigmoid", name="gate")(se)
    x = keras.layers.Multiply(name="excite")([se, x])  # gate first: found by broadcasting
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(1, name="hc_px_input")(x))
    x = images(2, seed=7)
    steps = {s.name: s for s in build_plan(model).steps}
    assert steps["excite"].inputs[0] == id(model.get_layer("conv").output)
    guided = fe.explain(model, x, method="guided_backprop", pixel_size=0.3)
    gradient = fe.explain(model, x, method="gradient", pixel_size=0.3)
    np.testing.assert_allclose(guided, gradient, rtol=1e-5, atol=1e-7)


def test_unsupported_multiply_and_activation_still_raise():
    inputs = keras.Input((SIZE, SIZE, 1))
    a = conv(2, 3, "a")(inputs)
    b = conv(2, 3, "b")(inputs)
    x = keras.layers.Multiply(name="product")([a, b])  # no broadcast gate: not linear
    model = keras.Model(inputs, keras.layers.Dense(1, name="hc_px_input")(
        keras.layers.Flatten()(x)))
    with pytest.raises(ValueError, match=r"'product' \(Multiply\).*gate"):
        fe.explain(model, images(), method="lrp_z", pixel_size=0.3)
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Activation("gelu", name="gelu")(conv(2, 3, "c")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1, name="hc_px_input")(
        keras.layers.Flatten()(x)))
    with pytest.raises(ValueError, match=r"'gelu' \(Activation\).*gelu"):
        fe.explain(model, images(), method="deep_taylor", pixel_size=0.3)


def test_preprocessing_offsets_pass_relevance_through_in_every_rule_set():
    # GrayscaleAdapter (scale 0.45, offset -0.10, the 'tf' mode of MobileNetV2 / Xception /
    # InceptionV3) and Rescaling before the first conv: relevance passes through them, so
    # LRP-z is Input x Gradient taken at the adapted image: (x - x_ref) * gradient with
    # x_ref = -offset / scale, and relevance is conserved (no z rule dividing by 0.45 x - 0.1).
    keras.utils.set_random_seed(8)
    inputs = keras.Input((SIZE, SIZE, 1))
    x = GrayscaleAdapter(channels=1, scale=0.45, offset=-0.10, name="adapter")(inputs)
    x = keras.layers.Rescaling(scale=2.0, offset=0.5, name="rescale")(x)
    x = conv(4, 3, "first", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, keras.layers.Dense(1, use_bias=False, name="hc_px_input")(x))
    x = images(3, seed=8)
    x[0, 0, 0, 0] = 0.10 / 0.45  # the adapter's output is exactly 0 here
    scale, offset = 0.45 * 2.0, -0.10 * 2.0 + 0.5  # the whole pre-processing a = k x + c
    x_ref = -offset / scale
    gradient = input_x_gradient(lambda t: model(t)[:, 0], x) / np.where(x == 0, 1, x)
    result = propagate_relevance(build_plan(model), x, tf.ones(3), lrp_z_rules())
    np.testing.assert_allclose(result["relevance"].numpy(), (x - x_ref) * gradient,
                               atol=1e-5 * np.abs(gradient).max())
    np.testing.assert_allclose(result["input_sum"].numpy(), result["start"].numpy(), rtol=1e-4)
    for method in ("lrp_epsilon", "lrp_alpha1_beta0", "lrp_zplus", "deep_taylor"):
        explained = fe.explain_batch(model, x, method=method, pixel_size=1.0)
        start = explained.metadata["relevance_start"]
        assert np.all(np.isfinite(explained.maps)), method
        gap = explained.metadata["conservation_gap"]
        if method != "lrp_epsilon":  # (epsilon absorbs a little by design)
            np.testing.assert_allclose(gap, 0.0, atol=1e-4 * np.abs(start).max(), err_msg=method)


def test_a_sigmoid_gate_is_found_when_both_operands_have_the_same_shape():
    # EfficientNet at small inputs: the feature map is 1x1, so the gate is not broadcast;
    # it is recognised as the (reshaped) sigmoid output.
    keras.utils.set_random_seed(9)
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.GlobalAveragePooling2D(keepdims=True, name="squeeze_all")(
        conv(3, 3, "conv")(inputs))
    se = keras.layers.Conv2D(3, 1, activation="sigmoid", name="gate")(x)
    se = keras.layers.Reshape((1, 1, 3), name="gate_reshape")(se)
    x = keras.layers.Multiply(name="excite")([se, x])
    model = keras.Model(inputs, keras.layers.Dense(1, use_bias=False, name="hc_px_input")(
        keras.layers.Flatten()(x)))
    steps = {s.name: s for s in build_plan(model).steps}
    assert steps["excite"].inputs == (id(model.get_layer("squeeze_all").output),
                                      id(model.get_layer("gate_reshape").output))
    result = propagate_relevance(build_plan(model), images(), tf.ones(3), lrp_z_rules())
    np.testing.assert_allclose(result["input_sum"].numpy(), result["start"].numpy(), rtol=1e-4)

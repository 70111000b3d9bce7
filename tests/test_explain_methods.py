"""Explanation methods: analytic known answers and a common test over the whole registry."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from explain_models import gap_model, linear_model, random_images, tiny_cnn, tiny_residual

import fetalhc.explain as fe
from fetalhc.explain.integrated_gradients import (
    DEFAULT_RULE,
    DEFAULT_STEPS,
    RULES,
    gaussian_blur,
    make_baseline,
    quadrature,
    refinement_levels,
)

PIXEL_SIZE = 0.25


@pytest.fixture(scope="module")
def linear():
    model = linear_model(size=16)
    weights = model.get_layer("hc_px_input").kernel.numpy().reshape(16, 16)
    return model, weights, random_images(4, 16, seed=3)


# ------------------------------------------------------------------ analytic, linear model
def test_gradient_is_the_weights(linear):
    model, weights, x = linear
    maps = fe.explain(model, x, method="gradient", pixel_size=PIXEL_SIZE)
    np.testing.assert_allclose(maps, np.broadcast_to(PIXEL_SIZE * weights, maps.shape), atol=1e-7)


def test_input_x_gradient_is_w_times_x(linear):
    model, weights, x = linear
    maps = fe.explain(model, x, method="input_x_gradient", pixel_size=PIXEL_SIZE)
    np.testing.assert_allclose(maps, PIXEL_SIZE * weights * x[..., 0], atol=1e-6)


def test_channels_are_summed():
    model = linear_model(size=8, channels=3)
    weights = model.get_layer("hc_px_input").kernel.numpy().reshape(8, 8, 3)
    x = random_images(2, 8, channels=3)
    maps = fe.explain(model, x, method="input_x_gradient", target="hc_px_input")
    np.testing.assert_allclose(maps, (weights * x).sum(-1), atol=1e-6)


@pytest.mark.parametrize("baseline", ["zeros", "blur", "noise", 0.5])
@pytest.mark.parametrize("rule", RULES)
def test_integrated_gradients_is_w_times_x_minus_baseline(linear, baseline, rule):
    model, weights, x = linear
    result = fe.explain_batch(model, x, method="integrated_gradients", pixel_size=PIXEL_SIZE,
                              baseline=baseline, rule=rule, steps=3)
    b = make_baseline(x, baseline, 5.0, 0.3, 0)
    np.testing.assert_allclose(result.maps, PIXEL_SIZE * weights * (x - b)[..., 0], atol=1e-5)
    assert np.all(result.metadata["completeness_gap"] < 1e-4)
    assert result.info["baseline"] == baseline and result.units == "mm"


def test_integrated_gradients_array_baseline(linear):
    model, weights, x = linear
    b = np.full((16, 16, 1), -1.0, np.float32)
    maps = fe.explain(model, x, method="integrated_gradients", pixel_size=PIXEL_SIZE, baseline=b)
    np.testing.assert_allclose(maps, PIXEL_SIZE * weights * (x - b)[..., 0], atol=1e-5)
    with pytest.raises(ValueError, match="does not fit"):
        fe.explain(model, x, method="integrated_gradients", pixel_size=PIXEL_SIZE,
                   baseline=np.zeros((4, 4, 1), np.float32))


def test_quadrature_rules():
    for rule in RULES:
        nodes, weights = quadrature(rule, 5)
        assert nodes.min() >= 0 and nodes.max() <= 1
        assert weights.sum() == pytest.approx(1.0, abs=1e-6)
    nodes, weights = quadrature("gauss_legendre", 4)  # exact up to degree 7
    assert float(np.sum(weights * nodes.astype(np.float64) ** 7)) == pytest.approx(1 / 8, rel=1e-5)
    nodes, weights = quadrature("trapezoid", 3)
    np.testing.assert_allclose(nodes, [0, 0.5, 1]) and np.testing.assert_allclose(weights, [0.25, 0.5, 0.25])
    with pytest.raises(ValueError, match="steps >= 2"):
        quadrature("trapezoid", 1)


def test_blur_baseline_keeps_constants_and_smooths():
    constant = np.full((1, 12, 12, 1), 2.0, np.float32)
    np.testing.assert_allclose(gaussian_blur(constant, 2.0), constant, atol=1e-6)
    noise = random_images(1, 32, seed=1)
    assert gaussian_blur(noise, 3.0).std() < 0.6 * noise.std()


def test_smoothgrad_on_a_linear_model_is_the_gradient(linear):
    model, weights, x = linear
    maps = fe.explain(model, x, method="smoothgrad", pixel_size=PIXEL_SIZE, n=4)
    np.testing.assert_allclose(maps, np.broadcast_to(PIXEL_SIZE * weights, maps.shape), atol=1e-6)


def test_smoothgrad_noise_is_seeded_and_relative_to_the_range():
    model, x = gap_model(size=16), random_images(2, 16)
    first = fe.explain(model, x, method="smoothgrad", pixel_size=PIXEL_SIZE, n=3, seed=1)
    again = fe.explain(model, x, method="smoothgrad", pixel_size=PIXEL_SIZE, n=3, seed=1)
    other = fe.explain(model, x, method="smoothgrad", pixel_size=PIXEL_SIZE, n=3, seed=2)
    plain = fe.explain(model, x, method="gradient", pixel_size=PIXEL_SIZE)
    no_noise = fe.explain(model, x, method="smoothgrad", pixel_size=PIXEL_SIZE, n=3, noise_level=0.0)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    np.testing.assert_allclose(no_noise, plain, atol=1e-6)


@pytest.mark.parametrize("patch, stride", [(4, 4), (4, 2), (5, 3)])
def test_occlusion_on_a_linear_model(linear, patch, stride):
    """Each patch's delta = f(x) - f(occluded) = sum over the patch of w * x (fill 0), i.e.
    minus the change of the target; a pixel gets the mean delta of its covering patches."""
    model, weights, x = linear
    maps = fe.explain(model, x, method="occlusion", pixel_size=PIXEL_SIZE, patch=patch,
                      stride=stride, chunk_size=7)
    contribution = PIXEL_SIZE * weights * x[..., 0]
    starts = sorted(set(range(0, 16 - patch + 1, stride)) | {16 - patch})
    total, count = np.zeros_like(contribution), np.zeros((16, 16))
    for r in starts:
        for c in starts:
            delta = contribution[:, r:r + patch, c:c + patch].sum(axis=(1, 2))
            total[:, r:r + patch, c:c + patch] += delta[:, None, None]
            count[r:r + patch, c:c + patch] += 1
    np.testing.assert_allclose(maps, total / count, atol=1e-5)


def test_occlusion_fill_value_and_patch_too_large(linear):
    model, weights, x = linear
    maps = fe.explain(model, x, method="occlusion", pixel_size=PIXEL_SIZE, patch=16, stride=16, fill=1.0)
    expected = (PIXEL_SIZE * weights * (x[..., 0] - 1.0)).sum(axis=(1, 2))
    np.testing.assert_allclose(maps, np.broadcast_to(expected[:, None, None], maps.shape), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="larger than the input"):
        fe.explain(model, x, method="occlusion", pixel_size=PIXEL_SIZE, patch=17)


# ------------------------------------------------------------------ Grad-CAM
def test_gradcam_matches_hand_computation():
    """F = sum_k v_k mean_ij A_ijk + c, so dF/dA_ijk = v_k / (h w) and cam = sum_k v_k/(hw) A_k."""
    model, x = gap_model(size=16, filters=3), random_images(3, 16, seed=5)
    model.get_layer("hc_px_input").kernel.assign([[1.0], [-2.0], [0.5]])  # mixed signs
    activations = model.get_layer("conv")(x).numpy()
    dense = model.get_layer("hc_px_input").kernel.numpy()[:, 0]
    expected = PIXEL_SIZE * np.einsum("k,bijk->bij", dense / (16 * 16), activations)
    result = fe.explain_batch(model, x, method="gradcam", pixel_size=PIXEL_SIZE, layer_name="conv")
    np.testing.assert_allclose(result.maps, expected, atol=1e-7)
    assert result.info["layer_name"] == "conv"
    assert (result.maps < 0).any() and (result.maps > 0).any()  # signed by default
    clipped = fe.explain(model, x, method="gradcam", pixel_size=PIXEL_SIZE, relu=True)
    np.testing.assert_allclose(clipped, np.maximum(expected, 0), atol=1e-7)


def test_gradcam_pp_matches_hand_computation():
    model, x = gap_model(size=16, filters=3, seed=2), random_images(2, 16, seed=6)
    activations = model.get_layer("conv")(x).numpy().astype(np.float64)
    g = PIXEL_SIZE * model.get_layer("hc_px_input").kernel.numpy()[:, 0].astype(np.float64) / 256
    denominator = 2 * g**2 + activations.sum(axis=(1, 2), keepdims=True) * g**3
    alpha = np.where(denominator != 0, g**2 / np.where(denominator != 0, denominator, 1), 0)
    weights = np.broadcast_to(alpha * g, activations.shape).sum(axis=(1, 2))
    expected = np.einsum("bk,bijk->bij", weights, activations)
    maps = fe.explain(model, x, method="gradcam_pp", pixel_size=PIXEL_SIZE)
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-9)


def test_gradcam_upsamples_a_coarse_layer():
    model, x = tiny_cnn(size=32), random_images(2, 32)
    result = fe.explain_batch(model, x, method="gradcam", pixel_size=PIXEL_SIZE)
    assert result.info["layer_name"] == "top_conv"  # the last 4-D layer
    coarse = fe.explain(model, x, method="gradcam", pixel_size=PIXEL_SIZE, layer_name="block2_pool")
    assert coarse.shape == (2, 32, 32)


def test_gradcam_layer_errors_list_candidates():
    model, x = tiny_cnn(size=32), random_images(1, 32)
    with pytest.raises(ValueError, match="'nope' does not exist.*top_conv"):
        fe.explain(model, x, method="gradcam", pixel_size=PIXEL_SIZE, layer_name="nope")
    with pytest.raises(ValueError, match="'dense' is not 4-D.*block1_conv"):
        fe.explain(model, x, method="gradcam_pp", pixel_size=PIXEL_SIZE, layer_name="dense")


def test_gradcam_default_layer_is_the_recorded_backbone_layer():
    models = pytest.importorskip("fetalhc.models")
    model = models.build_model("small_cnn", (32, 32, 1))
    expected = models.gradcam_layer_name(model)
    result = fe.explain_batch(model, random_images(1, 32), method="gradcam", pixel_size=PIXEL_SIZE)
    assert result.info["layer_name"] == expected


# ------------------------------------------------------------------ IG completeness
def test_integrated_gradients_default_is_complete_on_a_relu_cnn():
    model, x = tiny_cnn(size=32, seed=4), random_images(6, 32, seed=7)
    result = fe.explain_batch(model, x, method="integrated_gradients", pixel_size=PIXEL_SIZE)
    assert result.info["rule"] == DEFAULT_RULE and result.info["steps"] == DEFAULT_STEPS
    relative = result.metadata["completeness_gap_relative"]
    assert np.all(relative < 0.01), (relative, result.metadata["steps"])
    difference = result.metadata["target_value"] - result.metadata["baseline_target"]
    np.testing.assert_allclose(result.maps.sum(axis=(1, 2)), difference, rtol=0.01)


def test_integrated_gradients_refines_images_over_tolerance():
    model, x = tiny_cnn(size=32, seed=4), random_images(4, 32, seed=8)
    coarse = fe.explain_batch(model, x, method="integrated_gradients", pixel_size=PIXEL_SIZE,
                              steps=2, tolerance=None)
    assert np.all(coarse.metadata["steps"] == 2)
    assert coarse.metadata["completeness_gap_relative"].max() > 0.01  # 2 points are too few
    refined = fe.explain_batch(model, x, method="integrated_gradients", pixel_size=PIXEL_SIZE,
                               steps=2, tolerance=0.01, max_steps=64)
    steps, relative = refined.metadata["steps"], refined.metadata["completeness_gap_relative"]
    assert steps.max() > 2 and set(steps) <= {2, 6, 18, 54}  # midpoint: 3x the points
    assert refined.info["refinement_points"] == [2, 6, 18, 54]
    assert np.all((relative <= 0.01) | (steps == 54)), (relative, steps)
    done = steps == 2  # images not refined keep their coarse maps exactly
    np.testing.assert_array_equal(refined.maps[done], coarse.maps[done])
    # a refined image's map is the fixed rule at its final number of points (nested rule)
    count = steps.max()
    fixed = fe.explain(model, x, method="integrated_gradients", pixel_size=PIXEL_SIZE,
                       steps=int(count), tolerance=None)
    np.testing.assert_allclose(refined.maps[steps == count], fixed[steps == count], rtol=1e-4, atol=1e-6)
    assert set(fe.tracing_counts(model).values()) == {1}  # refinement is inside one trace
    with pytest.raises(ValueError, match="tolerance must be None or a number > 0"):
        fe.explain(model, x, method="integrated_gradients", pixel_size=PIXEL_SIZE, tolerance=0)


@pytest.mark.parametrize("rule", RULES)
def test_integrated_gradients_refinement_reuses_nested_nodes(rule):
    """Every level's new nodes plus the earlier ones (weights scaled by keep) are the rule
    at the level's number of points; forcing every image to the last level reproduces the
    fixed rule there."""
    steps = 3
    levels = refinement_levels(rule, steps, 30, tolerance=0.01)
    counts = [level["points"] for level in levels]
    assert counts == ([3, 9, 27] if rule == "riemann_middle" else [3, 5, 9, 17] if rule == "trapezoid"
                      else [3, 6, 12, 24])
    nodes, weights = np.zeros(0), np.zeros(0)
    for level in levels:
        if level["keep"] == 0:  # not nested: the level replaces the earlier nodes
            nodes, weights = np.zeros(0), np.zeros(0)
        nodes = np.concatenate([nodes, level["nodes"]])
        weights = np.concatenate([weights * level["keep"], level["weights"]])
        expected_nodes, expected_weights = quadrature(rule, level["points"])
        order = np.argsort(nodes)
        np.testing.assert_allclose(nodes[order], expected_nodes, atol=1e-6)
        np.testing.assert_allclose(weights[order], expected_weights, atol=1e-6)
    nested = rule != "gauss_legendre"
    assert all((level["keep"] > 0) == nested for level in levels[1:])
    assert [level["points"] for level in refinement_levels(rule, steps, 30, None)] == [steps]
    if rule in ("riemann_left", "riemann_right"):  # same code path as trapezoid (keep 1/2)
        return
    model, x = tiny_cnn(size=32, seed=4), random_images(3, 32, seed=9)
    last = counts[-1]
    forced = fe.explain_batch(model, x, method="integrated_gradients", pixel_size=PIXEL_SIZE,
                              rule=rule, steps=steps, tolerance=1e-9, max_steps=30)
    fixed = fe.explain(model, x, method="integrated_gradients", pixel_size=PIXEL_SIZE,
                       rule=rule, steps=last, tolerance=None)
    assert np.all(forced.metadata["steps"] == last)
    np.testing.assert_allclose(forced.maps, fixed, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ every registered method
def tanh_cnn(size: int = 32, seed: int = 0) -> keras.Model:
    """A conv layer with a tanh activation: no relevance rule covers tanh."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 1), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="tanh", name="tanh_conv")(inputs)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="top_conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(1, name="hc_px_input")(x), name="tanh_cnn")


def thresholded_relu_cnn(size: int = 32, seed: int = 0) -> keras.Model:
    """A ReLU with a threshold: neither a plain ReLU to swap nor a layer a rule covers."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 1), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.ReLU(threshold=0.1, name="thresholded_relu")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="top_conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(1, name="hc_px_input")(x),
                       name="thresholded_relu_cnn")


def mlp(size: int = 32, seed: int = 0) -> keras.Model:
    """Flatten, Dense(ReLU), Dense(1): no 4-D layer after the input."""
    keras.utils.set_random_seed(seed)
    bias = keras.initializers.RandomNormal(stddev=0.3, seed=seed)
    inputs = keras.Input((size, size, 1), name="image")
    x = keras.layers.Flatten(name="flatten")(inputs)
    x = keras.layers.Dense(16, activation="relu", bias_initializer=bias, name="dense")(x)
    return keras.Model(inputs, keras.layers.Dense(1, name="hc_px_input")(x), name="mlp")


@keras.saving.register_keras_serializable(package="fetalhc_tests")
class SubclassedCNN(keras.Model):
    """Conv(ReLU), GAP, Dense(1) written as a subclassed model: no functional graph."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(4, 3, padding="same", activation="relu")
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.head = keras.layers.Dense(1)

    def call(self, inputs):
        return self.head(self.pool(self.conv(inputs)))


def subclassed(size: int = 32, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = SubclassedCNN(name="subclassed")
    model(np.zeros((1, size, size, 1), np.float32))
    return model


# every registered method runs on every one of these networks ...
NETWORKS = {
    "tiny_cnn": tiny_cnn,                  # conv-BN-ReLU-pool, GAP, dense head
    "tiny_residual": tiny_residual,        # MobileNet-like: depthwise, Add, ReLU6, 2 outputs
    "tanh_cnn": tanh_cnn,
    "thresholded_relu_cnn": thresholded_relu_cnn,
    "mlp": mlp,
    "subclassed": subclassed,
}
RELEVANCE_METHODS = ("deep_taylor", "lrp_alpha1_beta0", "lrp_alpha2_beta1", "lrp_composite",
                     "lrp_epsilon", "lrp_z", "lrp_zplus")
MODIFIED_RELU_METHODS = ("guided_backprop", "deconvnet")
CAM_METHODS = ("gradcam", "gradcam_pp")
# ... except these, which refuse by design (with a one-line error naming the method and
# the cause). Any other refusal fails, and so does an entry here that stops refusing.
EXPECTED_REFUSALS: dict[tuple[str, str], str] = {
    **{(method, "tanh_cnn"): "no relevance rule for a tanh activation (covered: relu, relu6, "
       "silu, sigmoid, linear)" for method in RELEVANCE_METHODS},
    **{(method, "thresholded_relu_cnn"): "no relevance rule for a ReLU with a threshold"
       for method in RELEVANCE_METHODS},
    **{(method, "thresholded_relu_cnn"): "a ReLU with a threshold cannot be swapped for the "
       "method's backward ReLU" for method in MODIFIED_RELU_METHODS},
    **{(method, "mlp"): "Grad-CAM needs a 4-D layer; an MLP has none"
       for method in CAM_METHODS},
    **{(method, "subclassed"): "modified backward passes replay a functional graph; a "
       "subclassed model has none" for method in RELEVANCE_METHODS + MODIFIED_RELU_METHODS},
    **{(method, "subclassed"): "Grad-CAM needs a symbolic 4-D layer output; a subclassed "
       "model has none" for method in CAM_METHODS},
}
# what each refusal on a network must name: the offending layer, the missing 4-D layer, or
# the missing functional graph
REFUSAL_NAMES = {"tanh_cnn": ("'tanh_conv",), "thresholded_relu_cnn": ("'thresholded_relu'",),
                 "mlp": ("no 4-D layer",),
                 "subclassed": ("is not a functional model", "no 4-D layer")}
FAST_OPTIONS = {"smoothgrad": {"n": 4}, "integrated_gradients": {"steps": 8, "tolerance": None},
                "occlusion": {"patch": 8, "stride": 8}}
CONTAINERS = ("numpy", "tensor", "dataset")


@pytest.fixture(scope="module", params=sorted(NETWORKS))
def network(request):
    return request.param, NETWORKS[request.param](size=32)


def _as(kind, x, pixel_size):
    if kind == "numpy":
        return x, {"pixel_size": pixel_size}
    if kind == "tensor":
        return tf.constant(x), {"pixel_size": pixel_size}
    dataset = tf.data.Dataset.from_tensor_slices({
        "image": x, "pixel_size_mm": pixel_size, "hc_mm": np.full(len(x), 150.0, np.float32),
    }).batch(2)
    return dataset, {}


def test_the_refusal_table_names_registered_methods_and_listed_networks():
    """A renamed method or network must not leave a stale entry that is never checked."""
    methods = set(fe.available_methods())
    stale = sorted(key for key in EXPECTED_REFUSALS
                   if key[0] not in methods or key[1] not in NETWORKS)
    assert not stale, f"EXPECTED_REFUSALS entries for unknown methods / networks: {stale}"
    assert set(RELEVANCE_METHODS + MODIFIED_RELU_METHODS + CAM_METHODS) <= methods
    assert set(REFUSAL_NAMES) == {network for _, network in EXPECTED_REFUSALS}


@pytest.mark.parametrize("method", fe.available_methods())
def test_every_registered_method(network, method):
    name, model = network
    x = random_images(3, 32, seed=11)
    pixel_size = np.array([0.2, 0.3, 0.4], np.float32)
    options = FAST_OPTIONS.get(method, {})
    reason = EXPECTED_REFUSALS.get((method, name))
    results = []
    for kind in CONTAINERS:
        images, extra = _as(kind, x, pixel_size)
        try:
            maps = fe.explain(model, images, method=method, batch_size=2, output_units="px",
                              **extra, **options)
        except (ValueError, NotImplementedError) as error:
            message = str(error)
            assert reason is not None, (
                f"{method} refused {name} ({kind} input), which is not in EXPECTED_REFUSALS: "
                f"{message}")
            assert "\n" not in message and message.startswith(f"{method}: "), message
            assert any(part in message for part in REFUSAL_NAMES[name]), message
            continue
        assert reason is None, (
            f"{method} no longer refuses {name} ({kind} input); expected refusal: {reason}. "
            "Remove the entry from EXPECTED_REFUSALS.")
        assert maps.shape == (3, 32, 32) and maps.dtype == np.float32
        assert np.all(np.isfinite(maps))
        assert np.abs(maps).max() > 0, f"{method} returned an all-zero map on {name}"
        results.append(maps)
    if reason is not None:
        return  # refused on every container, as the table says
    for other in results[1:]:  # same inputs, three containers, identical maps
        np.testing.assert_allclose(results[0], other, rtol=1e-5, atol=1e-7)
    again = fe.explain(model, x, method=method, pixel_size=pixel_size, batch_size=2,
                       output_units="px", **options)
    np.testing.assert_array_equal(results[0], again)

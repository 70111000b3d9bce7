"""fetalhc.explain infrastructure: registry, targets, HC output view, inputs, caching."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import fetalhc.explain as fe
from fetalhc.explain.method import Method
from fetalhc.explain.registry import register

SIZE = 16


def linear_model(size=SIZE, seed=0, name="linear"):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 1))
    outputs = keras.layers.Dense(1, name="hc_px_input")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, outputs, name=name)


def two_output_model(hc_name="hc_px_input"):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((SIZE, SIZE, 1))
    features = keras.layers.Conv2D(2, 3, padding="same", name="conv")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D(name="gap")(features)
    hc = keras.layers.Dense(1, name=hc_name)(pooled)
    aux = keras.layers.Dense(6, name="ellipse")(pooled)
    return keras.Model(inputs, [aux, hc])


def images(n=3, size=SIZE, seed=0):
    return np.random.default_rng(seed).standard_normal((n, size, size, 1)).astype(np.float32)


def test_registry_lists_every_method_of_this_package():
    names = fe.available_methods()
    for name in ("gradient", "smoothgrad", "input_x_gradient", "integrated_gradients",
                 "gradcam", "gradcam_pp", "occlusion"):
        assert name in names
        assert fe.get_method(name).name == name
    assert names == sorted(names)


def test_unknown_method_lists_known_ones():
    with pytest.raises(ValueError, match="unknown explanation method 'nope'.*gradient"):
        fe.get_method("nope")
    with pytest.raises(ValueError, match="known methods"):
        fe.explain(linear_model(), images(), method="nope", pixel_size=0.3)


def test_registering_a_second_class_under_a_taken_name_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        @register()
        class Duplicate(Method):
            name = "gradient"


def test_unknown_option_is_a_one_line_error():
    with pytest.raises(ValueError, match="unknown option.*stepz.*steps") as error:
        fe.explain(linear_model(), images(), method="integrated_gradients", pixel_size=0.3, stepz=3)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("method, option", [("gradcam", "relu"), ("gradcam_pp", "relu"),
                                            ("smoothgrad", "squared")])
def test_a_switch_takes_true_or_false_only(method, option):
    """Every option whose default is True / False: a string such as "false" (truthy) or a
    number is refused by name, before any work."""
    for value in ("false", 0, None):
        with pytest.raises(ValueError, match=f"{option} must be true or false"):
            fe.get_method(method)(**{option: value})
    assert fe.get_method(method)(**{option: True}).options[option] is True


@pytest.mark.parametrize("method, option", [
    ("integrated_gradients", {"steps": 0}),
    ("smoothgrad", {"n": 0}),
    ("occlusion", {"patch": 0}),
    ("occlusion", {"stride": -1}),
    ("integrated_gradients", {"rule": "simpson"}),
    ("integrated_gradients", {"baseline": "grey"}),
])
def test_bad_counts_and_choices_raise(method, option):
    with pytest.raises(ValueError) as error:
        fe.explain(linear_model(), images(), method=method, pixel_size=0.3, **option)
    assert "\n" not in str(error.value)


def test_targets():
    model = linear_model()
    x = images()
    predicted = model.predict(x, verbose=0).reshape(-1)
    pixel_size = np.array([0.1, 0.2, 0.3], np.float32)
    reference = np.array([1.0, -1.0, 0.5], np.float32)
    result = fe.explain_batch(model, x, method="gradient", pixel_size=pixel_size)
    np.testing.assert_allclose(result.metadata["prediction_px_input"], predicted, rtol=1e-5)
    np.testing.assert_allclose(result.metadata["prediction_mm"], predicted * pixel_size, rtol=1e-5)
    np.testing.assert_allclose(result.metadata["target_value"], predicted * pixel_size, rtol=1e-5)
    assert result.units == "mm per input unit" and result.target_units == "mm"
    weights = model.get_layer("hc_px_input").kernel.numpy().reshape(SIZE, SIZE)
    np.testing.assert_allclose(result.maps, weights[None] * pixel_size[:, None, None], atol=1e-6)

    in_px = fe.explain_batch(model, x, method="gradient", target="hc_px_input")
    np.testing.assert_allclose(in_px.maps, np.broadcast_to(weights, in_px.maps.shape), atol=1e-6)
    assert in_px.target_units == "px"
    assert np.all(np.isnan(in_px.metadata["prediction_mm"]))

    error = fe.explain_batch(model, x, method="gradient", target="abs_error_mm",
                             pixel_size=pixel_size, reference=reference)
    sign = np.sign(predicted * pixel_size - reference)
    np.testing.assert_allclose(error.maps, sign[:, None, None] * weights[None] * pixel_size[:, None, None], atol=1e-6)
    np.testing.assert_allclose(error.metadata["target_value"], np.abs(predicted * pixel_size - reference), rtol=1e-5)


def test_target_errors():
    model, x = linear_model(), images()
    with pytest.raises(ValueError, match="needs pixel_size"):
        fe.explain(model, x, method="gradient")
    with pytest.raises(ValueError, match="needs reference"):
        fe.explain(model, x, method="gradient", target="abs_error_mm", pixel_size=0.2)
    with pytest.raises(ValueError, match="finite reference"):
        fe.explain(model, x, method="gradient", target="abs_error_mm", pixel_size=0.2,
                   reference=[1.0, np.nan, 2.0])
    with pytest.raises(ValueError, match="unknown target 'hc'.*hc_mm"):
        fe.explain(model, x, method="gradient", target="hc", pixel_size=0.2)
    with pytest.raises(ValueError, match="one value per image"):
        fe.explain(model, x, method="gradient", pixel_size=[0.1, 0.2])


def test_hc_output_model_selects_the_hc_output():
    model = two_output_model()
    view = fe.hc_output_model(model)
    x = images()
    expected = model.predict(x, verbose=0)[1]
    np.testing.assert_allclose(view.predict(x, verbose=0), expected, rtol=1e-5)
    assert fe.hc_output_model(model) is view  # cached
    by_index = fe.hc_output_model(model, output=1)
    np.testing.assert_allclose(by_index.predict(x, verbose=0), expected, rtol=1e-5)
    maps = fe.explain(model, x, method="gradient", pixel_size=0.5)
    assert maps.shape == (3, SIZE, SIZE)


def test_multi_output_without_hc_name_needs_output():
    model = two_output_model(hc_name="head")
    with pytest.raises(ValueError, match="choose one with output=.*ellipse.*head"):
        fe.hc_output_model(model)
    with pytest.raises(ValueError, match="choose one with output="):
        fe.explain(model, images(), method="gradient", pixel_size=0.5)
    with pytest.raises(ValueError, match="does not say its unit"):  # "head": in mm or px?
        fe.explain(model, images(), method="gradient", pixel_size=0.5, output="head")
    maps = fe.explain(model, images(), method="gradient", pixel_size=0.5, output="head",
                      output_units="px")
    assert maps.shape == (3, SIZE, SIZE)
    with pytest.raises(ValueError, match="one unit per image"):
        fe.hc_output_model(model, output="ellipse")
    with pytest.raises(ValueError, match="unknown output 'x'"):
        fe.hc_output_model(model, output="x")


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, SIZE, SIZE), np.float32), "4-D"),
    (np.zeros((2, SIZE, SIZE, 1), np.uint8), "floating point"),
    (np.zeros((2, SIZE + 1, SIZE, 1), np.float32), "do not fit the model input"),
    (np.zeros((0, SIZE, SIZE, 1), np.float32), "no images"),
    ([[1.0]], "numpy array"),
])
def test_bad_images(bad, message):
    with pytest.raises(ValueError, match=message) as error:
        fe.explain(linear_model(), bad, method="gradient", pixel_size=0.5)
    assert "\n" not in str(error.value)


def test_nan_and_integer_tensor_inputs_are_refused():
    x = images()
    x[1, 2, 3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fe.explain(linear_model(), x, method="gradient", pixel_size=0.5)
    with pytest.raises(ValueError, match="floating point"):
        fe.explain(linear_model(), tf.zeros((2, SIZE, SIZE, 1), tf.int32), method="gradient", pixel_size=0.5)


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        fe.explain(linear_model(), images(), method="gradient", pixel_size=0.5, batch_size=0)


def test_dataset_inputs_take_pixel_size_and_reference_from_elements():
    model, x = linear_model(), images(5)
    pixel_size = np.linspace(0.1, 0.5, 5).astype(np.float32)
    reference = np.linspace(100, 200, 5).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices({
        "image": x, "pixel_size_mm": pixel_size, "hc_mm": reference,
        "filename": np.array([f"{i:03d}_HC.png" for i in range(5)]),
    }).batch(2)
    result = fe.explain_batch(model, dataset, method="gradient", target="abs_error_mm")
    np.testing.assert_array_equal(result.metadata["pixel_size_mm"], pixel_size)
    np.testing.assert_array_equal(result.metadata["reference_mm"], reference)
    # file names as str, as they were given (tf.data hands them over as bytes)
    assert list(result.metadata["filename"]) == [f"{i:03d}_HC.png" for i in range(5)]
    direct = fe.explain(model, x, method="gradient", target="abs_error_mm",
                        pixel_size=pixel_size, reference=reference)
    np.testing.assert_allclose(result.maps, direct, atol=1e-7)
    with pytest.raises(ValueError, match="dicts with an 'image' key"):
        fe.explain(model, tf.data.Dataset.from_tensor_slices(x), method="gradient", pixel_size=0.1)


def test_traced_once_across_calls_and_batch_sizes():
    model = linear_model(name="trace_check")
    fe.clear_cache(model)
    for n in (5, 3, 8, 1):  # last batches of different sizes
        fe.explain(model, images(n), method="integrated_gradients", pixel_size=0.4,
                   batch_size=4, steps=4)
        fe.explain(model, images(n), method="gradient", pixel_size=0.4, batch_size=4)
    counts = fe.tracing_counts(model)
    assert len(counts) == 3  # IG, gradient, forward
    assert all(count == 1 for count in counts.values()), counts


def test_explanation_object_and_chunking_do_not_change_results():
    model, x = linear_model(), images(5)
    small = fe.explain_batch(model, x, method="smoothgrad", pixel_size=0.4, n=5,
                             batch_size=2, chunk_size=2)
    large = fe.explain_batch(model, x, method="smoothgrad", pixel_size=0.4, n=5,
                             batch_size=8, chunk_size=64)
    assert isinstance(small, fe.Explanation) and len(small) == 5
    np.testing.assert_allclose(small.maps, large.maps, atol=1e-6)  # linear: noise cancels
    assert small.info["n"] == 5 and small.info["method"] == "smoothgrad"


def test_mixed_precision_model_is_explained_in_float32_and_follows_training():
    """A model trained with mixed_bfloat16 is explained on a float32 copy with the same
    weights: every method runs, and the maps equal those of the float32 twin."""
    from fetalhc.models import build_model

    keras.utils.set_random_seed(0)
    mixed = build_model("small_resnet", (SIZE, SIZE, 1), small_cnn_filters=(4, 8),
                        precision="mixed_bfloat16", hc_mean_px=40.0, hc_std_px=5.0)
    twin = build_model("small_resnet", (SIZE, SIZE, 1), small_cnn_filters=(4, 8),
                       hc_mean_px=40.0, hc_std_px=5.0)
    twin.set_weights(mixed.get_weights())
    x = images(2)
    for method in fe.available_methods():
        maps = fe.explain(mixed, x, method=method, target="hc_px_input")
        assert maps.dtype == np.float32 and np.isfinite(maps).all(), method
    np.testing.assert_allclose(
        fe.explain(mixed, x, method="gradient", target="hc_px_input"),
        fe.explain(twin, x, method="gradient", target="hc_px_input"), rtol=1e-5, atol=1e-7)
    # the float32 copy follows the weights of a model that keeps training
    mixed.get_layer("hc_z").kernel.assign(mixed.get_layer("hc_z").kernel * 2.0)
    twin.get_layer("hc_z").kernel.assign(twin.get_layer("hc_z").kernel * 2.0)
    np.testing.assert_allclose(
        fe.explain(mixed, x, method="gradient", target="hc_px_input"),
        fe.explain(twin, x, method="gradient", target="hc_px_input"), rtol=1e-5, atol=1e-7)

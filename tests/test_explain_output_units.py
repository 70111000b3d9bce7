"""Any single-output Keras regression model can be explained once the unit of its output is
declared: ``output_units="mm"`` (it predicts HC in mm) or ``"px"`` (HC in pixels of its
input). An undeclared unit is an error wherever it would change the answer, never a guess."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import fetalhc
from fetalhc.explain import IntegratedGradients, explain_batch

SIZE = 8


def linear_model(name: str = "score") -> keras.Model:
    """f(x) = w · x: the gradient of the output is w everywhere."""
    inputs = keras.Input((SIZE, SIZE, 1))
    weights = np.random.default_rng(0).normal(size=(SIZE * SIZE, 1)).astype(np.float32)
    dense = keras.layers.Dense(1, use_bias=False, name=name)
    outputs = dense(keras.layers.Flatten()(inputs))
    dense.set_weights([weights])
    return keras.Model(inputs, outputs, name="users_model")


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).normal(size=(3, SIZE, SIZE, 1)).astype(np.float32)


PIXEL_SIZE = np.array([0.1, 0.2, 0.4], np.float32)


def test_an_undeclared_unit_is_refused_where_it_matters(images):
    model = linear_model()
    with pytest.raises(ValueError, match="output_units='mm'"):
        explain_batch(model, images, method="gradient", pixel_size=PIXEL_SIZE)
    with pytest.raises(ValueError, match="does not say its unit"):
        IntegratedGradients(model)
    # the raw output needs no unit
    raw = explain_batch(model, images, method="gradient", target="hc_px_input")
    weights = model.get_layer("score").get_weights()[0].reshape(SIZE, SIZE)
    np.testing.assert_allclose(raw.maps, np.broadcast_to(weights, raw.maps.shape), rtol=1e-5)


def test_a_model_in_mm_is_explained_in_mm_without_the_pixel_size(images):
    model = linear_model()
    weights = model.get_layer("score").get_weights()[0].reshape(SIZE, SIZE)
    in_mm = explain_batch(model, images, method="gradient", output_units="mm")
    np.testing.assert_allclose(in_mm.maps, np.broadcast_to(weights, in_mm.maps.shape), rtol=1e-5)
    output = model.predict(images, verbose=0)[:, 0]
    np.testing.assert_allclose(in_mm.metadata["prediction_mm"], output, rtol=1e-5)
    assert in_mm.info["output_units"] == "mm"
    # declared px, the same output is multiplied by the pixel size: d(p f)/dx = p w
    in_px = explain_batch(model, images, method="gradient", output_units="px",
                          pixel_size=PIXEL_SIZE)
    np.testing.assert_allclose(in_px.maps, PIXEL_SIZE[:, None, None] * weights, rtol=1e-5)
    np.testing.assert_allclose(in_px.metadata["prediction_mm"], output * PIXEL_SIZE, rtol=1e-5)
    # with pixel sizes, an mm model's output in px is the output divided by them
    with_sizes = explain_batch(model, images, method="gradient", output_units="mm",
                               pixel_size=PIXEL_SIZE, target="hc_px_input")
    np.testing.assert_allclose(with_sizes.maps, weights / PIXEL_SIZE[:, None, None], rtol=1e-5)
    np.testing.assert_allclose(with_sizes.metadata["prediction_px_input"],
                               output / PIXEL_SIZE, rtol=1e-5)
    # the error target in mm compares the output itself with the reference
    reference = output + np.array([1.0, -2.0, 3.0], np.float32)
    error = explain_batch(model, images, method="gradient", output_units="mm",
                          target="abs_error_mm", reference=reference)
    np.testing.assert_allclose(error.metadata["target_value"], [1.0, 2.0, 3.0], rtol=1e-4)
    np.testing.assert_allclose(error.maps, -np.sign([1.0, -2.0, 3.0])[:, None, None] * weights,
                               rtol=1e-5)


def test_the_object_api_takes_the_unit(images):
    model = linear_model()
    explainer = IntegratedGradients(model, output_units="mm", steps=8, tolerance=None)
    result = explainer.explain(images)
    reference = explain_batch(model, images, method="integrated_gradients", output_units="mm",
                              steps=8, tolerance=None)
    np.testing.assert_array_equal(result.maps, reference.maps)


def test_a_fetalhc_output_is_in_px_and_cannot_be_declared_mm(images):
    model = linear_model(name="hc_px_input")
    explain_batch(model, images, method="gradient", pixel_size=PIXEL_SIZE)  # px by its name
    with pytest.raises(ValueError, match="is in pixels"):
        explain_batch(model, images, method="gradient", output_units="mm")


def test_load_model_takes_a_users_model_with_a_declared_unit(tmp_path):
    path = tmp_path / "users.keras"
    linear_model().save(path)
    with pytest.raises(ValueError, match="--output-units"):
        fetalhc.load_model(path)
    assert fetalhc.load_model(path, output_units="mm").name == "users_model"

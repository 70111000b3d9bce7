"""Deletion / insertion curves on a pixel-sum model where every curve is known."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from fetalhc import evaluate

SIZE = 32


def weighted_sum_model(weights) -> keras.Model:
    inputs = keras.Input((SIZE, SIZE, 1))
    output = keras.layers.Dense(1, name="hc_px_input")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, output)
    model.get_layer("hc_px_input").set_weights(
        [np.asarray(weights, np.float32).reshape(-1, 1), np.zeros(1)])
    return model


def test_known_curves_and_areas_per_image():
    model = weighted_sum_model(np.ones((SIZE, SIZE)))
    images = np.ones((2, SIZE, SIZE, 1), np.float32)
    images[1] *= 2.0  # a second image with twice the HC
    pixel_size = 0.5
    reference = np.array([1024 * 0.5, 2048 * 0.5])  # the unperturbed predictions (mm)
    maps = np.random.default_rng(0).normal(size=(2, SIZE, SIZE))
    curves = evaluate.deletion_insertion(model, images, maps, pixel_size, reference, steps=4)
    deletion, insertion = curves["deletion"], curves["insertion"]
    np.testing.assert_allclose(deletion.fractions, [0, 0.25, 0.5, 0.75, 1.0])
    # Deleting a fraction f of the pixels (baseline 0) removes f of the sum.
    np.testing.assert_allclose(deletion.hc_mm[0], 512 * (1 - deletion.fractions), rtol=1e-5)
    np.testing.assert_allclose(deletion.abs_error_mm[1], 1024 * deletion.fractions, rtol=1e-5)
    np.testing.assert_allclose(insertion.hc_mm[1], 1024 * insertion.fractions, rtol=1e-5)
    # Linear curves 0 → E have area E / 2, per image (never averaged across images).
    np.testing.assert_allclose(deletion.area("abs_error_mm"), [256, 512], rtol=1e-5)
    np.testing.assert_allclose(insertion.area("abs_error_mm"), [256, 512], rtol=1e-5)
    np.testing.assert_allclose(insertion.area("shift_mm"), [256, 512], rtol=1e-5)
    np.testing.assert_allclose(insertion.unperturbed_mm, reference, rtol=1e-5)
    table = deletion.per_image()
    assert list(table.columns) == ["deletion_auc_abs_error_mm", "deletion_auc_shift_mm"]
    assert len(deletion.to_frame()) == 2 * 5


def test_relevant_pixels_first_beats_the_reverse_order():
    rng = np.random.default_rng(1)
    weights = np.zeros((SIZE, SIZE))
    weights[4:12, 20:28] = 1.0  # the model only looks at this patch
    model = weighted_sum_model(weights)
    images = rng.uniform(0.5, 1.5, size=(3, SIZE, SIZE, 1)).astype(np.float32)
    good = np.broadcast_to(weights, (3, SIZE, SIZE)) * images[..., 0]
    bad = -good
    kwargs = dict(steps=16, baseline="zeros")
    reference = np.asarray(model.predict(images, verbose=0)).reshape(-1)
    good_curves = evaluate.deletion_insertion(model, images, good, 1.0, reference, **kwargs)
    bad_curves = evaluate.deletion_insertion(model, images, bad, 1.0, reference, **kwargs)
    assert np.all(good_curves["deletion"].area() > bad_curves["deletion"].area() + 10)
    assert np.all(good_curves["insertion"].area() < bad_curves["insertion"].area() - 10)
    # With the patch (64 of 1024 pixels) gone after 1/16, the error is then final.
    np.testing.assert_allclose(good_curves["deletion"].abs_error_mm[:, 1], reference, rtol=1e-5)


def test_region_unit_and_errors():
    model = weighted_sum_model(np.ones((SIZE, SIZE)))
    images = np.ones((1, SIZE, SIZE, 1), np.float32)
    maps = np.zeros((1, SIZE, SIZE))
    curves = evaluate.deletion_insertion(model, images, maps, 1.0, None, unit="regions",
                                         grid=4, steps=16, kinds=["deletion"])
    np.testing.assert_allclose(curves["deletion"].hc_mm[0], 1024 - 64 * np.arange(17),
                               rtol=1e-5)
    assert np.all(np.isnan(curves["deletion"].area("abs_error_mm")))
    with pytest.raises(ValueError, match="between 1 and the number of regions"):
        evaluate.deletion_insertion(model, images, maps, 1.0, unit="regions", grid=4, steps=17)
    with pytest.raises(ValueError, match="unknown perturbation"):
        evaluate.deletion_insertion(model, images, maps, 1.0, baseline="gray")
    with pytest.raises(ValueError, match="unknown curve kind"):
        evaluate.deletion_insertion(model, images, maps, 1.0, kinds=["erosion"])
    with pytest.raises(ValueError, match="maps have shape"):
        evaluate.deletion_insertion(model, images, maps[:, :8], 1.0)

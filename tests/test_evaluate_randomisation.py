"""Cascading randomisation: gradients change, model-independent maps are flagged."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from fetalhc import evaluate


@pytest.fixture(scope="module")
def model_and_images():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv_a")(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv_b")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(4, activation="relu", name="dense_a")(x)
    output = keras.layers.Dense(1, name="hc_px_input")(x)
    model = keras.Model(inputs, output)
    images = np.random.default_rng(0).normal(size=(4, 32, 32, 1)).astype(np.float32)
    return model, images


def test_similarity_measures_on_known_pairs():
    a = np.random.default_rng(1).normal(size=(2, 16, 16))
    np.testing.assert_allclose(evaluate.spearman_per_image(a, 3 * a + 1), 1.0)
    np.testing.assert_allclose(evaluate.spearman_per_image(a, -a), -1.0)
    np.testing.assert_allclose(evaluate.ssim_per_image(a, 2 * a), 1.0, atol=1e-9)
    other = np.random.default_rng(2).normal(size=(2, 16, 16))
    assert np.all(np.abs(evaluate.spearman_per_image(a, other)) < 0.2)
    assert np.all(evaluate.ssim_per_image(a, other) < 0.3)


def test_cascade_order_flags_model_independent_maps_and_keeps_model(model_and_images):
    model, images = model_and_images
    assert evaluate.layers_top_down(model) == ["hc_px_input", "dense_a", "conv_b", "conv_a"]
    before = [w.copy() for w in model.get_weights()]

    def edges(m, x):  # ignores the model entirely
        return np.abs(np.gradient(np.asarray(x)[..., 0], axis=1))

    result = evaluate.cascading_randomisation(model, images, edges, seed=0)
    assert result.flagged
    assert result.final_similarity == pytest.approx(1.0)
    assert list(result.stage_means()["layer"]) == ["hc_px_input", "dense_a", "conv_b", "conv_a"]
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)


def test_gradient_maps_change_when_the_model_is_randomised(model_and_images):
    model, images = model_and_images
    result = evaluate.cascading_randomisation(model, images, "gradient", pixel_size_mm=0.5,
                                              target="hc_mm", seed=0)
    means = result.stage_means().set_index("stage")
    assert not result.flagged
    assert means.loc[4, "spearman_abs"] < 0.5
    assert len(result.frame) == 4 * len(images)
    with pytest.raises(ValueError, match="unknown similarity"):
        evaluate.cascading_randomisation(model, images, "gradient", similarity="cosine")


def test_checkpoints_are_evenly_spaced_and_end_with_the_whole_model():
    assert evaluate.randomisation.checkpoints(27, 0) == list(range(1, 28))
    assert evaluate.randomisation.checkpoints(27, 4) == [1, 10, 18, 27]
    assert evaluate.randomisation.checkpoints(27, 1) == [27]
    assert evaluate.randomisation.checkpoints(3, 5) == [1, 2, 3]
    with pytest.raises(ValueError, match="0 .every layer"):
        evaluate.randomisation.checkpoints(3, -1)


def test_a_checkpoint_sees_the_same_model_as_the_full_cascade(model_and_images):
    """Explaining at 2 checkpoints gives the stages 1 and 4 of the full cascade exactly
    (each layer is re-initialised with its own stage's seed)."""
    model, images = model_and_images
    full = evaluate.cascading_randomisation(model, images, "gradient", pixel_size_mm=0.5,
                                            seed=3)
    few = evaluate.cascading_randomisation(model, images, "gradient", pixel_size_mm=0.5,
                                           seed=3, stages=2)
    assert sorted(set(few.frame["stage"])) == [1, 4]
    kept = full.frame[full.frame["stage"].isin([1, 4])].reset_index(drop=True)
    np.testing.assert_allclose(few.frame[["spearman", "spearman_abs", "ssim"]].to_numpy(),
                               kept[["spearman", "spearman_abs", "ssim"]].to_numpy())
    assert few.final_similarity == pytest.approx(full.final_similarity)


def test_fixed_cost_explains_integrated_gradients_without_refinement(model_and_images):
    """``fixed_cost`` = the method's fixed-cost options for trained and randomised maps
    alike (here Integrated Gradients with tolerance None), whatever maps were given."""
    model, images = model_and_images
    images = images[:2]  # the adaptive IG of a randomised model is slow: two images, one stage
    stored = np.ones(images.shape[:3], np.float32)  # ignored: another rule's maps
    cheap = evaluate.cascading_randomisation(model, images, "integrated_gradients",
                                             pixel_size_mm=0.5, maps=stored, stages=1,
                                             fixed_cost=True)
    plain = evaluate.cascading_randomisation(model, images, "integrated_gradients",
                                             pixel_size_mm=0.5, stages=1,
                                             explain_options={"tolerance": None})
    np.testing.assert_allclose(cheap.frame["spearman"], plain.frame["spearman"], rtol=1e-6)
    as_given = evaluate.cascading_randomisation(model, images, "integrated_gradients",
                                                pixel_size_mm=0.5, maps=stored, stages=1)
    assert not np.allclose(as_given.frame["spearman"], plain.frame["spearman"])

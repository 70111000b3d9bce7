"""Region perturbation and AOPC on hand-built linear models with known answers."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from fetalhc import evaluate
from fetalhc.evaluate.regions import make_grid

SIZE = 32
GRID = 4  # 16 regions of 8 x 8
PIXEL_SIZE_MM = 0.5


def linear_region_model(region_weights, bias: float = 100.0) -> keras.Model:
    """HC (input px) = bias + sum_r weight_r * mean of region r."""
    grid = make_grid((SIZE, SIZE), grid=GRID)
    per_pixel = np.asarray(region_weights, dtype=np.float32)[grid.labels()] / (
        grid.height * grid.width)
    inputs = keras.Input((SIZE, SIZE, 1))
    flat = keras.layers.Flatten()(inputs)
    output = keras.layers.Dense(1, name="hc_px_input")(flat)
    model = keras.Model(inputs, output)
    model.get_layer("hc_px_input").set_weights([per_pixel.reshape(-1, 1), np.array([bias])])
    return model


def region_map(region: int, n: int) -> np.ndarray:
    grid = make_grid((SIZE, SIZE), grid=GRID)
    one = (grid.labels() == region).astype(np.float32)
    return np.repeat(one[None], n, axis=0)


@pytest.fixture(scope="module")
def one_region_setup():
    """A model that only looks at region 5; images bright there (+2 on average)."""
    rng = np.random.default_rng(0)
    n = 12
    images = rng.normal(0.0, 0.3, size=(n, SIZE, SIZE, 1)).astype(np.float32)
    images[:, 8:16, 8:16] += 2.0  # region 5 = row 1, col 1
    weights = np.zeros(16)
    weights[5] = 10.0
    model = linear_region_model(weights)
    reference = (100.0 + 10.0 * images[:, 8:16, 8:16, 0].mean(axis=(1, 2))) * PIXEL_SIZE_MM
    return model, images, reference


def test_region_map_beats_random_and_wrong_maps(one_region_setup):
    model, images, reference = one_region_setup
    n = len(images)
    right = evaluate.region_perturbation(model, images, region_map(5, n), PIXEL_SIZE_MM,
                                         reference, grid=GRID, steps=15, seed=0)
    wrong = evaluate.region_perturbation(model, images, region_map(9, n), PIXEL_SIZE_MM,
                                         reference, grid=GRID, steps=15, seed=0)
    aopc_right = right.aopc("abs_error_mm", "morf")
    # Region 5 goes at step 1 and its ~20 px shift (x 0.5 mm) stays: AOPC = -(15/16) e.
    expected = -(15 / 16) * right.abs_error_mm[:, 0, 1]
    np.testing.assert_allclose(aopc_right, expected, rtol=1e-5)
    assert np.all(right.abs_error_mm[:, 0, 1] > 5.0)
    # Random order removes region 5 later on average; LeRF never (it is ranked last).
    assert aopc_right.mean() < right.aopc("abs_error_mm", "random").mean() - 1.0
    np.testing.assert_allclose(right.aopc("abs_error_mm", "lerf"), 0.0, atol=1e-3)
    assert aopc_right.mean() < wrong.aopc("abs_error_mm", "morf").mean() - 1.0
    assert np.all(right.aopc_gap() < 0)
    # Without a perturbation there is no error and no shift.
    np.testing.assert_allclose(right.abs_error_mm[:, :, 0], 0.0, atol=1e-3)
    np.testing.assert_allclose(right.shift_mm[:, :, 0], 0.0)


def test_morf_with_ideal_map_rises_fastest():
    rng = np.random.default_rng(1)
    weights = rng.permutation(np.arange(1, 17)).astype(np.float64)
    model = linear_region_model(weights, bias=50.0)
    images = rng.uniform(0.5, 1.5, size=(6, SIZE, SIZE, 1)).astype(np.float32)
    grid = make_grid((SIZE, SIZE), grid=GRID)
    per_pixel = weights[grid.labels()] / 64.0
    ideal = images[..., 0] * per_pixel  # input x gradient of the linear model
    reference = np.asarray(model.predict(images, verbose=0)).reshape(-1) * PIXEL_SIZE_MM
    kwargs = dict(grid=GRID, steps=15, perturbation="zeros", seed=0)
    curves = evaluate.region_perturbation(model, images, ideal, PIXEL_SIZE_MM, reference,
                                          **kwargs)
    morf = curves.curve("abs_error_mm", "morf")
    for other in (curves.curve("abs_error_mm", "lerf"), curves.curve("abs_error_mm", "random")):
        assert np.all(morf >= other - 1e-3)
        assert np.all((morf - other)[:, 1:-1].max(axis=1) > 1.0)
    shuffled = rng.permuted(ideal.reshape(6, -1), axis=1).reshape(ideal.shape)
    other = evaluate.region_perturbation(model, images, shuffled, PIXEL_SIZE_MM, reference,
                                         orders=["morf"], **kwargs)
    assert np.all(morf >= other.curve("abs_error_mm", "morf") - 1e-3)
    # Zeros remove a region's contribution exactly: the last step leaves the weakest region.
    region_means = images[..., 0].reshape(6, 4, 8, 4, 8).mean(axis=(2, 4)).reshape(6, 16)
    remaining = (region_means * weights)[np.arange(6), np.argmin(region_means * weights, 1)]
    np.testing.assert_allclose(curves.hc_mm[:, 0, -1], (50.0 + remaining) * PIXEL_SIZE_MM,
                               rtol=1e-4)


def test_per_image_table_summary_and_original_pixels(one_region_setup):
    model, images, reference = one_region_setup
    pso = np.full(len(images), 0.125)  # mm per original pixel
    curves = evaluate.region_perturbation(model, images, region_map(5, len(images)),
                                          PIXEL_SIZE_MM, reference, grid=GRID, steps=4,
                                          pixel_size_original_mm=pso)
    np.testing.assert_allclose(curves.abs_error_px_original, curves.abs_error_mm / 0.125)
    table = curves.per_image()
    assert {"aopc_morf_abs_error_mm", "aopc_random_shift_mm", "aopc_gap_abs_error_mm",
            "aopc_morf_abs_error_px_original"} <= set(table.columns)
    np.testing.assert_allclose(table["aopc_morf_abs_error_px_original"],
                               table["aopc_morf_abs_error_mm"] / 0.125, rtol=1e-5)
    long = curves.to_frame()
    assert len(long) == len(images) * 3 * 5
    assert set(long["order"]) == {"morf", "lerf", "random"}
    np.testing.assert_allclose(np.abs(long["signed_shift_mm"]), long["shift_mm"], rtol=1e-6)
    # Region 5 (bright, positive weight) replaced by noise: the prediction drops.
    first_morf = long[(long["order"] == "morf") & (long["step"] == 1)]
    assert (first_morf["signed_shift_mm"] < -5).all()
    summary = curves.summary(n_boot=200)
    row = summary.set_index("metric").loc["aopc_morf_abs_error_mm"]
    assert row["ci_low"] <= row["mean"] <= row["ci_high"]
    assert row["mean"] == pytest.approx(table["aopc_morf_abs_error_mm"].mean())


def test_random_order_is_seeded_and_missing_reference_gives_nan(one_region_setup):
    model, images, _ = one_region_setup
    maps = region_map(5, len(images))
    a = evaluate.region_perturbation(model, images, maps, PIXEL_SIZE_MM, None, grid=GRID,
                                     orders=["random"], seed=7)
    b = evaluate.region_perturbation(model, images, maps, PIXEL_SIZE_MM, None, grid=GRID,
                                     orders=["random"], seed=7)
    np.testing.assert_array_equal(a.hc_mm, b.hc_mm)
    assert np.all(np.isnan(a.aopc("abs_error_mm", "random")))
    assert np.all(np.isfinite(a.aopc("shift_mm", "random")))


@pytest.mark.parametrize("perturbation", evaluate.PERTURBATIONS)
def test_every_perturbation_replaces_only_chosen_regions(perturbation):
    images = np.random.default_rng(2).normal(size=(2, SIZE, SIZE, 1)).astype(np.float32)
    replacement = evaluate.replacement_images(images, perturbation, noise_sd=0.3, seed=0)
    assert replacement.shape == images.shape
    if perturbation == "mean":
        np.testing.assert_allclose(replacement[:, 0, 0, 0], images.mean(axis=(1, 2, 3)),
                                   atol=1e-6)
    if perturbation == "noise":
        assert replacement.std() == pytest.approx(0.3, rel=0.1)
    if perturbation == "speckle":  # each image's own pixels, reordered, seeded by position
        for i in range(2):
            np.testing.assert_array_equal(np.sort(replacement[i].ravel()),
                                          np.sort(images[i].ravel()))
        assert not np.array_equal(replacement, images)
        second = evaluate.replacement_images(images[1:], "speckle", seed=0, positions=[1])
        np.testing.assert_array_equal(second[0], replacement[1])
    # A model that looks only at region 0: removing region 15 first (LeRF) changes nothing.
    weights = np.zeros(16)
    weights[0] = 1.0
    model = linear_region_model(weights)
    maps = region_map(0, 2)
    curves = evaluate.region_perturbation(model, images, maps, 1.0, None, grid=GRID, steps=3,
                                          orders=["lerf"], perturbation=perturbation)
    np.testing.assert_allclose(curves.shift_mm, 0.0, atol=1e-4)


def test_recompute_each_step_with_callable_and_registry():
    rng = np.random.default_rng(4)
    weights = rng.uniform(1, 5, size=16)
    model = linear_region_model(weights)
    images = rng.uniform(0.5, 1.5, size=(3, SIZE, SIZE, 1)).astype(np.float32)
    per_pixel = weights[make_grid((SIZE, SIZE), grid=GRID).labels()] / 64.0
    calls = []

    def input_x_gradient(x):
        calls.append(len(x))
        return x[..., 0] * per_pixel

    kwargs = dict(grid=GRID, steps=5, perturbation="zeros", orders=["morf", "lerf"])
    once = evaluate.region_perturbation(model, images, images[..., 0] * per_pixel, 1.0,
                                        **kwargs)
    again = evaluate.region_perturbation(model, images, images[..., 0] * per_pixel, 1.0,
                                         recompute=input_x_gradient, **kwargs)
    # Zeroed regions have zero input x gradient; the others keep their rank → same curves.
    np.testing.assert_allclose(again.hc_mm, once.hc_mm, rtol=1e-5)
    assert calls == [3] * 8  # steps 2..5, for morf and lerf
    registry = evaluate.region_perturbation(model, images, images[..., 0] * per_pixel, 1.0,
                                            recompute="input_x_gradient", target="hc_mm",
                                            **kwargs)
    np.testing.assert_allclose(registry.hc_mm, once.hc_mm, rtol=1e-5)


def test_mixed_precision_runs_on_cpu_and_leaves_the_model_alone(one_region_setup):
    model, images, reference = one_region_setup
    maps = region_map(5, len(images))
    full = evaluate.region_perturbation(model, images, maps, PIXEL_SIZE_MM, reference,
                                        grid=GRID, steps=3)
    for precision in ("mixed_bfloat16", "mixed_float16"):
        mixed = evaluate.region_perturbation(model, images, maps, PIXEL_SIZE_MM, reference,
                                             grid=GRID, steps=3, precision=precision)
        np.testing.assert_allclose(mixed.hc_mm, full.hc_mm, rtol=2e-2)
    assert model.get_layer("hc_px_input").dtype_policy.name == "float32"
    with pytest.raises(ValueError, match="unknown precision"):
        evaluate.region_perturbation(model, images, maps, 1.0, grid=GRID, precision="int8")


def test_small_batches_give_the_same_curves(one_region_setup):
    model, images, reference = one_region_setup
    maps = np.random.default_rng(5).normal(size=images.shape[:3])
    big = evaluate.region_perturbation(model, images, maps, PIXEL_SIZE_MM, reference,
                                       grid=GRID, batch_size=1024)
    small = evaluate.region_perturbation(model, images, maps, PIXEL_SIZE_MM, reference,
                                         grid=GRID, batch_size=7)
    np.testing.assert_allclose(small.hc_mm, big.hc_mm, rtol=1e-5)


def test_bad_inputs_give_one_line_errors(one_region_setup):
    model, images, _ = one_region_setup
    maps = region_map(5, len(images))
    with pytest.raises(ValueError, match=r"does not divide the image height 32 px.*: 16, 8"):
        evaluate.region_perturbation(model, images, maps, 1.0, grid=5)
    with pytest.raises(ValueError, match="region sizes that do: 2, 4, 8, 16"):
        evaluate.region_perturbation(model, images, maps, 1.0, grid=None, region_size=12)
    with pytest.raises(ValueError, match="grid has only 16"):
        evaluate.region_perturbation(model, images, maps, 1.0, grid=GRID, steps=17)
    with pytest.raises(ValueError, match="grid has only 16"):
        evaluate.region_perturbation(model, images, maps, 1.0, grid=GRID, steps=9,
                                     regions_per_step=2)
    with pytest.raises(ValueError, match="unknown perturbation 'salt'"):
        evaluate.region_perturbation(model, images, maps, 1.0, grid=GRID, perturbation="salt")
    with pytest.raises(ValueError, match=r"maps have shape \(12, 16, 16\).*\(12, 32, 32\)"):
        evaluate.region_perturbation(model, images, maps[:, :16, :16], 1.0, grid=GRID)
    with pytest.raises(ValueError, match="unknown order"):
        evaluate.region_perturbation(model, images, maps, 1.0, grid=GRID, orders=["best"])
    with pytest.raises(ValueError, match="one value per image") as error:
        evaluate.region_perturbation(model, images, maps, [1.0, 2.0], grid=GRID)
    assert "\n" not in str(error.value)


def test_paper_protocol_helpers():
    assert evaluate.PAPER_PROTOCOL["grid"] == 4 and evaluate.PAPER_PROTOCOL["steps"] == 15
    evaluate.check_paper_input(np.zeros((1, 128, 128, 1)))
    with pytest.raises(ValueError, match="128 x 128 inputs; got images of 64 x 64 px"):
        evaluate.check_paper_input(np.zeros((1, 64, 64, 1)))
    with pytest.raises(ValueError, match="got images of 64 x 64 px"):
        evaluate.check_paper_input((3, 64, 64, 1))
    evaluate.check_paper_input((3, 128, 128, 1))
    settings = evaluate.EvaluationSettings.paper()
    settings.validate((3, 128, 128, 1), ["aopc"])
    assert (settings.grid, settings.steps, settings.noise_sd, settings.perturbation,
            settings.aggregation, settings.recompute) == (4, 15, 0.3, "noise", "mean", False)
    # 800 px long side resized to 128: an input pixel covers 6.25 original pixels.
    np.testing.assert_allclose(evaluate.pixel_size_original([0.625], 128, [800]), [0.1])


def test_a_shared_forward_answers_the_random_curve_and_step_zero_once(one_region_setup):
    """Two methods' curves through one BatchedForward: the seeded random order (the same
    for every map) and the unperturbed step reach the model once; the curves equal those of
    separate forwards."""
    from fetalhc.evaluate.forward import BatchedForward

    model, images, reference = one_region_setup
    n, steps = len(images), 3
    maps = [region_map(5, n), np.random.default_rng(5).normal(size=images.shape[:3])]
    shared = BatchedForward(model, batch_size=64)
    curves = [evaluate.region_perturbation(model, images, m, PIXEL_SIZE_MM, reference,
                                           grid=GRID, steps=steps, forward=shared)
              for m in maps]
    alone = [evaluate.region_perturbation(model, images, m, PIXEL_SIZE_MM, reference,
                                          grid=GRID, steps=steps) for m in maps]
    for together, separate in zip(curves, alone, strict=True):
        np.testing.assert_allclose(together.hc_mm, separate.hc_mm, rtol=1e-6)
    # per map: morf and lerf (steps 1..3 each); once: the unperturbed images and random
    assert shared.passes == n * (1 + 2 * 2 * steps + steps)
    before = shared.passes
    again = evaluate.region_perturbation(model, images, maps[0], PIXEL_SIZE_MM, reference,
                                         grid=GRID, steps=steps, forward=shared)
    assert shared.passes == before  # the same request is answered from memory
    np.testing.assert_array_equal(again.hc_mm, curves[0].hc_mm)


def test_a_kept_forward_follows_the_weights(one_region_setup):
    """The memory of a BatchedForward is keyed by the weights too: after the model's
    weights change, the same request is predicted again, not answered from memory."""
    from fetalhc.evaluate.forward import BatchedForward

    _, images, _ = one_region_setup
    weights = np.zeros(16)
    weights[5] = 10.0
    model = linear_region_model(weights)
    forward = BatchedForward(model, batch_size=64)
    before = forward.predict(images)
    layer = model.get_layer("hc_px_input")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel, bias + 7.0])
    np.testing.assert_allclose(forward.predict(images), before + 7.0, rtol=1e-6)
    assert forward.passes == 2 * len(images)

"""The ground-truth faithfulness benchmark: shortcut phantoms (fetalhc.data.shortcut) and
the intervention / relevance checks on them (fetalhc.evaluate.groundtruth)."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

import fetalhc.explain as fe
from fetalhc.data import input_geometry, load_index
from fetalhc.data import shortcut as sc
from fetalhc.evaluate import groundtruth as gt

WIDTH, HEIGHT, SIZE = 128, 96, 64
FAST_OPTIONS = {"smoothgrad": {"n": 4}, "integrated_gradients": {"steps": 8, "tolerance": None},
                "occlusion": {"patch": 8, "stride": 8}}


def _phantoms(variant, n, seed=0, width=WIDTH, height=HEIGHT, **options):
    return sc.shortcut_phantoms(variant, n, seed=seed, width=width, height=height, **options)


def _marker_column(image, background):
    """Sub-pixel column of the marker read off the image: the coverage-weighted centroid."""
    room = 255.0 - background.astype(np.float64)
    alpha = np.where(room > 0, (image.astype(np.float64) - background) / np.maximum(room, 1),
                     0.0)
    columns = np.arange(image.shape[1])
    return float((alpha.sum(axis=0) * columns).sum() / alpha.sum())


# --------------------------------------------------------------------------- the generator
def test_marker_strip_maps_hc_to_position_and_back():
    strip = sc.marker_strip(WIDTH, HEIGHT, (100.0, 300.0))
    assert strip.x_for_hc(100.0) == pytest.approx(strip.x_start_px)
    assert strip.x_for_hc(300.0) == pytest.approx(strip.x_stop_px)
    hc = np.linspace(100.0, 300.0, 41)
    x = strip.x_for_hc(hc)
    np.testing.assert_allclose(np.diff(x, 2), 0.0, atol=1e-9)  # linear
    assert np.all(np.diff(x) > 0)
    np.testing.assert_allclose(strip.hc_for_x(x), hc, atol=1e-9)
    np.testing.assert_allclose(strip.x_for_hc(strip.hc_for_x(x)), x, atol=1e-9)
    assert strip.mm_per_px == pytest.approx(200.0 / (strip.x_stop_px - strip.x_start_px))
    with pytest.raises(ValueError, match="HC range"):
        strip.x_for_hc(99.0)
    with pytest.raises(ValueError, match="strip"):
        strip.hc_for_x(strip.x_stop_px + 1.0)
    # the square's coverage is centred on the column, sub-pixel
    for column in (20.0, 20.3, 57.77):
        coverage = strip.coverage(column)
        centroid = (coverage.sum(axis=0) * np.arange(WIDTH)).sum() / coverage.sum()
        assert centroid == pytest.approx(column, abs=1e-9)
        assert coverage.sum() == pytest.approx((2 * strip.half_size_px) ** 2)


@pytest.mark.parametrize("variant", sc.VARIANTS)
def test_rendered_marker_encodes_what_the_phantom_says(variant):
    for phantom in _phantoms(variant, 6, seed=3):
        column = _marker_column(phantom.image, phantom.background)
        assert column == pytest.approx(phantom.marker_x_px, abs=0.05)
        assert phantom.strip.hc_for_x(column) == pytest.approx(phantom.marker_hc_mm, abs=0.15)
        low, high = phantom.strip.hc_range_mm
        assert low <= phantom.hc_mm <= high
        if variant == "marker":
            assert phantom.marker_hc_mm == phantom.hc_mm
        else:  # the reference is the drawn outline's refit, as in HC18
            assert phantom.hc_mm == phantom.head_hc_mm
        if variant == "mixed":
            assert abs(phantom.marker_hc_mm - phantom.hc_mm) < 5 * sc.DEFAULT_MARKER_NOISE_MM
        # the drawn head: its refit HC matches its ellipse in pixels times the pixel size
        assert phantom.head_hc_mm == pytest.approx(
            phantom.ellipse.perimeter * phantom.pixel_size_mm, rel=0.01)


def test_masks_cover_the_marker_and_no_more_than_the_margin():
    for margin in (0, 2):
        for phantom in _phantoms("marker", 4, seed=1, marker_margin_px=margin):
            mask = phantom.marker_mask > 0
            covered = phantom.strip.coverage(phantom.marker_x_px) > 0
            assert np.all(mask[covered])
            grown = ndimage.binary_dilation(covered, np.ones((3, 3), bool), iterations=margin) \
                if margin else covered
            np.testing.assert_array_equal(mask, grown)
            changed = phantom.image != sc.marker_removed(phantom)
            assert changed.any() and np.all(mask[changed])
            assert not np.any(mask & (ndimage.binary_dilation(phantom.annotation > 0,
                                                              iterations=2)))


def test_same_seed_same_arrays_other_seed_other_arrays():
    first, again = _phantoms("mixed", 3, seed=7), _phantoms("mixed", 3, seed=7)
    for a, b in zip(first, again, strict=True):
        for name in ("image", "annotation", "marker_mask", "background", "background_no_head"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert (a.hc_mm, a.marker_hc_mm, a.ellipse) == (b.hc_mm, b.marker_hc_mm, b.ellipse)
    other = _phantoms("mixed", 3, seed=8)
    assert not np.array_equal(first[0].image, other[0].image)


def test_marker_variant_draws_an_uninformative_head():
    def correlation(variant):
        phantoms = _phantoms(variant, 150, seed=11, width=64, height=48)
        reference = [p.hc_mm for p in phantoms]
        return (np.corrcoef(reference, [p.head_hc_mm for p in phantoms])[0, 1],
                np.corrcoef(reference, [p.marker_hc_mm for p in phantoms])[0, 1])

    head, marker = correlation("marker")
    assert abs(head) < 0.2 and marker == pytest.approx(1.0)
    head, marker = correlation("contour")
    assert head == pytest.approx(1.0) and abs(marker) < 0.2
    head, marker = correlation("mixed")
    assert head == pytest.approx(1.0) and marker > 0.95


def test_interventions_change_only_what_they_should():
    for phantom in _phantoms("mixed", 4, seed=5):
        image, mask = phantom.image, phantom.marker_mask > 0
        low, high = phantom.strip.hc_range_mm
        target = low + high - phantom.marker_hc_mm
        moved = sc.moved_marker(phantom, target)
        moved_mask = sc.moved_marker_mask(phantom, target) > 0
        changed = moved != image
        assert changed.any() and np.all((mask | moved_mask)[changed])
        column = _marker_column(moved, phantom.background)
        assert phantom.strip.hc_for_x(column) == pytest.approx(target, abs=0.15)

        removed = sc.marker_removed(phantom)
        np.testing.assert_array_equal(removed, phantom.background)
        assert np.all(mask[removed != image])

        hidden = sc.head_hidden(phantom)
        head = ndimage.binary_fill_holes(phantom.annotation > 0)
        near_head = ndimage.binary_dilation(head, iterations=3)
        changed = hidden != image
        assert np.all(near_head[changed]) and not np.any(changed & mask)
        # the skull is gone: the outline is much darker on average
        outline = phantom.annotation > 0
        assert image[outline].mean() > 1.4 * hidden[outline].mean()
        np.testing.assert_array_equal(sc.render_with(phantom, marker=False, head=False),
                                      phantom.background_no_head)


def test_generator_refuses_bad_requests():
    with pytest.raises(ValueError, match="unknown shortcut variant 'decoy'"):
        sc.shortcut_phantoms("decoy", 2)
    with pytest.raises(ValueError, match="at least 32x32"):
        sc.shortcut_phantoms("marker", 1, width=16, height=16)
    with pytest.raises(ValueError, match="hc_range_mm"):
        sc.shortcut_phantoms("marker", 1, width=64, height=48, hc_range_mm=(300.0, 100.0))
    with pytest.raises(ValueError, match="does not fit"):
        sc.shortcut_phantoms("marker", 1, width=64, height=48, pixel_size_mm=0.1)


def test_written_dataset_is_hc18_and_byte_identical(tmp_path):
    options = {"n": 5, "seed": 4, "width": 64, "height": 48}
    first = sc.write_shortcut_dataset(tmp_path / "a", "marker", **options)
    second = sc.write_shortcut_dataset(tmp_path / "b", "marker", **options)
    files = sorted(path.relative_to(first) for path in first.rglob("*") if path.is_file())
    assert files == sorted(path.relative_to(second) for path in second.rglob("*")
                           if path.is_file())
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    index = load_index(first, "training", validate=True)
    assert list(index["filename"]) == [f"{i:03d}_HC.png" for i in range(5)]
    masks = sorted(path.name for path in (first / sc.MARKER_FOLDER).iterdir())
    assert masks == [sc.marker_mask_name(name) for name in index["filename"]]
    assert not set(masks) & set(index["filename"])
    phantoms = _phantoms("marker", 5, seed=4, width=64, height=48)
    np.testing.assert_allclose(index["hc_mm"], [p.hc_mm for p in phantoms], atol=0.005)
    from PIL import Image

    for name, phantom in zip(index["filename"], phantoms, strict=True):
        with Image.open(first / "training_set" / name) as image:
            np.testing.assert_array_equal(np.asarray(image), phantom.image)
        with Image.open(first / sc.MARKER_FOLDER / sc.marker_mask_name(name)) as image:
            np.testing.assert_array_equal(np.asarray(image), phantom.marker_mask)
    details = pd.read_csv(first / sc.DETAILS_FILE)
    np.testing.assert_allclose(details["marker_hc_mm"], [p.marker_hc_mm for p in phantoms],
                               atol=1e-3)
    with pytest.raises(FileExistsError, match="not empty"):
        sc.write_shortcut_dataset(first, "marker", **options)


# --------------------------------------------------------------------------- interventions
@pytest.fixture(scope="module")
def marker_inputs():
    return gt.prepare_shortcut_inputs(_phantoms("marker", 16, seed=21), SIZE)


def _strip_rows(strip):
    """Input rows holding the marker strip (with one row to spare each side)."""
    geometry = input_geometry(WIDTH, HEIGHT, SIZE)
    centre = (strip.y_px + 0.5) * geometry.height / HEIGHT - 0.5 + geometry.offset_y
    half = strip.half_size_px * geometry.scale
    return int(np.floor(centre - half - 1)), int(np.ceil(centre + half + 1))


def marker_reader(strip, pixel_size_mm):
    """A model that provably reads only the marker: a soft arg-max of the brightest pixel
    per column over the strip's rows, mapped through the strip's encoding, in input px."""
    geometry = input_geometry(WIDTH, HEIGHT, SIZE)
    top, bottom = _strip_rows(strip)
    columns = np.arange(SIZE, dtype=np.float64)
    original = (columns - geometry.offset_x + 0.5) * WIDTH / geometry.width - 0.5
    hc_of_column = (strip.hc_range_mm[0] + (original - strip.x_start_px) * strip.mm_per_px)
    inputs = keras.Input((SIZE, SIZE, 1))
    rows = keras.layers.Cropping2D(((top, SIZE - bottom), (0, 0)))(inputs)
    weights = keras.ops.softmax(6.0 * keras.ops.max(rows, axis=(1, 3)), axis=-1)
    hc_mm = keras.ops.sum(weights * hc_of_column.astype("float32")[None], axis=-1,
                          keepdims=True)
    outputs = keras.layers.Rescaling(1.0 / pixel_size_mm, name="hc_px_input")(hc_mm)
    return keras.Model(inputs, outputs, name="marker_reader")


def head_reader(strip):
    """A model that provably never sees the strip: bright pixels below it, counted."""
    _, bottom = _strip_rows(strip)
    inputs = keras.Input((SIZE, SIZE, 1))
    below = keras.layers.Cropping2D(((bottom + 2, 0), (0, 0)))(inputs)
    bright = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU(threshold=1.5)(below))
    outputs = keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(2000.0),
                                 name="hc_px_input")(bright)
    return keras.Model(inputs, outputs, name="head_reader")


def test_prepared_inputs_follow_the_pipeline(marker_inputs):
    inputs = marker_inputs
    n = len(inputs)
    for name in ("images", "moved", "removed", "hidden"):
        assert getattr(inputs, name).shape == (n, SIZE, SIZE, 1)
    # z-scored content, zero padding (the letterbox puts 8 rows above and below)
    content = inputs.images[:, 8:56]
    np.testing.assert_allclose(content.mean(axis=(1, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(content.std(axis=(1, 2, 3)), 1.0, atol=1e-3)
    assert np.all(inputs.images[:, :8] == 0) and np.all(inputs.images[:, 56:] == 0)
    np.testing.assert_allclose(inputs.pixel_size_mm,
                               [sc.default_pixel_size_mm(WIDTH, HEIGHT) * 2] * n, rtol=1e-6)
    # the marker mask holds the marker's brightest input pixel, and lies in the strip rows
    top, bottom = _strip_rows(sc.marker_strip(WIDTH, HEIGHT))
    for image, mask in zip(inputs.images[..., 0], inputs.marker_mask, strict=True):
        strip = image[top:bottom]
        row, column = np.unravel_index(np.argmax(strip), strip.shape)
        assert mask[top + row, column]
        assert not mask[:top].any() and not mask[bottom:].any()
    assert inputs.annotation.shape == (n, SIZE, SIZE) and inputs.annotation.max() == 1
    np.testing.assert_allclose(inputs.marker_encoded_change_mm,
                               340.0 + 120.0 - 2 * inputs.marker_hc_mm)


def test_intervention_check_tells_a_marker_reader_from_a_head_reader(marker_inputs):
    strip = sc.marker_strip(WIDTH, HEIGHT)
    size = float(marker_inputs.pixel_size_mm[0])
    marker = gt.intervention_check(marker_reader(strip, size), marker_inputs, n_boot=500)
    prediction = marker.per_image["prediction (mm)"]
    assert np.abs(prediction - marker.per_image["reference HC (mm)"]).max() < 5.0
    assert marker.uses_marker
    assert 0.9 < marker.slope_ci_low <= marker.slope <= marker.slope_ci_high < 1.1
    assert marker.median_abs_hidden_change_mm < 1.0 < marker.median_abs_moved_change_mm
    # the slope is the least-squares slope through the origin of the per-image changes
    encoded = marker.per_image["marker-encoded change (mm)"].to_numpy()
    moved = marker.per_image["marker moved change (mm)"].to_numpy()
    least_squares = np.linalg.lstsq(encoded[:, None], moved, rcond=None)[0][0]
    assert marker.slope == pytest.approx(least_squares, rel=1e-9)
    np.testing.assert_allclose(encoded, marker_inputs.moved_marker_hc_mm
                               - marker_inputs.marker_hc_mm)
    head = gt.intervention_check(head_reader(strip), marker_inputs, n_boot=500)
    assert not head.uses_marker
    assert abs(head.slope) < 0.1
    assert head.median_abs_hidden_change_mm > 10 * head.median_abs_moved_change_mm
    summary = head.summary()
    assert set(summary["quantity"]) >= {"median |head hidden change| (mm)",
                                        "slope CI low (mm per mm)", "uses marker (1 = yes)"}
    assert "0.5" in head.rule and "uses_marker" in head.rule
    # phantoms are prepared at the model's input size on the way in
    phantoms = _phantoms("marker", 3, seed=21)
    direct = gt.intervention_check(head_reader(strip), phantoms, n_boot=50)
    prepared = gt.intervention_check(head_reader(strip),
                                     gt.prepare_shortcut_inputs(phantoms, SIZE), n_boot=50)
    pd.testing.assert_frame_equal(direct.per_image, prepared.per_image)
    # the verdict moves with its thresholds
    strict = gt.intervention_check(marker_reader(strip, size), marker_inputs, min_slope=1.2,
                                   n_boot=200)
    assert not strict.uses_marker


def test_intervention_check_refuses_bad_input(marker_inputs):
    strip = sc.marker_strip(WIDTH, HEIGHT)
    model = marker_reader(strip, 1.0)
    with pytest.raises(ValueError, match="no shortcut phantoms"):
        gt.prepare_shortcut_inputs([], SIZE)
    phantom = _phantoms("marker", 1)[0]
    empty = dataclasses.replace(phantom, marker_mask=np.zeros_like(phantom.marker_mask))
    with pytest.raises(ValueError, match="phantom 0 has no marker"):
        gt.prepare_shortcut_inputs([empty], SIZE)
    with pytest.raises(ValueError, match="HC range"):
        gt.prepare_shortcut_inputs([phantom], SIZE, moved_hc_mm=1000.0)
    with pytest.raises(ValueError, match="moved markers encode no HC change"):
        gt.intervention_check(model, gt.prepare_shortcut_inputs(
            [phantom], SIZE, moved_hc_mm=phantom.marker_hc_mm))
    other = gt.prepare_shortcut_inputs([phantom], 32)
    with pytest.raises(ValueError, match="model takes 64x64"):
        gt.intervention_check(model, other)
    with pytest.raises(ValueError, match="unknown explanation method"):
        gt.marker_relevance(model, marker_inputs, methods=["nope"])
    with pytest.raises(ValueError, match="options given for occlusion"):
        gt.marker_relevance(model, marker_inputs, methods=["gradient"],
                            options={"occlusion": {"patch": 8}})
    with pytest.raises(ValueError, match="max_hidden_ratio"):
        gt.intervention_check(model, marker_inputs, max_hidden_ratio=0.0)


# --------------------------------------------------------------------------- trained model
def tiny_regressor(pixel_hc_mean, pixel_hc_sd, seed=0):
    """Conv - conv - flatten - dense; the last layer un-standardises HC (input px)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu",
                            name="conv1")(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv2")(x)
    standardised = keras.layers.Dense(1, name="dense")(keras.layers.Flatten()(x))
    outputs = keras.layers.Rescaling(pixel_hc_sd, offset=pixel_hc_mean,
                                     name="hc_px_input")(standardised)
    return keras.Model(inputs, standardised), keras.Model(inputs, outputs, name="tiny")


@pytest.fixture(scope="module")
def trained_marker_model():
    """A tiny CNN fitted on marker-variant phantoms (the head is uninformative there), and
    on their moved-marker renderings (labelled with the HC the moved marker encodes)."""
    train = gt.prepare_shortcut_inputs(_phantoms("marker", 128, seed=1), SIZE)
    images = np.concatenate([train.images, train.moved])
    target = (np.concatenate([train.hc_mm, train.moved_marker_hc_mm])
              / np.concatenate([train.pixel_size_mm, train.pixel_size_mm]))
    core, model = tiny_regressor(target.mean(), target.std())
    core.compile(keras.optimizers.Adam(2e-3), "mse")
    core.fit(images, (target - target.mean()) / target.std(), epochs=30, batch_size=32,
             verbose=0)
    return model


def test_a_model_trained_on_the_marker_uses_it(trained_marker_model, marker_inputs):
    result = gt.intervention_check(trained_marker_model, marker_inputs, n_boot=500)
    assert result.uses_marker, result.summary()
    assert result.slope_ci_low > 0.7  # about 0.92 with seeds 0, 1 and 2
    assert result.median_abs_hidden_change_mm < 0.2 * result.median_abs_moved_change_mm


@pytest.mark.parametrize("method", fe.available_methods())
def test_every_method_runs_through_marker_relevance(trained_marker_model, marker_inputs,
                                                    method):
    options = {method: FAST_OPTIONS[method]} if method in FAST_OPTIONS else None
    result = gt.marker_relevance(trained_marker_model, marker_inputs, methods=[method],
                                 options=options, grid=8, steps=2)
    frame = result.per_image
    assert len(frame) == len(marker_inputs) and set(frame["method"]) == {method}
    shares = [column for column in frame.columns if column.endswith("share")]
    assert len(shares) >= 8
    values = frame[shares].to_numpy()
    assert np.all(np.isfinite(frame["marker abs mass share"]))
    assert np.all((values[np.isfinite(values)] >= 0) & (values[np.isfinite(values)] <= 1))
    ranks = frame["marker region rank (1 = top)"]
    assert ranks.between(1, 64).all()
    assert np.all(np.isfinite(frame["MoRF first-k mean shift (mm)"]))
    summary = result.summary(n_boot=100)
    assert set(summary["metric"]) == set(gt.RELEVANCE_METRICS)
    assert (summary["ci_low"] <= summary["mean"]).all()


def test_marker_relevance_of_an_exact_map_is_a_perfect_score(marker_inputs):
    """The gradient of the marker reader lives on the strip's rows only: all relevance
    off the contour band, its region ranks first, and the perturbation finds the marker."""
    strip = sc.marker_strip(WIDTH, HEIGHT)
    model = marker_reader(strip, float(marker_inputs.pixel_size_mm[0]))
    result = gt.marker_relevance(model, marker_inputs, methods=["input_x_gradient"], steps=1)
    frame = result.per_image
    assert (frame["contour band abs mass share"] == 0).all()
    assert (frame["marker abs cue share"] == 1).all()
    assert frame["marker abs mass share"].median() > 0.5
    assert (frame["marker region rank (1 = top)"] == 1).mean() > 0.8
    assert frame["marker abs enrichment (x area share)"].min() > 5


def test_cue_influence_on_mixed_phantoms():
    inputs = gt.prepare_shortcut_inputs(_phantoms("mixed", 8, seed=31), SIZE)
    strip = sc.marker_strip(WIDTH, HEIGHT)
    comparisons, results = {}, {}
    for name, model in (("marker", marker_reader(strip, float(inputs.pixel_size_mm[0]))),
                        ("head", head_reader(strip))):
        effect = gt.intervention_check(model, inputs, n_boot=200)
        relevance = gt.marker_relevance(model, inputs, methods=["gradient"], steps=1)
        comparisons[name] = gt.cue_influence(effect, relevance)
        results[name] = effect, relevance
    marker, head = comparisons["marker"].per_image, comparisons["head"].per_image
    assert marker["intervention marker share"].min() > 0.95
    assert head["intervention marker share"].mean() < 0.6
    assert marker["marker abs cue share"].min() > 0.99
    assert head["marker abs cue share"].max() < 0.01
    summary = comparisons["head"].summary(n_boot=100)
    assert set(summary["metric"]) == {"intervention marker share",
                                      "marker positive cue share",
                                      "marker abs cue share",
                                      "abs share minus intervention share"}
    effect, relevance = results["head"]
    partial = gt.MarkerRelevance(relevance.per_image[relevance.per_image["image"] < 3])
    with pytest.raises(ValueError, match="same inputs"):
        gt.cue_influence(effect, partial)


@pytest.mark.slow
def test_fetalhc_train_reads_a_written_shortcut_dataset(tmp_path):
    """The written layout is what ``fetalhc.train`` reads; its model goes through the check."""
    from fetalhc import load_model, train

    data = sc.write_shortcut_dataset(tmp_path / "data", "marker", n=40, seed=2, width=64,
                                     height=48)
    config = {"data": {"image_size": 32, "val_fraction": 0.2, "test_fraction": 0.2},
              "model": {"backbone": "small_cnn", "dropout": 0.0},
              "train": {"epochs": 2, "batch_size": 8, "learning_rate": 3e-3, "seed": 0,
                        "tensorboard": False}}
    result = train(config, data, tmp_path / "run")
    model = load_model(result.run_dir / "model.keras")
    check = gt.intervention_check(model, _phantoms("marker", 6, seed=3, width=64, height=48),
                                  n_boot=50)
    assert np.isfinite(check.per_image.drop(columns="variant").to_numpy(float)).all()

"""Localisation against a drawn ellipse outline with known band, interior and distances."""

from __future__ import annotations

import numpy as np
import pytest

from fetalhc import evaluate

SIZE = 64


def ellipse_outline(cx=32.0, cy=30.0, a=20.0, b=14.0) -> np.ndarray:
    outline = np.zeros((SIZE, SIZE), np.float32)
    t = np.linspace(0, 2 * np.pi, 2000)
    x = np.round(cx + a * np.cos(t)).astype(int)
    y = np.round(cy + b * np.sin(t)).astype(int)
    outline[y, x] = 1.0
    return outline


@pytest.fixture(scope="module")
def annotation():
    return np.stack([ellipse_outline(), ellipse_outline(30, 34, 16, 12)])[..., None]


def test_contour_band_map_scores_maximal_localisation(annotation):
    pixel_size = np.array([0.5, 0.25])
    band_mm = 1.0
    band = evaluate.contour_distance_mm(annotation, pixel_size) <= band_mm
    scores = evaluate.localisation_scores(band.astype(np.float32), annotation, pixel_size,
                                          band_mm=band_mm)
    np.testing.assert_allclose(scores["band_mass_fraction"], 1.0)
    np.testing.assert_allclose(scores["band_ratio"], 1.0 / scores["band_area_fraction"])
    # No map can do better than putting all of its mass into the band.
    noise = np.random.default_rng(0).normal(size=(2, SIZE, SIZE))
    other = evaluate.localisation_scores(noise, annotation, pixel_size, band_mm=band_mm)
    assert np.all(other["band_ratio"] < scores["band_ratio"])
    assert np.all(np.abs(other["band_ratio"] - 1.0) < 0.35)  # noise is near chance
    assert np.all(scores["top_distance_mm"] <= band_mm)


def test_head_interior_and_inside_ratio(annotation):
    inside = evaluate.head_mask(annotation)
    # The filled ellipse has about pi * a * b pixels.
    assert inside[0].sum() == pytest.approx(np.pi * 20 * 14, rel=0.08)
    scores = evaluate.localisation_scores(inside.astype(np.float32), annotation, 1.0)
    np.testing.assert_allclose(scores["inside_mass_fraction"], 1.0)
    np.testing.assert_allclose(scores["inside_ratio"], 1.0 / scores["inside_area_fraction"])
    outside = evaluate.localisation_scores((~inside).astype(np.float32), annotation, 1.0)
    np.testing.assert_allclose(outside["inside_mass_fraction"], 0.0)
    # A pinhole in the outline is closed before filling.
    broken = annotation.copy()
    broken[0, 30, 52, 0] = 0.0
    assert evaluate.head_mask(broken)[0].sum() > 0.9 * inside[0].sum()


def test_top_pixel_distance_in_mm_and_relevance_modes():
    annotation = np.zeros((1, SIZE, SIZE), np.float32)
    annotation[0, 10, :] = 1.0  # a straight contour along row 10
    maps = np.zeros((1, SIZE, SIZE))
    maps[0, 20, 5] = 3.0  # 10 px below it
    maps[0, 40, 5] = -5.0  # 30 px below, negative
    scores = evaluate.localisation_scores(maps, annotation, 0.5, top_percent=0.03)
    assert scores.loc[0, "top_distance_mm"] == pytest.approx(5.0)
    absolute = evaluate.localisation_scores(maps, annotation, 0.5, relevance="abs",
                                            top_percent=0.03)
    assert absolute.loc[0, "top_distance_mm"] == pytest.approx(15.0)
    negative = evaluate.localisation_scores(-np.abs(maps), annotation, 0.5)
    assert np.isnan(negative.loc[0, "band_ratio"])
    with pytest.raises(ValueError, match="unknown relevance"):
        evaluate.localisation_scores(maps, annotation, 0.5, relevance="relu")
    with pytest.raises(ValueError, match="annotations"):
        evaluate.localisation_scores(maps[:, :32], annotation, 0.5)


@pytest.mark.slow
def test_real_hc18_outlines_band_and_head(hc18_path):
    from fetalhc.data import load_arrays, load_index

    index = load_index(hc18_path, "training", validate=False).head(4)
    arrays = load_arrays(index, image_size=64, with_annotation=True)
    annotation, pixel_size = arrays["annotation"], arrays["pixel_size_mm"]
    band = evaluate.contour_distance_mm(annotation, pixel_size) <= 3.0
    scores = evaluate.localisation_scores(band.astype(np.float32), annotation, pixel_size)
    np.testing.assert_allclose(scores["band_ratio"], 1.0 / scores["band_area_fraction"])
    # The filled head's perimeter-equivalent matches the reference HC roughly: an ellipse of
    # area A has a perimeter of at least 2 sqrt(pi A) (equality for a circle); the filled
    # mask also holds the outline's outer half-width (about 1 px of 64), hence the slack.
    area_mm2 = evaluate.head_mask(annotation).sum(axis=(1, 2)) * pixel_size ** 2
    lower_bound = 2 * np.sqrt(np.pi * area_mm2)
    assert np.all(lower_bound <= arrays["hc_mm"] * 1.15)
    assert np.all(lower_bound >= arrays["hc_mm"] * 0.75)

"""Integration on the real HC18 development copy (skips without it)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fetalhc.data import ellipse_perimeter, load_arrays, load_index, split_index
from fetalhc.data.check import refit_hc

TOLERANCE_MM = 0.05


@pytest.fixture(scope="module")
def training(hc18_path):
    return load_index(hc18_path, validate=False)


def test_index_counts(hc18_path, training):
    assert len(training) == 798
    assert training["group_id"].nunique() == 645
    assert training["filename"].str.contains("_2HC").sum() == 127
    assert (training["width_px"] != 800).any()  # sizes are read, not assumed
    assert training["pixel_size_mm"].between(0.04, 0.4).all()
    challenge = load_index(hc18_path, part="challenge", validate=False)
    assert len(challenge) == 335 and challenge["hc_mm"].isna().all()


def test_refit_agrees_with_csv_on_a_sample(training):
    sample = training.sample(40, random_state=0)
    table, problems = refit_hc(sample)
    assert problems == []
    assert len(table) == 40
    assert table["abs_difference_mm"].max() < TOLERANCE_MM


@pytest.mark.slow
def test_refit_agrees_with_csv_on_every_image(training):
    table, problems = refit_hc(training)
    assert problems == [] and len(table) == 798
    assert table["abs_difference_mm"].max() < TOLERANCE_MM
    assert table["abs_difference_mm"].mean() < 0.01


@pytest.mark.slow
def test_full_validation_passes(hc18_path):
    assert len(load_index(hc18_path, validate=True)) == 798


def test_pipeline_on_real_images(training):
    rows = pd.concat([training[training["width_px"] != 800].head(3),
                      training[training["width_px"] == 800].head(3)])
    arrays = load_arrays(rows, image_size=64, with_ellipse=True, with_annotation=True)
    long_side = np.maximum(rows["width_px"], rows["height_px"]).to_numpy()
    np.testing.assert_allclose(arrays["pixel_size_mm"],
                               rows["pixel_size_mm"] * long_side / 64, rtol=1e-5)
    perimeter = ellipse_perimeter(arrays["ellipse"][:, 2], arrays["ellipse"][:, 3])
    np.testing.assert_allclose(perimeter, arrays["hc_px_input"], rtol=1e-3)
    assert (arrays["annotation"].sum(axis=(1, 2, 3)) > 0.8 * perimeter).all()


def test_grouped_split_of_real_index(training):
    parts = split_index(training, seed=0)
    seen = [set(part["group_id"]) for part in parts.values()]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert sum(len(part) for part in parts.values()) == 798

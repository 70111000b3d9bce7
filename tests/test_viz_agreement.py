"""Bland–Altman and scatter figures: the numbers drawn and the unit on every axis."""

from __future__ import annotations

import numpy as np
import pytest

from fetalhc.viz.agreement import (
    bland_altman_figure,
    limits_of_agreement,
    save_figure,
    scatter_figure,
)

REFERENCE = np.array([100.0, 150.0, 200.0, 250.0])
PREDICTION = REFERENCE + np.array([2.0, -2.0, 4.0, 0.0])


def test_limits_of_agreement_known_answer():
    mean, low, high = limits_of_agreement(PREDICTION, REFERENCE)
    sd = np.std([2.0, -2.0, 4.0, 0.0], ddof=1)
    assert mean == pytest.approx(1.0)
    assert low == pytest.approx(1.0 - 1.96 * sd)
    assert high == pytest.approx(1.0 + 1.96 * sd)


def test_bland_altman_plots_differences_against_means_with_mm_axes(tmp_path):
    figure = bland_altman_figure(PREDICTION, REFERENCE)
    axes = figure.axes[0]
    offsets = axes.collections[0].get_offsets()
    np.testing.assert_allclose(offsets[:, 0], (PREDICTION + REFERENCE) / 2)
    np.testing.assert_allclose(offsets[:, 1], PREDICTION - REFERENCE)
    assert "(mm)" in axes.get_xlabel() and "(mm)" in axes.get_ylabel()
    horizontal = sorted(line.get_ydata()[0] for line in axes.lines)
    mean, low, high = limits_of_agreement(PREDICTION, REFERENCE)
    np.testing.assert_allclose(horizontal, sorted([mean, low, high, 0.0]))
    save_figure(figure, tmp_path / "ba.png")
    assert (tmp_path / "ba.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scatter_puts_reference_on_x_and_prediction_on_y():
    figure = scatter_figure(PREDICTION, REFERENCE)
    axes = figure.axes[0]
    offsets = axes.collections[0].get_offsets()
    np.testing.assert_allclose(offsets[:, 0], REFERENCE)
    np.testing.assert_allclose(offsets[:, 1], PREDICTION)
    assert axes.get_xlabel() == "reference HC (mm)"
    assert axes.get_ylabel() == "predicted HC (mm)"


def test_nan_pairs_are_dropped_and_all_nan_raises():
    figure = bland_altman_figure([1.0, np.nan, 3.0], [1.0, 2.0, 2.0])
    assert len(figure.axes[0].collections[0].get_offsets()) == 2
    with pytest.raises(ValueError, match="no finite"):
        scatter_figure([np.nan], [1.0])

"""AOPC, areas, bootstrap CIs and error splits on hand-computed examples."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fetalhc.evaluate import stats


def test_aopc_matches_hand_computed_example():
    # e = [1, 2, 3, 6] mm: e(0) - mean(e) = 1 - 3 = -2 mm; a flat curve scores 0.
    curves = np.array([[1.0, 2.0, 3.0, 6.0], [4.0, 4.0, 4.0, 4.0]])
    np.testing.assert_allclose(stats.aopc(curves), [-2.0, 0.0])
    np.testing.assert_allclose(stats.aopc([1.0, 2.0, 3.0, 6.0]), [-2.0])


def test_area_under_known_curves_is_normalised_by_the_fraction_axis():
    fractions = np.linspace(0, 1, 5)
    line = 10.0 * fractions  # mean value of a line from 0 to 10 is 5
    constant = np.full(5, 3.0)
    np.testing.assert_allclose(stats.area_under_curve(np.stack([line, constant]), fractions),
                               [5.0, 3.0])
    # On a partial axis the area is still a mean value: a line 0 → 4 over [0, 0.5] → 2.
    np.testing.assert_allclose(stats.area_under_curve([0.0, 2.0, 4.0], [0.0, 0.25, 0.5]), [2.0])
    with pytest.raises(ValueError, match="fractions"):
        stats.area_under_curve(np.zeros((2, 3)), fractions)


def test_bootstrap_ci_contains_mean_is_seeded_and_skips_nan():
    values = np.random.default_rng(3).normal(5.0, 2.0, size=200)
    mean, low, high, n = stats.bootstrap_ci(values, n_boot=1000, seed=1)
    assert n == 200 and low < mean < high
    assert mean == pytest.approx(values.mean())
    # The interval is roughly mean ± 1.96 SE.
    assert high - low == pytest.approx(2 * 1.96 * values.std() / np.sqrt(200), rel=0.2)
    assert stats.bootstrap_ci(values, n_boot=1000, seed=1) == (mean, low, high, n)
    with_nan = np.concatenate([values, [np.nan, np.nan]])
    assert stats.bootstrap_ci(with_nan, n_boot=1000, seed=1) == (mean, low, high, n)
    assert stats.bootstrap_ci([2.0, 2.0, 2.0])[:3] == (2.0, 2.0, 2.0)
    assert np.isnan(stats.bootstrap_ci([np.nan])[0])


def test_summarise_groups_methods_and_metrics():
    frame = pd.DataFrame({"method": ["a", "a", "b", "b"], "x_mm": [1.0, 3.0, 10.0, 10.0]})
    table = stats.summarise(frame, ["x_mm", "missing"], by="method", n_boot=200)
    assert list(table["method"]) == ["a", "b"]
    assert list(table["mean"]) == [2.0, 10.0]
    assert table.loc[1, "ci_low"] == table.loc[1, "ci_high"] == 10.0


def test_error_groups_by_threshold_and_quantiles():
    errors = np.array([0.5, 2.0, 2.5, 9.0, np.nan])
    labels = stats.error_groups(errors, threshold_mm=2.0)
    assert list(labels) == ["error <= 2.00 mm", "error <= 2.00 mm", "error > 2.00 mm",
                            "error > 2.00 mm", "no reference"]
    three = stats.error_groups(errors, threshold_mm=[1.0, 5.0])
    assert three[2] == "1.00 < error <= 5.00 mm"
    halves = stats.error_groups(errors[:4], quantiles=[0.5])
    assert (halves == "error <= 2.25 mm").sum() == 2
    assert list(stats.error_groups([np.nan, np.nan], quantiles=[0.5])) == ["no reference"] * 2
    with pytest.raises(ValueError, match="exactly one"):
        stats.error_groups(errors)
    with pytest.raises(ValueError, match="between 0 and 1"):
        stats.error_groups(errors, quantiles=[1.5])


def test_holm_matches_the_hand_computed_step_down():
    from fetalhc.evaluate.stats import holm

    # m = 4: sorted 0.01, 0.02, 0.03, 0.5 -> 0.04, max(0.04, 0.06), max(0.06, 0.06), 0.5
    adjusted = holm([0.03, 0.01, 0.5, 0.02, np.nan])
    np.testing.assert_allclose(adjusted[:4], [0.06, 0.04, 0.5, 0.06])
    assert np.isnan(adjusted[4])
    np.testing.assert_allclose(holm([0.4, 0.4]), [0.8, 0.8])
    assert np.isnan(holm([np.nan])).all()


def test_paired_test_separates_a_shift_from_symmetric_noise():
    from fetalhc.evaluate.stats import paired_test

    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 1.0, 200)
    shifted = paired_test(noise + 1.0, n_flips=2000)
    assert shifted["p"] == pytest.approx(1 / 2001) and shifted["ci_low"] > 0.5
    symmetric = paired_test(np.concatenate([noise, -noise]), n_flips=2000)
    assert symmetric["p"] > 0.9 and symmetric["ci_low"] < 0 < symmetric["ci_high"]
    single = paired_test([1.0, np.nan])
    assert single["n"] == 1 and np.isnan(single["p"])

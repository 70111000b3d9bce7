"""Metrics in mm: Keras metrics (accumulated over batches) and numpy functions agree with
hand-computed answers and with each other."""

from __future__ import annotations

import numpy as np
import pytest

from fetalhc.metrics import (
    MeanAbsoluteErrorMM,
    MeanDifferenceMM,
    PercentMeanAbsoluteError,
    RootMeanSquaredErrorMM,
    keras_metrics,
    mae_mm,
    mean_difference_mm,
    pmae_percent,
    rmse_mm,
    summarise_mm,
)

# references 100, 200, 50 mm; predictions 105, 190, 50 mm → errors +5, -10, 0
REFERENCE = np.array([100.0, 200.0, 50.0])
PIXEL = np.array([0.5, 1.0, 0.25])
PREDICTION_MM = np.array([105.0, 190.0, 50.0])


def _y():
    y_true = np.stack([REFERENCE, PIXEL], axis=1).astype("float32")
    y_pred = (PREDICTION_MM / PIXEL)[:, None].astype("float32")
    return y_true, y_pred


def test_numpy_metrics_known_answers():
    assert mae_mm(PREDICTION_MM, REFERENCE) == pytest.approx(5.0)
    assert rmse_mm(PREDICTION_MM, REFERENCE) == pytest.approx(np.sqrt(125 / 3))
    assert mean_difference_mm(PREDICTION_MM, REFERENCE) == pytest.approx(-5 / 3)
    assert pmae_percent(PREDICTION_MM, REFERENCE) == pytest.approx((5.0 + 5.0 + 0.0) / 3)


def test_keras_metrics_accumulate_over_batches():
    y_true, y_pred = _y()
    expected = {"mae_mm": 5.0, "rmse_mm": np.sqrt(125 / 3), "df_mm": -5 / 3,
                "pmae_percent": 10 / 3}
    for metric in keras_metrics():
        metric.update_state(y_true[:2], y_pred[:2])
        metric.update_state(y_true[2:], y_pred[2:])
        assert float(metric.result()) == pytest.approx(expected[metric.name], rel=1e-5)
        metric.reset_state()
        assert float(metric.result()) == 0.0


def test_keras_metrics_match_numpy_on_random_data():
    rng = np.random.default_rng(0)
    reference = rng.uniform(50, 340, 40)
    pixel = rng.uniform(0.1, 0.4, 40)
    prediction_mm = reference + rng.normal(0, 8, 40)
    y_true = np.stack([reference, pixel], 1).astype("float32")
    y_pred = (prediction_mm / pixel).astype("float32")[:, None]
    pairs = [(MeanAbsoluteErrorMM(), mae_mm), (RootMeanSquaredErrorMM(), rmse_mm),
             (MeanDifferenceMM(), mean_difference_mm), (PercentMeanAbsoluteError(), pmae_percent)]
    for metric, function in pairs:
        metric.update_state(y_true, y_pred)
        assert float(metric.result()) == pytest.approx(function(prediction_mm, reference),
                                                       rel=1e-4, abs=1e-3)


def test_signed_difference_is_prediction_minus_reference():
    assert mean_difference_mm([110.0], [100.0]) == pytest.approx(10.0)


def test_summary_ignores_missing_references_and_names_units():
    summary = summarise_mm([105.0, 190.0, 70.0], [100.0, 200.0, np.nan])
    assert summary["n"] == 2
    assert summary["mae_mm"] == pytest.approx(7.5)
    assert summary["df_mm"] == pytest.approx(-2.5)
    assert set(summary) >= {"mae_mm", "rmse_mm", "df_mm", "pmae_percent", "mae_sd_mm"}
    low, high = summary["limits_of_agreement_mm"]
    assert low < summary["df_mm"] < high


def test_length_mismatch_and_empty_input_raise():
    with pytest.raises(ValueError, match="differ in length"):
        mae_mm([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="no predictions"):
        mae_mm([], [])

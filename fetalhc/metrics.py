"""Metrics in millimetres: Keras metrics for ``fit`` and numpy functions for tables.

Keras metrics take the packed ``y_true = [hc_mm, pixel_size_mm]`` of ``fetalhc.losses``
and ``y_pred`` in input pixels. The numpy functions take predictions and references in mm.

- MAE (mm): mean |pred - ref|
- RMSE (mm): sqrt(mean (pred - ref)²)
- DF (mm): mean difference, signed ``pred - ref`` (positive = over-estimation)
- PMAE (%): mean of |pred - ref| / ref × 100
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


def prediction_error_mm(y_true, y_pred):
    """Signed error in mm, ``y_pred * pixel_size_mm - hc_mm`` (same packing as the losses)."""
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.reshape(ops.cast(y_pred, "float32"), (-1,))
    return y_pred * y_true[:, 1] - y_true[:, 0]


class _MillimetreErrorMetric(keras.metrics.Metric):
    """Accumulates sums of the error in mm over batches."""

    def __init__(self, name, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def _per_sample(self, error_mm, y_true):
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "float32")
        error = prediction_error_mm(y_true, y_pred)
        values = self._per_sample(error, y_true)
        if sample_weight is not None:
            weight = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
            self.total.assign_add(ops.sum(values * weight))
            self.count.assign_add(ops.sum(weight))
        else:
            self.total.assign_add(ops.sum(values))
            self.count.assign_add(ops.cast(ops.shape(values)[0], "float32"))

    def _mean(self):
        return ops.divide_no_nan(self.total, self.count)

    def result(self):
        return self._mean()

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)


@keras.saving.register_keras_serializable(package="fetalhc")
class MeanAbsoluteErrorMM(_MillimetreErrorMetric):
    """MAE in mm."""

    def __init__(self, name="mae_mm", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def _per_sample(self, error_mm, y_true):
        return ops.abs(error_mm)


@keras.saving.register_keras_serializable(package="fetalhc")
class RootMeanSquaredErrorMM(_MillimetreErrorMetric):
    """RMSE in mm."""

    def __init__(self, name="rmse_mm", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def _per_sample(self, error_mm, y_true):
        return ops.square(error_mm)

    def result(self):
        return ops.sqrt(self._mean())


@keras.saving.register_keras_serializable(package="fetalhc")
class MeanDifferenceMM(_MillimetreErrorMetric):
    """Mean signed difference (DF) in mm, prediction minus reference."""

    def __init__(self, name="df_mm", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def _per_sample(self, error_mm, y_true):
        return error_mm


@keras.saving.register_keras_serializable(package="fetalhc")
class PercentMeanAbsoluteError(_MillimetreErrorMetric):
    """PMAE in %: mean of |error| / reference HC × 100."""

    def __init__(self, name="pmae_percent", dtype=None):
        super().__init__(name=name, dtype=dtype)

    def _per_sample(self, error_mm, y_true):
        return 100.0 * ops.abs(error_mm) / y_true[:, 0]


def keras_metrics() -> list[keras.metrics.Metric]:
    """Fresh instances of the four metrics, for ``model.compile``."""
    return [
        MeanAbsoluteErrorMM(),
        RootMeanSquaredErrorMM(),
        MeanDifferenceMM(),
        PercentMeanAbsoluteError(),
    ]


# --------------------------------------------------------------------------- numpy ---


def _pair(prediction_mm, reference_mm):
    prediction = np.asarray(prediction_mm, dtype=np.float64).reshape(-1)
    reference = np.asarray(reference_mm, dtype=np.float64).reshape(-1)
    if prediction.shape != reference.shape:
        raise ValueError(
            f"prediction and reference differ in length: {prediction.size} vs {reference.size}"
        )
    if prediction.size == 0:
        raise ValueError("no predictions to score")
    return prediction, reference


def mae_mm(prediction_mm, reference_mm) -> float:
    prediction, reference = _pair(prediction_mm, reference_mm)
    return float(np.mean(np.abs(prediction - reference)))


def rmse_mm(prediction_mm, reference_mm) -> float:
    prediction, reference = _pair(prediction_mm, reference_mm)
    return float(np.sqrt(np.mean((prediction - reference) ** 2)))


def mean_difference_mm(prediction_mm, reference_mm) -> float:
    prediction, reference = _pair(prediction_mm, reference_mm)
    return float(np.mean(prediction - reference))


def pmae_percent(prediction_mm, reference_mm) -> float:
    prediction, reference = _pair(prediction_mm, reference_mm)
    return float(np.mean(np.abs(prediction - reference) / reference) * 100.0)


def summarise_mm(prediction_mm, reference_mm) -> dict[str, float]:
    """All metrics (and SDs) in one dict with units in the keys; ignores NaN references."""
    prediction = np.asarray(prediction_mm, dtype=np.float64).reshape(-1)
    reference = np.asarray(reference_mm, dtype=np.float64).reshape(-1)
    keep = np.isfinite(reference)
    prediction, reference = _pair(prediction[keep], reference[keep]) if keep.any() else _pair(
        [], [])
    error = prediction - reference
    return {
        "n": int(error.size),
        "mae_mm": float(np.mean(np.abs(error))),
        "mae_sd_mm": float(np.std(np.abs(error))),
        "rmse_mm": float(np.sqrt(np.mean(error**2))),
        "df_mm": float(np.mean(error)),
        "df_sd_mm": float(np.std(error)),
        "pmae_percent": float(np.mean(np.abs(error) / reference) * 100.0),
        "limits_of_agreement_mm": [
            float(np.mean(error) - 1.96 * np.std(error, ddof=1 if error.size > 1 else 0)),
            float(np.mean(error) + 1.96 * np.std(error, ddof=1 if error.size > 1 else 0)),
        ],
    }

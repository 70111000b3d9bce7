"""Losses in millimetres for a network that predicts HC in input pixels.

Packing of ``y_true`` for the HC output (``hc_px_input``): a float32 tensor of shape
``(B, 2)`` whose columns are ``[hc_mm, pixel_size_mm]`` (reference HC in mm, and mm per
pixel of the network input). The prediction ``y_pred`` has shape ``(B, 1)`` or ``(B,)`` in
input pixels; every loss first converts it to mm, ``hc_pred_mm = y_pred * pixel_size_mm``,
and compares it with ``hc_mm``. So the loss is in mm (mm² for MSE) with each image's own
pixel size, unlike a loss on pixels or on a max-normalised target.
"""

from __future__ import annotations

import keras
from keras import ops

LOSS_NAMES = ("mae", "mse", "huber")


def pack_targets(hc_mm, pixel_size_mm):
    """Stack ``hc_mm`` and ``pixel_size_mm`` (each ``(B,)``) into the ``(B, 2)`` y_true."""
    return ops.stack([ops.cast(hc_mm, "float32"), ops.cast(pixel_size_mm, "float32")], axis=-1)


def prediction_error_mm(y_true, y_pred):
    """Signed error in mm, ``y_pred * pixel_size_mm - hc_mm``, shape ``(B,)``."""
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.cast(y_pred, "float32")
    y_pred = ops.reshape(y_pred, (-1,))
    hc_mm = y_true[:, 0]
    pixel_size_mm = y_true[:, 1]
    return y_pred * pixel_size_mm - hc_mm


@keras.saving.register_keras_serializable(package="fetalhc")
class MillimetreMAE(keras.losses.Loss):
    """Mean absolute error in mm (see module doc for the ``y_true`` packing)."""

    def __init__(self, name="mae_mm", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        return ops.abs(prediction_error_mm(y_true, y_pred))


@keras.saving.register_keras_serializable(package="fetalhc")
class MillimetreMSE(keras.losses.Loss):
    """Mean squared error in mm² (see module doc for the ``y_true`` packing)."""

    def __init__(self, name="mse_mm", reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        return ops.square(prediction_error_mm(y_true, y_pred))


@keras.saving.register_keras_serializable(package="fetalhc")
class MillimetreHuber(keras.losses.Loss):
    """Huber loss on the error in mm: quadratic below ``delta_mm``, linear above.

    ``0.5 e²`` for ``|e| <= delta_mm``, ``delta_mm (|e| - 0.5 delta_mm)`` otherwise.
    """

    def __init__(
        self, delta_mm: float = 5.0, name="huber_mm", reduction="sum_over_batch_size", dtype=None
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not float(delta_mm) > 0:
            raise ValueError(f"huber delta_mm must be > 0, got {delta_mm}")
        self.delta_mm = float(delta_mm)

    def call(self, y_true, y_pred):
        error = ops.abs(prediction_error_mm(y_true, y_pred))
        quadratic = ops.minimum(error, self.delta_mm)
        linear = error - quadratic
        return 0.5 * ops.square(quadratic) + self.delta_mm * linear

    def get_config(self):
        config = super().get_config()
        config.update(delta_mm=self.delta_mm)
        return config


def get_loss(name: str, huber_delta_mm: float = 5.0) -> keras.losses.Loss:
    """``"mae"``, ``"mse"`` or ``"huber"`` → the loss in mm."""
    if name == "mae":
        return MillimetreMAE()
    if name == "mse":
        return MillimetreMSE()
    if name == "huber":
        return MillimetreHuber(delta_mm=huber_delta_mm)
    raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(LOSS_NAMES)}")

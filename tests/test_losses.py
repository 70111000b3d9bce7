"""Losses in mm: known answers, packing of y_true, serialisation, registry of names."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from fetalhc.losses import (
    MillimetreHuber,
    MillimetreMAE,
    MillimetreMSE,
    get_loss,
    pack_targets,
)

# hc_mm, pixel_size_mm; predictions in input px → [105, 190] mm → errors [+5, -10] mm
Y_TRUE = np.array([[100.0, 0.5], [200.0, 1.0]], dtype="float32")
Y_PRED = np.array([[210.0], [190.0]], dtype="float32")


def test_mae_mse_in_millimetres_known_answer():
    assert float(MillimetreMAE()(Y_TRUE, Y_PRED)) == pytest.approx(7.5)
    assert float(MillimetreMSE()(Y_TRUE, Y_PRED)) == pytest.approx((25 + 100) / 2)


def test_huber_quadratic_below_delta_linear_above():
    # |5| <= 5: 0.5 * 25 = 12.5 ; |10| > 5: 5 * (10 - 2.5) = 37.5
    assert float(MillimetreHuber(delta_mm=5.0)(Y_TRUE, Y_PRED)) == pytest.approx(25.0)
    # large delta: purely quadratic = 0.5 * MSE
    assert float(MillimetreHuber(delta_mm=100.0)(Y_TRUE, Y_PRED)) == pytest.approx(31.25)


def test_loss_uses_each_images_pixel_size():
    # the same prediction in px is right for one pixel size and wrong for another
    y_true = np.array([[100.0, 1.0], [100.0, 0.5]], dtype="float32")
    y_pred = np.array([[100.0], [100.0]], dtype="float32")
    per_sample = MillimetreMAE(reduction=None)(y_true, y_pred)
    np.testing.assert_allclose(np.asarray(per_sample), [0.0, 50.0])


def test_prediction_of_shape_b_or_b1_gives_same_loss():
    flat = float(MillimetreMAE()(Y_TRUE, Y_PRED[:, 0]))
    assert flat == pytest.approx(float(MillimetreMAE()(Y_TRUE, Y_PRED)))


def test_pack_targets_column_order():
    packed = np.asarray(pack_targets(np.array([150.0, 60.0]), np.array([0.2, 0.3])))
    np.testing.assert_allclose(packed, [[150.0, 0.2], [60.0, 0.3]], rtol=1e-6)


def test_get_loss_names_and_unknown_name_lists_known():
    assert isinstance(get_loss("mae"), MillimetreMAE)
    assert isinstance(get_loss("mse"), MillimetreMSE)
    huber = get_loss("huber", huber_delta_mm=2.5)
    assert isinstance(huber, MillimetreHuber) and huber.delta_mm == 2.5
    with pytest.raises(ValueError, match="known losses: mae, mse, huber"):
        get_loss("l1")


def test_huber_rejects_non_positive_delta():
    with pytest.raises(ValueError, match="delta_mm"):
        MillimetreHuber(delta_mm=0.0)


def test_losses_serialise_with_config():
    for loss in (MillimetreMAE(), MillimetreMSE(), MillimetreHuber(delta_mm=3.0)):
        restored = keras.losses.deserialize(keras.losses.serialize(loss))
        assert type(restored) is type(loss)
        assert float(restored(Y_TRUE, Y_PRED)) == pytest.approx(float(loss(Y_TRUE, Y_PRED)))
    assert keras.losses.deserialize(
        keras.losses.serialize(MillimetreHuber(delta_mm=3.0))).delta_mm == 3.0

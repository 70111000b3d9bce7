"""Weight averaging (``[train] ema_momentum``): the average itself on a known sequence of
weights, the swap around validation, and a run whose kept model holds the averaged weights."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from fetalhc.training import resolve_config, train
from fetalhc.training.averaging import WeightAverage, effective_momentum


def one_weight_model(value: float) -> keras.Model:
    inputs = keras.Input((1,))
    layer = keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")
    model = keras.Model(inputs, layer(inputs))
    model.set_weights([np.full((1, 1), value, np.float32)])
    return model


def test_effective_momentum_warms_up_then_holds():
    assert effective_momentum(0.99, 0) == pytest.approx(0.1)
    assert effective_momentum(0.99, 10) == pytest.approx(11 / 20)
    assert effective_momentum(0.99, 10_000) == pytest.approx(0.99)


def test_average_of_a_known_weight_sequence_and_the_validation_swap():
    model = one_weight_model(0.0)
    averaging = WeightAverage(0.5)
    averaging.set_model(model)
    averaging.on_train_begin()
    expected = 0.0
    for step, value in enumerate([4.0, 8.0, 2.0]):
        model.set_weights([np.full((1, 1), value, np.float32)])
        averaging.on_train_batch_end(step)
        rate = 1.0 - effective_momentum(0.5, step)
        expected += rate * (value - expected)
    averaging.on_test_begin()  # validation sees the average
    assert float(model.get_weights()[0][0, 0]) == pytest.approx(expected, rel=1e-6)
    averaging.on_train_batch_end(99)  # no update while swapped in
    averaging.on_test_end()  # training goes on from its own weights
    assert float(model.get_weights()[0][0, 0]) == 2.0
    with averaging.averaged():
        assert float(model.get_weights()[0][0, 0]) == pytest.approx(expected, rel=1e-6)
    assert float(model.get_weights()[0][0, 0]) == 2.0
    averaging.on_train_end()  # the model ends with the average
    assert float(model.get_weights()[0][0, 0]) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("momentum", [0.0, 1.0, -0.5])
def test_momentum_outside_the_open_interval_is_refused(momentum):
    with pytest.raises(ValueError, match="ema_momentum must be in"):
        WeightAverage(momentum)


def test_config_range_of_ema_momentum():
    assert resolve_config(None)["train"]["ema_momentum"] == 0.0
    with pytest.raises(ValueError, match=r"\[train\] ema_momentum must be in \[0, 1\)"):
        resolve_config({"train": {"ema_momentum": 1.0}})


def test_a_run_with_averaging_keeps_the_averaged_model(phantoms, tmp_path):
    import fetalhc

    config = {
        "data": {"image_size": 32, "val_fraction": 0.2, "test_fraction": 0.2},
        "model": {"backbone": "small_cnn", "dropout": 0.0, "filters": [4, 8]},
        "train": {"epochs": 2, "batch_size": 8, "learning_rate": 3e-3, "seed": 0,
                  "ema_momentum": 0.9, "patience": 5, "tensorboard": False},
    }
    result = train(config, phantoms, tmp_path / "run")
    history = result.history
    best = int(np.argmin(history["val_mae_mm"].to_numpy()))
    # the kept model is the best epoch's averaged model: evaluating it gives the logged val MAE
    from fetalhc.training import evaluate_split, load_run, run_split_index

    run = load_run(tmp_path / "run")
    model = fetalhc.load_model(result.model_path)
    _, scores = evaluate_split(model, run_split_index(run.config, phantoms, "val"), 32)
    assert scores["mae_mm"] == pytest.approx(float(history["val_mae_mm"].iloc[best]), rel=1e-3)

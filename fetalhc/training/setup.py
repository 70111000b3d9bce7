"""What a training run is made of: the compiled model, the input datasets and the targets.

``build_and_compile`` turns a resolved config into the model, optimizer and loss;
``fit_dataset`` turns index rows into the ``(image, target)`` dataset both training loops
consume (targets packed by ``fetalhc.losses.pack_targets``, plus the standardised ellipse
when the model has the auxiliary output); ``hc_statistics`` and ``monitor_name`` give the
values a new run records in its config. Nothing here reads or writes the run folder.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from fetalhc.models import ELLIPSE_OUTPUT, HC_OUTPUT


def hc_statistics(index: pd.DataFrame, image_size: int) -> tuple[float, float]:
    """Mean and SD of HC in input pixels over ``index`` (for output standardisation)."""
    long_side = np.maximum(index["width_px"].to_numpy(float), index["height_px"].to_numpy(float))
    pixel_size_input = index["pixel_size_mm"].to_numpy(float) * long_side / image_size
    hc_px = index["hc_mm"].to_numpy(float) / pixel_size_input
    std = float(np.std(hc_px)) if len(hc_px) > 1 else 0.0
    return float(np.mean(hc_px)), std if std > 1e-6 else max(1.0, 0.1 * float(np.mean(hc_px)))


def monitor_name(aux: bool, has_val: bool) -> str:
    """The logged value early stopping, learning-rate reduction and the best checkpoint
    watch: the HC MAE in mm, on the validation split when there is one."""
    metric = "hc_px_input_mae_mm" if aux else "mae_mm"
    return f"val_{metric}" if has_val else metric


def standardise_ellipse(ellipse, image_size: int):
    """Dataset ``ellipse`` (cx, cy, a, b in input px, sin 2θ, cos 2θ) → the 6 standardised
    values of the auxiliary output: centre ``(c - S/2) / (S/4)``, semi-axes
    ``(a - S/4) / (S/8)``, sin and cos unchanged. Works on numpy arrays and tensors."""
    size = float(image_size)
    centre = (ellipse[..., 0:2] - size / 2) / (size / 4)
    axes = (ellipse[..., 2:4] - size / 4) / (size / 8)
    angle = ellipse[..., 4:6]
    if isinstance(ellipse, np.ndarray):
        return np.concatenate([centre, axes, angle], axis=-1)
    import tensorflow as tf

    return tf.concat([centre, axes, angle], axis=-1)


def fit_dataset(index, config: dict[str, Any], training: bool, batch_size: int | None = None):
    """The ``(image, target)`` ``tf.data`` pipeline of ``index`` for training (shuffled,
    augmented as configured, repeated when ``steps_per_epoch`` is set) or validation."""
    import tensorflow as tf

    from fetalhc.data import make_dataset
    from fetalhc.losses import pack_targets

    data, model_cfg, train_cfg = config["data"], config["model"], config["train"]
    aux = model_cfg["aux_ellipse"]
    size = data["image_size"]
    dataset = make_dataset(
        index, image_size=size, batch_size=batch_size or train_cfg["batch_size"],
        shuffle=training,
        augment=bool(data["augment"]) and training, with_ellipse=aux,
        cache=data["cache"], seed=train_cfg["seed"],
    )

    def to_xy(element):
        y = pack_targets(element["hc_mm"], element["pixel_size_mm"])
        if aux:
            y = {HC_OUTPUT: y, ELLIPSE_OUTPUT: standardise_ellipse(element["ellipse"], size)}
        return element["image"], y

    dataset = dataset.map(to_xy, num_parallel_calls=tf.data.AUTOTUNE)
    if training and train_cfg["steps_per_epoch"]:
        dataset = dataset.repeat()
    return dataset


def build_and_compile(config: dict[str, Any], learning_rate: float):
    """The model, optimizer and loss of ``config`` (call inside a strategy's scope)."""
    import keras

    from fetalhc.losses import get_loss
    from fetalhc.metrics import keras_metrics
    from fetalhc.models import build_model

    data, model_cfg, train_cfg = config["data"], config["model"], config["train"]
    size = data["image_size"]
    run_info = config["run"]
    small_net_options = {}
    if model_cfg["filters"]:
        small_net_options["small_cnn_filters"] = tuple(model_cfg["filters"])
    model = build_model(
        model_cfg["backbone"],
        input_shape=(size, size, 1),
        weights=None if model_cfg["weights"] in ("", "none") else model_cfg["weights"],
        pooling=model_cfg["pooling"],
        dropout=model_cfg["dropout"],
        dense_units=tuple(model_cfg["dense_units"]),
        aux_ellipse=model_cfg["aux_ellipse"],
        hc_mean_px=run_info["hc_mean_px"],
        hc_std_px=run_info["hc_std_px"],
        bn_momentum=model_cfg["bn_momentum"],
        alpha=model_cfg["alpha"] or None,
        convs_per_block=model_cfg["convs_per_block"],
        precision=train_cfg["precision"],
        **small_net_options,
    )
    loss = get_loss(train_cfg["loss"], huber_delta_mm=train_cfg["huber_delta_mm"])
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
    if model_cfg["aux_ellipse"]:
        model.compile(
            optimizer=optimizer,
            loss={HC_OUTPUT: loss, ELLIPSE_OUTPUT: keras.losses.MeanSquaredError()},
            loss_weights={HC_OUTPUT: 1.0, ELLIPSE_OUTPUT: train_cfg["aux_weight"]},
            metrics={HC_OUTPUT: keras_metrics()},
        )
    else:
        model.compile(optimizer=optimizer, loss=loss, metrics=keras_metrics())

    return model, optimizer, loss

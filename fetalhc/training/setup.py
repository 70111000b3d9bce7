"""What a training run is made of: the compiled model, the input datasets and the targets.

``build_and_compile`` turns a resolved config into the model, optimizer and loss;
``fit_dataset`` turns index rows into the ``(image, target)`` dataset both training loops
consume (targets packed by ``fetalhc.losses.pack_targets``, plus the standardised ellipse
when the model has the auxiliary output); ``hc_statistics`` and ``monitor_name`` give the
values a new run records in its config. Nothing here reads or writes the run folder.

A crop run (``[data] crop_margin > 0``) trains on crops around the REFERENCE ellipse
(:func:`training_index`; the augmentation's shifts and zooms stand in for a localiser's
errors). It validates on the crops a prediction makes, around its localiser's ellipses
(:func:`validation_index`), so the epoch it keeps is chosen on what ``predict`` will see;
without a localiser it validates on reference crops (perfect localisation: optimistic).
A prediction places the crops with the localiser (``fetalhc.models.localise``):
:func:`prediction_index` gives the rows a run's model predicts, :func:`localiser_file`
where its localiser is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fetalhc.data.crop import REGION_COLUMNS, input_pixel_size_mm
from fetalhc.models import ELLIPSE_OUTPUT, HC_OUTPUT
from fetalhc.models.ellipse_head import standardise_ellipse

__all__ = ["build_and_compile", "check_localiser_split", "crop_margin_of", "fit_dataset", "hc_statistics",
           "localiser_file", "monitor_name", "prediction_index", "standardise_ellipse",
           "training_index", "validation_index"]

RUN_MODEL_FILE = "model.keras"  # the model of a run folder (run_folder.MODEL_FILE)
RUN_CONFIG_FILE = "config.toml"  # its config (run_folder.CONFIG_FILE)


def crop_margin_of(config: dict[str, Any]) -> float:
    """``[data] crop_margin`` of a config (0.0, no crop, for a config without it)."""
    return float(config.get("data", {}).get("crop_margin", 0.0))


def training_index(index: pd.DataFrame, crop_margin: float) -> pd.DataFrame:
    """The rows as a run with ``crop_margin`` trains on them: unchanged for 0 (whole
    images) or when they already carry regions; else with the regions of crops around the
    reference (annotation) ellipses (``fetalhc.data.reference_regions``)."""
    from fetalhc.data import reference_regions

    if crop_margin <= 0 or all(column in index.columns for column in REGION_COLUMNS):
        return index
    return reference_regions(index, crop_margin)


def localiser_file(config: dict[str, Any], run_dir=None) -> Path | None:
    """The model file of a crop run's localiser (``[data] localiser``: a run folder or a
    ``.keras`` file; a relative path is taken from the working directory, and a run's
    ``[run] localiser_file`` records it absolute), or ``None`` when there is none. A
    relative ``[run] localiser_file`` (a published model's, ``models/<name>/``) is taken
    from ``run_dir``, the run folder holding the config. ``FileNotFoundError`` naming the
    key when it is missing."""
    recorded = config.get("run", {}).get("localiser_file")
    given = recorded or config.get("data", {}).get("localiser", "")
    if not given:
        return None
    path = Path(given)
    if recorded and not path.is_absolute() and run_dir is not None:
        path = Path(run_dir) / path
    if path.is_dir():
        path = path / RUN_MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"[data] localiser {given}: no such run folder (with a "
                                f"{RUN_MODEL_FILE}) or model file")
    return path.resolve()


def check_localiser_split(localiser: Path, split: dict[str, Any]) -> None:
    """``ValueError`` when the localiser ``localiser`` (a model file) was trained on an image
    of this run's val or test split, as its run folder's ``config.toml`` records: its
    crops there would be better than a prediction's, and the validation or test MAE
    optimistic. A localiser without a run folder config is not checked."""
    config_path = Path(localiser).parent / RUN_CONFIG_FILE
    if not config_path.is_file():
        return
    from fetalhc.training.config import resolve_config

    trained = set(resolve_config(config_path, allow_resolved=True)
                  .get("split", {}).get("train", []))
    for part in ("val", "test"):
        leaked = sorted(trained & set(split.get(part, [])))
        if leaked:
            raise ValueError(
                f"[data] localiser {config_path.parent} was trained on {len(leaked)} image(s) "
                f"of this run's {part} split, e.g. {leaked[0]}: its crops there would be "
                "optimistic; train the localiser on the same split (same [data] split_seed "
                "and fractions)")


def prediction_index(config: dict[str, Any], index: pd.DataFrame, localiser=None,
                     batch_size: int = 32, run_dir=None) -> pd.DataFrame:
    """The rows a run's model predicts: ``index`` unchanged for a whole-image run; for a
    crop run (``[data] crop_margin > 0``) with the region columns of crops around the
    localiser's ellipses (``fetalhc.models.localise.localised_index``), never from the
    reference. ``localiser``: a loaded localiser model, or ``None`` for the run's
    (:func:`localiser_file`, ``run_dir`` = the run folder); ``ValueError`` when a crop run
    has neither."""
    margin = crop_margin_of(config)
    if margin <= 0:
        return index
    from fetalhc.models import load_model, localised_index

    if localiser is None:
        path = localiser_file(config, run_dir)
        if path is None:
            raise ValueError("this crop run ([data] crop_margin > 0) has no [data] localiser: "
                             "give a stage-1 model with an 'ellipse' output to place its crops")
        localiser = load_model(path)
    return localised_index(localiser, index, None, margin, batch_size=batch_size)


def validation_index(config: dict[str, Any], index: pd.DataFrame, run_dir=None,
                     batch_size: int = 32) -> pd.DataFrame:
    """The rows a run validates on while it trains: for a crop run with a localiser the
    crops a prediction makes (:func:`prediction_index`), so the best epoch is chosen on
    them; for one without a localiser reference crops (:func:`training_index`); whole
    images unchanged."""
    margin = crop_margin_of(config)
    if margin > 0 and localiser_file(config, run_dir) is not None:
        return prediction_index(config, index, batch_size=batch_size, run_dir=run_dir)
    return training_index(index, margin)


def hc_statistics(index: pd.DataFrame, image_size: int,
                  crop_margin: float = 0.0) -> tuple[float, float]:
    """Mean and SD of HC in input pixels over ``index`` (for output standardisation): of the
    letterboxed image, or with ``crop_margin > 0`` (or region columns) of the crop, whose
    pixel size is ``pixel_size_mm × side / S``."""
    index = training_index(index, crop_margin)
    pixel_size_input = input_pixel_size_mm(index, image_size)
    hc_px = index["hc_mm"].to_numpy(float) / pixel_size_input
    std = float(np.std(hc_px)) if len(hc_px) > 1 else 0.0
    return float(np.mean(hc_px)), std if std > 1e-6 else max(1.0, 0.1 * float(np.mean(hc_px)))


def monitor_name(aux: bool, has_val: bool) -> str:
    """The logged value early stopping, learning-rate reduction and the best checkpoint
    watch: the HC MAE in mm, on the validation split when there is one."""
    metric = "hc_px_input_mae_mm" if aux else "mae_mm"
    return f"val_{metric}" if has_val else metric


def augmentation_of(config: dict[str, Any]):
    """The training augmentation of a config: ``None`` without ``[data] augment``, else
    :class:`fetalhc.data.Augmentation` with the config's shift and zoom (defaults otherwise)."""
    from fetalhc.data.pipeline import Augmentation

    data = config["data"]
    if not data["augment"]:
        return None
    zoom = data.get("augment_zoom", 0.1)
    return Augmentation(max_translation=data.get("augment_translation", 0.05),
                        scale_range=(1.0 - zoom, 1.0 + zoom))


def fit_dataset(index, config: dict[str, Any], training: bool, batch_size: int | None = None):
    """The ``(image, target)`` ``tf.data`` pipeline of ``index`` for training (shuffled,
    augmented as configured, repeated when ``steps_per_epoch`` is set) or validation; a
    crop run's rows get reference regions (:func:`training_index`)."""
    import tensorflow as tf

    from fetalhc.data import make_dataset
    from fetalhc.losses import pack_targets

    data, model_cfg, train_cfg = config["data"], config["model"], config["train"]
    aux = model_cfg["aux_ellipse"]
    size = data["image_size"]
    dataset = make_dataset(
        training_index(index, crop_margin_of(config)), image_size=size, batch_size=batch_size or train_cfg["batch_size"],
        shuffle=training,
        augment=(augmentation_of(config) or False) if training else False, with_ellipse=aux,
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

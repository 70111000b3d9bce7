"""``train``: config → grouped split → ``model.fit`` → run folder.

``train`` resolves the config, prepares the run folder (:mod:`fetalhc.training.run_folder`),
builds the model (:mod:`fetalhc.training.setup`) under the configured strategy
(:mod:`fetalhc.training.strategy`) and fits it with fetalhc's own callbacks (the epoch
timer and the atomic best checkpoint below, plus Keras' TerminateOnNaN, learning-rate
schedule, EarlyStopping, CSVLogger, TensorBoard and BackupAndRestore). The strategy
``multiworker`` is handed to :func:`fetalhc.training.multiworker.train_multiworker`, because
Keras 3's ``model.fit`` cannot run it (keras-team/keras#20585).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import keras

from fetalhc.training.config import cosine_learning_rate, resolve_config
from fetalhc.training.multiworker import train_multiworker
from fetalhc.training.run_folder import (
    BACKUP_DIR,
    HISTORY_FILE,
    LOGS_DIR,
    MODEL_FILE,
    TrainResult,
    backup_epoch,
    history_summary,
    prepare_run,
    read_history,
    run_split_index,
    save_model_atomically,
    truncate_history,
    write_metrics,
)
from fetalhc.training.setup import build_and_compile, fit_dataset
from fetalhc.training.strategy import (
    make_strategy,
    scaled_batch_and_learning_rate,
    synchronise_batch_norm,
)


class EpochTimer(keras.callbacks.Callback):
    """Adds ``epoch_seconds`` (wall time of the epoch, validation included) to the logs.

    List it before ``CSVLogger`` so that ``history.csv`` records it."""

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = time.perf_counter() - self._started


class AtomicBestCheckpoint(keras.callbacks.Callback):
    """Save the model to ``model_path`` whenever ``monitor`` improves on ``best`` (lower is
    better; non-finite values never count), atomically (:func:`save_model_atomically`)."""

    def __init__(self, model_path: Path, monitor: str, best: float = math.inf):
        super().__init__()
        self.model_path = Path(model_path)
        self.monitor = monitor
        self.best = best

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)) or float(value) >= self.best:
            return
        self.best = float(value)
        save_model_atomically(self.model, self.model_path)


def _resumed_best(history_path: Path, backup_dir: Path, model_path: Path, monitor: str) -> float:
    """On resume: drop the history rows of epochs not backed up and return the best
    monitored value so far (``inf`` when there is no checkpoint to beat)."""
    truncate_history(history_path, backup_epoch(backup_dir))
    previous = read_history(history_path)
    best = math.inf
    if monitor in previous.columns and len(previous):
        best = float(previous[monitor].min())
    return best if model_path.is_file() else math.inf


def _own_callbacks(train_cfg: dict[str, Any], out_dir: Path, monitor: str, learning_rate: float,
                   best: float) -> list:
    """fetalhc's callbacks, in order (the caller's callbacks come after them)."""
    if train_cfg["schedule"] == "cosine":
        schedule = keras.callbacks.LearningRateScheduler(
            lambda epoch, _: cosine_learning_rate(epoch, train_cfg["epochs"], learning_rate,
                                                  train_cfg["min_learning_rate"]))
    else:
        schedule = keras.callbacks.ReduceLROnPlateau(
            monitor=monitor, factor=train_cfg["reduce_lr_factor"],
            patience=train_cfg["reduce_lr_patience"], min_lr=train_cfg["min_learning_rate"],
            mode="min",
        )
    callbacks = [
        keras.callbacks.TerminateOnNaN(),
        EpochTimer(),  # before CSVLogger, which then records epoch_seconds
        schedule,
        keras.callbacks.EarlyStopping(monitor=monitor, patience=train_cfg["patience"], mode="min"),
        AtomicBestCheckpoint(out_dir / MODEL_FILE, monitor, best),
        keras.callbacks.CSVLogger(str(out_dir / HISTORY_FILE), append=True),
    ]
    if train_cfg["tensorboard"]:
        callbacks.append(keras.callbacks.TensorBoard(
            log_dir=str(out_dir / LOGS_DIR), write_graph=False, profile_batch=0))
    callbacks.append(keras.callbacks.BackupAndRestore(str(out_dir / BACKUP_DIR)))
    return callbacks


def train(config: dict[str, Any] | str | os.PathLike | None, data_dir: str | os.PathLike,
          out_dir: str | os.PathLike, callbacks=(), resume: bool = False,
          overwrite: bool = False, overrides: dict[str, Any] | None = None,
          verbose: int = 0) -> TrainResult:
    """Train a regression CNN as ``config`` says and write the run folder ``out_dir``.

    ``callbacks`` are extra Keras callbacks appended after fetalhc's own (best checkpoint,
    BackupAndRestore, EarlyStopping, ReduceLROnPlateau, TensorBoard, CSVLogger,
    TerminateOnNaN). ``resume`` continues a run killed in ``out_dir`` (same config; the
    epoch count may change); ``overwrite`` replaces the run in ``out_dir``.
    """
    data_dir = Path(data_dir)
    out_dir = Path(out_dir)
    config = resolve_config(config, overrides=overrides)
    if config["train"]["strategy"] == "multiworker":  # keras fit cannot (keras#20585)
        return train_multiworker(config, data_dir, out_dir, callbacks=callbacks, resume=resume,
                                 overwrite=overwrite, verbose=verbose)
    config, resuming = prepare_run(config, data_dir, out_dir, resume, overwrite)
    train_cfg = config["train"]
    strategy = make_strategy(train_cfg["strategy"])
    global_batch, learning_rate = scaled_batch_and_learning_rate(
        train_cfg, strategy.num_replicas_in_sync)
    monitor = config["run"]["monitor"]
    has_val = bool(config["split"].get("val"))

    train_index = run_split_index(config, data_dir, "train")
    val_index = run_split_index(config, data_dir, "val") if has_val else None

    keras.utils.set_random_seed(train_cfg["seed"])
    with strategy.scope():
        model, _, _ = build_and_compile(config, learning_rate)
        if strategy.num_replicas_in_sync > 1:
            synchronise_batch_norm(model)

    history_path = out_dir / HISTORY_FILE
    model_path = out_dir / MODEL_FILE
    best = math.inf
    if resuming:
        best = _resumed_best(history_path, out_dir / BACKUP_DIR, model_path, monitor)

    fit_kwargs = {}
    if train_cfg["steps_per_epoch"]:
        fit_kwargs["steps_per_epoch"] = train_cfg["steps_per_epoch"]
    model.fit(
        fit_dataset(train_index, config, training=True, batch_size=global_batch),
        validation_data=fit_dataset(val_index, config, training=False,
                                    batch_size=global_batch) if has_val else None,
        epochs=train_cfg["epochs"],
        callbacks=[*_own_callbacks(train_cfg, out_dir, monitor, learning_rate, best),
                   *callbacks],
        verbose=verbose,
        shuffle=False,  # the tf.data pipeline shuffles
        **fit_kwargs,
    )
    if not model_path.is_file():  # no epoch ever improved (e.g. NaN from the start)
        save_model_atomically(model, model_path)

    history = read_history(history_path)
    metrics: dict[str, Any] = {
        "units": "mm (pmae in %)",
        "monitor": monitor,
        **history_summary(history, monitor),
        "strategy": train_cfg["strategy"],
        "replicas": int(strategy.num_replicas_in_sync),
        "global_batch_size": int(global_batch),
        "learning_rate": float(learning_rate),
        "train_seconds": float(history["epoch_seconds"].sum())
        if "epoch_seconds" in history.columns else None,
    }
    write_metrics(out_dir, metrics, config, data_dir)
    return TrainResult(out_dir, model_path, metrics, history)

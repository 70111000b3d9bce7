"""``train``: config → grouped split → ``model.fit`` → run folder.

``train`` resolves the config, prepares the run folder (:mod:`fetalhc.training.run_folder`),
builds the model (:mod:`fetalhc.training.setup`) under the configured strategy
(:mod:`fetalhc.training.strategy`) and fits it with fetalhc's own callbacks (the epoch
timer and the atomic best checkpoint below, plus Keras' TerminateOnNaN, learning-rate
schedule, EarlyStopping and TensorBoard, and the epoch backup of
:mod:`fetalhc.training.backup`, which also writes ``history.csv``). The strategy
``multiworker`` is handed to :func:`fetalhc.training.multiworker.train_multiworker`, because
Keras 3's ``model.fit`` cannot run it (keras-team/keras#20585).

Surviving a kill at any moment: at each epoch end the backup commits the epoch (weights,
then a record with the history rows, then ``history.csv``) before ``model.keras`` is saved;
after ``fit`` the backup is marked stopped, ``metrics.json`` is written, and only then the
backup is discarded. ``--resume`` puts the run folder back to the last committed epoch
(:func:`fetalhc.training.backup.recover_backup`), saves ``model.keras`` again when that
epoch was the best one (a kill may have come before its save), and does not train again
after a stop (it only writes what is missing).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import keras

from fetalhc.training.averaging import WeightAverage
from fetalhc.training.backup import Committed, EpochBackup, mark_stopped, recover_backup
from fetalhc.training.config import cosine_learning_rate, resolve_config
from fetalhc.training.multiworker import train_multiworker
from fetalhc.training.run_folder import (
    BACKUP_DIR,
    HISTORY_FILE,
    LOGS_DIR,
    MODEL_FILE,
    TrainResult,
    check_out_dir,
    check_training_data,
    discard_backup,
    history_summary,
    plan_run,
    read_history,
    run_split_index,
    save_model_atomically,
    start_run,
    write_metrics,
)
from fetalhc.training.setup import build_and_compile, fit_dataset, validation_index
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
    better; non-finite values never count), atomically (:func:`save_model_atomically`).

    ``save_on_begin``: save once at the start of training too (on resume, when the last
    committed epoch was the best: a kill may have come before its save). List it after the
    epoch backup, which restores the weights at the start and commits each epoch before
    this saves it. With ``averaging`` (:class:`~fetalhc.training.averaging.WeightAverage`)
    the saved model holds the averaged weights."""

    def __init__(self, model_path: Path, monitor: str, best: float = math.inf,
                 save_on_begin: bool = False, averaging: WeightAverage | None = None):
        super().__init__()
        self.averaging = averaging
        self.model_path = Path(model_path)
        self.monitor = monitor
        self.best = best
        self.save_on_begin = save_on_begin

    def on_train_begin(self, logs=None):
        if self.save_on_begin:
            save_model_atomically(self.model, self.model_path)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)) or float(value) >= self.best:
            return
        self.best = float(value)
        if self.averaging is None:
            save_model_atomically(self.model, self.model_path)
            return
        with self.averaging.averaged():
            save_model_atomically(self.model, self.model_path)


def _own_callbacks(train_cfg: dict[str, Any], out_dir: Path, monitor: str, learning_rate: float,
                   committed: Committed, resuming: bool) -> list:
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
    model_path = out_dir / MODEL_FILE
    best, best_epoch = committed.best(monitor)
    save_on_begin = resuming and best_epoch >= 0 and best_epoch == committed.epoch - 1
    if not (save_on_begin or model_path.is_file()):
        best = math.inf  # no checkpoint to beat
    averaging = (WeightAverage(train_cfg["ema_momentum"])
                 if train_cfg.get("ema_momentum", 0.0) > 0 else None)
    callbacks = [
        keras.callbacks.TerminateOnNaN(),
        EpochTimer(),  # before the backup, which then records epoch_seconds
        schedule,  # logs learning_rate
        keras.callbacks.EarlyStopping(monitor=monitor, patience=train_cfg["patience"], mode="min"),
    ]
    if train_cfg["tensorboard"]:
        callbacks.append(keras.callbacks.TensorBoard(
            log_dir=str(out_dir / LOGS_DIR), write_graph=False, profile_batch=0))
    callbacks += [
        EpochBackup(out_dir / BACKUP_DIR, out_dir / HISTORY_FILE, committed),  # + history.csv
    ]
    if averaging is not None:  # after the backup, which restores the weights it starts from
        callbacks.append(averaging)  # swapped in for validation (Keras' on_test_begin)
    callbacks.append(AtomicBestCheckpoint(model_path, monitor, best, save_on_begin, averaging))
    return callbacks


def check_training_request(config: dict[str, Any] | str | os.PathLike | None, data_dir,
                           out_dir, resume: bool = False, overwrite: bool = False,
                           overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything :func:`train` checks before it creates the run folder, without writing
    anything: the config (resolved and validated, returned), ``out_dir`` (a new or empty
    folder, a run to ``resume`` or ``overwrite``) and the data folder
    (:func:`~fetalhc.training.run_folder.check_training_data`). One-line errors."""
    config = resolve_config(config, overrides=overrides)
    if resume and overwrite:
        raise ValueError("choose either resume or overwrite, not both")
    out_dir = Path(out_dir)
    if config["train"]["strategy"] != "multiworker":  # workers share --out: no check here
        check_out_dir(out_dir, resume, overwrite)  # refuse a wrong --out before decoding
    check_training_data(config, data_dir, out_dir, resume)
    return config


def train(config: dict[str, Any] | str | os.PathLike | None, data_dir: str | os.PathLike,
          out_dir: str | os.PathLike, callbacks=(), resume: bool = False,
          overwrite: bool = False, overrides: dict[str, Any] | None = None,
          verbose: int = 0) -> TrainResult:
    """Train a regression CNN as ``config`` says and write the run folder ``out_dir``.

    ``callbacks`` are extra Keras callbacks appended after fetalhc's own (TerminateOnNaN,
    epoch timer, learning-rate schedule, EarlyStopping, TensorBoard, the epoch backup with
    ``history.csv``, best checkpoint). ``resume`` continues a run killed in ``out_dir`` at
    any moment (same config; the epoch count may change) from its last committed epoch;
    ``overwrite`` replaces the run in ``out_dir``. Nothing is created before the config,
    ``out_dir``, every train / val / test image (:func:`check_training_request`) and the
    model the config describes (built first) have passed their checks.

    ``verbose``: Keras' ``fit`` verbosity (0 silent, 1 a progress bar, 2 one line per
    epoch).
    """
    data_dir = Path(data_dir)
    out_dir = Path(out_dir)
    config = check_training_request(config, data_dir, out_dir, resume, overwrite, overrides)
    if config["train"]["strategy"] == "multiworker":  # keras fit cannot (keras#20585)
        return train_multiworker(config, data_dir, out_dir, callbacks=callbacks, resume=resume,
                                 overwrite=overwrite, verbose=verbose)
    config, resuming = plan_run(config, data_dir, out_dir, resume, overwrite)
    train_cfg = config["train"]
    strategy = make_strategy(train_cfg["strategy"])
    global_batch, learning_rate = scaled_batch_and_learning_rate(
        train_cfg, strategy.num_replicas_in_sync)
    monitor = config["run"]["monitor"]
    has_val = bool(config["split"].get("val"))

    train_index = run_split_index(config, data_dir, "train")
    # a crop run validates on its localiser's crops (loaded before the seed is set)
    val_index = (validation_index(config, run_split_index(config, data_dir, "val"),
                                  batch_size=global_batch) if has_val else None)

    keras.utils.set_random_seed(train_cfg["seed"])
    with strategy.scope():  # the model first: a config it cannot build creates no folder
        model, _, _ = build_and_compile(config, learning_rate)
        if strategy.num_replicas_in_sync > 1:
            synchronise_batch_norm(model)
    start_run(config, out_dir, resuming, overwrite)

    history_path, model_path = out_dir / HISTORY_FILE, out_dir / MODEL_FILE
    backup_dir = out_dir / BACKUP_DIR
    committed = recover_backup(backup_dir, history_path) if resuming else Committed()

    fit_kwargs = {}
    if train_cfg["steps_per_epoch"]:
        fit_kwargs["steps_per_epoch"] = train_cfg["steps_per_epoch"]
    model.fit(
        fit_dataset(train_index, config, training=True, batch_size=global_batch),
        validation_data=fit_dataset(val_index, config, training=False,
                                    batch_size=global_batch) if has_val else None,
        # a run that had stopped restores its weights and trains no more
        epochs=committed.epoch if committed.stopped else train_cfg["epochs"],
        callbacks=[*_own_callbacks(train_cfg, out_dir, monitor, learning_rate, committed,
                                   resuming),
                   *callbacks],
        verbose=verbose,
        shuffle=False,  # the tf.data pipeline shuffles
        **fit_kwargs,
    )
    if not model_path.is_file():  # no epoch ever improved (e.g. NaN from the start)
        save_model_atomically(model, model_path)
    mark_stopped(backup_dir)

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
    discard_backup(out_dir)  # after metrics.json: a kill before this resumes to here
    return TrainResult(out_dir, model_path, metrics, history)


def train_or_reuse(config: dict[str, Any] | str | os.PathLike | None,
                   data_dir: str | os.PathLike, out_dir: str | os.PathLike,
                   overwrite: bool = False, overrides: dict[str, Any] | None = None,
                   verbose: int = 0) -> Path:
    """The model file of ``out_dir`` trained as ``config`` says on ``data_dir``: a finished
    run with the same ``[data]``, ``[model]`` and ``[train]`` sections, data folder and split
    is reused, a killed one resumed, a missing one trained; ``overwrite`` retrains. A run of
    another config, data folder or split is refused (``ValueError``), never reused."""
    from fetalhc.training.config import user_sections
    from fetalhc.training.run_folder import CONFIG_FILE, METRICS_FILE, resolve_split

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if not overwrite and (out_dir / CONFIG_FILE).is_file():
        recorded = resolve_config(out_dir / CONFIG_FILE, allow_resolved=True)
        if user_sections(recorded) != user_sections(resolve_config(config,
                                                                   overrides=overrides)):
            raise ValueError(f"{out_dir} holds a run of another config; retrain it with "
                             "overwrite (--overwrite) or use another folder")
        if (Path(recorded["run"]["data_dir"]).resolve() != data_dir.resolve()
                or resolve_split(recorded, data_dir) != recorded["split"]):
            raise ValueError(f"{out_dir} was trained on other data or another split than "
                             f"{data_dir}; retrain it with overwrite (--overwrite) or use "
                             "another folder")
        if (out_dir / METRICS_FILE).is_file():
            return out_dir / MODEL_FILE
        return train(config, data_dir, out_dir, resume=True, overrides=overrides,
                     verbose=verbose).model_path
    return train(config, data_dir, out_dir, overwrite=overwrite and out_dir.exists(),
                 overrides=overrides, verbose=verbose).model_path

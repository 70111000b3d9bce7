"""Multi-worker training: a custom distributed loop for ``MultiWorkerMirroredStrategy``.

Keras 3's ``model.fit`` does not support ``MultiWorkerMirroredStrategy``
(keras-team/keras#20585), so :func:`train_multiworker` runs its own loop (``strategy.run``
inside a ``tf.function``, ``GradientTape``, the same loss in mm, metrics, early stopping,
learning rate reduction, best checkpoint and run folder as ``fit``). Every worker runs it;
only the chief writes the run folder. See docs/scaling.md.

A kill at any moment resumes from the last epoch checkpoint: each epoch writes
``history.csv`` (atomically), then a new ``tf.train.CheckpointManager`` checkpoint (new
files; the ``checkpoint`` index is replaced atomically and the previous checkpoint deleted
after), then ``model.keras`` when the epoch was the best (atomically). On resume the history
is cut to the checkpoint's epochs, early-stopping and learning-rate waits are replayed from
it (:func:`replay_decisions`), ``model.keras`` is saved again when the last checkpointed
epoch was the best, and a run that had stopped early trains no more. ``metrics.json`` is
written before ``backup/`` is discarded.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fetalhc.models import ELLIPSE_OUTPUT, HC_OUTPUT
from fetalhc.models.graph import hc_output_value
from fetalhc.models.prediction import predict_hc_mm
from fetalhc.training.config import cosine_learning_rate, resolve_config
from fetalhc.training.run_folder import (
    BACKUP_DIR,
    CONFIG_FILE,
    HISTORY_FILE,
    LOGS_DIR,
    MODEL_FILE,
    TrainResult,
    discard_backup,
    history_summary,
    prepare_run,
    read_history,
    run_split_index,
    save_model_atomically,
    write_history,
    write_metrics,
)
from fetalhc.training.setup import build_and_compile, fit_dataset, validation_index
from fetalhc.training.strategy import (
    make_strategy,
    scaled_batch_and_learning_rate,
    synchronise_batch_norm,
    task_info,
)

MIN_DELTA = 1e-4  # improvement of the monitored value that counts (as Keras' callbacks)


@dataclass
class DistributedTrainResult(TrainResult):
    """``TrainResult`` plus the trained model (last epoch) and this worker's role."""

    model: Any = None
    is_chief: bool = True
    replicas: int = 1


def validation_logs(model, loss, val_index, size: int, batch_size: int, prefix: str
                    ) -> dict[str, float]:
    """Loss (HC part) and metrics in mm on the validation split, computed eagerly on every
    worker (identical weights give identical values, so every worker takes the same early
    stopping and learning-rate decisions)."""
    from fetalhc.losses import pack_targets

    predictions = predict_hc_mm(model, val_index, size, batch_size=batch_size)
    reference = val_index["hc_mm"].to_numpy(np.float64)
    pixel = predictions["input pixel size (mm)"].to_numpy(np.float64)
    predicted_px = predictions["prediction (px)"].to_numpy(np.float64)
    per_example = np.asarray(loss.call(pack_targets(reference, pixel),
                                       predicted_px.astype(np.float32)))
    error = predicted_px * pixel - reference
    return {
        "val_loss": float(np.mean(per_example)),
        f"val_{prefix}mae_mm": float(np.mean(np.abs(error))),
        f"val_{prefix}rmse_mm": float(np.sqrt(np.mean(error ** 2))),
        f"val_{prefix}df_mm": float(np.mean(error)),
        f"val_{prefix}pmae_percent": float(np.mean(np.abs(error) / reference) * 100.0),
    }


def replay_decisions(rows: list[dict[str, Any]], monitor: str, train_cfg: dict[str, Any]
                     ) -> tuple[float, int, int, int]:
    """``(best, best_epoch, wait, lr_wait)`` after the epochs of ``rows``, as the loop of
    :func:`train_multiworker` decided them epoch by epoch (``best_epoch`` -1: none)."""
    best, best_epoch, wait, lr_wait = math.inf, -1, 0, 0
    for row in rows:
        value = float(row.get(monitor, math.nan))
        if math.isfinite(value) and value < best - MIN_DELTA:
            wait, lr_wait = 0, 0
        else:
            wait, lr_wait = wait + 1, lr_wait + 1
        if math.isfinite(value) and value < best:
            best, best_epoch = value, int(row["epoch"])
        if lr_wait >= train_cfg["reduce_lr_patience"] and train_cfg["schedule"] == "plateau":
            lr_wait = 0
    return best, best_epoch, wait, lr_wait


def make_train_step(model, optimizer, loss, strategy, aux: bool, aux_weight: float):
    """A ``tf.function`` taking a distributed iterator: one optimizer step on every replica;
    returns the global sums (loss, |error|, error², error, % error, count), errors in mm."""
    import tensorflow as tf

    def step_fn(x, y):
        y_hc = y[HC_OUTPUT] if aux else y
        with tf.GradientTape() as tape:
            outputs = model(x, training=True)
            hc = hc_output_value(outputs, model)
            per_example = loss.call(y_hc, hc)
            total = per_example
            if aux:
                ellipse = hc_output_value(outputs, model, ELLIPSE_OUTPUT)
                total = total + aux_weight * tf.reduce_mean(
                    tf.square(ellipse - y[ELLIPSE_OUTPUT]), axis=-1)
            scaled = tf.nn.compute_average_loss(total)
            if model.losses:
                scaled += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
        gradients = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        error = tf.reshape(tf.cast(hc, tf.float32), (-1,)) * y_hc[:, 1] - y_hc[:, 0]
        return tf.stack([tf.reduce_sum(total), tf.reduce_sum(tf.abs(error)),
                         tf.reduce_sum(tf.square(error)), tf.reduce_sum(error),
                         tf.reduce_sum(100.0 * tf.abs(error) / y_hc[:, 0]),
                         tf.cast(tf.shape(error)[0], tf.float32)])

    @tf.function
    def train_step(iterator):
        x, y = next(iterator)
        per_replica = strategy.run(step_fn, args=(x, y))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return train_step


def train_multiworker(config: dict[str, Any], data_dir, out_dir, callbacks=(),
                      resume: bool = False, overwrite: bool = False, verbose: int = 0,
                      strategy=None) -> DistributedTrainResult:
    """Train ``config`` (resolved) with ``MultiWorkerMirroredStrategy`` and a custom loop.

    Every worker runs this with the same arguments and its own ``TF_CONFIG``. Only the chief
    writes the run folder ``out_dir`` (config.toml, model.keras, history.csv, metrics.json,
    logs/, backup/); the other workers write into a temporary folder they delete at the end.
    ``resume`` restores the last epoch checkpoint from ``out_dir/backup`` (all workers read
    it, so ``out_dir`` must be on a shared file system for resume). Caller ``callbacks`` run
    on the chief only.
    """
    import keras
    import tensorflow as tf

    strategy = strategy or make_strategy("multiworker")  # before any other TF operation
    _, task_index, chief = task_info()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    scratch = None
    if chief:
        write_dir = out_dir
    else:
        scratch = Path(tempfile.mkdtemp(prefix=f"fetalhc-worker{task_index}-"))
        write_dir = scratch / "run"
    if chief or not resume:
        config, resuming = prepare_run(config, data_dir, write_dir, resume and chief, overwrite)
    else:  # a resumed worker reads the chief's run folder (shared file system)
        stored = resolve_config(out_dir / CONFIG_FILE, allow_resolved=True)
        stored["train"]["epochs"] = config["train"]["epochs"]
        config, resuming = stored, True
    data, model_cfg, train_cfg = config["data"], config["model"], config["train"]
    size = data["image_size"]
    aux = bool(model_cfg["aux_ellipse"])
    prefix = "hc_px_input_" if aux else ""
    replicas = strategy.num_replicas_in_sync
    global_batch, learning_rate = scaled_batch_and_learning_rate(train_cfg, replicas)
    split, monitor = config["split"], config["run"]["monitor"]
    has_val = bool(split.get("val"))
    train_index = run_split_index(config, data_dir, "train")
    val_index = (validation_index(config, run_split_index(config, data_dir, "val"),
                                  batch_size=global_batch) if has_val else None)

    keras.utils.set_random_seed(train_cfg["seed"])
    with strategy.scope():
        model, optimizer, loss = build_and_compile(config, learning_rate)
        if replicas > 1:
            synchronise_batch_norm(model)
        epoch_variable = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_variable)
    manager = tf.train.CheckpointManager(checkpoint, str(write_dir / BACKUP_DIR), max_to_keep=1)

    history_path, model_path = write_dir / HISTORY_FILE, write_dir / MODEL_FILE
    rows: list[dict[str, Any]] = []
    best, wait, lr_wait, start_epoch, stopped = math.inf, 0, 0, 0, False
    if resuming:
        latest = tf.train.latest_checkpoint(str(out_dir / BACKUP_DIR))
        if latest:
            checkpoint.restore(latest).expect_partial()
            start_epoch = int(epoch_variable.numpy())
        # every worker reads the chief's history (shared file system, as the checkpoint):
        # it holds each checkpointed epoch (written before the checkpoint)
        rows = [row for row in read_history(out_dir / HISTORY_FILE).to_dict("records")
                if int(row["epoch"]) < start_epoch]
        best, best_epoch, wait, lr_wait = replay_decisions(rows, monitor, train_cfg)
        stopped = wait >= train_cfg["patience"]
        last_was_best = best_epoch >= 0 and best_epoch == start_epoch - 1
        if chief:
            write_history(history_path, rows)
            if last_was_best:  # a kill may have come between the checkpoint and its save
                save_model_atomically(model, model_path)
        if not (last_was_best or (out_dir / MODEL_FILE).is_file()):
            best = math.inf  # no checkpoint to beat

    steps = train_cfg["steps_per_epoch"] or max(1, math.ceil(len(train_index) / global_batch))
    dataset = fit_dataset(train_index, config, training=True, batch_size=global_batch).repeat()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    iterator = iter(strategy.experimental_distribute_dataset(dataset.with_options(options)))
    train_step = make_train_step(model, optimizer, loss, strategy, aux,
                                 float(train_cfg["aux_weight"]))

    writer = tf.summary.create_file_writer(str(write_dir / LOGS_DIR / "train")) \
        if chief and train_cfg["tensorboard"] else None
    callback_list = keras.callbacks.CallbackList(list(callbacks) if chief else [], model=model)
    callback_list.on_train_begin()
    for epoch in range(start_epoch, start_epoch if stopped else train_cfg["epochs"]):
        if train_cfg["schedule"] == "cosine":
            optimizer.learning_rate.assign(cosine_learning_rate(
                epoch, train_cfg["epochs"], learning_rate, train_cfg["min_learning_rate"]))
        callback_list.on_epoch_begin(epoch)
        started = time.time()
        sums = np.zeros(6, dtype=np.float64)
        for _ in range(steps):
            sums += train_step(iterator).numpy()
        count = max(sums[5], 1.0)
        logs = {"loss": sums[0] / count, f"{prefix}mae_mm": sums[1] / count,
                f"{prefix}rmse_mm": math.sqrt(sums[2] / count), f"{prefix}df_mm": sums[3] / count,
                f"{prefix}pmae_percent": sums[4] / count,
                "learning_rate": float(keras.ops.convert_to_numpy(optimizer.learning_rate))}
        if has_val:
            logs.update(validation_logs(model, loss, val_index, size, global_batch, prefix))
        value = logs.get(monitor, math.nan)
        if not math.isfinite(logs["loss"]):
            if verbose:
                print(f"epoch {epoch + 1}: loss is not finite, stopping")
            break
        improved = math.isfinite(value) and value < best - MIN_DELTA
        if improved:
            wait, lr_wait = 0, 0
        else:
            wait, lr_wait = wait + 1, lr_wait + 1
        is_best = math.isfinite(value) and value < best
        if is_best:
            best = value
        rows.append({"epoch": epoch, **{k: float(v) for k, v in logs.items()}})
        if chief:
            write_history(history_path, rows)
        if writer is not None:
            with writer.as_default(step=epoch):
                for name, number in logs.items():
                    tf.summary.scalar(name, number)
            writer.flush()
        if verbose:
            shown = " - ".join(f"{k}: {v:.4g}" for k, v in logs.items())
            print(f"epoch {epoch + 1}/{train_cfg['epochs']} ({time.time() - started:.1f} s) "
                  f"- {shown}", flush=True)
        callback_list.on_epoch_end(epoch, logs)
        if lr_wait >= train_cfg["reduce_lr_patience"] and train_cfg["schedule"] == "plateau":
            rate = max(logs["learning_rate"] * train_cfg["reduce_lr_factor"],
                       train_cfg["min_learning_rate"])
            optimizer.learning_rate.assign(rate)
            lr_wait = 0
        epoch_variable.assign(epoch + 1)
        manager.save()  # every worker saves (collective-safe); non-chief into its scratch
        if chief and is_best:  # after the checkpoint: model.keras holds checkpointed epochs
            save_model_atomically(model, model_path)
        if wait >= train_cfg["patience"]:
            break
    callback_list.on_train_end()
    if writer is not None:
        writer.close()

    history = pd.DataFrame(rows)
    metrics: dict[str, Any] = {}
    if chief:
        if not model_path.is_file():
            save_model_atomically(model, model_path)
        metrics = {
            "units": "mm (pmae in %)", "monitor": monitor, **history_summary(history, monitor),
            "strategy": "multiworker", "replicas": int(replicas),
            "global_batch_size": int(global_batch), "learning_rate": float(learning_rate),
        }
        write_metrics(write_dir, metrics, config, data_dir)
        discard_backup(write_dir)  # after metrics.json: a kill before this resumes to here
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    return DistributedTrainResult(out_dir if chief else write_dir, model_path, metrics, history,
                                  model=model, is_chief=chief, replicas=int(replicas))

"""Training on several devices or machines with ``tf.distribute``.

``[train] strategy`` picks how ``fetalhc.training.train`` runs:

- ``"default"``: one device, ``model.fit`` (TensorFlow's default strategy).
- ``"mirrored"``: ``tf.distribute.MirroredStrategy`` over the GPUs of one machine (or, on a
  machine without GPUs, over its logical CPU devices), still with ``model.fit``.
- ``"multiworker"``: ``tf.distribute.MultiWorkerMirroredStrategy`` over the machines named
  in ``TF_CONFIG``. Keras 3's ``model.fit`` does not support it (keras-team/keras#20585), so
  :func:`train_multiworker` runs a custom distributed loop (``strategy.run`` inside a
  ``tf.function``, ``GradientTape``, the same loss in mm, metrics, early stopping, learning
  rate reduction, best checkpoint and run folder as ``fit``).

``[train] batch_size`` is the batch of **one replica**; the global batch is
``batch_size x replicas``. With ``[train] scale_learning_rate = true`` the learning rate is
multiplied by the number of replicas (linear scaling rule). See docs/scaling.md.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fetalhc.training.config import cosine_learning_rate
from fetalhc.training.run import (
    BACKUP_DIR,
    CONFIG_FILE,
    HISTORY_FILE,
    LOGS_DIR,
    METRICS_FILE,
    MODEL_FILE,
    TrainResult,
    _build_and_compile,
    _fit_dataset,
    _prepare_run,
    _read_history,
    _truncate_history,
    evaluate_split,
    predict_hc_mm,
    run_split_index,
)

STRATEGIES = ("default", "mirrored", "multiworker")
MIN_DELTA = 1e-4  # improvement of the monitored value that counts (as Keras' callbacks)
STATE_FILE = "loop_state.json"  # epoch, best value and waits of the custom loop (in backup/)


@dataclass
class DistributedTrainResult(TrainResult):
    """``TrainResult`` plus the trained model (last epoch) and this worker's role."""

    model: Any = None
    is_chief: bool = True
    replicas: int = 1


def make_strategy(name: str):
    """``"default"`` / ``"mirrored"`` / ``"multiworker"`` → a ``tf.distribute.Strategy``.

    ``mirrored`` uses every GPU of the machine or, without GPUs, every logical CPU device
    (one replica each). ``multiworker`` reads the cluster from ``TF_CONFIG`` and must be
    created before TensorFlow runs any operation in the process.
    """
    import tensorflow as tf

    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if not os.environ.get("TF_CONFIG"):
        raise ValueError("strategy 'multiworker' needs the TF_CONFIG environment variable "
                         "(cluster and task); see docs/scaling.md")
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.AUTO)
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def scaled_batch_and_learning_rate(train_config: dict[str, Any], replicas: int
                                   ) -> tuple[int, float]:
    """(global batch, learning rate): ``batch_size x replicas`` and the learning rate,
    times ``replicas`` when ``scale_learning_rate`` is set."""
    replicas = int(replicas)
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    rate = float(train_config["learning_rate"])
    if train_config.get("scale_learning_rate", False):
        rate *= replicas
    return int(train_config["batch_size"]) * replicas, rate


def synchronise_batch_norm(model) -> int:
    """Switch every ``BatchNormalization`` layer of ``model`` to synchronised statistics
    (mean and variance over the global batch, all-reduced across replicas); returns how many.

    Without it each replica updates the (mirrored, aggregation NONE) moving mean and
    variance from its own part of the batch, so the replicas' copies drift apart and the
    saved model holds replica 0's statistics. Synchronised, every replica computes the same
    statistics, equal to a single-device run on the global batch. Without a strategy the
    flag changes nothing."""
    import keras

    count = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
            count += 1
    return count


def task_info() -> tuple[str, int, bool]:
    """(task type, task index, is chief) from ``TF_CONFIG`` (chief when there is none)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return "worker", 0, True
    try:
        tf_config = json.loads(raw)
    except json.JSONDecodeError:
        raise ValueError("TF_CONFIG is not valid JSON") from None
    task = tf_config.get("task", {})
    kind, index = str(task.get("type", "worker")), int(task.get("index", 0))
    has_chief = bool(tf_config.get("cluster", {}).get("chief"))
    return kind, index, kind == "chief" or (kind == "worker" and index == 0 and not has_chief)


def _hc_output(outputs, model):
    from fetalhc.models import HC_OUTPUT

    if isinstance(outputs, dict):
        return outputs[HC_OUTPUT]
    if isinstance(outputs, (list, tuple)):
        return outputs[list(model.output_names).index(HC_OUTPUT)]
    return outputs


def _ellipse_output(outputs, model):
    from fetalhc.models import ELLIPSE_OUTPUT

    if isinstance(outputs, dict):
        return outputs[ELLIPSE_OUTPUT]
    return outputs[list(model.output_names).index(ELLIPSE_OUTPUT)]


def _validation_logs(model, loss, val_index, size: int, batch_size: int, prefix: str
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


def _write_history(path: Path, rows: list[dict[str, float]]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    pd.DataFrame(rows).to_csv(temporary, index=False)
    os.replace(temporary, path)


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

    from fetalhc.models import load_model

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
        config, resuming = _prepare_run(config, data_dir, write_dir, resume and chief, overwrite)
    else:  # a resumed worker reads the chief's run folder (shared file system)
        from fetalhc.training.config import resolve_config

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
    val_index = run_split_index(config, data_dir, "val") if has_val else None

    keras.utils.set_random_seed(train_cfg["seed"])
    with strategy.scope():
        model, optimizer, loss = _build_and_compile(config, learning_rate)
        if replicas > 1:
            synchronise_batch_norm(model)
        epoch_variable = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=epoch_variable)
    manager = tf.train.CheckpointManager(checkpoint, str(write_dir / BACKUP_DIR), max_to_keep=1)

    history_path, model_path = write_dir / HISTORY_FILE, write_dir / MODEL_FILE
    rows: list[dict[str, float]] = []
    best, wait, lr_wait, start_epoch = math.inf, 0, 0, 0
    if resuming:
        latest = tf.train.latest_checkpoint(str(out_dir / BACKUP_DIR))
        if latest:
            checkpoint.restore(latest).expect_partial()
            start_epoch = int(epoch_variable.numpy())
            state_file = out_dir / BACKUP_DIR / STATE_FILE
            if state_file.is_file():
                state = json.loads(state_file.read_text())
                best, wait, lr_wait = float(state["best"]), int(state["wait"]), int(
                    state["lr_wait"])
        if chief:
            _truncate_history(history_path, start_epoch)
            rows = _read_history(history_path).to_dict("records")
        if not model_path.is_file():
            best = math.inf

    steps = train_cfg["steps_per_epoch"] or max(1, math.ceil(len(train_index) / global_batch))
    dataset = _fit_dataset(train_index, config, training=True, batch_size=global_batch).repeat()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    iterator = iter(strategy.experimental_distribute_dataset(dataset.with_options(options)))
    aux_weight = float(train_cfg["aux_weight"])

    def step_fn(x, y):
        y_hc = y["hc_px_input"] if aux else y
        with tf.GradientTape() as tape:
            outputs = model(x, training=True)
            hc = _hc_output(outputs, model)
            per_example = loss.call(y_hc, hc)
            total = per_example
            if aux:
                total = total + aux_weight * tf.reduce_mean(
                    tf.square(_ellipse_output(outputs, model) - y["ellipse"]), axis=-1)
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

    writer = tf.summary.create_file_writer(str(write_dir / LOGS_DIR / "train")) \
        if chief and train_cfg["tensorboard"] else None
    callback_list = keras.callbacks.CallbackList(list(callbacks) if chief else [], model=model)
    callback_list.on_train_begin()
    for epoch in range(start_epoch, train_cfg["epochs"]):
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
            logs.update(_validation_logs(model, loss, val_index, size, global_batch, prefix))
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
        if math.isfinite(value) and value < best:
            best = value
            if chief:
                temporary = model_path.with_name(f".{model_path.stem}.tmp.keras")
                model.save(temporary)
                os.replace(temporary, model_path)
        rows.append({"epoch": epoch, **{k: float(v) for k, v in logs.items()}})
        if chief:
            _write_history(history_path, rows)
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
        if chief:
            (write_dir / BACKUP_DIR / STATE_FILE).write_text(
                json.dumps({"best": best, "wait": wait, "lr_wait": lr_wait}))
        if wait >= train_cfg["patience"]:
            break
    callback_list.on_train_end()
    if writer is not None:
        writer.close()

    history = pd.DataFrame(rows)
    metrics: dict[str, Any] = {}
    if chief:
        if not model_path.is_file():
            temporary = model_path.with_name(f".{model_path.stem}.tmp.keras")
            model.save(temporary)
            os.replace(temporary, model_path)
        shutil.rmtree(write_dir / BACKUP_DIR, ignore_errors=True)
        best_model = load_model(model_path)
        metrics = {
            "units": "mm (pmae in %)", "monitor": monitor, "epochs_run": int(len(history)),
            "best_epoch": int(history.loc[history[monitor].idxmin(), "epoch"])
            if monitor in history.columns and len(history) else -1,
            "strategy": "multiworker", "replicas": int(replicas),
            "global_batch_size": int(global_batch), "learning_rate": float(learning_rate),
        }
        for name in ("val", "test"):
            if split.get(name):
                _, metrics[name] = evaluate_split(
                    best_model, run_split_index(config, data_dir, name), size,
                    batch_size=train_cfg["batch_size"])
        temporary = write_dir / f".{METRICS_FILE}.tmp"
        temporary.write_text(json.dumps(metrics, indent=2))
        os.replace(temporary, write_dir / METRICS_FILE)
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    return DistributedTrainResult(out_dir if chief else write_dir, model_path, metrics, history,
                                  model=model, is_chief=chief, replicas=int(replicas))

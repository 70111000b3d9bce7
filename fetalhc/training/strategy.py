"""``tf.distribute`` strategies: which one ``[train] strategy`` names, and what it scales.

``[train] strategy`` picks how ``fetalhc.training.train`` runs:

- ``"default"``: one device, ``model.fit`` (TensorFlow's default strategy).
- ``"mirrored"``: ``tf.distribute.MirroredStrategy`` over the GPUs of one machine (or, on a
  machine without GPUs, over its logical CPU devices), still with ``model.fit``.
- ``"multiworker"``: ``tf.distribute.MultiWorkerMirroredStrategy`` over the machines named
  in ``TF_CONFIG``, trained by the custom loop of :mod:`fetalhc.training.multiworker`.

``[train] batch_size`` is the batch of **one replica**; the global batch is
``batch_size x replicas``. With ``[train] scale_learning_rate = true`` the learning rate is
multiplied by the number of replicas (linear scaling rule). See docs/scaling.md.
"""

from __future__ import annotations

import json
import os
from typing import Any

from fetalhc.models.graph import all_layers

STRATEGIES = ("default", "mirrored", "multiworker")


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
    for layer in all_layers(model):
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

"""tf.distribute training: batch / learning-rate scaling, MirroredStrategy over two logical
CPU devices (model.fit) and MultiWorkerMirroredStrategy with two local workers (custom loop).

Strategies must be set up before TensorFlow initialises its devices, so the training runs in
subprocesses (bounded by timeouts)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fetalhc.training import resolve_config
from fetalhc.training.strategy import scaled_batch_and_learning_rate, task_info

TINY = {
    "data": {"image_size": 32, "val_fraction": 0.2, "test_fraction": 0.2, "cache": False},
    "model": {"backbone": "small_cnn", "dropout": 0.0},
    "train": {"epochs": 2, "batch_size": 4, "learning_rate": 1e-3, "steps_per_epoch": 3,
              "tensorboard": False},
}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    from fetalhc.data import write_phantom_dataset

    root = tmp_path_factory.mktemp("distributed") / "phantoms"
    return write_phantom_dataset(root, n=20, seed=1, width=80, height=64)


def _run(script: str, *args, env=None, timeout=240) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=full_env)


def test_global_batch_and_linear_learning_rate_scaling():
    config = resolve_config(TINY)["train"]
    assert scaled_batch_and_learning_rate(config, 1) == (4, 1e-3)
    assert scaled_batch_and_learning_rate(config, 3) == (12, 1e-3)
    scaled = {**config, "scale_learning_rate": True}
    batch, rate = scaled_batch_and_learning_rate(scaled, 4)
    assert batch == 16 and rate == pytest.approx(4e-3)
    with pytest.raises(ValueError, match="replicas"):
        scaled_batch_and_learning_rate(config, 0)


def test_strategy_config_key_is_validated():
    assert resolve_config({})["train"]["strategy"] == "default"
    assert resolve_config({"train": {"strategy": "mirrored"}})["train"]["strategy"] == "mirrored"
    with pytest.raises(ValueError, match="strategy"):
        resolve_config({"train": {"strategy": "horovod"}})


def test_task_info_reads_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert task_info() == ("worker", 0, True)
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster,
                                                "task": {"type": "worker", "index": 1}}))
    assert task_info() == ("worker", 1, False)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {**cluster, "chief": ["x:3"]},
                                                "task": {"type": "worker", "index": 0}}))
    assert task_info()[2] is False
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG"):
        task_info()


MIRRORED_SCRIPT = """
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    import keras
    from fetalhc.training import train

    class ReplicaCheck(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            report = {"replicas": tf.distribute.get_strategy().num_replicas_in_sync,
                      "largest_gap": 0.0, "mirrored": 0}
            for weight in self.model.weights:
                variable = getattr(weight, "value", weight)
                values = getattr(variable, "values", None)
                if values is None or len(values) < 2:
                    continue
                report["mirrored"] += 1
                first = values[0].numpy()
                for other in values[1:]:
                    gap = float(abs(other.numpy() - first).max())
                    if gap > 0:
                        report.setdefault("differ", []).append(
                            [weight.path, type(variable).__name__, weight.trainable,
                             str(getattr(variable, "aggregation", "")), gap])
                    report["largest_gap"] = max(report["largest_gap"], gap)
            report["devices"] = sorted({v.device for w in self.model.weights
                                        for v in getattr(getattr(w, "value", w), "values", [])})
            self.report = report

    check = ReplicaCheck()
    config = json.loads(sys.argv[1])
    with tf.distribute.MirroredStrategy(
            devices=[d.name for d in tf.config.list_logical_devices("CPU")]).scope():
        pass  # only to fail early if two logical CPU devices are not available
    result = train(config, sys.argv[2], sys.argv[3], callbacks=[check])
    print("REPORT" + json.dumps({**check.report, "epochs_run": result.metrics["epochs_run"]}))
"""


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus_keeps_replicas_identical(phantoms, tmp_path):
    config = {**TINY, "train": {**TINY["train"], "strategy": "mirrored"}}
    out = tmp_path / "mirrored"
    completed = _run(MIRRORED_SCRIPT, json.dumps(config), phantoms, out)
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(x for x in completed.stdout.splitlines() if x.startswith("REPORT"))
    report = json.loads(line[len("REPORT"):])
    assert report["mirrored"] > 0, report  # the variables really are mirrored
    assert len(report["devices"]) == 2, report
    assert report["largest_gap"] == 0.0, report
    assert report["epochs_run"] == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["strategy"] == "mirrored" and metrics["replicas"] == 2
    assert metrics["global_batch_size"] == 8  # 4 per replica x 2
    assert (out / "model.keras").is_file()
    history = (out / "history.csv").read_text().splitlines()
    assert len(history) == 3  # header + 2 epochs


WORKER_SCRIPT = """
    import json, sys
    import numpy as np
    from fetalhc.training import train

    config = json.loads(sys.argv[1])
    result = train(config, sys.argv[2], sys.argv[3])
    weights = result.model.get_weights()
    np.savez(sys.argv[4], *weights)
    if result.is_chief:  # the initial weights, to show that training moved them
        import keras
        from fetalhc.training import load_run
        from fetalhc.training.setup import build_and_compile
        run = load_run(sys.argv[3])
        keras.utils.set_random_seed(run.config["train"]["seed"])
        initial, _, _ = build_and_compile(run.config, 1e-3)
        np.savez(sys.argv[4].replace(".npz", "_initial.npz"), *initial.get_weights())
    print("DONE" + json.dumps({"chief": result.is_chief, "replicas": result.replicas,
                               "epochs": int(len(result.history))}))
"""


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.slow
def test_two_workers_finish_with_identical_weights(phantoms, tmp_path):
    config = {**TINY, "train": {**TINY["train"], "strategy": "multiworker"}}
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    out = tmp_path / "multiworker"
    processes = []
    for index in range(2):
        env = {"TF_CONFIG": json.dumps({"cluster": cluster,
                                        "task": {"type": "worker", "index": index}}),
               "CUDA_VISIBLE_DEVICES": ""}
        processes.append(subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(WORKER_SCRIPT), json.dumps(config),
             str(phantoms), str(out), str(tmp_path / f"weights{index}.npz")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env}))
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=300))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-3000:]
    reports = [json.loads(next(x for x in stdout.splitlines() if x.startswith("DONE"))[4:])
               for stdout, _ in outputs]
    assert [r["chief"] for r in reports] == [True, False]
    assert all(r["replicas"] == 2 and r["epochs"] == 2 for r in reports)
    with np.load(tmp_path / "weights0.npz") as first, np.load(tmp_path / "weights1.npz") as second:
        assert first.files == second.files and len(first.files) > 0
        for name in first.files:
            np.testing.assert_array_equal(first[name], second[name])
        # the workers saw different halves of every batch: identical weights that moved away
        # from the (seeded, identical) initial ones mean the gradients were all-reduced
        with np.load(tmp_path / "weights0_initial.npz") as initial:
            assert initial.files == first.files
            moved = [not np.array_equal(initial[name], first[name]) for name in first.files]
        assert sum(moved) >= len(moved) // 2, moved
    # only the chief writes the run folder
    for name in ("config.toml", "model.keras", "history.csv", "metrics.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["replicas"] == 2 and metrics["global_batch_size"] == 8
    history = (out / "history.csv").read_text().splitlines()
    assert len(history) == 3 and "val_mae_mm" in history[0]
    losses = [float(row.split(",")[history[0].split(",").index("loss")])
              for row in history[1:]]
    assert all(np.isfinite(losses))

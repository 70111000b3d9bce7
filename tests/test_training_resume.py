"""A run killed (SIGKILL) resumes with ``--resume`` and logs every epoch exactly once:
after an epoch, and at the moments a kill can hurt, injected in a subprocess: during the
backup write (weights cut short, weights missing a variable, training_metadata.json cut
short), after Keras' backup but before the commit record, after the record but before
``history.csv``, and before the best checkpoint ``model.keras`` is saved."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pandas as pd
import pytest
from click.testing import CliRunner

import fetalhc
from fetalhc.cli.main import cli
from fetalhc.training import write_config

KILL_SCRIPT = """
import os, signal, sys
import keras
import fetalhc

class KillAfterEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.kill_epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.kill_epoch:
            os.kill(os.getpid(), signal.SIGKILL)

config, data, out, kill_epoch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
fetalhc.train(config, data, out, callbacks=[KillAfterEpoch(kill_epoch)])
print("not killed")
"""

# Runs ``fetalhc.train`` and SIGKILLs itself at one moment of the epoch-end writes of
# epoch 1 (Keras' second backup); the faults on the backup files only patch Keras, so the
# script also runs against code without fetalhc.training.backup.
FAULT_SCRIPT = """
import json, os, signal, sys
import h5py, keras
import fetalhc

config, data, out, fault = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
KILL_AT = 2  # the second backup: end of epoch 1

def die():
    os.kill(os.getpid(), signal.SIGKILL)

calls = {"n": 0}
save_weights = keras.Model.save_weights

def faulty_save_weights(self, filepath, *args, **kwargs):
    save_weights(self, filepath, *args, **kwargs)
    calls["n"] += 1
    if calls["n"] != KILL_AT:
        return
    if fault == "weights_cut_short":  # the kill of keras#20463, mid-write
        data = open(filepath, "rb").read()
        with open(filepath, "wb") as handle:
            handle.write(data[: len(data) // 2])
        die()
    if fault == "weights_missing_a_variable":  # opens, but loads into a ValueError
        with h5py.File(filepath, "a") as handle:
            names = []
            handle.visititems(lambda name, item: names.append(name)
                              if isinstance(item, h5py.Dataset) else None)
            del handle[[name for name in names if name.startswith("layers/")][-1]]
        die()
    if fault == "metadata_cut_short":  # new weights, training_metadata.json half written
        metadata = os.path.join(os.path.dirname(filepath), "training_metadata.json")
        with open(metadata, "w") as handle:
            handle.write('{"epo')
        die()

keras.Model.save_weights = faulty_save_weights

if fault == "after_keras_backup":  # weights + metadata of epoch 1 whole, nothing after
    save_model = keras.callbacks.BackupAndRestore._save_model

    def faulty_save_model(self):
        save_model(self)
        if calls["n"] == KILL_AT:
            die()

    keras.callbacks.BackupAndRestore._save_model = faulty_save_model

if fault == "before_history":  # committed, history.csv not yet rewritten
    import fetalhc.training.backup as backup
    write_history = backup.write_history

    def faulty_write_history(path, rows):
        if len(rows) == KILL_AT:
            die()
        write_history(path, rows)

    backup.write_history = faulty_write_history

if fault == "before_best_checkpoint":  # epoch 0 committed, model.keras not yet saved
    import fetalhc.training.fit as fit

    def faulty_save(model, path):
        die()

    fit.save_model_atomically = faulty_save

fetalhc.train(config, data, out)
print("not killed")
"""

EPOCHS = 3


def _config(tmp_path, epochs: int):
    config_path = tmp_path / "config.toml"
    write_config({
        "data": {"image_size": 32, "val_fraction": 0.2, "test_fraction": 0.2},
        "model": {"backbone": "small_cnn", "dropout": 0.0},
        "train": {"epochs": epochs, "batch_size": 8, "learning_rate": 3e-3,
                  "tensorboard": False},
    }, config_path)
    return config_path


def _resume_to_the_end(config_path, data, out, epochs: int) -> pd.DataFrame:
    result = CliRunner().invoke(cli, ["train", "--config", str(config_path), "--data",
                                      str(data), "--out", str(out), "--resume", "--quiet"])
    assert result.exit_code == 0, result.output
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == list(range(epochs))  # no gap, no repeat
    assert (out / "metrics.json").is_file() and (out / "model.keras").is_file()
    assert not (out / "backup").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == epochs
    # model.keras is the best epoch of history.csv (its validation MAE, rescored)
    assert metrics["val"]["mae_mm"] == pytest.approx(history["val_mae_mm"].min(), rel=1e-3)
    assert metrics["best_epoch"] == int(history["val_mae_mm"].idxmin())
    fetalhc.load_model(out / "model.keras")
    return history


def test_killed_run_resumes_and_logs_each_epoch_once(phantoms, tmp_path):
    data = phantoms
    config_path = _config(tmp_path, 4)
    out = tmp_path / "run"
    killed = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(config_path), str(data), str(out), "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert "not killed" not in killed.stdout
    assert pd.read_csv(out / "history.csv")["epoch"].tolist() == [0, 1]
    assert json.loads((out / "backup" / "training_metadata.json").read_text())["epoch"] == 2
    assert not (out / "metrics.json").exists()
    _resume_to_the_end(config_path, data, out, 4)


@pytest.mark.parametrize("fault", [
    "weights_cut_short", "weights_missing_a_variable", "metadata_cut_short",
    "after_keras_backup", "before_history", "before_best_checkpoint",
])
def test_a_kill_at_an_epoch_end_write_resumes_without_gap_or_repeat(phantoms, tmp_path,
                                                                     fault):
    config_path = _config(tmp_path, EPOCHS)
    out = tmp_path / "run"
    killed = subprocess.run(
        [sys.executable, "-c", FAULT_SCRIPT, str(config_path), str(phantoms), str(out), fault],
        capture_output=True, text=True, timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert "not killed" not in killed.stdout
    assert not (out / "metrics.json").exists()
    if fault == "before_best_checkpoint":
        assert not (out / "model.keras").exists()
    _resume_to_the_end(config_path, phantoms, out, EPOCHS)

"""A run killed (SIGKILL, deterministically after an epoch) resumes with ``--resume`` and
logs every epoch exactly once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pandas as pd
from click.testing import CliRunner

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


def test_killed_run_resumes_and_logs_each_epoch_once(phantoms, tmp_path):
    data = phantoms
    config_path = tmp_path / "config.toml"
    write_config({
        "data": {"image_size": 32, "val_fraction": 0.2, "test_fraction": 0.2},
        "model": {"backbone": "small_cnn", "dropout": 0.0},
        "train": {"epochs": 4, "batch_size": 8, "learning_rate": 3e-3, "tensorboard": False},
    }, config_path)
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

    result = CliRunner().invoke(cli, ["train", "--config", str(config_path), "--data",
                                      str(data), "--out", str(out), "--resume", "--quiet"])
    assert result.exit_code == 0, result.output
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == [0, 1, 2, 3]
    assert (out / "metrics.json").is_file() and (out / "model.keras").is_file()
    assert not (out / "backup").exists()

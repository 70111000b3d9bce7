"""``fetalhc train``: a run through the command line, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fetalhc.cli.main import cli
from fetalhc.training import load_run

CONFIG = """
[data]
image_size = 32
val_fraction = 0.2
test_fraction = 0.2

[model]
backbone = "small_cnn"

[train]
epochs = 3
batch_size = 8
learning_rate = 3e-3
tensorboard = false
"""


@pytest.fixture(scope="module")
def data(phantoms):
    return phantoms


@pytest.fixture()
def config_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    return path


def _train(*args):
    return CliRunner().invoke(cli, ["train", *map(str, args)])


def test_train_command_writes_run_with_overrides(data, config_file, tmp_path):
    out = tmp_path / "run"
    result = _train("--config", config_file, "--data", data, "--out", out, "--epochs", 1,
                    "--batch-size", 4, "--seed", 3, "--set", "train.loss=huber",
                    "--set", "train.huber_delta_mm=2.5", "--quiet")
    assert result.exit_code == 0, result.output
    assert "test: MAE" in result.output and "mm" in result.output
    config = load_run(out).config
    assert config["train"]["epochs"] == 1 and config["train"]["batch_size"] == 4
    assert config["train"]["seed"] == 3 and config["run"]["seed"] == 3
    assert config["train"]["loss"] == "huber" and config["train"]["huber_delta_mm"] == 2.5
    assert "mae_mm" in json.loads((out / "metrics.json").read_text())["test"]

    again = _train("--config", config_file, "--data", data, "--out", out)
    assert again.exit_code == 1
    assert again.output.strip().splitlines() == [
        f"Error: --out {out} already holds a run; pass --resume to continue it or "
        "--overwrite to replace it"]
    different = _train("--config", config_file, "--data", data, "--out", out, "--resume",
                       "--set", "model.dropout=0.5")
    assert different.exit_code == 1
    assert "holds a different run (differs in [model] dropout" in different.output


@pytest.mark.parametrize("args, message", [
    (["--set", "train.epoch=3"], "unknown config key 'train.epoch'"),
    (["--set", "train.epochs=three"], "[train] epochs must be an integer, got 'three'"),
    (["--set", "model.backbone=alexnet"], "known backbones: vgg16, resnet50"),
    (["--set", "train.loss=l1"], "known losses: mae, mse, huber"),
    (["--set", "noequals"], "--set expects section.key=value"),
])
def test_bad_options_are_one_line_errors(data, config_file, tmp_path, args, message):
    result = _train("--config", config_file, "--data", data, "--out", tmp_path / "run", *args)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]
    assert not (tmp_path / "run").exists()


def test_bad_config_file_is_a_one_line_error(data, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nepochs = 2\nbatchsize = 4\n")
    result = _train("--config", path, "--data", data, "--out", tmp_path / "run")
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: unknown config key [train] batchsize; known keys: epochs, batch_size, "
        "learning_rate, loss, huber_delta_mm, aux_weight, patience, schedule, "
        "reduce_lr_patience, reduce_lr_factor, min_learning_rate, seed, steps_per_epoch, "
        "tensorboard, strategy, scale_learning_rate, precision")
    path.write_text("[train]\nlearning_rate = \"fast\"\n")
    result = _train("--config", path, "--data", data, "--out", tmp_path / "run")
    assert result.exit_code == 1
    assert "[train] learning_rate must be a number, got 'fast'" in result.output


def test_a_truncated_image_is_a_one_line_error_before_the_run_folder(data, config_file,
                                                                     tmp_path):
    """Every train / val / test image is decoded before the run folder is created."""
    import shutil

    broken = Path(shutil.copytree(data, tmp_path / "data"))
    image = broken / "training_set" / "007_HC.png"
    image.write_bytes(image.read_bytes()[:200])
    out = tmp_path / "run"
    result = _train("--config", config_file, "--data", broken, "--out", out, "--quiet")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "007_HC.png" in lines[0]
    assert not out.exists()

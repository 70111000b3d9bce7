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
        "tensorboard, strategy, scale_learning_rate, precision, ema_momentum")
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


# ----------------------------------------------------------------------------- #18
@pytest.mark.parametrize("args, message", [
    (["--set", "model.weights=nope.weights.h5"], "weights file not found: nope.weights.h5"),
    (["--set", "model.backbone=vgg16", "--set", "data.image_size=24"],
     "backbone 'vgg16' needs inputs of at least 32 px, got 24"),
    (["--set", "model.filters=[8, 8, 8, 8, 8, 8]"], "6 blocks halve the input 6 times"),
    (["--explain-methods", "magic"], "unknown explanation method 'magic'"),
    (["--explain-every", "1", "--explain-methods", "magic"], "unknown explanation method"),
    (["--set", "train.seed=-1"], "[train] seed must be >= 0"),
    (["--resume", "--overwrite"], "choose either resume or overwrite, not both"),
])
def test_the_model_and_every_option_are_checked_before_the_run_folder(data, config_file,
                                                                       tmp_path, args,
                                                                       message):
    """A config the model cannot be built from, an unknown explain method, ... : one line,
    and no run folder (the model is built before the folder is created)."""
    out = tmp_path / "run"
    result = _train("--config", config_file, "--data", data, "--out", out, "--quiet", *args)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines
    assert not out.exists()


@pytest.mark.parametrize("args, option", [
    (["--epochs", "0"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"),
    (["--seed", "-1"], "--seed"),
    (["--fold", "-1"], "--fold"),
    (["--strategy", "bogus"], "--strategy"),
    (["--explain-every", "-1"], "--explain-every"),
    (["--explain-images", "0"], "--explain-images"),
])
def test_train_usage_errors_create_nothing(data, config_file, tmp_path, args, option):
    out = tmp_path / "run"
    result = _train("--config", config_file, "--data", data, "--out", out, *args)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output
    assert not out.exists()


def test_missing_data_or_config_create_nothing(data, config_file, tmp_path):
    out = tmp_path / "run"
    result = _train("--data", tmp_path / "nope", "--config", config_file, "--out", out)
    assert result.exit_code == 2 and "Invalid value for '--data'" in result.output
    assert not out.exists()
    # --config is a path or a shipped config's name (tests/test_configs.py): the library
    # resolves it, a missing file is a one-line error
    result = _train("--data", data, "--config", tmp_path / "nope.toml", "--out", out)
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: config file not found: {tmp_path / 'nope.toml'}"
    assert not out.exists()
    not_hc18 = tmp_path / "empty"
    not_hc18.mkdir()
    result = _train("--config", config_file, "--data", not_hc18, "--out", out)
    assert result.exit_code == 1 and "training_set: image folder is missing" in result.output
    assert not out.exists()


def test_resuming_an_incomplete_run_folder_is_a_one_line_error(data, config_file, tmp_path):
    """A config.toml without the sections ``train`` adds (e.g. copied there by hand) is no
    run to resume: a one-line error, not a KeyError, and the folder is left as it was."""
    from fetalhc.training import resolve_config, write_config

    out = tmp_path / "run"
    out.mkdir()
    write_config(resolve_config(config_file), out / "config.toml")
    before = (out / "config.toml").read_bytes()
    result = _train("--config", config_file, "--data", data, "--out", out, "--resume")
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "holds no complete run" in lines[0] and "[run]" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["config.toml"]
    assert (out / "config.toml").read_bytes() == before


@pytest.mark.parametrize("args, verbose", [
    (["--progress"], 1), (["--no-progress"], 2), ([], 2), (["--quiet", "--progress"], 0),
])
def test_progress_maps_to_the_keras_fit_verbosity(data, config_file, tmp_path, monkeypatch,
                                                  args, verbose):
    """A bar per epoch when asked (or on a terminal; CliRunner's stderr is none), one line
    per epoch otherwise, nothing with --quiet."""
    import fetalhc.training

    seen = {}

    def fake_train(*_, verbose=None, **__):
        seen["verbose"] = verbose
        raise ValueError("stop here")

    monkeypatch.setattr(fetalhc.training, "train", fake_train)
    result = _train("--config", config_file, "--data", data, "--out", tmp_path / "run", *args)
    assert result.exit_code == 1 and "stop here" in result.output, result.output
    assert seen == {"verbose": verbose}

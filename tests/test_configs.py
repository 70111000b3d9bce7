"""The shipped configs: package data in ``fetalhc/configs/``, found by name
(``fetalhc.training.config_file``) by the library and ``fetalhc train --config NAME``; a path
still works; an unknown name is a one-line error listing the shipped names.
(tests/test_packaging_slow.py checks that they are in the wheel.)"""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest
from click.testing import CliRunner

from fetalhc.cli.main import cli
from fetalhc.training.config import (
    CONFIGS_FOLDER,
    config_file,
    resolve_config,
    shipped_configs,
)

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ["hc18_backbone_cpu", "hc18_best", "hc18_cpu", "hc18_crop", "hc18_residual",
           "paper_accuracy", "paper_explain", "quick_cpu"]


def test_shipped_configs_are_package_data_and_all_valid():
    assert CONFIGS_FOLDER == REPO / "fetalhc" / "configs"
    assert shipped_configs() == SHIPPED
    for name in SHIPPED:
        assert config_file(name) == CONFIGS_FOLDER / f"{name}.toml"
        assert resolve_config(name) == resolve_config(CONFIGS_FOLDER / f"{name}.toml")
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    assert "configs/*.toml" in setup["options.package_data"]["fetalhc"].split()


def test_each_config_lives_in_one_place():
    """No copy at the repository root (the former ``configs/``) or anywhere else."""
    assert not (REPO / "configs").exists()
    skip = {".git", ".venv", "runs", "build", "node_modules"}
    copies = [path.relative_to(REPO) for top in REPO.iterdir()
              if top.is_dir() and top.name not in skip and not top.name.endswith(".egg-info")
              for path in top.rglob("*.toml") if path.stem in SHIPPED]
    assert copies == [Path("fetalhc/configs") / f"{path.stem}.toml" for path in copies]
    assert len(copies) == len(SHIPPED)


def test_a_path_still_works_and_an_existing_file_wins_over_a_name(tmp_path, monkeypatch):
    own = tmp_path / "mine.toml"
    own.write_text("[train]\nepochs = 3\n")
    assert config_file(own) == own and config_file(str(own)) == own
    assert resolve_config(str(own))["train"]["epochs"] == 3
    monkeypatch.chdir(tmp_path)
    assert config_file("mine.toml") == Path("mine.toml")  # relative to the working folder
    Path("quick_cpu").write_text("[train]\nepochs = 4\n")  # a file named like a shipped one
    assert config_file("quick_cpu") == Path("quick_cpu")
    assert resolve_config("quick_cpu")["train"]["epochs"] == 4


def test_an_unknown_name_lists_the_shipped_names():
    with pytest.raises(ValueError) as error:
        config_file("quick_gpu")
    message = str(error.value)
    assert message == (f"no shipped config named 'quick_gpu'; shipped configs: "
                       f"{', '.join(SHIPPED)} (or give the path of a TOML file)")
    assert "\n" not in message
    with pytest.raises(ValueError, match="no shipped config named 'nope'"):
        resolve_config("nope")


@pytest.mark.parametrize("text, hint", [
    ("configs/quick_cpu.toml", "; the shipped config of that name is 'quick_cpu'"),
    ("quick_cpu.toml", "; the shipped config of that name is 'quick_cpu'"),
    ("elsewhere/mine.toml", ""),
])
def test_a_missing_path_is_not_found_and_points_at_a_shipped_name(text, hint, tmp_path,
                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        config_file(text)
    assert str(error.value) == f"config file not found: {text}{hint}"


def _train(*args):
    return CliRunner().invoke(cli, ["train", *map(str, args)])


def test_train_takes_a_shipped_name_and_refuses_an_unknown_one(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "run"
    # the name resolves: the command gets as far as the data folder's check
    result = _train("--config", "quick_cpu", "--data", empty, "--out", out)
    assert result.exit_code == 1
    assert "training_set: image folder is missing" in result.output
    result = _train("--config", "quick_gpu", "--data", empty, "--out", out)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: no shipped config named 'quick_gpu'; shipped configs: {', '.join(SHIPPED)} "
        "(or give the path of a TOML file)"]
    assert not out.exists()


def test_train_help_lists_the_shipped_names_and_the_demo_uses_one():
    from fetalhc.cli import demo

    result = CliRunner().invoke(cli, ["train", "--help"])
    assert result.exit_code == 0
    assert all(name in " ".join(result.output.split()) for name in SHIPPED)
    assert demo.DEMO_CONFIG in SHIPPED

"""The README is the front door: its Python example and its commands must keep working."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


@pytest.fixture()
def in_scratch_folder(tmp_path):
    """Run from an empty scratch folder: the README's configs are shipped ones, by name."""
    previous = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(previous)


def test_python_api_example_runs(in_scratch_folder, capsys):
    example = next(block for block in _blocks("python") if "fetalhc.train(" in block)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["maps"].shape == namespace["batch"]["image"].shape[:3]
    assert "aopc_morf_abs_error_mm" in capsys.readouterr().out


def _commands() -> list[list[str]]:
    block = next(block for block in _blocks("bash") if "fetalhc data check" in block)
    joined = block.replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("fetalhc "):
            commands.append(shlex.split(line)[1:])
    return commands


def test_readme_lists_every_command():
    names = {arguments[0] for arguments in _commands()}
    assert {"data", "train", "predict", "explain", "evaluate", "demo"} <= names


@pytest.mark.slow
def test_cli_commands_in_readme_run(in_scratch_folder, hc18_path):
    from click.testing import CliRunner

    from fetalhc.cli.main import cli

    runner = CliRunner()
    for arguments in _commands():
        arguments = [str(hc18_path) if a == "../shared/data/hc18" else a for a in arguments]
        if arguments[0] == "demo":
            arguments += ["--n", "30", "--epochs", "2", "--explain-images", "2",
                          "--evaluate-images", "3"]
        result = runner.invoke(cli, arguments)
        assert result.exit_code == 0, f"fetalhc {' '.join(arguments)}\n{result.output}"


@pytest.mark.slow  # two `fetalhc train` processes of the recipe's network: ~3 min
def test_make_hc18_model_trains_then_leaves_a_finished_run_alone(tmp_path):
    """`make hc18-model` (README, docs/hc18-model.md), shortened to one epoch at 64 px on
    phantoms: it trains the recipe's config, and a second call keeps the finished run."""
    import subprocess

    from fetalhc.data import write_phantom_dataset

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    data = write_phantom_dataset(tmp_path / "phantoms", n=24, seed=0)
    run = tmp_path / "hc18-best"
    arguments = ["make", "-s", "-C", str(REPO), "hc18-model", f"HC18_RUN={run}",
                 f"FETALHC_HC18={data}",
                 "HC18_TRAIN_ARGS=--epochs 1 --set data.image_size=64 --quiet"]
    first = subprocess.run(arguments, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    assert (run / "model.keras").is_file() and (run / "metrics.json").is_file()
    config = (run / "config.toml").read_text()
    assert 'backbone = "small_cnn"' in config and "filters = [" in config
    second = subprocess.run(arguments, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0 and "already trained" in second.stdout

    # its report page (docs/hc18-model.md) reads result files only: here the run, published
    # into a scratch models/ folder, and its `fetalhc predict` output as the final folder
    import json
    import tomllib

    from click.testing import CliRunner

    from fetalhc.cli.main import cli
    from fetalhc.files import sha256_of_file

    recipe = tomllib.loads((REPO / "docs" / "hc18-model" / "levers.toml").read_text())["recipe"]
    model = tmp_path / "models" / recipe
    model.mkdir(parents=True)
    for name in ("config.toml", "history.csv", "metrics.json"):
        shutil.copy2(run / name, model / name)
    (model / "provenance.json").write_text(json.dumps(
        {"command": "make hc18-model", "model_sha256": sha256_of_file(run / "model.keras")}))
    final = tmp_path / "final"
    predicted = CliRunner().invoke(cli, ["predict", "--model", str(run), "--data", str(data),
                                         "--split", "test", "--out", str(final / "test.csv")])
    assert predicted.exit_code == 0, predicted.output
    docs = tmp_path / "docs"
    report = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "hc18_model_report.py"), "--final", str(final),
         "--models", str(tmp_path / "models"), "--docs", str(docs)],
        capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stderr[-2000:]
    page = (docs / "hc18-model.md").read_text()
    assert (docs / "hc18-model" / "bland_altman.png").stat().st_size > 10_000
    assert "Development page" in page and str(tmp_path) not in page
    assert "was not predicted by" not in page  # the final folder's model is the published one
    final_section = page.split("## The final recipe")[1].split("\n## ")[0]
    assert "make hc18-model" in final_section
    rows = [line for line in final_section.splitlines() if line.startswith("| test | ")]
    views = [row.split("|")[2].strip() for row in rows[:2]]
    assert views == ["as predicted", "h-flip average"]
    mae_mm = [float(row.split("|")[4]) for row in rows[:2]]
    assert all(np.isfinite(mae_mm)) and min(mae_mm) > 0

"""The README's "Use your own model", "Use your own images" and "Import a fetalhc model into
your Keras project" sections, run as written from an empty folder: their commands on
phantoms written in the plain layout, with the repository's published model or the
section's own, and their Python snippets."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"### {title}")
    following = re.search(r"\n##+ ", README[start + 4:])
    return README[start:start + 4 + following.start()] if following else README[start:]


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def _commands(text: str) -> list[list[str]]:
    commands = []
    for block in _blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("fetalhc "):
                commands.append(shlex.split(line)[1:])
    return commands


@pytest.fixture()
def scratch(tmp_path, phantoms):
    """An empty folder with the repository's published models and a plain folder of images."""
    from fetalhc.data import load_index, write_plain_dataset

    (tmp_path / "models").symlink_to(REPO / "models")
    write_plain_dataset(tmp_path / "my_images", load_index(phantoms).head(3))
    previous = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(previous)


def test_readme_own_images_and_import_sections_run(scratch, capsys):
    from fetalhc.cli.main import cli

    images = _section("Use your own images")
    importing = _section("Import a fetalhc model into your Keras project")
    commands = _commands(images) + _commands(importing)
    assert [arguments[0] for arguments in commands] == ["predict", "explain", "evaluate",
                                                        "export"]
    for arguments in commands:
        result = CliRunner().invoke(cli, arguments)
        assert result.exit_code == 0, (arguments, result.output)
    assert (scratch / "my_images_hc.csv").is_file() and (scratch / "hc_model.keras").is_file()
    example = _blocks(importing, "python")[0]
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    assert re.search(r"HC \d+\.\d mm", out)
    height, width = namespace["image"].shape
    assert namespace["relevance"].maps.shape == (1, height, width)


def test_readme_own_model_section_runs(scratch, capsys):
    from fetalhc.cli.main import cli

    section = _section("Use your own model")
    example = _blocks(section, "python")[0]
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["result"].maps.shape == (2, 64, 64)
    assert "(2, 64, 64) mm" in capsys.readouterr().out
    commands = _commands(section)
    assert [arguments[0] for arguments in commands] == ["predict", "explain", "evaluate"]
    for arguments in commands:
        result = CliRunner().invoke(cli, [*arguments, "--no-progress"])
        assert result.exit_code == 0, (arguments, result.output)
    assert (scratch / "my_hc.csv").is_file()
    assert (scratch / "my_model_evaluation" / "summary.csv").is_file()

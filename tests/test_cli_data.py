"""`fetalhc data check` and `fetalhc data synth` through the real entry point."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from fetalhc.cli.main import cli


def run(*args):
    return CliRunner().invoke(cli, ["data", *map(str, args)])


@pytest.fixture(scope="module")
def synthesised(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "phantoms"
    result = run("synth", root, "--n", 8, "--seed", 4, "--challenge", 2, "--width", 96,
                 "--height", 64, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "wrote 8 training and 2 challenge phantoms" in result.output
    return root


def test_synth_writes_the_hc18_layout(synthesised):
    assert len(list((synthesised / "training_set").glob("*_Annotation.png"))) == 8
    assert len(list((synthesised / "test_set").glob("*.png"))) == 2


def test_check_passes_and_summarises(synthesised):
    result = run("check", synthesised, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "training: 8 images" in result.output
    assert "challenge: 2 images" in result.output
    assert "refit vs CSV HC: max |Δ|" in result.output
    assert "OK: no problems found" in result.output


def test_check_accepts_a_folder_without_test_set(synthesised, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(synthesised, copy)
    shutil.rmtree(copy / "test_set")
    (copy / "test_set_pixel_size.csv").unlink()
    result = run("check", copy, "--no-progress", "--no-refit")
    assert result.exit_code == 0, result.output
    assert "challenge: no test_set/ (skipped)" in result.output
    assert "refit" not in result.output


def test_check_fails_and_lists_every_problem(synthesised, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(synthesised, copy)
    csv = copy / "training_set_pixel_size_and_HC.csv"
    lines = csv.read_bytes().decode().split("\r\n")
    name, pixel_size, hc = lines[2].split(",")
    lines[2] = f"{name},{pixel_size},{float(hc) + 1.0:.2f}"  # HC off by 1 mm
    lines[3] = ",".join(lines[3].split(",")[:1] + ["0"] + lines[3].split(",")[2:])
    csv.write_bytes("\r\n".join(lines).encode())
    result = run("check", copy, "--no-progress")
    assert result.exit_code == 1
    assert "problem:" in result.output and "line 4" in result.output
    assert f"{name}: CSV HC" in result.output and "differs from the annotation refit" in result.output
    assert "Error: 2 problem(s) found" in result.output
    loose = run("check", copy, "--no-progress", "--tolerance-mm", "2")
    assert loose.exit_code == 1 and "Error: 1 problem(s) found" in loose.output


def test_check_on_missing_folder_is_a_one_line_error(tmp_path):
    result = run("check", tmp_path / "absent", "--no-progress")
    assert result.exit_code == 1
    assert result.output.strip().startswith("Error:") and "missing" in result.output
    assert "Traceback" not in result.output


def test_synth_refuses_a_non_empty_folder(synthesised):
    result = run("synth", synthesised, "--n", 2, "--no-progress")
    assert result.exit_code == 1
    assert "Error:" in result.output and "not empty" in result.output
    assert len(list((synthesised / "training_set").glob("*_Annotation.png"))) == 8


def test_check_real_hc18_without_refit(hc18_path):
    result = run("check", hc18_path, "--no-progress", "--no-refit")
    assert result.exit_code == 0, result.output
    assert "training: 798 images, 645 IDs" in result.output
    assert "challenge: 335 images" in result.output


@pytest.mark.slow
def test_check_real_hc18_with_refit(hc18_path):
    result = run("check", hc18_path, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "over 798 annotations" in result.output


# ----------------------------------------------------------------------------- #18
@pytest.mark.parametrize("args, option", [
    (["synth", "{out}", "--seed", "-1"], "--seed"),
    (["synth", "{out}", "--n", "0"], "--n"),
    (["synth", "{out}", "--width", "8"], "--width"),
    (["check", "{out}", "--tolerance-mm", "-1"], "--tolerance-mm"),
])
def test_data_usage_errors_create_nothing(tmp_path, args, option):
    out = tmp_path / "phantoms"
    result = run(*[str(arg).format(out=out) for arg in args])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_bars_only_when_asked_or_on_a_terminal(tmp_path):
    quiet = run("synth", tmp_path / "quiet", "--n", 2, "--width", 64, "--height", 48)
    assert quiet.exit_code == 0, quiet.output
    assert "phantoms" not in quiet.stderr  # CliRunner's stderr is no terminal
    shown = run("synth", tmp_path / "shown", "--n", 2, "--width", 64, "--height", 48,
                "--progress")
    assert shown.exit_code == 0, shown.output
    assert "phantoms:" in shown.stderr and "/2 " in shown.stderr


def test_data_commands_need_no_tensorflow_and_every_option_has_help():
    import click

    from fetalhc.cli.data import command

    for sub in command.commands.values():
        assert sub.needs_tensorflow is False, sub.name
        for param in sub.params:
            if isinstance(param, click.Option):
                assert param.help, f"data {sub.name} {param.opts} has no help text"

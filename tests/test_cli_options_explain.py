"""#18 for ``explain``, ``predict``, ``merge`` and ``demo``: every option is checked before
work starts, and a refused request leaves nothing at ``--out`` (no folder, no method folder,
no file); choices and help text in ``--help``; progress bars only on a terminal unless asked;
user mistakes are one-line ``ValueError`` s, never a ``KeyError``."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from fetalhc.cli import demo as demo_cli
from fetalhc.cli import explain as explain_cli
from fetalhc.cli import merge as merge_cli
from fetalhc.cli import predict as predict_cli
from fetalhc.cli.main import cli

CONFIG = {
    "data": {"image_size": 32, "val_fraction": 0.2, "test_fraction": 0.2},
    "model": {"backbone": "small_cnn", "dropout": 0.0},
    "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 8, "learning_rate": 3e-3,
              "tensorboard": False},
}
COMMAND_MODULES = (explain_cli, predict_cli, merge_cli, demo_cli)


@pytest.fixture(scope="module")
def data(phantoms):
    return phantoms


@pytest.fixture(scope="module")
def run_dir(data, tmp_path_factory):
    from fetalhc.training import train

    out = tmp_path_factory.mktemp("options_explain") / "run"
    train(CONFIG, data, out)
    return out


@pytest.fixture(scope="module")
def model(run_dir):
    import fetalhc

    return fetalhc.load_model(run_dir / "model.keras")


def _invoke(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def _one_line_error(result, *messages):
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for message in messages:
        assert message in lines[0], lines[0]
    assert "KeyError" not in result.output and "Traceback" not in result.output
    return lines[0]


# --------------------------------------------------------------------------- explain
def test_list_works_alone_and_the_other_options_are_named_when_missing(tmp_path):
    listed = _invoke("explain", "--list")
    assert listed.exit_code == 0, listed.output
    assert "gradcam:" in listed.output and "layer_name=None" in listed.output

    result = _invoke("explain", "--methods", "gradient")
    assert result.exit_code == 2
    assert "Missing option(s) --model, --data, --out" in result.output
    result = _invoke("explain", "--data", tmp_path, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "Missing option(s) --model (" in result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, option", [
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "-3"], "--batch-size"),
    (["--limit", "0"], "--limit"),
    (["--split", "bogus"], "--split"),
    (["--target", "hc"], "--target"),
    (["--model", "no/such/run"], "--model"),
    (["--data", "no/such/data"], "--data"),
])
def test_explain_usage_errors_create_nothing(run_dir, data, tmp_path, args, option):
    out = tmp_path / "maps"
    base = {"--model": run_dir, "--data": data, "--methods": "gradient", "--out": out}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    result = _invoke("explain", *[item for pair in base.items() for item in pair])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output
    assert not out.exists()


def test_explain_help_shows_the_choices_and_every_option_has_help():
    text = _invoke("explain", "--help").output
    assert "[train|val|test|val+test|challenge|all]" in text
    assert "[hc_mm|hc_px_input|abs_error_mm]" in text
    assert "--progress / --no-progress" in text
    for module in COMMAND_MODULES:
        for param in module.command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{module.command.name} {param.opts} has no help text"


def test_tensorflow_free_choices_match_their_registries():
    import fetalhc.explain as fe
    from fetalhc.report.merge import KINDS
    from fetalhc.training.run_folder import SPLITS

    assert tuple(explain_cli.TARGETS) == tuple(fe.TARGETS)
    assert tuple(explain_cli.DATA_SPLITS) == tuple(predict_cli.DATA_SPLITS) == (*SPLITS, "all")
    assert merge_cli.KINDS == tuple(KINDS)


@pytest.mark.parametrize("methods, option, message", [
    ("gradient,gradcam", "gradcam.layer_name=nope", "gradcam: layer_name 'nope' does not exist"),
    ("gradient,gradcam_pp", "gradcam_pp.layer_name=hc_px_input", "'hc_px_input' is not 4-D"),
    ("gradient,occlusion", "occlusion.patch=64", "patch 64 px is larger than the input 32x32"),
    ("gradient,lrp_composite", "lrp_composite.low=0", "input bounds must hold every pixel"),
])
def test_model_dependent_options_are_refused_before_any_output(run_dir, data, model, tmp_path,
                                                               methods, option, message):
    """#18: a method option the model or the images refuse stopped the run only when that
    method's turn came, after the earlier methods' folders were written."""
    import fetalhc.explain as fe

    out = tmp_path / "maps"
    result = _invoke("explain", "--model", run_dir, "--data", data, "--methods", methods,
                     "--option", option, "--out", out, "--limit", 2)
    line = _one_line_error(result, message)
    assert "_hc_view" not in line  # the user's model, not an internal view
    if "layer_name" in option:
        assert fe.conv_layer_candidates(model)[-1] in line  # the choices
        assert repr(model.name) in line
    assert not out.exists()


def test_overwrite_keeps_the_old_folder_when_the_request_is_refused(run_dir, data, tmp_path):
    out = tmp_path / "maps"
    common = ["explain", "--model", run_dir, "--data", data, "--out", out, "--limit", 2]
    assert _invoke(*common, "--methods", "gradient").exit_code == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    result = _invoke(*common, "--methods", "gradient,gradcam", "--option",
                     "gradcam.layer_name=nope", "--overwrite")
    _one_line_error(result, "layer_name 'nope'")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_a_target_without_references_is_refused_before_any_output(run_dir, data, tmp_path):
    out = tmp_path / "maps"
    result = _invoke("explain", "--model", run_dir, "--data", data, "--methods", "gradient",
                     "--split", "challenge", "--target", "abs_error_mm", "--out", out)
    _one_line_error(result, "--target abs_error_mm needs the reference HC", "challenge")
    assert not out.exists()


@pytest.mark.parametrize("shard, message", [
    ("0/2", "1-based"), ("3/2", "1..2"), ("x", "i/n"), ("1/0", ">= 1"),
])
def test_bad_shards_are_refused_before_any_output(run_dir, data, tmp_path, shard, message):
    out = tmp_path / "maps"
    result = _invoke("explain", "--model", run_dir, "--data", data, "--methods", "gradient",
                     "--shard", shard, "--out", out)
    _one_line_error(result, message)
    assert not out.exists()


def test_progress_bar_counts_images_times_methods_and_only_when_asked(run_dir, data, tmp_path):
    common = ["explain", "--model", run_dir, "--data", data, "--limit", 3,
              "--methods", "gradient,input_x_gradient"]
    shown = _invoke(*common, "--out", tmp_path / "a", "--progress")
    assert shown.exit_code == 0, shown.output
    assert "explain" in shown.stderr and "6/6" in shown.stderr
    for flags in (["--no-progress"], []):  # the test's stderr is no terminal
        quiet = _invoke(*common, "--out", tmp_path / f"b{len(flags)}", *flags)
        assert quiet.exit_code == 0, quiet.output
        assert "6/6" not in quiet.stderr


def test_predict_bar_counts_images_and_only_when_asked(run_dir, data, tmp_path):
    common = ["predict", "--model", run_dir, "--data", data, "--split", "test"]
    shown = _invoke(*common, "--out", tmp_path / "a.csv", "--progress")
    assert shown.exit_code == 0, shown.output
    n = int(shown.output.split("wrote ")[1].split()[0])
    assert "predict" in shown.stderr and f"{n}/{n}" in shown.stderr
    for flags in (["--no-progress"], []):  # the test's stderr is no terminal
        quiet = _invoke(*common, "--out", tmp_path / f"b{len(flags)}.csv", *flags)
        assert quiet.exit_code == 0, quiet.output
        assert "predict" not in quiet.stderr


def test_library_callers_get_the_same_checks(model, run_dir, data, tmp_path):
    import fetalhc.explain as fe
    from fetalhc.report.explanations import write_explanations
    from fetalhc.training import load_run, run_split_index

    index = run_split_index(load_run(run_dir).config, data, "test")
    out = tmp_path / "maps"
    for kwargs, message in (({"batch_size": 0}, "--batch-size must be an integer >= 1"),
                            ({"batch_size": -3}, "--batch-size must be an integer >= 1"),
                            ({"limit": 0}, "--limit must be an integer >= 1"),
                            ({"shard": "3/2"}, "1..2"),
                            ({"options": {"gradient": {"steps": 3}}}, "unknown option(s) steps")):
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            write_explanations(model, index, 32, ["gradient"], out, progress=False, **kwargs)
        assert not out.exists()
    with pytest.raises(ValueError, match="not among the methods"):
        fe.check_methods(model, ["gradient"], options={"gradcam": {}})
    with pytest.raises(ValueError, match="unknown explanation method 'nope'"):
        fe.check_methods(model, ["nope"])
    with pytest.raises(ValueError, match="unknown target 'nope'"):
        fe.check_methods(model, ["gradient"], target="nope")
    checked = fe.check_methods(model, ["gradcam"], input_shape=(32, 32, 1))
    assert checked["gradcam"].resolved_layer in fe.conv_layer_candidates(model)
    with pytest.raises(ValueError, match="do not fit the model input"):
        fe.check_methods(model, ["gradient"], input_shape=(64, 64, 1))


# --------------------------------------------------------------------------- predict
@pytest.mark.parametrize("args, option", [
    (["--batch-size", "0"], "--batch-size"),
    (["--image-size", "0"], "--image-size"),
    (["--split", "bogus"], "--split"),
    (["--data", "no/such/data"], "--data"),
    (["--model", "no/such/model.keras"], "--model"),
])
def test_predict_usage_errors_create_nothing(run_dir, data, tmp_path, args, option):
    out = tmp_path / "predictions" / "p.csv"
    base = {"--model": run_dir / "model.keras", "--data": data, "--out": out}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    result = _invoke("predict", *[item for pair in base.items() for item in pair])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output
    assert not out.parent.exists()


def test_predict_help_and_run_folder(run_dir, data, tmp_path):
    text = _invoke("predict", "--help").output
    assert "[train|val|test|val+test|challenge|all]" in text
    bad = _invoke("predict", "--model", run_dir, "--data", data, "--out", tmp_path / "p.txt")
    _one_line_error(bad, "--out must be a .csv file")
    assert list(tmp_path.iterdir()) == []
    result = _invoke("predict", "--model", run_dir, "--data", data, "--out", tmp_path / "p.csv")
    assert result.exit_code == 0, result.output  # the run folder itself is a --model
    assert (tmp_path / "p.csv").is_file()


# --------------------------------------------------------------------------- merge
def test_merge_of_missing_folders_says_so_and_creates_nothing(tmp_path):
    out = tmp_path / "merged"
    result = _invoke("merge", tmp_path / "a", tmp_path / "b", "--out", out)
    _one_line_error(result, f"no such folder: {tmp_path / 'a'}, {tmp_path / 'b'}")
    assert not out.exists()
    (tmp_path / "file").write_text("x")
    result = _invoke("merge", tmp_path / "file", "--out", out)
    assert result.exit_code == 2 and "is a file" in result.output
    assert not out.exists()


def test_merge_of_a_damaged_shard_record_is_a_one_line_error(tmp_path):
    shard = tmp_path / "shard"
    shard.mkdir()
    (shard / "shard.json").write_text(json.dumps({"kind": "explain", "shard": "1/2"}))
    result = _invoke("merge", shard, "--out", tmp_path / "merged")
    _one_line_error(result, "lacks total, positions, methods, filenames")
    (shard / "shard.json").write_text("{")
    _one_line_error(_invoke("merge", shard, "--out", tmp_path / "merged"), "is unreadable")
    assert not (tmp_path / "merged").exists()


# --------------------------------------------------------------------------- demo
@pytest.mark.parametrize("args, message, code", [
    (["--methods", "gradient,nope"], "unknown explanation method 'nope'", 1),
    (["--methods", "gradient,gradient"], "names gradient more than once", 1),
    (["--data", "no/such/data"], "Invalid value for '--data'", 2),
    (["--epochs", "0"], "Invalid value for '--epochs'", 2),
])
def test_demo_refuses_bad_options_before_creating_its_folder(tmp_path, args, message, code):
    out = tmp_path / "demo"
    result = _invoke("demo", "--out", out, *args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert not out.exists()


def test_demo_refuses_a_folder_that_is_not_hc18_before_creating_its_own(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "demo"
    result = _invoke("demo", "--out", out, "--data", empty, "--methods", "gradient")
    _one_line_error(result, str(empty))
    assert not out.exists()


def test_demo_passes_its_progress_choice_to_steps_with_bars():
    @click.command()
    @click.option("--progress/--no-progress", default=None)
    def with_bars(progress):
        """A step with bars."""

    @click.command()
    def without_bars():
        """A step without."""

    assert demo_cli._progress(with_bars, True) == {"progress": True}
    assert demo_cli._progress(with_bars, None) == {"progress": False}  # no terminal here
    assert demo_cli._progress(without_bars, True) == {}


# --------------------------------------------------------------------------- start-up

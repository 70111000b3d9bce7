"""``fetalhc evaluate`` end to end on phantoms with a tiny trained run, and its errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from fetalhc.cli.main import cli

SIZE = 32


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from fetalhc.data import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("data") / "phantoms", n=12, seed=0,
                                 challenge=2, width=96, height=72)


@pytest.fixture(scope="module")
def run_dir(phantoms, tmp_path_factory):
    from fetalhc.training import train

    config = {
        "data": {"image_size": SIZE, "val_fraction": 0.2, "test_fraction": 0.3,
                 "cache": False},
        "model": {"backbone": "small_cnn", "dropout": 0.0},
        "train": {"epochs": 1, "batch_size": 8, "tensorboard": False, "patience": 1},
    }
    out = tmp_path_factory.mktemp("runs") / "tiny"
    train(config, phantoms, out)
    return out


def invoke(*args):
    return CliRunner().invoke(cli, ["evaluate", *map(str, args)], catch_exceptions=False)


FAST = ("--n-boot", 100, "--deletion-steps", 4, "--randomisation-images", 1, "--no-progress")


def test_full_evaluation_writes_summaries(run_dir, phantoms, tmp_path):
    out = tmp_path / "evaluation"
    result = invoke("--model", run_dir, "--data", phantoms, "--methods", "gradient",
                    "--metrics", "aopc,deletion,insertion,localisation,randomisation",
                    "--out", out, *FAST)
    assert result.exit_code == 0, result.output
    per_image = pd.read_csv(out / "per_image.csv")
    run_config_test = pd.read_csv(out / "methods" / "gradient" / "per_image.csv")
    n_test = len(run_config_test)
    assert n_test >= 2 and len(per_image) == n_test
    for column in ("aopc_morf_abs_error_mm", "aopc_gap_shift_mm",
                   "aopc_morf_abs_error_px_original", "deletion_auc_abs_error_mm",
                   "insertion_auc_shift_mm", "band_ratio", "top_distance_mm", "error_group"):
        assert column in per_image
    summary = pd.read_csv(out / "summary.csv")
    assert (summary["ci_low"] <= summary["mean"] + 1e-9).all()
    assert (summary["mean"] <= summary["ci_high"] + 1e-9).all()
    row = summary.set_index("metric").loc["aopc_morf_abs_error_mm"]
    assert row["mean"] == pytest.approx(per_image["aopc_morf_abs_error_mm"].mean(), rel=1e-4)
    markdown = (out / "summary.md").read_text()
    assert "| gradient |" in markdown and "aopc_morf_abs_error_mm" in markdown
    assert "Model randomisation" in markdown
    assert (out / "summary_by_error.csv").is_file()
    randomisation = pd.read_csv(out / "randomisation.csv")
    assert randomisation["stage"].max() >= 3  # every weighted layer of the small CNN
    figures = {p.name for p in (out / "figures").iterdir()}
    assert {"perturbation_abs_error_mm.png", "deletion_insertion_abs_error_mm.png",
            "localisation_band_ratio.png"} <= figures
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no temporary files left
    steps = pd.read_csv(out / "methods" / "gradient" / "perturbation_steps.csv")
    assert len(steps) == n_test * 3 * 16  # images x orders x (15 steps + unperturbed)
    assert set(steps["filename"]) == set(per_image["filename"])
    assert {"hc_pred_mm", "abs_error_mm", "shift_mm", "abs_error_px_original"} <= set(steps)

    settings = json.loads((out / "settings.json").read_text())
    assert settings["methods"] == ["gradient"] and settings["split"] == "test"


def write_maps_provenance(maps_dir, run_dir, phantoms, n_images):
    """The provenance.json of maps of the run's model on the first ``n_images`` of its test
    split (what ``fetalhc evaluate --limit n_images`` evaluates)."""
    from fetalhc.report.evaluation_provenance import write_maps_provenance as write
    from fetalhc.training import load_run, run_split_index

    run = load_run(run_dir)
    rows = run_split_index(run.config, phantoms, "test").head(n_images)
    return write(maps_dir, run.model_path, rows, image_size=SIZE, split="test")


def test_external_maps_resume_and_paper_protocol(run_dir, phantoms, tmp_path):
    maps_dir = tmp_path / "maps"
    maps_dir.mkdir()
    n_test = 3  # --limit
    np.save(maps_dir / "mine.npy", np.ones((n_test, SIZE, SIZE), np.float32))
    write_maps_provenance(maps_dir, run_dir, phantoms, n_test)
    out = tmp_path / "external"
    result = invoke("--model", run_dir, "--data", phantoms, "--methods", "mine",
                    "--maps", maps_dir, "--metrics", "aopc", "--limit", n_test,
                    "--grid", 2, "--steps", 3, "--out", out, "--no-figures", *FAST)
    assert result.exit_code == 0, result.output
    per_image = pd.read_csv(out / "per_image.csv")
    assert list(per_image["method"].unique()) == ["mine"]
    # Tied maps: MoRF and LeRF both keep the grid order, so their AOPCs are equal.
    assert len(per_image) == n_test
    np.testing.assert_array_equal(per_image["aopc_morf_shift_mm"],
                                  per_image["aopc_lerf_shift_mm"])

    # Re-running with one more method skips the finished one (resumable).
    np.save(maps_dir / "other.npy", np.random.default_rng(0).normal(size=(n_test, SIZE, SIZE)))
    finished = out / "methods" / "mine" / "per_image.csv"
    stamp = finished.stat().st_mtime_ns
    again = invoke("--model", run_dir, "--data", phantoms, "--methods", "mine,other",
                   "--maps", maps_dir, "--metrics", "aopc", "--limit", n_test,
                   "--grid", 2, "--steps", 3, "--out", out, "--no-figures", *FAST)
    assert again.exit_code == 0, again.output
    assert finished.stat().st_mtime_ns == stamp
    both = pd.read_csv(out / "per_image.csv")
    assert list(both["method"].unique()) == ["mine", "other"] and len(both) == 2 * n_test
    assert json.loads((out / "settings.json").read_text())["methods"] == ["mine", "other"]
    # Changed settings are refused naming the setting; --overwrite recomputes.
    changed = ("--model", run_dir, "--data", phantoms, "--methods", "mine", "--maps",
               maps_dir, "--metrics", "aopc", "--limit", n_test, "--grid", 2, "--steps", 2,
               "--out", out, "--no-figures", *FAST)
    refused = invoke(*changed)
    assert refused.exit_code == 1 and "another settings.steps (3 there, 2 now)" in \
        refused.output and "--overwrite" in refused.output, refused.output
    assert finished.stat().st_mtime_ns == stamp
    assert invoke(*changed, "--overwrite").exit_code == 0
    assert finished.stat().st_mtime_ns != stamp

    np.save(maps_dir / "mine.npy", np.ones((n_test, 16, 16), np.float32))
    bad = invoke("--model", run_dir, "--data", phantoms, "--methods", "mine", "--maps",
                 maps_dir, "--metrics", "aopc", "--limit", n_test, "--grid", 2, "--out",
                 tmp_path / "bad", *FAST)
    assert bad.exit_code == 1
    assert "maps have shape (3, 16, 16) but the images need (3, 32, 32)" in bad.output
    paper = invoke("--model", run_dir, "--data", phantoms, "--protocol", "paper",
                   "--methods", "gradient", "--metrics", "aopc", "--out", tmp_path / "p",
                   *FAST)
    assert paper.exit_code == 1
    assert "the paper protocol uses 128 x 128 inputs; got images of 32 x 32 px" in paper.output


@pytest.mark.parametrize("args, message, code", [
    (("--grid", 5), "a grid of 5 regions does not divide the image height 32 px; "
                    "regions per side that do: 16, 8, 4, 2", 1),
    (("--steps", 17), "the 4 x 4 grid has only 16", 1),
    (("--metrics", "aopc,faithfulness"), "unknown metric(s) faithfulness", 2),
    (("--perturbation", "salt"), "'salt' is not one of 'noise', 'mean', 'zeros', 'blur'", 2),
    (("--methods", "magic"), "unknown method(s) magic", 1),
    (("--split", "challenge", "--metrics", "localisation"),
     "localisation needs the contour annotations, but", 1),
])
def test_bad_input_gives_one_line_errors(run_dir, phantoms, tmp_path, args, message, code):
    base = {"--methods": "gradient", "--metrics": "aopc"}
    for key, value in zip(args[::2], args[1::2], strict=True):
        base[key] = value
    flat = [item for pair in base.items() for item in pair]
    result = invoke("--model", run_dir, "--data", phantoms, "--out", tmp_path / "e", *flat,
                    *FAST)
    assert result.exit_code == code, result.output  # 2: click's usage errors
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and message in error_lines[0], result.output
    if "localisation" in message:
        assert "000_HC_Annotation.png" in error_lines[0]
    assert not (tmp_path / "e").exists()


def test_settings_options_share_the_dataclass_defaults():
    """Every EvaluationSettings field the CLI exposes has the dataclass's default, in the
    click parameter and in --help, and its choices / range from fetalhc.evaluate.settings;
    fields without an option are the listed ones only; every option has help text."""
    import dataclasses

    import click

    from fetalhc.cli.evaluate import SETTINGS_OPTIONS, command, settings_from_options
    from fetalhc.evaluate import EvaluationSettings
    from fetalhc.evaluate.settings import CHOICES, METRICS, RANGES
    from fetalhc.training.config import SPLITS

    defaults = EvaluationSettings()
    fields = {field.name for field in dataclasses.fields(EvaluationSettings)}
    params = {param.name: param for param in command.params}
    exposed = [name for _, name, _, _ in SETTINGS_OPTIONS]
    assert len(exposed) == len(set(exposed)) and set(exposed) <= fields
    assert fields - set(exposed) == {"orders", "confidence", "explain_options"}
    context = click.Context(command)
    for flags, name, _, _ in SETTINGS_OPTIONS:
        param = params[name]
        assert param.opts[0] == flags.split("/")[0]
        assert param.default == getattr(defaults, name), name
        shown = param.get_help_record(context)[1]
        expected = getattr(defaults, name)
        if isinstance(expected, bool):  # --on/--off: the default is shown by its flag
            flag = flags.split("/")[0 if expected else 1].lstrip("-")
            assert f"[default: {flag}]" in shown, (name, shown)
        elif expected is not None:  # "[default: 4]" or, with a range, "[default: 4; x>=1]"
            assert f"[default: {expected}]" in shown or f"[default: {expected};" in shown, \
                (name, shown)
        else:
            assert "[default:" not in shown
        if name in CHOICES:
            assert isinstance(param.type, click.Choice), name
            assert tuple(param.type.choices) == CHOICES[name], name
        elif name in RANGES:
            allowed = RANGES[name]
            assert isinstance(param.type, click.IntRange | click.FloatRange), name
            assert (param.type.min, param.type.max) == (allowed.low, allowed.high), name
            assert (param.type.min_open, param.type.max_open) == (allowed.low_open,
                                                                  allowed.high_open), name
    assert settings_from_options({name: params[name].default for name in exposed}) == defaults
    for param in command.params:  # every option has help; choices are the library's
        if isinstance(param, click.Option):
            assert param.help, f"{param.opts} has no help text"
    assert tuple(params["metrics"].type.choices) == METRICS
    assert tuple(params["split"].type.choices) == (*SPLITS, "all")
    assert tuple(params["explain_target"].type.choices) == CHOICES["explain_target"]


def test_settings_from_options_applies_the_protocol():
    from fetalhc.cli.evaluate import settings_from_options
    from fetalhc.evaluate import EvaluationSettings

    paper = settings_from_options({"protocol": "paper", "grid": 8, "steps": 3, "band_mm": 2.0})
    assert paper == EvaluationSettings.paper(band_mm=2.0)  # the paper fixes grid and steps
    assert settings_from_options({"grid": 8}) == EvaluationSettings(grid=8)
    with pytest.raises(ValueError, match="unknown protocol 'zhang'; known: paper"):
        settings_from_options({"protocol": "zhang"})

"""``fetalhc predict``: challenge-format CSV, per-image table (with the reliability flags of
#19, tests/test_reliability.py), metrics and plots in mm; never reads the reference; TTA
(the image and its horizontal flip); one-line errors and nothing written on bad input."""

from __future__ import annotations

import json
import shutil

import keras
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from fetalhc.cli.main import cli
from fetalhc.models.reliability import RELIABILITY_COLUMNS
from fetalhc.training import load_run, read_toml, run_split_index, train, write_config

CONFIG = {
    "data": {"image_size": 32, "val_fraction": 0.2, "test_fraction": 0.2},
    "model": {"backbone": "small_cnn", "dropout": 0.0},
    "train": {"epochs": 2, "batch_size": 8, "learning_rate": 3e-3, "tensorboard": False},
}


@pytest.fixture(scope="module")
def data(phantoms):
    return phantoms


@pytest.fixture(scope="module")
def run_dir(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "run"
    train(CONFIG, data, out)
    return out


def _predict(*args):
    return CliRunner().invoke(cli, ["predict", *map(str, args)])


def test_predict_test_split_writes_challenge_csv_table_metrics_and_plots(run_dir, data,
                                                                         tmp_path):
    out = tmp_path / "predictions.csv"
    result = _predict("--model", run_dir / "model.keras", "--data", data, "--out", out)
    assert result.exit_code == 0, result.output
    predictions = pd.read_csv(out)
    assert list(predictions.columns) == ["filename", "head circumference (mm)"]
    config = load_run(run_dir).config
    assert predictions["filename"].tolist() == config["split"]["test"]  # default split: test

    table = pd.read_csv(tmp_path / "predictions_per_image.csv")
    assert list(table.columns) == ["filename", "pixel size (mm)", "reference (mm)",
                                   "prediction (mm)", "error (mm)", "abs error (mm)",
                                   *RELIABILITY_COLUMNS]
    np.testing.assert_allclose(table["prediction (mm)"], predictions["head circumference (mm)"],
                               atol=1e-3)
    np.testing.assert_allclose(table["error (mm)"],
                               table["prediction (mm)"] - table["reference (mm)"], atol=2e-3)
    index = run_split_index(config, data, "test")
    np.testing.assert_allclose(table["reference (mm)"], index["hc_mm"], atol=1e-3)
    metrics = json.loads((tmp_path / "predictions_metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["n"] == len(table)
    assert metrics["mae_mm"] == pytest.approx(table["abs error (mm)"].mean(), abs=1e-3)
    for name in ("predictions_bland_altman.png", "predictions_scatter.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert "MAE" in result.output


def test_predictions_do_not_depend_on_the_reference(run_dir, data, tmp_path):
    changed = tmp_path / "data"
    shutil.copytree(data, changed)
    csv = changed / "training_set_pixel_size_and_HC.csv"
    table = pd.read_csv(csv)
    table["head circumference (mm)"] = 123.45
    table.to_csv(csv, index=False)
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    assert _predict("--model", run_dir / "model.keras", "--data", data, "--out",
                    first).exit_code == 0
    assert _predict("--model", run_dir / "model.keras", "--data", changed, "--out",
                    second).exit_code == 0
    pd.testing.assert_frame_equal(pd.read_csv(first), pd.read_csv(second))
    assert (pd.read_csv(tmp_path / "b_per_image.csv")["reference (mm)"] == 123.45).all()


def test_predict_records_its_provenance_beside_its_files(run_dir, data, tmp_path):
    """#17: ``<stem>_provenance.json`` says what made the predictions; a prediction of
    another split into the same --out leaves no file of the earlier one beside it."""
    from fetalhc.report.provenance import index_digest, model_digest

    out = tmp_path / "p.csv"
    assert _predict("--model", run_dir / "model.keras", "--data", data, "--out",
                    out).exit_code == 0
    record = json.loads((tmp_path / "p_provenance.json").read_text())
    config = load_run(run_dir).config
    result = record["result"]
    assert record["kind"] == "predict"
    assert result["model"] == model_digest(run_dir / "model.keras")
    assert result["split"] == "test" and result["tta"] is False
    assert result["preprocessing"]["image_size"] == 32
    assert result["image_keys"] == [["training_set", name] for name in config["split"]["test"]]
    assert result["index"] == index_digest(run_split_index(config, data, "test"))
    assert record["info"]["model"] == str(run_dir / "model.keras")

    result = _predict("--model", run_dir / "model.keras", "--data", data, "--split",
                      "challenge", "--out", out, "--tta")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "p_provenance.json").read_text())
    assert record["result"]["split"] == "challenge" and record["result"]["tta"] is True
    assert record["result"]["image_keys"][0] == ["test_set", "000_HC.png"]
    assert record["result"]["reliability"]["flip_threshold_mm"] == 5.0
    # the challenge split has no references: no plots, but its flags
    assert sorted(p.name for p in tmp_path.glob("p*")) == ["p.csv", "p_metrics.json",
                                                           "p_per_image.csv",
                                                           "p_provenance.json"]


def test_challenge_split_and_tta(run_dir, data, tmp_path):
    from fetalhc.data import load_arrays
    from fetalhc.models import load_model

    out = tmp_path / "challenge.csv"
    result = _predict("--model", run_dir / "model.keras", "--data", data, "--split",
                      "challenge", "--out", out, "--tta")
    assert result.exit_code == 0, result.output
    predictions = pd.read_csv(out)
    assert len(predictions) == 4
    table = pd.read_csv(tmp_path / "challenge_per_image.csv")  # no references: flags only
    assert "reference (mm)" not in table and "flagged" in table
    assert "mae_mm" not in json.loads((tmp_path / "challenge_metrics.json").read_text())
    assert not (tmp_path / "challenge_bland_altman.png").exists()

    # TTA = mean over the identity and the horizontal flip, in input px, times the pixel size
    model = load_model(run_dir / "model.keras")
    arrays = load_arrays(run_split_index({}, data, "challenge"), image_size=32)
    images = arrays["image"]
    views = [images, images[:, :, ::-1]]
    mean_px = np.mean([model.predict(v, verbose=0)[:, 0] for v in views], axis=0)
    np.testing.assert_allclose(predictions["head circumference (mm)"],
                               mean_px * arrays["pixel_size_mm"], rtol=1e-4, atol=1e-3)


def _assert_one_line_error(result, message, out):
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines
    assert not list(out.parent.glob(f"{out.stem}*"))


def test_non_fetalhc_and_unsafe_model_files_are_refused(data, tmp_path):
    out = tmp_path / "out" / "p.csv"
    inputs = keras.Input((32, 32, 1))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    keras.Model(inputs, keras.layers.Dense(1, name="score")(pooled)).save(tmp_path / "o.keras")
    _assert_one_line_error(_predict("--model", tmp_path / "o.keras", "--data", data, "--out",
                                    out, "--split", "challenge"), "is not a fetalhc model", out)
    scaled = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(scaled)
    keras.Model(inputs, keras.layers.Dense(1, name="hc_px_input")(pooled)).save(
        tmp_path / "u.keras")
    _assert_one_line_error(_predict("--model", tmp_path / "u.keras", "--data", data, "--out",
                                    out, "--split", "challenge"), "unsafe deserialisation", out)
    (tmp_path / "t.keras").write_text("hello")
    _assert_one_line_error(_predict("--model", tmp_path / "t.keras", "--data", data, "--out",
                                    out, "--split", "challenge"), "not a Keras v3", out)
    # without a run folder there is no run split (all of --data is the default): said
    # before the model loads
    _assert_one_line_error(_predict("--model", tmp_path / "t.keras", "--data", data, "--out",
                                    out, "--split", "test"),
                           "so it has no 'test' split; use --split all", out)


def test_wrong_image_size_empty_split_and_missing_run_folder(run_dir, data, tmp_path):
    out = tmp_path / "out" / "p.csv"
    _assert_one_line_error(
        _predict("--model", run_dir / "model.keras", "--data", data, "--out", out,
                 "--image-size", 64),
        "takes 32x32 px inputs, got image size 64", out)

    no_val = tmp_path / "no_val"
    no_val.mkdir()
    shutil.copy(run_dir / "model.keras", no_val / "model.keras")
    config = read_toml(run_dir / "config.toml")
    config["split"]["val"] = []
    write_config(config, no_val / "config.toml")
    _assert_one_line_error(
        _predict("--model", no_val / "model.keras", "--data", data, "--out", out,
                 "--split", "val"),
        "'val' split of this run is empty", out)

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(run_dir / "model.keras", alone / "model.keras")
    _assert_one_line_error(
        _predict("--model", alone / "model.keras", "--data", data, "--out", out,
                 "--split", "test"),
        "so it has no 'test' split; use --split all", out)
    result = _predict("--model", alone / "model.keras", "--data", data, "--out", out,
                      "--split", "challenge")
    assert result.exit_code == 0 and len(pd.read_csv(out)) == 4

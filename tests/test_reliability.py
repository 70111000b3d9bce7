"""#19 per-image reliability flags (``fetalhc.models.reliability``), on phantoms.

The models here are tiny functional graphs whose outputs are known: the HC output is one
``Dense`` unit on the flattened input (so a horizontal flip changes it by a computable
amount) and the ``ellipse`` output is a constant (a zero kernel, the ellipse in its bias).
The run folder is what ``train`` lays out (``plan_run`` / ``start_run``), holding such a
model instead of a trained one."""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from fetalhc.cli.main import cli
from fetalhc.models.reliability import (
    BORDER_FLAG,
    DEFAULT_FLIP_THRESHOLD_MM,
    FLAGGED,
    FLIP_FLAG,
    RANGE_FLAG,
    RELIABILITY_COLUMNS,
    check_flip_threshold,
    content_boxes,
    ellipse_at_border,
    flag_frame,
    flag_summary,
    reliability_flags,
    training_hc_range_mm,
)

SIZE = 32
CONFIG = {
    "data": {"image_size": SIZE, "val_fraction": 0.2, "test_fraction": 0.3, "cache": False},
    "model": {"backbone": "small_cnn", "dropout": 0.0},
    "train": {"epochs": 1, "batch_size": 8, "tensorboard": False},
}
# an upright ellipse (θ = 90°) centred in the input: its y extent meets the content box of a
# 320 x 216 phantom (rows 5 .. 26 of the 32 px input, edges 4.5 and 26.5) when a = 10.5
INSIDE, AT_BORDER = (16.0, 15.5, 9.0, 5.0, math.pi / 2), (16.0, 15.5, 10.5, 5.0, math.pi / 2)


def standardised(cx, cy, a, b, angle, size=SIZE):
    """The ``ellipse`` output values of an ellipse in input px (the forward map)."""
    return np.array([(cx - size / 2) / (size / 4), (cy - size / 2) / (size / 4),
                     (a - size / 4) / (size / 8), (b - size / 4) / (size / 8),
                     math.sin(2 * angle), math.cos(2 * angle)])


def weights(size=SIZE):
    """Dense weights that read the left and right halves differently: flips disagree."""
    column = np.tile(np.arange(size, dtype=np.float64), size)  # x of each flattened pixel
    return (0.05 * (column - (size - 1) / 2) / size + 0.01).reshape(-1, 1), 40.0


def linear_model(ellipse=None, size=SIZE) -> keras.Model:
    """HC (input px) = flattened image · w + 40; with ``ellipse``, a constant ellipse output."""
    inputs = keras.Input((size, size, 1))
    flat = keras.layers.Flatten()(inputs)
    hc_layer = keras.layers.Dense(1, name="hc_px_input")
    outputs = hc_layer(flat)
    kernel, bias = weights(size)
    hc_layer.set_weights([kernel.astype(np.float32), np.array([bias], np.float32)])
    if ellipse is None:
        return keras.Model(inputs, outputs)
    ellipse_layer = keras.layers.Dense(6, name="ellipse")
    shape = ellipse_layer(flat)
    ellipse_layer.set_weights([np.zeros((size * size, 6), np.float32),
                               standardised(*ellipse).astype(np.float32)])
    return keras.Model(inputs, {"hc_px_input": outputs, "ellipse": shape})


def expected_mm(index, size=SIZE):
    """(prediction, flipped prediction) in mm, from the pre-processed images by numpy."""
    from fetalhc.data import load_arrays

    arrays = load_arrays(index, image_size=size)
    images = arrays["image"].astype(np.float64)
    kernel, bias = weights(size)
    flat = images.reshape(len(images), -1)
    flipped = images[:, :, ::-1].reshape(len(images), -1)
    pixel = arrays["pixel_size_mm"].astype(np.float64)
    return (flat @ kernel[:, 0] + bias) * pixel, (flipped @ kernel[:, 0] + bias) * pixel


@pytest.fixture(scope="module")
def data(phantom_dir_factory):
    return phantom_dir_factory(n=12, challenge=3)


@pytest.fixture(scope="module")
def index(data):
    from fetalhc.data import load_index

    return load_index(data, "training", validate=False).iloc[:6].reset_index(drop=True)


@pytest.fixture(scope="module")
def run_dir(data, tmp_path_factory):
    from fetalhc.training import resolve_config
    from fetalhc.training.run_folder import plan_run, start_run

    out = tmp_path_factory.mktemp("reliability") / "run"
    config, _ = plan_run(resolve_config(CONFIG), data, out, False, False)
    start_run(config, out, False, False)
    linear_model(AT_BORDER).save(out / "model.keras")
    return out


# ----------------------------------------------------------------------------- library
def test_the_cli_default_is_the_library_default():
    from fetalhc.cli.predict import FLIP_THRESHOLD_MM

    assert FLIP_THRESHOLD_MM == DEFAULT_FLIP_THRESHOLD_MM


def test_flip_disagreement_is_exact_and_flagged_above_the_threshold(index):
    prediction, flipped = expected_mm(index)
    disagreement = np.abs(prediction - flipped)
    assert disagreement.min() > 1e-3  # the model does not agree with itself
    threshold = float(np.median(disagreement))
    flags = reliability_flags(linear_model(), index, SIZE, flip_threshold_mm=threshold,
                              batch_size=4)
    assert list(flags.columns) == ["filename", "prediction (mm)", *RELIABILITY_COLUMNS]
    assert flags["filename"].tolist() == index["filename"].tolist()
    np.testing.assert_allclose(flags["prediction (mm)"], prediction, rtol=1e-5)
    np.testing.assert_allclose(flags["flipped prediction (mm)"], flipped, rtol=1e-5)
    np.testing.assert_allclose(flags["flip disagreement (mm)"], disagreement, rtol=1e-3)
    assert flags[FLIP_FLAG].tolist() == (disagreement > threshold).tolist()
    assert 0 < flags[FLIP_FLAG].sum() < len(flags)
    # no range, no ellipse output: unknown, not False
    assert flags[RANGE_FLAG].isna().all() and flags[BORDER_FLAG].isna().all()
    assert flags[FLAGGED].tolist() == flags[FLIP_FLAG].tolist()

    # the same from arrays already pre-processed (what explain passes)
    from fetalhc.data import load_arrays

    images = load_arrays(index, image_size=SIZE)["image"]
    again = reliability_flags(linear_model(), index, SIZE, flip_threshold_mm=threshold,
                              images=images)
    np.testing.assert_allclose(again["flip disagreement (mm)"], flags["flip disagreement (mm)"],
                               rtol=1e-4)


def test_tta_averages_the_image_and_its_horizontal_flip_only(index):
    from fetalhc.models import predict_hc_mm

    prediction, flipped = expected_mm(index)
    table = predict_hc_mm(linear_model(), index, SIZE, tta=True)
    np.testing.assert_allclose(table["prediction (mm)"], (prediction + flipped) / 2, rtol=1e-5)
    plain = predict_hc_mm(linear_model(), index, SIZE)
    np.testing.assert_allclose(plain["prediction (mm)"], prediction, rtol=1e-5)
    flags = reliability_flags(linear_model(), index, SIZE, tta=True)
    np.testing.assert_allclose(flags["prediction (mm)"], (prediction + flipped) / 2, rtol=1e-5)
    np.testing.assert_allclose(flags["flip disagreement (mm)"],
                               np.abs(prediction - flipped), rtol=1e-3)


def test_training_range_flag_with_a_given_range():
    prediction = [90.0, 100.0, 150.0, 200.0, 210.0, float("nan")]
    frame = flag_frame(prediction, prediction, hc_range_mm=(100.0, 200.0))
    assert frame[RANGE_FLAG].tolist() == [True, False, False, False, True, True]
    assert frame[FLIP_FLAG].tolist() == [False] * 5 + [True]  # NaN never agrees
    assert frame[FLAGGED].tolist() == [True, False, False, False, True, True]
    unknown = flag_frame(prediction[:2], prediction[:2])
    assert unknown[RANGE_FLAG].isna().all() and unknown[FLAGGED].tolist() == [False, False]
    with pytest.raises(ValueError, match="min <= max"):
        flag_frame(prediction, prediction, hc_range_mm=(200.0, 100.0))


def test_content_box_excludes_the_padding_and_border_flag():
    index = pd.DataFrame({"width_px": [320, 216], "height_px": [216, 320]})
    boxes = content_boxes(index, SIZE)
    np.testing.assert_allclose(boxes, [[-0.5, 4.5, 31.5, 26.5], [4.5, -0.5, 26.5, 31.5]])
    values = np.stack([standardised(*INSIDE), standardised(*AT_BORDER)])
    # upright ellipses meet the top and bottom of a landscape image's content, not its square
    assert ellipse_at_border(values, boxes[[0, 0]], SIZE).tolist() == [False, True]
    assert ellipse_at_border(values, boxes[[1, 1]], SIZE).tolist() == [False, False]
    # lying ellipses (θ = 0) meet a portrait image's sides
    lying = np.stack([standardised(16.0, 15.5, 10.5, 5.0, 0.0),
                      standardised(16.0, 15.5, 10.5, 5.0, 0.0)])
    assert ellipse_at_border(lying, boxes, SIZE).tolist() == [False, True]
    assert ellipse_at_border(np.full((1, 6), np.nan), boxes[:1], SIZE).tolist() == [True]


def test_content_box_of_a_crop_is_the_part_that_shows_the_image():
    """A crop run's border is the image's edge inside the crop, not the crop's square. A
    100 px region centred at x = 10 of a 320 x 216 image covers columns -40 .. 59: its
    first 40 px (12.8 -> 13 input px at 32 / 100) lie outside the image."""
    index = pd.DataFrame({"width_px": [320, 320], "height_px": [216, 216],
                          "region_cx_px": [10, 160], "region_cy_px": [108, 108],
                          "region_side_px": [100, 100]})
    boxes = content_boxes(index, SIZE)
    np.testing.assert_allclose(boxes, [[12.5, -0.5, 31.5, 31.5], [-0.5, -0.5, 31.5, 31.5]])
    centred = standardised(16.0, 16.0, 8.0, 8.0, 0.0)  # spans x 8 .. 24 input px
    assert ellipse_at_border(np.stack([centred, centred]), boxes, SIZE).tolist() == [True,
                                                                                     False]


def test_border_flag_of_a_constant_ellipse_output(index):
    assert set(zip(index["width_px"], index["height_px"], strict=True)) == {(320, 216)}
    inside = reliability_flags(linear_model(INSIDE), index, SIZE)
    touching = reliability_flags(linear_model(AT_BORDER), index, SIZE)
    assert inside[BORDER_FLAG].tolist() == [False] * len(index)
    assert touching[BORDER_FLAG].tolist() == [True] * len(index)
    assert touching[FLAGGED].all()
    assert reliability_flags(linear_model(), index, SIZE)[BORDER_FLAG].isna().all()


def test_flip_threshold_and_range_checks():
    assert check_flip_threshold(2) == 2.0
    for bad in (0, -1.0, float("nan"), float("inf"), True, "5"):
        with pytest.raises(ValueError, match="--flip-threshold-mm must be a finite number"):
            check_flip_threshold(bad)
    with pytest.raises(ValueError, match="hc_range_mm"):
        flag_frame([1.0], [1.0], hc_range_mm=(float("nan"), 3.0))


def test_training_range_from_the_run_record_or_its_train_split(run_dir, data):
    from fetalhc.data import load_index
    from fetalhc.training import load_run

    config = load_run(run_dir).config
    train = load_index(data, "training", validate=False).set_index("filename").loc[
        config["split"]["train"], "hc_mm"]
    assert (config["run"]["hc_min_mm"], config["run"]["hc_max_mm"]) == pytest.approx(
        (train.min(), train.max()))
    assert training_hc_range_mm(config) == pytest.approx((train.min(), train.max()))
    older = {**config, "run": {key: value for key, value in config["run"].items()
                               if key not in ("hc_min_mm", "hc_max_mm")}}
    assert training_hc_range_mm(older) is None  # no data folder to read the split from
    assert training_hc_range_mm(older, data) == pytest.approx((train.min(), train.max()))
    missing = {**older, "split": {**older["split"], "train": ["nope.png"]}}
    assert training_hc_range_mm(missing, data) is None


def test_flag_summary_counts_and_mae_of_flagged_and_unflagged():
    frame = flag_frame([90.0, 150.0, 160.0], [90.0, 150.0, 170.0], hc_range_mm=(100, 200),
                       flip_threshold_mm=5.0)
    summary = flag_summary(frame, abs_error_mm=[4.0, 1.0, 3.0])
    assert summary["n"] == 3 and summary["n_flagged"] == 2
    assert summary["n_outside_training_range"] == 1 and summary["n_flip_disagreement"] == 1
    assert summary["n_ellipse_at_border_unknown"] == 3
    assert summary["mae_flagged_mm"] == pytest.approx(3.5)
    assert summary["mae_unflagged_mm"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- predict
def _predict(*args):
    return CliRunner().invoke(cli, ["predict", *map(str, args)])


def test_predict_writes_the_flags_and_keeps_the_challenge_csv(run_dir, data, tmp_path):
    from fetalhc.training import load_run, run_split_index

    out = tmp_path / "p.csv"
    result = _predict("--model", run_dir, "--data", data, "--out", out,
                      "--flip-threshold-mm", 2.5)
    assert result.exit_code == 0, result.output
    assert "images flagged" in result.output
    assert list(pd.read_csv(out).columns) == ["filename", "head circumference (mm)"]
    table = pd.read_csv(tmp_path / "p_per_image.csv")
    assert list(table.columns) == ["filename", "pixel size (mm)", "reference (mm)",
                                   "prediction (mm)", "error (mm)", "abs error (mm)",
                                   *RELIABILITY_COLUMNS]
    config = load_run(run_dir).config
    index = run_split_index(config, data, "test")
    prediction, flipped = expected_mm(index)
    np.testing.assert_allclose(table["flipped prediction (mm)"], flipped, rtol=1e-4, atol=1e-3)
    assert table[FLIP_FLAG].tolist() == (np.abs(prediction - flipped) > 2.5).tolist()
    low, high = config["run"]["hc_min_mm"], config["run"]["hc_max_mm"]
    outside = (table["prediction (mm)"] < low) | (table["prediction (mm)"] > high)
    assert table[RANGE_FLAG].tolist() == outside.tolist()
    assert table[BORDER_FLAG].all() and table[FLAGGED].all()  # the ellipse meets the border

    metrics = json.loads((tmp_path / "p_metrics.json").read_text())
    flags = metrics["reliability"]
    assert flags["flip_threshold_mm"] == 2.5 and flags["hc_range_mm"] == [low, high]
    assert flags["n_flagged"] == len(table) and flags["mae_unflagged_mm"] is None
    assert flags["mae_flagged_mm"] == pytest.approx(table["abs error (mm)"].mean(), abs=1e-3)
    record = json.loads((tmp_path / "p_provenance.json").read_text())["result"]
    assert record["reliability"] == {"flip_threshold_mm": 2.5, "hc_range_mm": [low, high],
                                     "border_tolerance_px": 1.0}
    assert record["tta_views"] == ["identity"]

    # another threshold is another result
    assert _predict("--model", run_dir, "--data", data, "--out", out).exit_code == 0
    again = json.loads((tmp_path / "p_provenance.json").read_text())["result"]
    assert again["reliability"]["flip_threshold_mm"] == DEFAULT_FLIP_THRESHOLD_MM


def test_challenge_split_gets_its_flags_without_reference_columns(run_dir, data, tmp_path):
    out = tmp_path / "c.csv"
    result = _predict("--model", run_dir, "--data", data, "--split", "challenge", "--out", out,
                      "--tta")
    assert result.exit_code == 0, result.output
    assert list(pd.read_csv(out).columns) == ["filename", "head circumference (mm)"]
    table = pd.read_csv(tmp_path / "c_per_image.csv")
    assert list(table.columns) == ["filename", "pixel size (mm)", "prediction (mm)",
                                   *RELIABILITY_COLUMNS]
    assert len(table) == 3 and table[RANGE_FLAG].notna().all()
    metrics = json.loads((tmp_path / "c_metrics.json").read_text())
    assert "mae_mm" not in metrics and metrics["reliability"]["n_flagged"] == 3
    assert "mae_flagged_mm" not in metrics["reliability"]
    assert not (tmp_path / "c_bland_altman.png").exists()
    record = json.loads((tmp_path / "c_provenance.json").read_text())["result"]
    assert record["tta_views"] == ["identity", "horizontal flip"]


def test_a_bare_model_file_leaves_the_range_flag_unknown(run_dir, data, tmp_path):
    import shutil

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(run_dir / "model.keras", alone / "model.keras")
    out = tmp_path / "b.csv"
    result = _predict("--model", alone / "model.keras", "--data", data, "--out", out)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "b_per_image.csv")
    assert table[RANGE_FLAG].isna().all() and table[BORDER_FLAG].all()
    record = json.loads((tmp_path / "b_provenance.json").read_text())["result"]
    assert record["reliability"]["hc_range_mm"] is None


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "x"])
def test_bad_flip_threshold_is_one_line_and_writes_nothing(run_dir, data, tmp_path, value):
    out = tmp_path / "out" / "p.csv"
    result = _predict("--model", run_dir, "--data", data, "--out", out,
                      "--flip-threshold-mm", value)
    assert result.exit_code in (1, 2), result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert "flip-threshold-mm" in result.output
    if result.exit_code == 1:
        assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert not out.parent.exists() or not list(out.parent.iterdir())


# ----------------------------------------------------------------------------- explain
def test_explain_index_has_the_flags(run_dir, data, tmp_path):
    from fetalhc.report.explanations import write_explanations
    from fetalhc.training import load_run, run_split_index

    config = load_run(run_dir).config
    index = run_split_index(config, data, "test")
    model = keras.saving.load_model(run_dir / "model.keras")
    out = tmp_path / "maps"
    write_explanations(model, index, SIZE, ["gradient"], out, limit=3, batch_size=2,
                       progress=False, hc_range_mm=(100.0, 200.0), flip_threshold_mm=1.0)
    table = pd.read_csv(out / "index.csv")
    expected = reliability_flags(model, index.iloc[:3], SIZE, (100.0, 200.0), 1.0)
    for column in RELIABILITY_COLUMNS:
        if column.startswith("flag"):
            assert table[column].tolist() == expected[column].tolist(), column
        else:
            np.testing.assert_allclose(table[column], expected[column], rtol=1e-4)
    record = json.loads((out / "provenance.json").read_text())["result"]
    assert record["reliability"]["flip_threshold_mm"] == 1.0

    # the command line: the flags too (the training range is not passed there yet)
    cli_out = tmp_path / "cli_maps"
    result = CliRunner().invoke(cli, ["explain", "--model", str(run_dir), "--data", str(data),
                                      "--methods", "gradient", "--limit", "2",
                                      "--out", str(cli_out), "--no-progress"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(cli_out / "index.csv")
    assert set(RELIABILITY_COLUMNS) <= set(table.columns)
    assert table[BORDER_FLAG].all() and table[FLAGGED].all()

"""The "localise, then measure" crop stage (issue #19 step 4), on phantoms, checked exactly:
regions from ellipses, the crop's input pixel size and ellipse, padding outside the image,
the ellipse output's standardisation and its inverse, a localiser mapped back to original
px, a short crop run, and the config checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fetalhc.data import (
    Augmentation,
    annotation_ellipses,
    crop_geometry,
    ellipse_perimeter,
    ellipse_regions,
    index_regions,
    input_pixel_size_mm,
    load_arrays,
    load_index,
    make_dataset,
    reference_regions,
    with_regions,
)
from fetalhc.models import (
    ELLIPSE_OUTPUT,
    build_model,
    check_localiser,
    ellipse_from_output,
    localised_index,
    predict_ellipses,
    predict_hc_mm,
    standardise_ellipse,
    unstandardise_ellipse,
)
from fetalhc.training import load_run, resolve_config, train

SIZE = 32
MARGIN = 1.25
BRIGHTNESS_ONLY = Augmentation(flip_horizontal=False, max_rotation_deg=0.0,
                               scale_range=(1.0, 1.0), max_translation=0.0, brightness=0.5,
                               contrast_range=(1.0, 1.0))
CROP_RUN = {
    "data": {"image_size": SIZE, "val_fraction": 0.2, "test_fraction": 0.2, "cache": True,
             "augment": True, "crop_margin": MARGIN},
    "model": {"backbone": "small_cnn", "dropout": 0.0, "filters": [8, 16]},
    "train": {"epochs": 1, "batch_size": 8, "learning_rate": 3e-3, "seed": 0,
              "tensorboard": False},
}


@pytest.fixture(scope="module")
def index(phantoms):
    """The first 8 training rows of the shared phantoms (320 x 216 px)."""
    return load_index(phantoms).iloc[:8].reset_index(drop=True)


def _z_scored(path) -> np.ndarray:
    from PIL import Image

    image = np.asarray(Image.open(path), dtype=np.float64) / 255.0
    return (image - image.mean()) / image.std()


def _constant_localiser(values, size: int = SIZE):
    """A model whose ``ellipse`` output is ``values`` (6 standardised numbers) whatever the
    image: the Dense layer's kernel is zero, its bias the values."""
    model = build_model("small_cnn", input_shape=(size, size, 1), aux_ellipse=True,
                        small_cnn_filters=(4,), dropout=0.0)
    layer = model.get_layer(ELLIPSE_OUTPUT)
    kernel, _ = layer.get_weights()
    layer.set_weights([np.zeros_like(kernel), np.asarray(values, dtype=np.float32)])
    return model


# ------------------------------------------------------------------------- regions ---


def test_region_of_a_known_ellipse():
    regions = ellipse_regions([[100.4, 50.5, 40.0, 30.0, 0.3],
                               [10.6, 7.2, 40.25, 12.0, 2.0]], MARGIN)
    # centre rounded (halves up), side = round(2 x 1.25 x a): 100.0 -> 100, 100.625 -> 101
    assert regions.tolist() == [[100, 51, 100], [11, 7, 101]]
    assert regions.dtype == np.int64
    assert ellipse_regions([[0.5, -0.5, 50.25, 1.0, 0.0]], 1.0).tolist() == [[1, 0, 101]]
    assert ellipse_regions((20.0, 30.0, 0.1, 0.1, 0.0), 1.0).tolist() == [[20, 30, 1]]
    geometry = crop_geometry(100, 51, 100, 320, 216, 64)
    assert (geometry.left, geometry.top, geometry.scale) == (50, 1, 0.64)
    x, y = geometry.to_input(100.4, 50.5)
    assert geometry.to_original(x, y) == pytest.approx((100.4, 50.5))
    # an odd side is centred on the pixel: its middle pixel lands on the input centre
    assert crop_geometry(100, 51, 99, 320, 216, 99).to_input(100, 51) == (49.0, 49.0)


@pytest.mark.parametrize("margin", [0.0, -1.0, math.nan, math.inf])
def test_region_margin_must_be_positive(margin):
    with pytest.raises(ValueError, match="margin must be a finite number > 0"):
        ellipse_regions([[10.0, 10.0, 5.0, 4.0, 0.0]], margin)


def test_bad_regions_are_refused(index):
    with pytest.raises(ValueError, match="shape"):
        ellipse_regions(np.zeros((2, 4)), MARGIN)
    with pytest.raises(ValueError, match="semi-major axis > 0"):
        ellipse_regions([[10.0, 10.0, 0.0, 0.0, 0.0]], MARGIN)
    with pytest.raises(ValueError, match="lacks"):
        index_regions(index.assign(region_cx_px=1))
    regions = np.tile([[160, 108, 100]], (len(index), 1))
    assert index_regions(with_regions(index, regions)).tolist() == regions.tolist()
    with pytest.raises(ValueError, match="whole original px"):
        index_regions(with_regions(index, regions).assign(region_side_px=0))
    with pytest.raises(ValueError, match="whole numbers"):
        with_regions(index, regions + 0.5)
    with pytest.raises(ValueError, match=r"lies outside the 320x216 image"):
        load_arrays(with_regions(index, np.tile([[500, 108, 100]], (len(index), 1))),
                    image_size=SIZE)


# ---------------------------------------------------------------------------- crops ---


def test_crop_pixel_size_and_ellipse_are_exact(index):
    cropped = reference_regions(index, MARGIN)
    regions = cropped[["region_cx_px", "region_cy_px", "region_side_px"]].to_numpy()
    original = annotation_ellipses(index)
    assert regions.tolist() == ellipse_regions(original, MARGIN).tolist()
    arrays = load_arrays(cropped, image_size=SIZE, with_ellipse=True, with_annotation=True)

    side = regions[:, 2].astype(np.float64)
    pixel = index["pixel_size_mm"].to_numpy(np.float64) * side / SIZE
    assert np.array_equal(arrays["pixel_size_mm"], pixel.astype(np.float32))
    assert np.array_equal(input_pixel_size_mm(cropped, SIZE), pixel)

    # the ellipse in crop input px, computed directly from the region
    left = regions[:, 0] - regions[:, 2] // 2
    top = regions[:, 1] - regions[:, 2] // 2
    ellipse = arrays["ellipse"].astype(np.float64)
    np.testing.assert_allclose(ellipse[:, 0], (original[:, 0] - left + 0.5) * SIZE / side - 0.5,
                               atol=1e-4)
    np.testing.assert_allclose(ellipse[:, 1], (original[:, 1] - top + 0.5) * SIZE / side - 0.5,
                               atol=1e-4)
    np.testing.assert_allclose(ellipse[:, 2:4], original[:, 2:4] * SIZE / side[:, None],
                               rtol=1e-6)
    np.testing.assert_allclose(ellipse[:, 4:6], np.stack(
        [np.sin(2 * original[:, 4]), np.cos(2 * original[:, 4])], axis=1), atol=1e-6)
    # HC of the crop ellipse in crop px x crop pixel size = the reference HC
    hc_mm = ellipse_perimeter(ellipse[:, 2], ellipse[:, 3]) * arrays["pixel_size_mm"]
    direct = ellipse_perimeter(original[:, 2], original[:, 3]) * index["pixel_size_mm"]
    np.testing.assert_allclose(hc_mm, direct, rtol=1e-5)
    # the CSV rounds HC to 0.01 mm: at most 1e-4 of a phantom's HC (>= 50 mm)
    np.testing.assert_allclose(hc_mm, index["hc_mm"], rtol=1e-4)
    np.testing.assert_allclose(arrays["hc_px_input"] * arrays["pixel_size_mm"],
                               index["hc_mm"], rtol=1e-6)
    # the head is in the middle of the crop, whole, with room to spare
    assert np.all(np.abs(ellipse[:, :2] - (SIZE - 1) / 2) < 1.0)
    assert np.all(ellipse[:, 2] * MARGIN <= SIZE / 2 + 0.5)
    assert arrays["annotation"].sum(axis=(1, 2, 3)).min() > 2 * SIZE


def test_region_partly_outside_pads_with_zero_and_box_marks_the_inside(index):
    row = index.iloc[:1]
    z = _z_scored(row["image_path"].iloc[0])
    height, width = z.shape
    # side = S: the resize is the identity, so the crop is the z-scored image, 0 outside
    near_corner = with_regions(row, [[10, 12, 64]])  # left -22, top -20
    arrays = load_arrays(near_corner, image_size=64)
    expected = np.zeros((64, 64))
    expected[20:, 22:] = z[:44, :42]
    np.testing.assert_allclose(arrays["image"][0, ..., 0], expected, atol=2e-5)
    assert arrays["pixel_size_mm"][0] == np.float32(row["pixel_size_mm"].iloc[0])
    far_corner = with_regions(row, [[width - 1, height - 1, 64]])  # past the bottom right
    tail = load_arrays(far_corner, image_size=64)["image"][0, ..., 0]
    np.testing.assert_allclose(tail[:33, :33], z[-33:, -33:], atol=2e-5)
    assert not tail[33:].any() and not tail[:, 33:].any()

    # the content box: the inside part in input px, here at scale 1/2
    assert crop_geometry(10, 12, 64, width, height, 64).inside() == (44, 42, 20, 22)
    assert crop_geometry(10, 12, 128, width, height, 64).inside() == (38, 37, 26, 27)
    # brightness jitter touches the inside part only: outside stays exactly 0
    dataset = make_dataset(with_regions(row, [[10, 12, 128]]), image_size=64, batch_size=1,
                           augment=BRIGHTNESS_ONLY, seed=3)
    plain = load_arrays(with_regions(row, [[10, 12, 128]]), image_size=64)["image"][0, ..., 0]
    jittered = next(iter(dataset))["image"].numpy()[0, ..., 0]
    # outside the image (beyond the anti-aliasing kernel's reach of its edge) all 0
    assert not plain[:25].any() and not plain[:, :26].any()
    assert not jittered[:25].any() and not jittered[:, :26].any()
    shift = jittered - plain  # the brightness: the same inside the box, none outside
    assert not shift[:26].any() and not shift[:, :27].any()
    assert np.ptp(shift[26:, 27:]) < 1e-5 and abs(shift[30, 30]) > 1e-3


def test_whole_images_and_crops_cache_apart(index, tmp_path):
    rows = index.iloc[:3]
    for frame in (rows, reference_regions(rows, MARGIN), reference_regions(rows, 2.0)):
        for _ in make_dataset(frame, image_size=SIZE, batch_size=2, cache=tmp_path / "c"):
            pass
    assert len({path.name.split(".")[0] for path in tmp_path.glob("c_*.index")}) == 3


# --------------------------------------------------------------- ellipse output ---


def test_standardise_and_unstandardise_round_trip():
    import tensorflow as tf

    from fetalhc.training import standardise_ellipse as from_training
    from fetalhc.training.setup import standardise_ellipse as from_setup

    assert from_training is standardise_ellipse and from_setup is standardise_ellipse
    ellipse = np.array([[20.0, 10.5, 12.0, 7.0, math.sin(0.8), math.cos(0.8)],
                        [16.0, 16.0, 8.0, 8.0, 0.0, 1.0]])
    values = standardise_ellipse(ellipse, SIZE)
    assert values[1].tolist() == [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]  # centre S/2, axes S/4
    np.testing.assert_allclose(unstandardise_ellipse(values, SIZE), ellipse, atol=1e-12)
    tensor = unstandardise_ellipse(standardise_ellipse(tf.constant(ellipse), SIZE), SIZE)
    np.testing.assert_allclose(tensor.numpy(), ellipse, atol=1e-12)
    decoded = ellipse_from_output(values, SIZE)
    np.testing.assert_allclose(decoded[0], [20.0, 10.5, 12.0, 7.0, 0.4], atol=1e-12)
    # b > a from a network: axes swapped, the angle turned by pi/2 into [0, pi)
    swapped = standardise_ellipse(np.array([20.0, 10.5, 7.0, 12.0, math.sin(0.8),
                                            math.cos(0.8)]), SIZE)
    np.testing.assert_allclose(ellipse_from_output(swapped, SIZE),
                               [20.0, 10.5, 12.0, 7.0, 0.4 + math.pi / 2], atol=1e-12)
    with pytest.raises(ValueError, match="6 values"):
        unstandardise_ellipse(np.zeros((2, 5)), SIZE)


def test_predict_ellipses_maps_a_constant_output_back_to_original_px(index):
    reference = annotation_ellipses(index)[0]
    letterboxed = load_arrays(index.iloc[:1], image_size=SIZE, with_ellipse=True)["ellipse"]
    model = _constant_localiser(standardise_ellipse(letterboxed[0].astype(np.float64), SIZE))
    assert check_localiser(model) == SIZE
    # the images and references are not read: hc_mm is NaN and annotations are gone
    blind = index.assign(hc_mm=np.nan, annotation_path=None)
    ellipses = predict_ellipses(model, blind)
    assert ellipses.shape == (len(index), 5)
    np.testing.assert_allclose(ellipses[:, :4], np.tile(reference[:4], (len(index), 1)),
                               atol=2e-3)
    np.testing.assert_allclose(np.sin(2 * ellipses[:, 4]), math.sin(2 * reference[4]),
                               atol=1e-5)
    np.testing.assert_allclose(np.cos(2 * ellipses[:, 4]), math.cos(2 * reference[4]),
                               atol=1e-5)

    localised = localised_index(model, blind, None, MARGIN)
    regions = localised[["region_cx_px", "region_cy_px", "region_side_px"]].to_numpy()
    expected = ellipse_regions(reference, MARGIN)[0]
    assert np.abs(regions - expected).max() <= 1  # rounding of float32 outputs
    # the crop model predicts on the localised rows, with the crop's pixel size
    crop_model = build_model("small_cnn", input_shape=(SIZE, SIZE, 1),
                             small_cnn_filters=(4,), hc_mean_px=80.0, hc_std_px=10.0)
    table = predict_hc_mm(crop_model, localised, SIZE)
    np.testing.assert_allclose(
        table["input pixel size (mm)"],
        (index["pixel_size_mm"] * regions[:, 2] / SIZE).astype(np.float32), rtol=1e-7)

    with pytest.raises(ValueError, match="no 'ellipse' output"):
        check_localiser(crop_model)
    with pytest.raises(ValueError, match="takes 32 px inputs"):
        predict_ellipses(model, blind, 64)


# ------------------------------------------------------------------------ training ---


def test_crop_run_trains_and_records_its_crop(phantoms, tmp_path):
    result = train(CROP_RUN, phantoms, tmp_path / "crop")
    run = load_run(result.run_dir)
    assert run.config["data"]["crop_margin"] == MARGIN and run.config["data"]["localiser"] == ""
    assert run.config["preprocessing"]["crop_margin"] == MARGIN
    assert run.config["preprocessing"]["pad_value"] == 0.0
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["crop"]["crop_margin"] == MARGIN
    assert metrics["crop"]["regions"].startswith("reference")
    assert math.isfinite(metrics["test"]["mae_mm"])
    # HC standardisation statistics in crop input px
    rows = load_index(phantoms)
    rows = rows[rows["filename"].isin(run.config["split"]["train"])]
    side = ellipse_regions(annotation_ellipses(rows), MARGIN)[:, 2]
    hc_px = rows["hc_mm"] / (rows["pixel_size_mm"] * side / SIZE)
    assert run.config["run"]["hc_mean_px"] == pytest.approx(hc_px.mean())
    assert run.config["run"]["hc_std_px"] == pytest.approx(hc_px.std(ddof=0))

    from fetalhc.training.setup import prediction_index

    with pytest.raises(ValueError, match="no \\[data\\] localiser"):
        prediction_index(run.config, rows)


def test_crop_run_with_a_localiser_is_scored_on_its_crops(phantoms, tmp_path):
    localiser = _constant_localiser(np.zeros(6))  # an ellipse at the input centre
    localiser_file = tmp_path / "localiser.keras"
    localiser.save(localiser_file)
    config = {**CROP_RUN, "data": {**CROP_RUN["data"], "localiser": str(localiser_file),
                                   "augment": False}}
    result = train(config, phantoms, tmp_path / "crop")
    run = load_run(result.run_dir)
    assert run.config["run"]["localiser_file"] == str(localiser_file.resolve())
    assert result.metrics["crop"]["regions"] == f"localiser {localiser_file.resolve()}"
    # it validated on the localiser's crops too: the val MAE that chose the kept epoch is
    # the one metrics.json scores on them, not the reference crops' (perfect localisation)
    from fetalhc.models import load_model, predict_and_score
    from fetalhc.training.run_folder import run_split_index
    from fetalhc.training.setup import training_index

    monitored = result.history[run.config["run"]["monitor"]].iloc[0]
    assert monitored == pytest.approx(result.metrics["val"]["mae_mm"], rel=1e-4)
    reference_rows = training_index(run_split_index(run.config, phantoms, "val"), MARGIN)
    _, on_reference = predict_and_score(load_model(result.model_path), reference_rows, SIZE)
    assert abs(on_reference["mae_mm"] - monitored) > 1e-2

    from fetalhc.training.setup import prediction_index

    rows = load_index(phantoms).iloc[:4].assign(hc_mm=np.nan)
    localised = prediction_index(run.config, rows)
    # the output 0 is the ellipse centred at (S/2, S/2) with a = b = S/4 in input px:
    # 320 x 216 at 32 px is 32 x 22 px from row 5, 10 original px per input px
    cx, cy = (16 + 0.5) * 10 - 0.5, (16 - 5 + 0.5) * 216 / 22 - 0.5
    assert (cx, round(cy, 3)) == (164.5, 112.409)  # -> 165 (halves up), 112; side 2.5 x 80
    regions = localised[["region_cx_px", "region_cy_px", "region_side_px"]].to_numpy()
    assert np.unique(regions, axis=0).tolist() == [[165, 112, 200]]

    plain = tmp_path / "plain.keras"
    build_model("small_cnn", input_shape=(SIZE, SIZE, 1), small_cnn_filters=(4,)).save(plain)
    with pytest.raises(ValueError, match="no 'ellipse' output"):
        train({**config, "data": {**config["data"], "localiser": str(plain)}}, phantoms,
              tmp_path / "refused")
    with pytest.raises(FileNotFoundError, match="localiser"):
        train({**config, "data": {**config["data"], "localiser": str(tmp_path / "none")}},
              phantoms, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_a_localiser_trained_on_the_runs_val_or_test_images_is_refused(phantoms, tmp_path):
    stage1 = {**CROP_RUN, "data": {**CROP_RUN["data"], "crop_margin": 0.0, "split_seed": 1},
              "model": {**CROP_RUN["model"], "aux_ellipse": True}}
    localiser = train(stage1, phantoms, tmp_path / "stage1").run_dir
    config = {**CROP_RUN, "data": {**CROP_RUN["data"], "localiser": str(localiser)}}
    with pytest.raises(ValueError, match=r"was trained on \d+ image\(s\) of this run's "
                                         r"(val|test) split"):
        train(config, phantoms, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    # on the run's own split (same seed and fractions) it is accepted
    same = {**config, "data": {**config["data"], "split_seed": 1}}
    assert train(same, phantoms, tmp_path / "accepted").metrics["crop"]["regions"].startswith(
        "localiser")


@pytest.mark.parametrize("data, message", [
    ({"crop_margin": 0.5}, r"\[data\] crop_margin must be 0 \(no crop"),
    ({"crop_margin": -1.0}, r"\[data\] crop_margin must be 0"),
    ({"crop_margin": 5}, r"\[data\] crop_margin must be 0 .* in \[1, 4\]"),
    ({"crop_margin": math.nan}, r"\[data\] crop_margin must be 0"),
    ({"crop_margin": "wide"}, r"\[data\] crop_margin must be a number"),
    ({"localiser": "runs/stage1"}, r"\[data\] localiser places crops: it needs"),
    ({"localiser": 3, "crop_margin": 1.5}, r"\[data\] localiser must be a string"),
])
def test_bad_crop_config_names_the_key(data, message):
    with pytest.raises(ValueError, match=message):
        resolve_config({"data": data})


def test_crop_config_defaults_and_multiworker():
    data = resolve_config(None)["data"]
    assert data["crop_margin"] == 0.0 and data["localiser"] == ""
    assert resolve_config({"data": {"crop_margin": 2}})["data"]["crop_margin"] == 2.0
    with pytest.raises(ValueError, match="multiworker"):
        resolve_config({"data": {"crop_margin": 1.5}, "train": {"strategy": "multiworker"}})


def test_crop_index_is_unused_by_whole_image_configs(index):
    from fetalhc.training.setup import hc_statistics, training_index

    assert training_index(index, 0.0) is index
    whole = hc_statistics(index, SIZE)
    long_side = np.maximum(index["width_px"], index["height_px"])
    hc_px = index["hc_mm"] / (index["pixel_size_mm"] * long_side / SIZE)
    assert whole[0] == pytest.approx(hc_px.mean())
    cropped = hc_statistics(index, SIZE, MARGIN)
    assert cropped[0] > whole[0]  # the crop's pixels are smaller: more of them per HC



def test_predict_runs_a_crop_run_on_its_localisers_crops_and_explain_refuses_it(
        phantoms, tmp_path):
    import json

    import pandas as pd

    from fetalhc.cli.explain import explain_command
    from fetalhc.cli.predict import predict_command

    localiser = _constant_localiser(np.zeros(6))
    localiser_file = tmp_path / "localiser.keras"
    localiser.save(localiser_file)
    config = {**CROP_RUN, "data": {**CROP_RUN["data"], "localiser": str(localiser_file),
                                   "augment": False}}
    run_dir = train(config, phantoms, tmp_path / "crop").run_dir
    written = predict_command(run_dir, phantoms, "test", tmp_path / "pred" / "test.csv")
    provenance = json.loads((tmp_path / "pred" / "test_provenance.json").read_text())
    record = provenance.get("inputs", provenance)
    text = json.dumps(record)
    assert "crop_margin" in text  # the crop rule, not the letterbox one
    assert "localiser" in text
    table = pd.read_csv(tmp_path / "pred" / "test_per_image.csv")
    assert len(table) == written["n"] and table["prediction (mm)"].notna().all()
    with pytest.raises(ValueError, match="is a crop run .* only `fetalhc predict` runs it"):
        explain_command(run_dir, phantoms, ["gradient"], tmp_path / "explain")
    assert not (tmp_path / "explain").exists()


def test_a_relative_recorded_localiser_is_taken_from_the_run_folder(tmp_path):
    from fetalhc.training.setup import localiser_file

    (tmp_path / "models" / "loc").mkdir(parents=True)
    (tmp_path / "models" / "crop").mkdir()
    (tmp_path / "models" / "loc" / "model.keras").write_bytes(b"x")
    config = {"data": {"localiser": "../loc"}, "run": {"localiser_file": "../loc/model.keras"}}
    found = localiser_file(config, tmp_path / "models" / "crop")
    assert found == (tmp_path / "models" / "loc" / "model.keras").resolve()
    absolute = {"run": {"localiser_file": str(found)}}
    assert localiser_file(absolute, tmp_path / "elsewhere") == found
    (tmp_path / "nowhere" / "crop").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="localiser"):
        localiser_file(config, tmp_path / "nowhere" / "crop")

"""Your own Keras regression model through ``predict``, ``explain`` and ``evaluate``: the
unit of its HC output is declared (``--output-units mm|px``) and read as declared, an
undeclared unit is a one-line error, never a guess; its intensities are given by
``--intensity``; a plain CSV whose ``hc_mm`` is filled in for some images
scores those. (The explain library with a declared unit: tests/test_explain_output_units.py;
an exported model through the commands: tests/test_export.py.)

The analytic model: the output is its bias ``C`` whatever the image (a zero kernel), so HC
in mm is ``C`` when declared mm and ``C`` x the mm per input pixel when declared px."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from fetalhc.cli.main import cli
from fetalhc.data import input_pixel_size_mm, load_arrays, load_index, write_plain_dataset
from fetalhc.evaluate import EvaluationSettings, evaluate_maps

SIZE = 32
C = 150.0


def constant_model(c: float = C) -> keras.Model:
    """A small CNN whose output is ``c`` for every image (kernel 0, bias c), plus a
    convolution so that every method and the perturbation curves have a graph to walk."""
    inputs = keras.Input((SIZE, SIZE, 1))
    features = keras.layers.Conv2D(2, 3, activation="relu")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    head = keras.layers.Dense(1, name="hc", kernel_initializer="zeros",
                              bias_initializer=keras.initializers.Constant(c))
    return keras.Model(inputs, head(pooled), name="users_constant")


def linear_model() -> keras.Model:
    """f(x) = w · x + 100: changes when pixels are perturbed."""
    inputs = keras.Input((SIZE, SIZE, 1))
    dense = keras.layers.Dense(1, name="hc")
    model = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)), name="users_linear")
    weights = np.random.default_rng(0).normal(scale=0.5, size=(SIZE * SIZE, 1))
    dense.set_weights([weights.astype(np.float32), np.array([100.0], np.float32)])
    return model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("own") / "constant.keras"
    constant_model().save(path)
    return path


@pytest.fixture(scope="module")
def plain_partly_annotated(phantoms, tmp_path_factory):
    """Six phantoms in the plain layout; the CSV has a reference HC for the first four."""
    index = load_index(phantoms).head(6)
    folder = write_plain_dataset(tmp_path_factory.mktemp("plain") / "clinic", index)
    table = pd.read_csv(folder / "images.csv")
    table.loc[4:, "hc_mm"] = np.nan
    table.to_csv(folder / "images.csv", index=False)
    return folder, index


def _predict(*args):
    return CliRunner().invoke(cli, ["predict", "--no-progress", *map(str, args)])


def test_predict_reads_the_declared_unit_and_refuses_an_undeclared_one(
        model_file, plain_partly_annotated, tmp_path):
    folder, index = plain_partly_annotated
    refused = _predict("--model", model_file, "--data", folder, "--out", tmp_path / "no.csv")
    assert refused.exit_code == 1 and "--output-units" in refused.output
    assert not list(tmp_path.iterdir())

    in_mm = _predict("--model", model_file, "--data", folder, "--out", tmp_path / "mm.csv",
                     "--output-units", "mm")
    assert in_mm.exit_code == 0, in_mm.output
    mm = pd.read_csv(tmp_path / "mm.csv")
    np.testing.assert_allclose(mm["head circumference (mm)"], C, atol=1e-3)
    record = json.loads((tmp_path / "mm_provenance.json").read_text())
    assert record["result"]["output_units"] == "mm"

    in_px = _predict("--model", model_file, "--data", folder, "--out", tmp_path / "px.csv",
                     "--output-units", "px")
    assert in_px.exit_code == 0, in_px.output
    px = pd.read_csv(tmp_path / "px.csv")
    expected = C * input_pixel_size_mm(index, SIZE)
    np.testing.assert_allclose(px["head circumference (mm)"], expected, rtol=1e-4)
    assert "output_units" not in json.loads(
        (tmp_path / "px_provenance.json").read_text())["result"]


def test_predict_scores_the_images_that_have_a_reference(model_file, plain_partly_annotated,
                                                         tmp_path):
    folder, index = plain_partly_annotated
    result = _predict("--model", model_file, "--data", folder, "--out", tmp_path / "p.csv",
                      "--output-units", "mm")
    assert result.exit_code == 0, result.output
    assert "(n = 4)" in result.output
    table = pd.read_csv(tmp_path / "p_per_image.csv")
    assert len(table) == 6 and table["reference (mm)"].isna().sum() == 2
    metrics = json.loads((tmp_path / "p_metrics.json").read_text())
    assert metrics["n"] == 4 and metrics["n_images"] == 6
    expected_mae = np.mean(np.abs(C - index["hc_mm"].to_numpy()[:4]))
    assert metrics["mae_mm"] == pytest.approx(expected_mae, rel=1e-4)
    assert (tmp_path / "p_bland_altman.png").is_file()


def test_evaluation_curves_are_in_mm_for_either_declared_unit(phantoms):
    index = load_index(phantoms).head(4)
    arrays = load_arrays(index, image_size=SIZE)
    images, pixel_size = arrays["image"], arrays["pixel_size_mm"]
    reference = arrays["hc_mm"]
    model = linear_model()
    output = model.predict(images, verbose=0)[:, 0]
    maps = np.random.default_rng(2).normal(size=images.shape[:3]).astype(np.float32)
    settings = EvaluationSettings(grid=4, steps=5)
    with pytest.raises(ValueError, match="does not say its unit"):
        evaluate_maps(model, images, maps, pixel_size, reference, settings=settings)
    in_mm = evaluate_maps(model, images, maps, pixel_size, reference, settings=settings,
                          output_units="mm")
    in_px = evaluate_maps(model, images, maps, pixel_size, reference, settings=settings,
                          output_units="px")
    np.testing.assert_allclose(in_mm.per_image["hc_pred_mm"], output, rtol=1e-5)
    np.testing.assert_allclose(in_px.per_image["hc_pred_mm"], output * pixel_size, rtol=1e-5)
    # every curve point is the same prediction read in the other unit
    mm_curves = in_mm.curves.set_index(["curve", "order", "quantity", "x"])["mean"]
    px_curves = in_px.curves.set_index(["curve", "order", "quantity", "x"])["mean"]
    assert not np.allclose(mm_curves.to_numpy(), px_curves.to_numpy())
    np.testing.assert_allclose(
        in_mm.per_image["aopc_morf_shift_mm"].to_numpy() * pixel_size,
        in_px.per_image["aopc_morf_shift_mm"].to_numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("command, options", [
    ("explain", ["--methods", "gradient,lrp_z"]),
    ("evaluate", ["--methods", "gradient", "--metrics", "aopc", "--grid", "4", "--steps", "3",
                  "--no-figures"]),
])
def test_explain_and_evaluate_need_the_unit_and_record_it(command, options, model_file,
                                                          phantoms, tmp_path):
    arguments = [command, "--model", str(model_file), "--data", str(phantoms), *options,
                 "--limit", "2", "--no-progress"]
    refused = CliRunner().invoke(cli, [*arguments, "--out", str(tmp_path / "refused")])
    assert refused.exit_code == 1 and "--output-units" in refused.output
    assert not (tmp_path / "refused").exists()
    out = tmp_path / command
    result = CliRunner().invoke(cli, [*arguments, "--out", str(out), "--output-units", "mm"])
    assert result.exit_code == 0, result.output
    if command == "explain":
        assert len(list((out / "lrp_z").glob("*.npz"))) == 2
    else:
        per_image = pd.read_csv(out / "methods" / "gradient" / "per_image.csv")
        np.testing.assert_allclose(per_image["hc_pred_mm"], C, rtol=1e-5)
    record = json.loads((out / "provenance.json").read_text())
    assert record["result"]["output_units"] == "mm"
    # the same folder with the other unit is another result: refused, naming the field
    again = CliRunner().invoke(cli, [*arguments, "--out", str(out), "--output-units", "px"])
    assert again.exit_code == 1 and "output_units" in again.output
    # and so are other intensities: the pre-processing is part of the record
    other = CliRunner().invoke(cli, [*arguments, "--out", str(out), "--output-units", "mm",
                                     "--intensity", "0-1"])
    assert other.exit_code == 1 and "preprocessing" in other.output


def test_an_rgb_model_of_your_own_takes_the_gray_image_in_each_channel(phantoms, tmp_path):
    """An ImageNet-style model with 3 input channels: the commands repeat the gray image
    into them (predictions equal the model on the tiled image); its maps are (S, S), the
    sum over the channels of the per-channel maps."""
    inputs = keras.Input((SIZE, SIZE, 3))
    features = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    head = keras.layers.Dense(1, name="hc_mm_out")
    rgb = keras.Model(inputs, head(keras.layers.GlobalAveragePooling2D()(features)),
                      name="users_rgb")
    rgb.save(tmp_path / "rgb.keras")
    index = load_index(phantoms).head(3)
    folder = write_plain_dataset(tmp_path / "clinic", index)
    result = _predict("--model", tmp_path / "rgb.keras", "--data", folder, "--out",
                      tmp_path / "p.csv", "--output-units", "mm")
    assert result.exit_code == 0, result.output
    gray = load_arrays(index, image_size=SIZE)["image"]
    expected = rgb.predict(np.repeat(gray, 3, axis=-1), verbose=0)[:, 0]
    predicted = pd.read_csv(tmp_path / "p.csv")["head circumference (mm)"]
    np.testing.assert_allclose(predicted, expected, rtol=1e-4, atol=1e-3)
    explained = CliRunner().invoke(cli, [
        "explain", "--model", str(tmp_path / "rgb.keras"), "--data", str(folder),
        "--methods", "gradient,lrp_epsilon,gradcam", "--output-units", "mm", "--out",
        str(tmp_path / "maps"), "--no-progress"])
    assert explained.exit_code == 0, explained.output
    stem = Path(index["filename"].iloc[0]).stem
    with np.load(tmp_path / "maps" / "gradient" / f"{stem}.npz") as stored:
        gradient = stored["map"]
    assert gradient.shape == (SIZE, SIZE)
    import tensorflow as tf

    tiled = tf.constant(np.repeat(gray[:1], 3, axis=-1))
    with tf.GradientTape() as tape:
        tape.watch(tiled)
        output = rgb(tiled)
    per_channel = tape.gradient(output, tiled).numpy()[0]
    np.testing.assert_allclose(gradient, per_channel.sum(axis=-1), rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- intensity
def mean_model(name: str = "hc") -> keras.Model:
    """Its output is the mean of the input over all pixels (padding included)."""
    inputs = keras.Input((SIZE, SIZE, 1))
    dense = keras.layers.Dense(1, name=name)
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(inputs)),
                        name="users_mean")
    dense.set_weights([np.ones((1, 1), np.float32), np.zeros(1, np.float32)])
    return model


def test_the_command_line_choices_are_the_librarys():
    from fetalhc.cli.options import INTENSITIES, OUTPUT_UNITS
    from fetalhc.data import INTENSITIES as LIBRARY_INTENSITIES
    from fetalhc.models.graph import OUTPUT_UNITS as LIBRARY_UNITS

    assert INTENSITIES == tuple(LIBRARY_INTENSITIES)
    assert set(OUTPUT_UNITS) == set(LIBRARY_UNITS)


def test_the_intensities_are_the_decoded_values_resized_and_padded(phantoms):
    index = load_index(phantoms).head(3)
    zscored = load_arrays(index, image_size=SIZE)["image"]
    unit = load_arrays(index, image_size=SIZE, intensity="0-1")["image"]
    eight_bit = load_arrays(index, image_size=SIZE, intensity="0-255")["image"]
    content = zscored != 0  # the padding is 0 in every rule
    assert 0 < content.mean() < 1
    assert np.all(unit[~content] == 0) and np.all(eight_bit[~content] == 0)
    from PIL import Image

    brightest = max(np.asarray(Image.open(path)).max() for path in index["image_path"]) / 255
    assert unit.min() >= 0 and 0 < unit.max() <= brightest + 1e-3
    np.testing.assert_allclose(eight_bit, 255 * unit, rtol=1e-5, atol=1e-4)
    # the z-score of the 0-1 content is the z-scored image
    for image, scored, mask in zip(unit, zscored, content, strict=True):
        values = image[mask]
        np.testing.assert_allclose((values - values.mean()) / values.std(), scored[mask],
                                   atol=1e-3)
    with pytest.raises(ValueError, match="unknown intensity"):
        load_arrays(index, image_size=SIZE, intensity="minmax")


def test_predict_feeds_your_model_the_intensities_it_asks_for(phantoms, tmp_path):
    index = load_index(phantoms).head(4)
    folder = write_plain_dataset(tmp_path / "clinic", index)
    mean_model().save(tmp_path / "mean.keras")
    expected = load_arrays(index, image_size=SIZE, intensity="0-255")["image"].mean(
        axis=(1, 2, 3))
    result = _predict("--model", tmp_path / "mean.keras", "--data", folder, "--out",
                      tmp_path / "p.csv", "--output-units", "mm", "--intensity", "0-255")
    assert result.exit_code == 0, result.output
    predicted = pd.read_csv(tmp_path / "p.csv")
    np.testing.assert_allclose(predicted["head circumference (mm)"], expected, rtol=1e-3)
    record = json.loads((tmp_path / "p_provenance.json").read_text())
    assert record["result"]["preprocessing"]["normalise"].startswith("none")

    # a fetalhc model learned on z-scored images: another intensity is refused
    mean_model(name="hc_px_input").save(tmp_path / "fetalhc_like.keras")
    refused = _predict("--model", tmp_path / "fetalhc_like.keras", "--data", folder, "--out",
                       tmp_path / "r.csv", "--intensity", "0-1")
    assert refused.exit_code == 1 and "z-scored" in refused.output

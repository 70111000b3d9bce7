"""``fetalhc export``: an end-to-end Keras model (raw image + pixel size in, HC in mm out)
that loads in a fresh process with plain Keras, predicts what ``fetalhc predict`` does on
images of two sizes, carries its model card, and is explained by every registered method
with maps at the raw image's size."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from fetalhc.cli.main import cli
from fetalhc.data import load_index, write_phantom_dataset, write_plain_dataset
from fetalhc.training import load_run, train

CONFIG = {
    "data": {"image_size": 32, "val_fraction": 0.2, "test_fraction": 0.2},
    "model": {"backbone": "small_cnn", "dropout": 0.0},
    "train": {"epochs": 1, "batch_size": 8, "learning_rate": 3e-3, "tensorboard": False},
}
SIZES = ((96, 64), (72, 110))  # (width, height) of the two folders of new images


@pytest.fixture(scope="module")
def run_dir(phantoms, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run"
    train(CONFIG, phantoms, out)
    return out


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported") / "hc_model.keras"
    result = CliRunner().invoke(cli, ["export", "--model", str(run_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "MAE" in result.output
    return out


@pytest.fixture(scope="module")
def new_images(tmp_path_factory):
    """Two plain folders of phantoms the run never saw, one per image size."""
    folders = []
    for width, height in SIZES:
        root = tmp_path_factory.mktemp(f"new_{width}x{height}")
        write_phantom_dataset(root / "hc18", n=4, seed=7, width=width, height=height)
        write_plain_dataset(root / "plain", load_index(root / "hc18"))
        folders.append(root / "plain")
    return folders


def test_exported_model_predicts_what_predict_does_in_a_fresh_process(run_dir, exported,
                                                                     new_images, tmp_path):
    expected, rows = {}, []
    for folder in new_images:
        out = tmp_path / f"{folder.parent.name}.csv"
        result = CliRunner().invoke(cli, ["predict", "--model", str(run_dir), "--data",
                                          str(folder), "--out", str(out), "--no-progress"])
        assert result.exit_code == 0, result.output  # default on a folder not the run's: all
        predicted = pd.read_csv(out)
        index = pd.read_csv(folder / "images.csv")
        assert sorted(predicted["filename"]) == sorted(index["filename"])
        for name, value in zip(predicted["filename"], predicted["head circumference (mm)"],
                               strict=True):
            expected[str(folder / name)] = value
        rows += [[str(folder / name), size] for name, size in
                 zip(index["filename"], index["pixel_size_mm"], strict=True)]
    # a fresh process that knows nothing of run folders: plain Keras after `import fetalhc`
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from PIL import Image
        import fetalhc, keras
        model = keras.models.load_model({str(exported)!r}, safe_mode=True)
        out = {{}}
        for path, pixel_size in json.loads(sys.argv[1]):
            image = np.asarray(Image.open(path))  # uint8 (H, W)
            result = model.predict({{"image": image[None, ..., None],
                                    "pixel_size_mm": np.array([[pixel_size]])}}, verbose=0)
            out[path] = float(result["hc_mm"][0, 0])
        print(json.dumps(out))
    """)
    done = subprocess.run([sys.executable, "-c", script, json.dumps(rows)],
                          capture_output=True, text=True, check=True)
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got.keys() == expected.keys()
    assert len({Image.open(path).size for path in got}) == 2  # two image sizes
    for path, value in got.items():
        assert value == pytest.approx(expected[path], abs=1e-3), path


def test_exported_model_carries_its_card(exported, run_dir):
    import keras

    from fetalhc.models.export import read_model_card

    model = keras.models.load_model(exported, safe_mode=True)
    card = read_model_card(model)
    assert card["inputs"].keys() == {"image", "pixel_size_mm"}
    assert "mm" in card["outputs"]["hc_mm"]
    assert "research only" in card["intended_use"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = card["accuracy"]["test"]
    assert test["mae_mm"] == pytest.approx(metrics["test"]["mae_mm"])
    low, high = test["mae_ci95_mm"]
    assert low < test["mae_mm"] < high
    assert card["training"]["images"]["train"] == len(load_run(run_dir).config["split"]["train"])


def test_uint8_and_float_images_give_the_same_hc(exported):
    import keras

    model = keras.models.load_model(exported, safe_mode=True)
    image = np.random.default_rng(0).integers(0, 256, (1, 70, 90, 1)).astype(np.uint8)
    pixel = np.array([[0.2]], np.float32)
    as_uint8 = model.predict({"image": image, "pixel_size_mm": pixel}, verbose=0)["hc_mm"]
    as_float = model.predict({"image": image.astype(np.float32) / 255.0,
                              "pixel_size_mm": pixel}, verbose=0)["hc_mm"]
    np.testing.assert_allclose(as_uint8, as_float, rtol=1e-4)
    twice = model.predict({"image": image, "pixel_size_mm": 2 * pixel}, verbose=0)["hc_mm"]
    np.testing.assert_allclose(twice, 2 * as_uint8, rtol=1e-5)  # HC scales with the pixel


def test_export_refuses_a_crop_run_and_an_existing_file(exported, run_dir, tmp_path):
    result = CliRunner().invoke(cli, ["export", "--model", str(run_dir), "--out",
                                      str(exported)])
    assert result.exit_code == 1 and "exists" in result.output
    result = CliRunner().invoke(cli, ["export", "--model", str(run_dir), "--out",
                                      str(tmp_path / "model.h5")])
    assert result.exit_code == 1 and ".keras" in result.output


# Options that keep every method cheap on a raw image; IG from a blurred baseline, because a
# constant baseline (zeros, the mean) is degenerate on an exported model: the z-score makes
# it blind to the intensity scale, so the HC is constant along the straight path.
CHEAP = {"integrated_gradients": {"steps": 16, "baseline": "blur", "tolerance": None},
         "smoothgrad": {"n": 4}, "occlusion": {"patch": 16, "stride": 16}}


def test_every_method_explains_the_exported_model_at_the_raw_size(exported, new_images):
    import keras

    from fetalhc.explain import available_methods, explain_batch

    model = keras.models.load_model(exported, safe_mode=True)
    index = pd.read_csv(new_images[1] / "images.csv").head(2)
    images = np.stack([np.asarray(Image.open(new_images[1] / name))[..., None]
                       for name in index["filename"]]).astype(np.float32)
    pixel_size = index["pixel_size_mm"].to_numpy(np.float32)
    expected = model.predict({"image": images, "pixel_size_mm": pixel_size[:, None]},
                             verbose=0)["hc_mm"][:, 0]
    for method in available_methods():
        result = explain_batch(model, images, method=method, pixel_size=pixel_size,
                               **CHEAP.get(method, {}))
        assert result.maps.shape == images.shape[:3], method
        assert np.all(np.isfinite(result.maps)) and np.abs(result.maps).max() > 0, method
        np.testing.assert_allclose(result.metadata["prediction_mm"], expected, rtol=1e-4)
        if method == "integrated_gradients":  # completeness holds from a blurred baseline
            assert np.all(np.abs(result.metadata["completeness_gap_relative"]) < 0.1)


def test_relevance_passes_back_through_the_preprocessing_conserved():
    """The transpose of the resize keeps the content's relevance; the padding's is dropped."""
    import tensorflow as tf

    from fetalhc.models.export_layers import RawImagePreprocessing

    layer = RawImagePreprocessing(32)
    raw = tf.random.uniform((2, 40, 80, 1), 0, 255, seed=1)
    relevance = tf.random.normal((2, 32, 32, 1), seed=2)
    back = layer.relevance_to_raw(raw, relevance).numpy()
    assert back.shape == (2, 40, 80, 1)
    # 80 wide → 32; 40 high → 16 rows of content, padded by 8 above and below
    content = relevance.numpy()[:, 8:24]
    np.testing.assert_allclose(back.sum(axis=(1, 2, 3)), content.sum(axis=(1, 2, 3)),
                               rtol=1e-4)
    prepared = layer(raw).numpy()
    assert np.all(prepared[:, :8] == 0) and np.all(prepared[:, 24:] == 0)
    np.testing.assert_allclose(prepared[:, 8:24].mean(axis=(1, 2, 3)), 0, atol=1e-5)


def test_the_commands_run_an_exported_model_with_its_own_preprocessing(run_dir, exported,
                                                                       new_images, tmp_path):
    """predict / explain / evaluate take the exported file itself: its network, fed by the
    pre-processing the file carries, predicts what the run folder does and is explained and
    evaluated like it (maps at the network's input size)."""
    folder = new_images[1]
    predictions = {}
    for name, model in (("run", run_dir), ("exported", exported)):
        out = tmp_path / f"{name}.csv"
        result = CliRunner().invoke(cli, ["predict", "--model", str(model), "--data",
                                          str(folder), "--out", str(out), "--no-progress"])
        assert result.exit_code == 0, result.output
        predictions[name] = pd.read_csv(out)
    assert list(predictions["exported"]["filename"]) == list(predictions["run"]["filename"])
    np.testing.assert_allclose(predictions["exported"]["head circumference (mm)"],
                               predictions["run"]["head circumference (mm)"], atol=1e-3)
    # the card's training HC range gives the outside-range flag, as the run folder does
    flags = {name: pd.read_csv(tmp_path / f"{name}_per_image.csv")["flag: outside training range"]
             for name in predictions}
    assert flags["exported"].notna().all()
    assert flags["exported"].tolist() == flags["run"].tolist()

    size = CONFIG["data"]["image_size"]
    contradicted = CliRunner().invoke(cli, [
        "predict", "--model", str(exported), "--data", str(folder), "--out",
        str(tmp_path / "wrong.csv"), "--image-size", str(2 * size)])
    assert contradicted.exit_code == 1 and "contradicts" in contradicted.output

    maps = tmp_path / "maps"
    explained = CliRunner().invoke(cli, [
        "explain", "--model", str(exported), "--data", str(folder), "--methods",
        "gradient,lrp_epsilon", "--out", str(maps), "--no-progress"])
    assert explained.exit_code == 0, explained.output
    first = np.load(sorted((maps / "gradient").glob("*.npz"))[0])
    assert first["map"].shape[-2:] == (size, size)
    evaluated = CliRunner().invoke(cli, [
        "evaluate", "--model", str(exported), "--data", str(folder), "--maps", str(maps),
        "--methods", "gradient,lrp_epsilon", "--metrics", "aopc", "--out",
        str(tmp_path / "evaluation"), "--no-figures", "--no-progress"])
    assert evaluated.exit_code == 0, evaluated.output
    per_image = pd.read_csv(tmp_path / "evaluation" / "methods" / "gradient" / "per_image.csv")
    by_name = predictions["run"].set_index("filename")["head circumference (mm)"]
    np.testing.assert_allclose(per_image["hc_pred_mm"],
                               by_name.loc[per_image["filename"]].to_numpy(), atol=1e-3)

"""``fetalhc explain``: per-image .npz + overlays, grid, index CSV; re-runs resume; errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import fetalhc.explain as fe
from fetalhc.cli.main import cli
from fetalhc.data import load_arrays
from fetalhc.training import load_run, run_split_index, train

CONFIG = {
    "data": {"image_size": 32, "val_fraction": 0.2, "test_fraction": 0.2},
    "model": {"backbone": "small_cnn", "dropout": 0.0},
    "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 8, "learning_rate": 3e-3,
              "tensorboard": False},
}
METHODS = "gradient,integrated_gradients,gradcam"
IG_OPTIONS = ("--option", "integrated_gradients.steps=8", "--option",
              "integrated_gradients.tolerance=none")


@pytest.fixture(scope="module")
def data(phantoms):
    return phantoms


@pytest.fixture(scope="module")
def run_dir(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("explain") / "run"
    train(CONFIG, data, out)
    return out


def _explain(*args):
    return CliRunner().invoke(cli, ["explain", *map(str, args)])


def test_explain_writes_maps_overlays_grid_and_index_then_skips(run_dir, data, tmp_path):
    out = tmp_path / "maps"
    result = _explain("--model", run_dir, "--data", data, "--methods", METHODS,
                      "--out", out, "--limit", 3, *IG_OPTIONS)
    assert result.exit_code == 0, result.output
    assert "wrote 9" in result.output
    run = load_run(run_dir)
    index = run_split_index(run.config, data, "test").iloc[:3]
    arrays = load_arrays(index, image_size=32)
    table = pd.read_csv(out / "index.csv")
    assert len(table) == 9 and set(table["method"]) == set(METHODS.split(","))
    assert table["filename"].tolist()[:3] == index["filename"].tolist()
    np.testing.assert_allclose(table["reference (mm)"][:3], index["hc_mm"], atol=1e-3)

    model = __import__("fetalhc").load_model(run_dir / "model.keras")
    expected = fe.explain(model, arrays["image"], method="integrated_gradients",
                          pixel_size=arrays["pixel_size_mm"], steps=8, tolerance=None)
    for i, filename in enumerate(index["filename"]):
        stem = filename.rsplit(".", 1)[0]
        with np.load(out / "integrated_gradients" / f"{stem}.npz") as stored:
            np.testing.assert_allclose(stored["map"], expected[i], rtol=1e-4, atol=1e-6)
            assert str(stored["method"]) == "integrated_gradients"
            assert str(stored["target"]) == "hc_mm" and str(stored["units"]) == "mm"
            assert str(stored["baseline"]) == "zeros" and float(stored["steps"]) == 8
            assert float(stored["pixel_size_mm"]) == pytest.approx(arrays["pixel_size_mm"][i])
            assert float(stored["reference_mm"]) == pytest.approx(arrays["hc_mm"][i])
            assert np.isfinite(float(stored["prediction_mm"]))
            assert stored["annotation"].shape == (32, 32) and stored["annotation"].max() == 1
        for method in METHODS.split(","):
            assert (out / method / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
    ig_rows = table[table["method"] == "integrated_gradients"]
    assert ig_rows["completeness gap"].notna().all()
    assert (out / "grid.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(out.rglob(".*"))  # no temporary files left

    # the same request again resumes: every map is reused (run folder or its model.keras)
    stamp = (out / "gradient" / f"{index['filename'][0].rsplit('.', 1)[0]}.npz").stat().st_mtime_ns
    again = _explain("--model", run_dir / "model.keras", "--data", data, "--methods", METHODS,
                     "--out", out, "--limit", 3, *IG_OPTIONS)
    assert again.exit_code == 0, again.output
    assert "wrote 0, skipped 9" in again.output
    assert (out / "gradient" / f"{index['filename'][0].rsplit('.', 1)[0]}.npz").stat().st_mtime_ns == stamp
    assert len(pd.read_csv(out / "index.csv")) == 9
    # another --limit is another set of images: refused (#17; it used to add the 4th image)
    more = _explain("--model", run_dir, "--data", data, "--methods", METHODS,
                    "--out", out, "--limit", 4, *IG_OPTIONS)
    assert more.exit_code == 1 and "limit" in more.output and "--overwrite" in more.output


@pytest.mark.parametrize("args, message", [
    (["--methods", "gradient,nope"], "unknown explanation method 'nope'"),
    (["--methods", "gradient", "--option", "gradient.steps=3"], "unknown option(s) steps"),
    (["--methods", "gradient", "--option", "occlusion.patch=3"], "not in --methods"),
    (["--methods", "occlusion", "--option", "occlusion.patch"], "METHOD.NAME=VALUE"),
    (["--methods", "gradient,gradient"], "names gradient more than once"),
])
def test_explain_errors_are_one_line(run_dir, data, tmp_path, args, message):
    result = _explain("--model", run_dir, "--data", data, "--out", tmp_path / "o", *args)
    assert result.exit_code == 1
    assert message in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, message", [
    (["--methods", "gradcam_pp", "--target", "hc"], "'hc' is not one of"),
    (["--methods", "gradient", "--split", "bogus"], "'bogus' is not one of"),
    (["--methods", "gradient", "--limit", "0"], "0 is not in the range x>=1"),
])
def test_explain_usage_errors_name_the_option(run_dir, data, tmp_path, args, message):
    result = _explain("--model", run_dir, "--data", data, "--out", tmp_path / "o", *args)
    assert result.exit_code == 2
    assert message in result.output and args[2] in result.output
    assert not (tmp_path / "o").exists()


def test_explain_list_methods():
    result = CliRunner().invoke(cli, ["explain", "--list"])  # as the README has it
    assert result.exit_code == 0, result.output
    assert "integrated_gradients:" in result.output and "occlusion:" in result.output
    assert "patch=16" in result.output  # the options too


def test_index_and_grid_rebuild_from_the_folder_alone(run_dir, data, tmp_path):
    """``fetalhc merge`` rebuilds index.csv and grid.png from the .npz on disk only."""
    from fetalhc.report.explanations import write_index_and_grid

    out = tmp_path / "maps"
    result = _explain("--model", run_dir, "--data", data, "--methods", "gradient,gradcam",
                      "--out", out, "--limit", 2)
    assert result.exit_code == 0, result.output
    first = (out / "index.csv").read_text()
    table = pd.read_csv(out / "index.csv")
    stems = [name.rsplit(".", 1)[0] for name in table["filename"][:2]]
    (out / "index.csv").unlink()
    (out / "grid.png").unlink()
    index_path, grid_path = write_index_and_grid(out, ["gradient", "gradcam"], stems)
    assert index_path.read_text() == first
    assert grid_path.read_bytes()[:4] == b"\x89PNG"
    assert not list(out.rglob(".*"))  # no temporary files left

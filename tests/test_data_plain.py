"""The plain image layout (a folder of images + a CSV ``filename,pixel_size_mm[,hc_mm]``) and
``--split all``: every command reads any folder, its default on a folder that is not the
run's is all of it, and each error names the option that fixes it."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from fetalhc.cli.main import cli
from fetalhc.data import (
    DataError,
    data_layout,
    load_folder_index,
    load_index,
    load_plain_index,
    write_plain_dataset,
)
from fetalhc.training import resolve_model_split, train

CONFIG = {
    "data": {"image_size": 32, "val_fraction": 0.2, "test_fraction": 0.2},
    "model": {"backbone": "small_cnn", "dropout": 0.0},
    "train": {"epochs": 1, "batch_size": 8, "learning_rate": 3e-3, "tensorboard": False},
}


@pytest.fixture(scope="module")
def plain(phantoms, tmp_path_factory):
    """The phantoms' first 8 training images in the plain layout, one HC left unknown."""
    index = load_index(phantoms).head(8).copy()
    index.loc[3, "hc_mm"] = np.nan
    return write_plain_dataset(tmp_path_factory.mktemp("plain") / "images", index)


@pytest.fixture(scope="module")
def run_dir(phantoms, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain_run") / "run"
    train(CONFIG, phantoms, out)
    return out


def test_plain_folder_reads_back_what_was_written(plain, phantoms):
    original = load_index(phantoms).head(8)
    index = load_plain_index(plain)
    assert data_layout(plain) == "plain" and data_layout(phantoms) == "hc18"
    assert index["filename"].tolist() == original["filename"].tolist()
    np.testing.assert_allclose(index["pixel_size_mm"], original["pixel_size_mm"])
    assert np.isnan(index["hc_mm"][3])
    np.testing.assert_allclose(index["hc_mm"].drop(3), original["hc_mm"].drop(3))
    assert index["annotation_path"].notna().all()  # the outlines were copied beside
    assert (index[["width_px", "height_px"]].to_numpy()
            == original[["width_px", "height_px"]].to_numpy()).all()
    # the CSV itself names the same images
    assert load_plain_index(plain / "images.csv")["filename"].tolist() == index["filename"].tolist()


def test_plain_csv_problems_are_one_line_errors(plain, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(plain, folder)
    table = pd.read_csv(folder / "images.csv")
    for change, expected in (
        (lambda t: t.assign(pixel_size_mm="x"), "pixel_size_mm is 'x'"),
        (lambda t: t.assign(filename="../escape.png"), "inside"),
        (lambda t: t.assign(filename="missing.png"), "missing or unreadable"),
        (lambda t: t.drop(columns="pixel_size_mm"), "plain folder"),
    ):
        change(table).to_csv(folder / "images.csv", index=False)
        with pytest.raises(DataError, match=expected) as error:
            load_plain_index(folder)
        assert "\n" not in str(error.value)
    (folder / "images.csv").unlink()
    with pytest.raises(DataError, match="neither the HC18 layout"):
        data_layout(folder)


def test_split_all_of_an_hc18_folder_is_its_training_part_else_its_test_part(phantoms,
                                                                             tmp_path):
    assert load_folder_index(phantoms)["filename"].tolist() == \
        load_index(phantoms)["filename"].tolist()
    only_test = tmp_path / "only_test"
    shutil.copytree(phantoms / "test_set", only_test / "test_set")
    shutil.copy(phantoms / "test_set_pixel_size.csv", only_test)
    assert len(load_folder_index(only_test)) == len(load_index(phantoms, "challenge"))


def test_default_split_is_the_runs_test_on_its_data_else_all(run_dir, phantoms, plain,
                                                              tmp_path):
    assert resolve_model_split(run_dir, phantoms).split == "test"
    on_plain = resolve_model_split(run_dir, plain)
    assert on_plain.split == "all" and len(on_plain.index) == 8
    with pytest.raises(ValueError, match="--split all"):
        resolve_model_split(run_dir, plain, "test")
    only_test = tmp_path / "only_test"
    shutil.copytree(phantoms / "test_set", only_test / "test_set")
    shutil.copy(phantoms / "test_set_pixel_size.csv", only_test)
    assert resolve_model_split(run_dir, only_test).split == "all"
    with pytest.raises(ValueError, match="--split all"):
        resolve_model_split(run_dir, only_test, "test")
    # a bare model file: all of the folder by default, no run split
    bare = tmp_path / "bare.keras"
    shutil.copy(run_dir / "model.keras", bare)
    assert resolve_model_split(bare, phantoms).split == "all"
    with pytest.raises(ValueError, match="--split all"):
        resolve_model_split(bare, phantoms, "val")


def test_predict_and_explain_read_a_plain_folder(run_dir, plain, tmp_path):
    out = tmp_path / "predictions.csv"
    result = CliRunner().invoke(cli, ["predict", "--model", str(run_dir), "--data", str(plain),
                                      "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert pd.read_csv(out)["filename"].tolist() == load_plain_index(plain)["filename"].tolist()
    maps = tmp_path / "maps"
    result = CliRunner().invoke(cli, ["explain", "--model", str(run_dir), "--data",
                                      str(plain / "images.csv"), "--methods", "gradient",
                                      "--out", str(maps), "--limit", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert len(list((maps / "gradient").glob("*.npz"))) == 2

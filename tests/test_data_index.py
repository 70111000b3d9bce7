"""load_index on phantoms in the HC18 layout: columns, grouping, and one test per bad input."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fetalhc.data import DataError, group_id_of, index_problems, load_index, write_phantom_dataset
from fetalhc.data.index import INDEX_COLUMNS

CSV = "training_set_pixel_size_and_HC.csv"


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantoms") / "hc18"
    write_phantom_dataset(root, n=10, seed=5, challenge=3, width=96, height=64,
                          second_fraction=0.5)
    return root


@pytest.fixture()
def copy(phantom_root, tmp_path) -> Path:
    """A fresh, writable copy of the phantom folder to break."""
    target = tmp_path / "copy"
    shutil.copytree(phantom_root, target)
    return target


def rewrite_csv(root: Path, edit, name: str = CSV) -> None:
    lines = (root / name).read_bytes().decode().split("\r\n")
    lines = edit(lines)
    (root / name).write_bytes("\r\n".join(lines).encode())


def set_field(root: Path, line: int, column: int, value: str) -> None:
    """Set a field; ``line`` counts from 0 = header (the file's line ``line + 1``)."""
    def edit(lines):
        fields = lines[line].split(",")
        fields[column] = value
        lines[line] = ",".join(fields)
        return lines

    rewrite_csv(root, edit)


def test_index_columns_types_and_values(phantom_root):
    index = load_index(phantom_root)
    assert list(index.columns) == INDEX_COLUMNS
    csv = pd.read_csv(phantom_root / CSV)
    assert len(index) == len(csv) == 10
    assert index["filename"].tolist() == csv["filename"].tolist()
    np.testing.assert_allclose(index["pixel_size_mm"], csv["pixel size(mm)"])
    np.testing.assert_allclose(index["hc_mm"], csv["head circumference (mm)"])
    assert (index["width_px"] == 96).all() and (index["height_px"] == 64).all()
    for row in index.itertuples():
        assert Path(row.image_path).is_file()
        assert Path(row.annotation_path).name == row.filename.replace(".png", "_Annotation.png")
    assert index["filename"].str.contains("_2HC").any(), "phantoms should include second images"


def test_challenge_part_has_no_annotation_and_nan_hc(phantom_root):
    index = load_index(phantom_root, part="challenge")
    assert list(index.columns) == INDEX_COLUMNS
    assert len(index) == 3
    assert index["annotation_path"].isna().all()
    assert index["hc_mm"].isna().all()
    assert (index["pixel_size_mm"] > 0).all()


def test_group_ids_from_file_names(phantom_root):
    assert group_id_of("010_HC.png") == "010"
    assert group_id_of("010_2HC.png") == "010"
    assert group_id_of("805_4HC.png") == "805"
    assert group_id_of("oddname.png") == "oddname"
    index = load_index(phantom_root)
    second = index[index["filename"].str.contains("_2HC")].iloc[0]
    first = index[index["filename"] == second["filename"].replace("_2HC", "_HC")].iloc[0]
    assert first["group_id"] == second["group_id"]
    assert index["group_id"].nunique() < len(index)


def test_image_size_is_read_not_assumed(copy):
    index = load_index(copy)
    name = index["filename"].iloc[0]
    stem = name[:-4]
    for suffix in ("", "_Annotation"):
        path = copy / "training_set" / f"{stem}{suffix}.png"
        Image.open(path).crop((0, 0, 90, 61)).save(path)  # same crop for both files
    index = load_index(copy, validate=False)
    row = index[index["filename"] == name].iloc[0]
    assert (row["width_px"], row["height_px"]) == (90, 61)


def test_unknown_part_is_rejected(phantom_root):
    with pytest.raises(ValueError, match="part"):
        load_index(phantom_root, part="validation")


def test_missing_folder(tmp_path, copy):
    with pytest.raises(DataError, match="dataset folder is missing"):
        load_index(tmp_path / "nowhere")
    shutil.rmtree(copy / "training_set")
    with pytest.raises(DataError, match="training_set.*missing"):
        load_index(copy)


def test_missing_csv(copy):
    (copy / CSV).unlink()
    with pytest.raises(DataError, match=f"{CSV}: CSV file is missing"):
        load_index(copy)


@pytest.mark.parametrize("column", [0, 1, 2])
def test_csv_without_required_column(copy, column):
    def drop(lines):
        return [",".join(f for i, f in enumerate(line.split(",")) if i != column) if line else ""
                for line in lines]

    rewrite_csv(copy, drop)
    with pytest.raises(DataError, match="lacks required column"):
        load_index(copy)


def test_challenge_csv_without_pixel_size_column(copy):
    rewrite_csv(copy, lambda lines: [line.split(",")[0] for line in lines],
                name="test_set_pixel_size.csv")
    with pytest.raises(DataError, match="test_set_pixel_size.csv.*pixel size"):
        load_index(copy, part="challenge")


def test_missing_image_names_the_row(copy):
    name = load_index(copy)["filename"].iloc[2]
    (copy / "training_set" / name).unlink()
    with pytest.raises(DataError, match=rf"line 4 \({name}\): image .* is missing"):
        load_index(copy)


def test_unreadable_image(copy):
    name = load_index(copy)["filename"].iloc[1]
    (copy / "training_set" / name).write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=rf"{name}.*unreadable"):
        load_index(copy)


def test_truncated_image_is_caught_by_validation(copy):
    name = load_index(copy)["filename"].iloc[1]
    path = copy / "training_set" / name
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match=rf"{name}.*unreadable"):
        load_index(copy)


@pytest.mark.parametrize("value", ["", "0", "-0.1", "nan", "abc", "inf"])
def test_bad_pixel_size(copy, value):
    set_field(copy, 3, 1, value)
    with pytest.raises(DataError, match=r"line 4 .*pixel size\(mm\) is"):
        load_index(copy)


@pytest.mark.parametrize("value", ["", "0", "-5", "nan"])
def test_bad_hc(copy, value):
    set_field(copy, 5, 2, value)
    with pytest.raises(DataError, match=r"line 6 .*head circumference \(mm\) is"):
        load_index(copy)


def test_bad_pixel_size_in_challenge_csv(copy):
    def edit(lines):
        fields = lines[2].split(",")
        lines[2] = f"{fields[0]},0"
        return lines

    rewrite_csv(copy, edit, name="test_set_pixel_size.csv")
    with pytest.raises(DataError, match="test_set_pixel_size.csv line 3"):
        load_index(copy, part="challenge")


def test_missing_annotation(copy):
    name = load_index(copy)["filename"].iloc[0]
    (copy / "training_set" / name.replace(".png", "_Annotation.png")).unlink()
    with pytest.raises(DataError, match=rf"{name}\): annotation .*_Annotation.png is missing"):
        load_index(copy)


def test_annotation_without_ellipse(copy):
    name = load_index(copy)["filename"].iloc[0]
    path = copy / "training_set" / name.replace(".png", "_Annotation.png")
    Image.fromarray(np.zeros((64, 96), dtype=np.uint8)).save(path)
    with pytest.raises(DataError, match="holds no ellipse"):
        load_index(copy)
    assert len(load_index(copy, validate=False)) == 10  # headers only: not detected


def test_annotation_size_differs_from_image(copy):
    name = load_index(copy)["filename"].iloc[0]
    path = copy / "training_set" / name.replace(".png", "_Annotation.png")
    Image.open(path).resize((100, 64)).save(path)
    with pytest.raises(DataError, match=r"annotation .* is 100x64 px but its image is 96x64 px"):
        load_index(copy)


@pytest.mark.parametrize("bad_name", ["../x.png", "/etc/passwd", "sub/000_HC.png",
                                      "..\\x.png", "C:x.png", ".."])
def test_filename_outside_dataset_folder(copy, bad_name):
    set_field(copy, 1, 0, bad_name)
    with pytest.raises(DataError, match="plain file name"):
        load_index(copy)


def test_duplicate_filename(copy):
    def edit(lines):
        return lines[:2] + [lines[1]] + lines[2:]

    rewrite_csv(copy, edit)
    with pytest.raises(DataError, match="duplicate filename"):
        load_index(copy)


def test_csv_without_rows(copy):
    rewrite_csv(copy, lambda lines: lines[:1] + [""])
    with pytest.raises(DataError, match="no rows"):
        load_index(copy)


def test_messages_are_one_line(copy):
    set_field(copy, 2, 1, "0")
    with pytest.raises(DataError) as error:
        load_index(copy)
    assert "\n" not in str(error.value)
    assert isinstance(error.value, ValueError)


def test_index_problems_collects_every_problem(copy):
    set_field(copy, 2, 1, "0")
    set_field(copy, 4, 2, "-1")
    name = load_index(copy, validate=False, part="challenge")["filename"].iloc[0]
    index, problems = index_problems(copy)
    assert len(problems) == 2
    assert "line 3" in problems[0] and "line 5" in problems[1]
    assert len(index) == 8
    assert all(math.isfinite(hc) for hc in index["hc_mm"])
    assert name  # the challenge part is untouched

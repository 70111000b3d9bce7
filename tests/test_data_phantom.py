"""Phantoms: known HC, HC18 layout, determinism, no partial output."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fetalhc.data import fit_ellipse, hc_from_annotation, load_index, write_phantom_dataset
from fetalhc.data import phantom as phantom_module
from fetalhc.data.phantom import render_phantom

HEADER = b"filename,pixel size(mm),head circumference (mm)\r\n"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom") / "set"
    write_phantom_dataset(root, n=16, seed=0, challenge=4, second_fraction=0.3)
    return root


def digest(folder) -> dict:
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def test_layout_and_csv_format(dataset):
    training = dataset / "training_set_pixel_size_and_HC.csv"
    raw = training.read_bytes()
    assert raw.startswith(HEADER)
    assert raw.count(b"\r\n") == 17 and b"\n" not in raw.replace(b"\r\n", b"")
    table = pd.read_csv(training)
    assert len(table) == 16
    assert table["filename"].str.match(r"^\d{3}_(2)?HC\.png$").all()
    assert table["filename"].str.contains("_2HC").any()
    for name in table["filename"]:
        image = Image.open(dataset / "training_set" / name)
        annotation = Image.open(dataset / "training_set" / name.replace(".png", "_Annotation.png"))
        assert image.mode == "L" and image.size == annotation.size == (320, 216)
        assert set(np.unique(np.asarray(annotation))) == {0, 255}
    challenge = (dataset / "test_set_pixel_size.csv").read_bytes()
    assert challenge.startswith(b"filename,pixel size(mm)\r\n")
    assert sorted(p.name for p in (dataset / "test_set").iterdir()) == [
        f"{i:03d}_HC.png" for i in range(4)]


def test_csv_hc_equals_refit_of_drawn_annotation(dataset):
    index = load_index(dataset)
    for row in index.itertuples():
        refit = hc_from_annotation(row.annotation_path, row.pixel_size_mm)
        assert refit == pytest.approx(row.hc_mm, abs=0.006), row.filename  # 2-decimal CSV
    assert index["hc_mm"].between(45, 350).all()
    challenge = load_index(dataset, part="challenge")
    assert len(challenge) == 4 and challenge["hc_mm"].isna().all()


def test_refit_agrees_with_generating_ellipse():
    rng = np.random.default_rng(1)
    for _ in range(5):
        phantom = render_phantom(rng)
        refit = fit_ellipse(phantom.annotation)
        assert phantom.hc_mm == pytest.approx(phantom.hc_mm_drawn, rel=1e-3)
        assert refit.cx == pytest.approx(phantom.ellipse.cx, abs=0.1)
        assert refit.cy == pytest.approx(phantom.ellipse.cy, abs=0.1)
        assert refit.semi_major == pytest.approx(phantom.ellipse.semi_major, abs=0.15)
        assert 50 <= phantom.hc_mm_drawn <= 340


def test_image_looks_like_ultrasound():
    phantom = render_phantom(np.random.default_rng(3))
    image = phantom.image.astype(float)
    assert image[:20, :20].max() < 10 and image[:20, -20:].max() < 10  # black beside the fan
    assert image[5:30, 150:170].mean() > 10  # the fan starts at the top centre
    skull = phantom.annotation > 0
    yy, xx = np.mgrid[0:216, 0:320]
    e = phantom.ellipse
    u = (xx - e.cx) * math.cos(e.angle_rad) + (yy - e.cy) * math.sin(e.angle_rad)
    v = -(xx - e.cx) * math.sin(e.angle_rad) + (yy - e.cy) * math.cos(e.angle_rad)
    radius = np.sqrt((u / e.semi_major) ** 2 + (v / e.semi_minor) ** 2)
    ring = (radius > 0.93) & (radius <= 1.0)
    brain = radius < 0.8
    assert image[ring].mean() > 2 * image[brain].mean()  # bright skull, dark brain
    assert image[brain].std() > 3  # speckle and structures, not flat
    assert skull.sum() > 0.8 * e.perimeter


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    first = write_phantom_dataset(tmp_path / "a", n=3, seed=9, width=96, height=64)
    second = write_phantom_dataset(tmp_path / "b", n=3, seed=9, width=96, height=64)
    third = write_phantom_dataset(tmp_path / "c", n=3, seed=10, width=96, height=64)
    assert digest(first) == digest(second)
    assert digest(first) != digest(third)


def test_refuses_non_empty_folder_unless_overwrite(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        write_phantom_dataset(target, n=2, width=64, height=48)
    assert (target / "keep.txt").read_text() == "mine"
    write_phantom_dataset(target, n=2, width=64, height=48, overwrite=True)
    assert not (target / "keep.txt").exists()
    assert len(load_index(target)) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    write_phantom_dataset(empty, n=1, width=64, height=48)  # an empty folder is fine


def test_error_leaves_no_partial_output(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = phantom_module.render_phantom

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return original(*args, **kwargs)

    monkeypatch.setattr(phantom_module, "render_phantom", failing)
    with pytest.raises(RuntimeError, match="boom"):
        write_phantom_dataset(tmp_path / "out", n=5, width=64, height=48)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n must"):
        write_phantom_dataset(tmp_path / "x", n=0)
    with pytest.raises(ValueError, match="challenge"):
        write_phantom_dataset(tmp_path / "x", n=1, challenge=-1)
    with pytest.raises(ValueError, match="at least 32"):
        render_phantom(np.random.default_rng(0), width=16, height=16)

"""The tf.data pipeline: element contract, pre-processing, and augmentation that keeps HC true.

Geometric tests use images that ARE their annotation (a thick ellipse outline), so the
ellipse refitted from the (augmented) image must match the `ellipse` target of the element.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fetalhc.data import (
    Augmentation,
    DataError,
    Ellipse,
    ellipse_perimeter,
    fit_ellipse,
    input_geometry,
    load_arrays,
    load_index,
    make_dataset,
    write_phantom_dataset,
)
from fetalhc.data.phantom import outline_mask

KEYS = {"image", "pixel_size_mm", "hc_mm", "hc_px_input", "filename"}
WIDTH, HEIGHT, SIZE = 160, 120, 96
OUTLINES = [  # (cx, cy, a, b, angle) in original px of a 160 x 120 image
    (80.0, 60.0, 45.0, 30.0, 0.3),
    (70.5, 55.0, 40.0, 32.0, 1.9),
    (90.0, 62.0, 38.0, 24.0, 2.8),
    (78.0, 58.0, 44.0, 34.0, math.pi / 2),
]
NO_AUGMENTATION = dict(flip_horizontal=False, flip_vertical=False, max_rotation_deg=0.0,
                       scale_range=(1.0, 1.0), max_translation=0.0, brightness=0.0,
                       contrast_range=(1.0, 1.0))


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> pd.DataFrame:
    root = tmp_path_factory.mktemp("pipeline") / "hc18"
    write_phantom_dataset(root, n=10, seed=2, challenge=3, width=96, height=64)
    return root


@pytest.fixture(scope="module")
def outlines(tmp_path_factory) -> pd.DataFrame:
    """An HC18-layout folder whose images are their own (thick) annotation outlines."""
    from PIL import Image

    root = tmp_path_factory.mktemp("outlines")
    (root / "training_set").mkdir()
    rows = ["filename,pixel size(mm),head circumference (mm)"]
    for i, params in enumerate(OUTLINES):
        mask = outline_mask(Ellipse(*params), WIDTH, HEIGHT, half_width_px=1.6)
        for name in (f"{i:03d}_HC.png", f"{i:03d}_HC_Annotation.png"):
            Image.fromarray(mask).save(root / "training_set" / name)
        pixel_size = 0.1 + 0.05 * i
        hc_mm = fit_ellipse(mask).perimeter * pixel_size  # HC18's definition of the reference
        rows.append(f"{i:03d}_HC.png,{pixel_size},{hc_mm:.6f}")
    (root / "training_set_pixel_size_and_HC.csv").write_bytes("\r\n".join(rows).encode())
    return load_index(root)


def first_batch(dataset) -> dict:
    return next(iter(dataset.as_numpy_iterator()))


def refit_image(image: np.ndarray) -> Ellipse:
    image = image[..., 0]
    return fit_ellipse(image > 0.5 * image.max())


def ellipse_vector(ellipse: Ellipse) -> np.ndarray:
    return np.array([ellipse.cx, ellipse.cy, ellipse.semi_major, ellipse.semi_minor,
                     math.sin(2 * ellipse.angle_rad), math.cos(2 * ellipse.angle_rad)])


def assert_ellipse_close(element_ellipse, refit: Ellipse, context=""):
    expected = ellipse_vector(refit)
    np.testing.assert_allclose(element_ellipse[:4], expected[:4], atol=0.35, err_msg=context)
    np.testing.assert_allclose(element_ellipse[4:], expected[4:], atol=0.04, err_msg=context)


def test_input_geometry_keeps_aspect_and_centres():
    landscape = input_geometry(800, 540, 128)
    assert (landscape.width, landscape.height) == (128, 86)
    assert (landscape.offset_x, landscape.offset_y) == (0, 21)
    assert landscape.scale == pytest.approx(0.16)
    portrait = input_geometry(50, 100, 32)
    assert (portrait.width, portrait.height, portrait.offset_x, portrait.offset_y) == (
        16, 32, 8, 0)


def test_element_contract(phantoms):
    index = load_index(phantoms)
    batch = first_batch(make_dataset(index, image_size=48, batch_size=4, with_annotation=True,
                                     with_ellipse=True))
    assert set(batch) == KEYS | {"annotation", "ellipse"}
    assert batch["image"].shape == (4, 48, 48, 1) and batch["image"].dtype == np.float32
    assert batch["annotation"].shape == (4, 48, 48, 1)
    assert batch["annotation"].dtype == np.float32
    assert set(np.unique(batch["annotation"])) == {0.0, 1.0}
    assert batch["ellipse"].shape == (4, 6) and batch["ellipse"].dtype == np.float32
    for key in ("pixel_size_mm", "hc_mm", "hc_px_input"):
        assert batch[key].shape == (4,) and batch[key].dtype == np.float32
    assert [name.decode() for name in batch["filename"]] == index["filename"].tolist()[:4]
    plain = first_batch(make_dataset(index, image_size=48, batch_size=4))
    assert set(plain) == KEYS


def test_zscore_then_zero_padding_and_input_pixel_size(phantoms):
    index = load_index(phantoms)  # 96 x 64 images -> 48 x 32 content, 8 rows of padding
    batch = first_batch(make_dataset(index, image_size=48, batch_size=10))
    image = batch["image"][..., 0]
    assert np.all(image[:, :8] == 0.0) and np.all(image[:, 40:] == 0.0)
    content = image[:, 8:40]
    np.testing.assert_allclose(content.mean(axis=(1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(content.std(axis=(1, 2)), 1.0, atol=1e-3)
    np.testing.assert_allclose(batch["pixel_size_mm"], index["pixel_size_mm"] * 96 / 48,
                               rtol=1e-6)
    np.testing.assert_allclose(batch["hc_mm"], index["hc_mm"], rtol=1e-6)
    np.testing.assert_allclose(batch["hc_px_input"] * batch["pixel_size_mm"], batch["hc_mm"],
                               rtol=1e-6)


def test_ellipse_and_annotation_match_the_image(outlines):
    batch = first_batch(make_dataset(outlines, image_size=SIZE, batch_size=4,
                                     with_annotation=True, with_ellipse=True))
    for i in range(4):
        assert_ellipse_close(batch["ellipse"][i], refit_image(batch["image"][i]), f"image {i}")
        perimeter = ellipse_perimeter(batch["ellipse"][i, 2], batch["ellipse"][i, 3])
        assert perimeter == pytest.approx(batch["hc_px_input"][i], rel=1e-4)
        outline = batch["annotation"][i, ..., 0] > 0
        bright = batch["image"][i, ..., 0] > 0.25 * batch["image"][i].max()
        assert outline.sum() > 0.8 * perimeter
        assert (outline & bright).sum() > 0.9 * outline.sum()


def test_augmentation_moves_image_and_targets_together(outlines):
    augmentation = Augmentation(flip_horizontal=True, flip_vertical=True, max_rotation_deg=25,
                                scale_range=(0.8, 1.15), max_translation=0.06, brightness=0.0,
                                contrast_range=(1.0, 1.0))
    dataset = make_dataset(outlines, image_size=SIZE, batch_size=4, augment=augmentation,
                           with_ellipse=True, seed=11)
    plain = first_batch(make_dataset(outlines, image_size=SIZE, batch_size=4,
                                     with_ellipse=True))
    for epoch, batch in enumerate(dataset.repeat(2).as_numpy_iterator()):
        for i in range(4):
            context = f"epoch {epoch} image {i}"
            assert_ellipse_close(batch["ellipse"][i], refit_image(batch["image"][i]), context)
            assert batch["hc_mm"][i] == pytest.approx(plain["hc_mm"][i], rel=1e-6)
            assert batch["hc_px_input"][i] * batch["pixel_size_mm"][i] == pytest.approx(
                batch["hc_mm"][i], rel=1e-5)
            zoom = plain["pixel_size_mm"][i] / batch["pixel_size_mm"][i]
            assert 0.8 <= zoom <= 1.15
            assert batch["ellipse"][i, 2] == pytest.approx(plain["ellipse"][i, 2] * zoom,
                                                           rel=1e-5)
            perimeter = ellipse_perimeter(batch["ellipse"][i, 2], batch["ellipse"][i, 3])
            assert perimeter == pytest.approx(batch["hc_px_input"][i], rel=1e-4)
        assert not np.allclose(batch["image"], plain["image"])


def test_horizontal_flip_is_exact_mirror(outlines):
    augmentation = Augmentation(**{**NO_AUGMENTATION, "flip_horizontal": True})
    plain = first_batch(make_dataset(outlines, image_size=SIZE, batch_size=4,
                                     with_ellipse=True))
    flipped_any, kept_any = False, False
    for batch in make_dataset(outlines, image_size=SIZE, batch_size=4, augment=augmentation,
                              with_ellipse=True, seed=1).repeat(3).as_numpy_iterator():
        for i in range(4):
            if np.array_equal(batch["image"][i], plain["image"][i]):
                kept_any = True
                np.testing.assert_allclose(batch["ellipse"][i], plain["ellipse"][i], atol=1e-4)
                continue
            flipped_any = True
            np.testing.assert_allclose(batch["image"][i], plain["image"][i][:, ::-1], atol=1e-5)
            expected = plain["ellipse"][i] * [-1, 1, 1, 1, -1, 1] + [SIZE - 1, 0, 0, 0, 0, 0]
            np.testing.assert_allclose(batch["ellipse"][i], expected, atol=1e-3)
            assert batch["pixel_size_mm"][i] == plain["pixel_size_mm"][i]
    assert flipped_any and kept_any


def test_scaling_by_s_scales_mm_per_px_by_one_over_s(outlines):
    s = 1.25
    augmentation = Augmentation(**{**NO_AUGMENTATION, "scale_range": (s, s)})
    plain = first_batch(make_dataset(outlines, image_size=SIZE, batch_size=4,
                                     with_ellipse=True))
    zoomed = first_batch(make_dataset(outlines, image_size=SIZE, batch_size=4,
                                      augment=augmentation, with_ellipse=True))
    np.testing.assert_allclose(zoomed["pixel_size_mm"], plain["pixel_size_mm"] / s, rtol=1e-6)
    np.testing.assert_allclose(zoomed["hc_px_input"], plain["hc_px_input"] * s, rtol=1e-5)
    np.testing.assert_allclose(zoomed["hc_mm"], plain["hc_mm"], rtol=1e-6)
    centre = (SIZE - 1) / 2
    np.testing.assert_allclose(zoomed["ellipse"][:, :2], (plain["ellipse"][:, :2] - centre) * s
                               + centre, atol=1e-3)
    np.testing.assert_allclose(zoomed["ellipse"][:, 2:4], plain["ellipse"][:, 2:4] * s,
                               rtol=1e-5)
    np.testing.assert_allclose(zoomed["ellipse"][:, 4:], plain["ellipse"][:, 4:], atol=1e-5)
    for i in range(4):  # the image itself is zoomed: its refit axes grow by s
        refit = refit_image(zoomed["image"][i])
        assert refit.semi_major == pytest.approx(plain["ellipse"][i, 2] * s, abs=0.4)


def test_intensity_jitter_keeps_padding_zero(phantoms):
    index = load_index(phantoms)
    augmentation = Augmentation(**{**NO_AUGMENTATION, "brightness": 0.3,
                                   "contrast_range": (0.7, 1.3)})
    plain = first_batch(make_dataset(index, image_size=48, batch_size=10))["image"][..., 0]
    jittered = first_batch(make_dataset(index, image_size=48, batch_size=10,
                                        augment=augmentation, seed=5))["image"][..., 0]
    assert np.all(jittered[:, :8] == 0.0) and np.all(jittered[:, 40:] == 0.0)
    for before, after in zip(plain[:, 8:40], jittered[:, 8:40], strict=True):
        slope, intercept = np.polyfit(before.ravel(), after.ravel(), 1)
        assert 0.7 <= slope <= 1.3 and -0.3 <= intercept <= 0.3
        np.testing.assert_allclose(after, slope * before + intercept, atol=1e-4)


def test_same_seed_same_stream_and_epochs_differ(phantoms):
    index = load_index(phantoms)

    def epochs(seed):
        dataset = make_dataset(index, image_size=32, batch_size=10, shuffle=True, augment=True,
                               seed=seed)
        return [(batch["filename"].tolist(), batch["image"])
                for batch in dataset.repeat(2).as_numpy_iterator()]

    first, again, other = epochs(3), epochs(3), epochs(4)
    for (names_a, images_a), (names_b, images_b) in zip(first, again, strict=True):
        assert names_a == names_b
        np.testing.assert_array_equal(images_a, images_b)
    assert first[0][0] != first[1][0] or not np.allclose(first[0][1], first[1][1])
    assert first[0][0] != other[0][0] or not np.allclose(first[0][1], other[0][1])
    assert sorted(first[0][0]) == sorted(name.encode() for name in index["filename"])


def test_cache_in_memory_and_on_disk_give_the_same_elements(phantoms, tmp_path):
    index = load_index(phantoms)
    reference = first_batch(make_dataset(index, image_size=32, batch_size=10,
                                         with_ellipse=True))
    prefix = tmp_path / "cache" / "train"
    for cache in (True, str(prefix)):
        dataset = make_dataset(index, image_size=32, batch_size=10, with_ellipse=True,
                               cache=cache)
        for _ in range(2):  # a full first pass writes the cache, the second reads it
            (batch,) = list(dataset.as_numpy_iterator())
            for key in ("image", "pixel_size_mm", "hc_px_input", "ellipse"):
                np.testing.assert_array_equal(batch[key], reference[key])
    assert any(path.name.startswith("train_") for path in (tmp_path / "cache").iterdir())


def test_batches_and_drop_remainder(phantoms):
    index = load_index(phantoms)
    sizes = [len(b["hc_mm"]) for b in make_dataset(index, 32, batch_size=4).as_numpy_iterator()]
    assert sizes == [4, 4, 2]
    dataset = make_dataset(index, 32, batch_size=4, drop_remainder=True)
    assert [len(b["hc_mm"]) for b in dataset.as_numpy_iterator()] == [4, 4]
    assert dataset.element_spec["image"].shape.as_list() == [4, 32, 32, 1]


def test_load_arrays_matches_dataset(phantoms):
    index = load_index(phantoms)
    arrays = load_arrays(index, image_size=32, with_annotation=True, with_ellipse=True)
    assert set(arrays) == KEYS | {"annotation", "ellipse"}
    assert arrays["image"].shape == (10, 32, 32, 1)
    assert arrays["filename"].tolist() == index["filename"].tolist()
    batch = first_batch(make_dataset(index, 32, batch_size=10, with_ellipse=True))
    np.testing.assert_array_equal(arrays["image"], batch["image"])
    np.testing.assert_array_equal(arrays["ellipse"], batch["ellipse"])


def test_challenge_part_has_nan_targets_and_no_ellipse(phantoms):
    index = load_index(phantoms, part="challenge")
    arrays = load_arrays(index, image_size=32)
    assert np.isnan(arrays["hc_mm"]).all() and np.isnan(arrays["hc_px_input"]).all()
    assert np.isfinite(arrays["pixel_size_mm"]).all()
    with pytest.raises(DataError, match="no annotation"):
        make_dataset(index, 32, with_ellipse=True)


def test_bad_arguments(phantoms):
    index = load_index(phantoms)
    with pytest.raises(ValueError, match="batch_size"):
        make_dataset(index, 32, batch_size=0)
    with pytest.raises(ValueError, match="augment"):
        make_dataset(index, 32, augment="yes")
    with pytest.raises(ValueError, match="bad augmentation settings"):
        make_dataset(index, 32, augment={"rotation": 5})
    from_dict = make_dataset(index, 32, augment={"max_rotation_deg": 5, "scale_range": [1, 1]})
    assert from_dict.element_spec["image"].shape.as_list() == [None, 32, 32, 1]
    with pytest.raises(ValueError, match="lacks column"):
        make_dataset(index.drop(columns=["width_px"]), 32)
    with pytest.raises(ValueError, match="scale_range"):
        Augmentation(scale_range=(1.2, 0.8))
    assert Path(index["image_path"].iloc[0]).is_file()


def test_augmentation_draws_anew_each_epoch_without_shuffle(phantoms):
    index = load_index(phantoms)
    dataset = make_dataset(index, image_size=32, batch_size=10, augment=True, seed=6)
    first, second = (batch for batch in dataset.repeat(2).as_numpy_iterator())
    assert first["filename"].tolist() == second["filename"].tolist()
    assert not np.allclose(first["pixel_size_mm"], second["pixel_size_mm"])
    again = first_batch(make_dataset(index, image_size=32, batch_size=10, augment=True, seed=6))
    np.testing.assert_array_equal(again["image"], first["image"])


def test_rasterise_outline_of_a_circle():
    from fetalhc.data import rasterise_outline

    single = rasterise_outline([20.0, 18.0, 10.0, 10.0, 0.3], 40).numpy()
    assert single.shape == (40, 40, 1) and set(np.unique(single)) == {0.0, 1.0}
    rows, cols = np.nonzero(single[..., 0])
    radius = np.hypot(cols - 20.0, rows - 18.0)
    assert np.all(np.abs(radius - 10.0) <= 0.8)  # first-order distance <= 0.75
    assert single.sum() == pytest.approx(2 * math.pi * 10 * 1.5, rel=0.15)
    batch = rasterise_outline(np.array([[20, 18, 10, 10, 0.3], [5, 5, 3, 2, 0]]), 40).numpy()
    assert batch.shape == (2, 40, 40, 1)
    np.testing.assert_array_equal(batch[0], single)


def test_relative_root_gives_absolute_paths(phantoms, monkeypatch):
    monkeypatch.chdir(phantoms.parent)
    index = load_index(phantoms.name)
    assert all(Path(path).is_absolute() for path in index["image_path"])

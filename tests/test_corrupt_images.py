"""Corrupt images are named (#17): ``fetalhc.data.check_images`` and every command.

A truncated PNG, a missing image and a byte-garbage "PNG" must each make ``data check``,
``train``, ``predict``, ``explain`` and ``evaluate`` exit non-zero with a last output line
naming the file, without a traceback and without writing anything. The commands are run on
a damaged copy of the shared phantoms; predict / explain / evaluate use a tiny run trained
on the clean phantoms, with the damaged file taken from its test split.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import fetalhc.data.images as images_module
from fetalhc.cli.main import cli
from fetalhc.data import DataError, check_images, load_arrays, load_index, make_dataset
from fetalhc.training import write_config

SIZE = 32
CONFIG = {
    "data": {"image_size": SIZE, "val_fraction": 0.2, "test_fraction": 0.2},
    "model": {"backbone": "small_cnn", "dropout": 0.0},
    "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 8, "learning_rate": 3e-3,
              "tensorboard": False},
}
KINDS = ("truncated", "missing", "garbage")


def damage(path, kind: str) -> None:
    """Truncate ``path`` to half its bytes, delete it, or fill it with non-image bytes."""
    if kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "missing":
        path.unlink()
    elif kind == "garbage":
        path.write_bytes(b"this is not a PNG file\n" * 200)
    else:
        raise ValueError(kind)


@pytest.fixture(scope="module")
def clean(phantom_dir_factory):
    return phantom_dir_factory()


@pytest.fixture()
def copy(clean, tmp_path):
    """A private copy of the phantoms, to damage."""
    root = tmp_path / "data"
    shutil.copytree(clean, root)
    return root


@pytest.fixture(autouse=True)
def _fresh_memo():
    images_module.clear_image_memo()
    yield
    images_module.clear_image_memo()


# ---------------------------------------------------------------- check_images, unit tests


def test_good_index_passes(clean):
    index = load_index(clean, validate=False)
    assert check_images(index) is None
    assert check_images(load_index(clean, "challenge", validate=False)) is None


@pytest.mark.parametrize("kind, what", [
    ("truncated", "truncated PNG"),
    ("missing", "image file is missing"),
    ("garbage", "not an image"),
])
def test_bad_image_raises_one_line_naming_it(copy, kind, what):
    index = load_index(copy, validate=False)  # read while the file was good
    bad = index["image_path"].iloc[3]
    damage(Path(bad), kind)
    with pytest.raises(DataError) as caught:
        check_images(index)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{bad}: ") and what in message
    # only the bad row matters
    check_images(index.drop(index.index[3]))


def test_first_bad_file_in_index_order_is_named(copy):
    index = load_index(copy, validate=False)
    for row in (5, 2):
        damage(copy / "training_set" / index["filename"].iloc[row], "truncated")
    with pytest.raises(DataError, match=index["filename"].iloc[2]):
        check_images(index)


def test_annotations_are_checked_unless_not_needed(copy):
    index = load_index(copy, validate=False)
    annotation = index["annotation_path"].iloc[1]
    damage(Path(annotation), "truncated")
    with pytest.raises(DataError, match="truncated PNG") as caught:
        check_images(index)
    assert str(caught.value).startswith(f"{annotation}: ")
    check_images(index, annotations=False)


def test_image_that_changed_size_since_the_index_was_read(copy):
    index = load_index(copy, validate=False)
    path = index["image_path"].iloc[0]
    Image.new("L", (40, 30)).save(path)
    with pytest.raises(DataError, match=r"image is 40x30 px but the index says \d+x\d+ px"):
        check_images(index)


def test_truncated_header_and_other_formats(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.arange(64 * 48, dtype=np.uint32).reshape(48, 64).astype(np.uint8)).save(
        good)
    header = tmp_path / "header.png"
    header.write_bytes(good.read_bytes()[:40])
    tiff = tmp_path / "image.tif"
    Image.open(good).save(tiff)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for path, what in ((header, "truncated PNG (the file ends before its IEND chunk, at byte 40)"),
                       (tiff, "TIFF image; the pipeline decodes only"),
                       (empty, "file is empty")):
        with pytest.raises(DataError) as caught:
            check_images(_index(path))
        assert str(caught.value).startswith(f"{path}: ") and what in str(caught.value)
    check_images(_index(good))


def _index(path):
    import pandas as pd

    return pd.DataFrame({"image_path": [str(path)]})


def test_memo_decodes_each_file_version_once(copy, monkeypatch):
    index = load_index(copy, validate=False)
    calls = []
    decode = images_module._decode
    monkeypatch.setattr(images_module, "_decode",
                        lambda path, size: calls.append(path) or decode(path, size))
    check_images(index)
    assert len(calls) == 2 * len(index)  # images and annotations
    check_images(index)
    check_images(index, annotations=False)
    assert len(calls) == 2 * len(index)  # nothing decoded again
    path = copy / "training_set" / index["filename"].iloc[0]
    damage(path, "truncated")  # a new version: new size and mtime
    with pytest.raises(DataError, match="truncated PNG"):
        check_images(index)
    assert len(calls) == 2 * len(index) + 1


def test_pipeline_checks_before_building(copy):
    index = load_index(copy, validate=False)
    bad = index["image_path"].iloc[4]
    damage(Path(bad), "truncated")
    for build in (lambda: make_dataset(index, image_size=SIZE),
                  lambda: load_arrays(index, image_size=SIZE)):
        with pytest.raises(DataError, match=f"^{bad}: truncated PNG"):
            build()
    arrays = load_arrays(index.drop(index.index[4]), image_size=SIZE)
    assert len(arrays["image"]) == len(index) - 1


def test_file_broken_after_the_check_is_named_by_the_pipeline(copy):
    import tensorflow as tf

    index = load_index(copy, validate=False).iloc[:6]
    dataset = make_dataset(index, image_size=SIZE, batch_size=4)  # checked: all good
    bad = index["image_path"].iloc[1]
    damage(Path(bad), "truncated")
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        list(dataset.as_numpy_iterator())
    assert bad in str(caught.value) and "changed after it was checked" in str(caught.value)


def test_load_arrays_names_a_file_broken_during_iteration(copy, monkeypatch):
    import fetalhc.data.pipeline as pipeline

    index = load_index(copy, validate=False).iloc[:6]
    bad = index["image_path"].iloc[2]
    build = pipeline.make_dataset

    def make_then_break(*args, **kwargs):
        dataset = build(*args, **kwargs)
        damage(Path(bad), "truncated")
        return dataset

    monkeypatch.setattr(pipeline, "make_dataset", make_then_break)
    with pytest.raises(DataError, match=f"^{bad}: truncated PNG"):
        load_arrays(index, image_size=SIZE)


# ---------------------------------------------------------------- the commands


def _assert_named_failure(result, filename):
    """Non-zero exit, no traceback, last line one line naming the file."""
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"uncaught {type(result.exception).__name__}: {result.exception}")
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines, "no output"
    assert filename in lines[-1], result.output
    assert lines[-1].startswith("Error:"), result.output


def _invoke(*args):
    return CliRunner().invoke(cli, [*map(str, args)])


@pytest.fixture(scope="module")
def run_dir(clean, tmp_path_factory):
    from fetalhc.training import train

    out = tmp_path_factory.mktemp("corrupt") / "run"
    train(CONFIG, clean, out, verbose=0)
    return out


@pytest.fixture(scope="module")
def test_image(run_dir):
    from fetalhc.training import load_run

    return load_run(run_dir).config["split"]["test"][0]


@pytest.mark.parametrize("kind", KINDS)
def test_data_check_names_the_bad_image(copy, kind):
    filename = load_index(copy, validate=False)["filename"].iloc[7]
    damage(copy / "training_set" / filename, kind)
    result = _invoke("data", "check", copy, "--no-progress")
    _assert_named_failure(result, filename)
    assert "OK: no problems found" not in result.output
    assert "problem: " in result.output


def test_data_check_decodes_every_image_by_default(copy):
    result = _invoke("data", "check", copy, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "decoded in full" in result.output
    assert "0 missing, truncated or undecodable" in result.output
    assert "decoded in full" in _invoke("data", "check", "--help").output


@pytest.mark.parametrize("kind", KINDS)
def test_train_names_the_bad_image_and_writes_nothing(copy, tmp_path, kind):
    filename = load_index(copy, validate=False)["filename"].iloc[7]
    damage(copy / "training_set" / filename, kind)
    config = tmp_path / "config.toml"
    write_config(CONFIG, config)
    out = tmp_path / "run"
    result = _invoke("train", "--config", config, "--data", copy, "--out", out, "--quiet")
    _assert_named_failure(result, filename)
    assert not out.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_predict_names_the_bad_image_and_writes_nothing(copy, run_dir, test_image, tmp_path,
                                                        kind):
    damage(copy / "training_set" / test_image, kind)
    folder = tmp_path / "predictions"
    folder.mkdir()
    result = _invoke("predict", "--model", run_dir / "model.keras", "--data", copy,
                     "--out", folder / "predictions.csv")
    _assert_named_failure(result, test_image)
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("kind", KINDS)
def test_explain_names_the_bad_image_and_writes_nothing(copy, run_dir, test_image, tmp_path,
                                                        kind):
    damage(copy / "training_set" / test_image, kind)
    out = tmp_path / "maps"
    result = _invoke("explain", "--model", run_dir, "--data", copy, "--methods", "gradient",
                     "--out", out)
    _assert_named_failure(result, test_image)
    assert not out.exists()


@pytest.mark.parametrize("kind", KINDS)
def test_evaluate_names_the_bad_image_and_writes_nothing(copy, run_dir, test_image, tmp_path,
                                                         kind):
    damage(copy / "training_set" / test_image, kind)
    out = tmp_path / "evaluation"
    result = _invoke("evaluate", "--model", run_dir, "--data", copy, "--methods", "gradient",
                     "--metrics", "aopc,localisation", "--out", out, "--n-boot", 100,
                     "--no-progress")
    _assert_named_failure(result, test_image)
    assert not out.exists()



def _png_with_text_chunk(path):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("comment", "phantom")
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8), (48, 1))).save(path, pnginfo=info)
    return path.read_bytes()


@pytest.mark.parametrize("chunk, fails", [(b"IDAT", True), (b"tEXt", False)])
def test_png_checksums_are_checked_as_the_decoder_checks_them(tmp_path, chunk, fails):
    """A bad CRC of a critical chunk breaks TensorFlow's decoder; of an ancillary chunk not."""
    import tensorflow as tf

    path = tmp_path / "image.png"
    data = bytearray(_png_with_text_chunk(path))
    start = data.index(chunk)
    length = int.from_bytes(data[start - 4:start], "big")
    data[start + 4 + length] ^= 0xFF  # first byte of the chunk's CRC
    path.write_bytes(bytes(data))
    decoded = True
    try:
        tf.io.decode_image(tf.io.read_file(str(path)), channels=1, expand_animations=False)
    except tf.errors.InvalidArgumentError:
        decoded = False
    assert decoded is not fails
    if fails:
        with pytest.raises(DataError, match="corrupt PNG .*checksum"):
            check_images(_index(path))
    else:
        check_images(_index(path))

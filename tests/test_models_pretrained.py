"""Named models: the repository's ``models/`` load by name and are the files their
provenance describes; a wrong name or a changed file is refused with a one-line error."""

from __future__ import annotations

import hashlib
import json
import shutil

import keras
import numpy as np
import pytest

from fetalhc.models import build_model
from fetalhc.models.shipped import (
    MODELS_ENV,
    available_pretrained,
    check_pretrained,
    models_folder,
    pretrained,
    pretrained_dir,
)

SHIPPED = available_pretrained()


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    (folder / "tiny").mkdir(parents=True)
    model = build_model("small_cnn", input_shape=(32, 32, 1), small_cnn_filters=(4, 8),
                        hc_mean_px=50.0, hc_std_px=5.0)
    model.save(folder / "tiny" / "model.keras")
    digest = hashlib.sha256((folder / "tiny" / "model.keras").read_bytes()).hexdigest()
    (folder / "tiny" / "provenance.json").write_text(json.dumps({"model_sha256": digest}))
    monkeypatch.setenv(MODELS_ENV, str(folder))
    return folder


def test_a_named_model_loads_and_predicts(models_dir):
    assert models_folder() == models_dir
    assert available_pretrained() == ["tiny"]
    model = pretrained("tiny")
    assert isinstance(model, keras.Model)
    output = model(np.zeros((1, 32, 32, 1), np.float32))
    assert np.all(np.isfinite(np.asarray(output)))


@pytest.mark.parametrize("name, message", [
    ("nope", r"no pretrained model named 'nope'; available: tiny"),
    ("../tiny", r"plain folder name"),
    ("", r"plain folder name"),
])
def test_a_wrong_name_lists_the_models(models_dir, name, message):
    with pytest.raises(ValueError, match=message):
        pretrained_dir(name)


def test_no_models_folder_says_where_the_models_come_from(tmp_path, monkeypatch):
    """Installed from a wheel, there is no models/ folder beside the package: the error
    says the named models come with the repository and how to point at them."""
    monkeypatch.setenv("FETALHC_MODELS", str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="not with the wheel: set FETALHC_MODELS"):
        pretrained_dir("hc18-plain-mae")


def test_a_changed_model_file_is_refused(models_dir):
    shutil.copy(models_dir / "tiny" / "provenance.json", models_dir / "keep.json")
    provenance = json.loads((models_dir / "tiny" / "provenance.json").read_text())
    provenance["model_sha256"] = "0" * 64
    (models_dir / "tiny" / "provenance.json").write_text(json.dumps(provenance))
    with pytest.raises(ValueError, match="SHA-256 differs"):
        pretrained("tiny")
    (models_dir / "tiny" / "provenance.json").unlink()
    with pytest.raises(ValueError, match="cannot tell where it came from"):
        check_pretrained("tiny")


@pytest.mark.parametrize("name", SHIPPED or [pytest.param(None, marks=pytest.mark.skip(
    reason="no model under models/ yet"))])
def test_shipped_models_load_by_name_and_are_run_folders(name):
    provenance = check_pretrained(name)
    folder = pretrained_dir(name)
    for file_name in ("config.toml", "history.csv", "metrics.json"):
        assert (folder / file_name).is_file(), f"{name} lacks {file_name}"
    assert (folder / "model.keras").stat().st_size < 10 * 1024 * 1024
    assert provenance["command"]
    model = pretrained(name)
    size = int(model.inputs[0].shape[1])
    assert np.all(np.isfinite(np.asarray(
        keras.tree.flatten(model(np.zeros((1, size, size, 1), np.float32)))[0])))

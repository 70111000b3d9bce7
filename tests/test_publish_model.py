"""``scripts/publish_model.py``: a finished run becomes a named model that loads by name,
a crop run only with the very localiser it used published first; every refusal is one line
and leaves nothing behind."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from fetalhc.models.shipped import MODELS_ENV, pretrained
from fetalhc.training import train
from fetalhc.training.config import read_toml

REPO = Path(__file__).resolve().parents[1]
STAGE1 = {
    "data": {"image_size": 32, "val_fraction": 0.2, "test_fraction": 0.2, "cache": True},
    "model": {"backbone": "small_cnn", "dropout": 0.0, "filters": [8, 16], "aux_ellipse": True},
    "train": {"epochs": 1, "batch_size": 8, "seed": 0, "tensorboard": False},
}


@pytest.fixture(scope="module")
def publisher():
    spec = importlib.util.spec_from_file_location("publish_model",
                                                  REPO / "scripts" / "publish_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runs(phantoms, tmp_path_factory):
    """A stage-1 run, a second stage-1 run (another seed) and a crop run localised by the
    first."""
    folder = tmp_path_factory.mktemp("publish-runs")
    stage1 = train(STAGE1, phantoms, folder / "stage1").run_dir
    other = train({**STAGE1, "train": {**STAGE1["train"], "seed": 1}}, phantoms,
                  folder / "other").run_dir
    crop = {**STAGE1, "data": {**STAGE1["data"], "crop_margin": 1.5, "localiser": str(stage1)}}
    return {"stage1": stage1, "other": other, "crop": train(crop, phantoms, folder / "crop").run_dir}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_publish_a_localiser_then_its_crop_model(publisher, runs, tmp_path, monkeypatch):
    models = tmp_path / "models"
    loc = publisher.publish(runs["stage1"], "loc", "train it", models_root=models)
    record = json.loads((loc / "provenance.json").read_text())
    assert record["source_model_sha256"] == _digest(runs["stage1"] / "model.keras")
    assert record["model_sha256"] == _digest(loc / "model.keras")
    assert record["command"] == "train it"
    crop = publisher.publish(runs["crop"], "crop", "train crop", localiser="loc",
                             models_root=models)
    config = read_toml(crop / "config.toml")
    assert config["run"]["localiser_file"] == "../loc/model.keras"
    assert json.loads((crop / "provenance.json").read_text())["localiser"] == "loc"
    monkeypatch.setenv(MODELS_ENV, str(models))
    output = pretrained("crop")(np.zeros((1, 32, 32, 1), np.float32))
    assert all(np.all(np.isfinite(np.asarray(value))) for value in
               (output.values() if isinstance(output, dict) else [output]))
    assert sorted(path.name for path in models.iterdir()) == ["crop", "loc"]


def test_refusals_are_one_line_and_leave_nothing(publisher, runs, tmp_path):
    models = tmp_path / "models"
    publisher.publish(runs["other"], "other", "x", models_root=models)
    cases = [
        (dict(run=tmp_path / "nothing", name="a"), "is not a finished run folder"),
        (dict(run=runs["other"], name="other"), "exists; pass --overwrite"),
        (dict(run=runs["crop"], name="b"), "publish its localiser first"),
        (dict(run=runs["stage1"], name="c", localiser="other"), "whole-image run"),
        (dict(run=runs["crop"], name="d", localiser="other"), "was not published from"),
        (dict(run=runs["crop"], name="e", localiser="absent"), "no published model 'absent'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(SystemExit, match=message) as raised:
            publisher.publish(command="x", models_root=models, **kwargs)
        assert "\n" not in str(raised.value)
    assert sorted(path.name for path in models.iterdir()) == ["other"]

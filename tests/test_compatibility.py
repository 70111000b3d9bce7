"""Run folders and models written before the reshaping of issue #16 still work.

``tests/fixtures/run_c5c3278/`` holds a run folder written by commit c5c3278 (killed after
epoch 1 of 3, with its ``backup/``) and that code's test-split predictions and maps
(``expected.npz``); see its README. Today's code must load the model and the run, predict
and explain the same numbers, and resume the run to its end.

The phantoms are not committed: they are regenerated here exactly as the run was made
(``write_phantom_dataset(n=30, seed=0, challenge=2)``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import fetalhc
from fetalhc.cli.main import cli
from fetalhc.data import make_dataset
from fetalhc.explain import explain
from fetalhc.training import load_run, predict_hc_mm, run_split_index, write_config

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "run_c5c3278"
METHODS = ("gradient", "integrated_gradients", "lrp_epsilon")
# the user config the run was trained with (fixtures/run_c5c3278/make_run.py)
ORIGINAL_CONFIG = {
    "data": {"image_size": 32, "val_fraction": 0.2, "test_fraction": 0.2, "augment": False},
    "model": {"backbone": "small_cnn", "dropout": 0.0, "filters": [8, 16], "aux_ellipse": True},
    "train": {"epochs": 3, "batch_size": 8, "learning_rate": 3e-3, "seed": 0,
              "tensorboard": False},
}
# float32 maps of ~0.1-0.2 in magnitude. Today they are bit-identical; the reshaping may
# change the order of float32 operations (another traced graph, another summation order),
# which moves a value by a few ulp (~1e-7 relative) per operation: rtol 1e-4 leaves room
# for that through the whole backward pass, atol 1e-6 (~1e-5 of the largest value) for
# pixels whose relevance is ~0. A change of method (rule, steps, target) moves values by
# far more than that.
MAP_TOLERANCE = {"rtol": 1e-4, "atol": 1e-6}
# Integrated Gradients is refined per image until its completeness gap is within 1 % of
# f(x) - f(b) (fetalhc.explain.integrated_gradients.DEFAULT_TOLERANCE): a path node that
# lands next to a ReLU kink picks up the machine's float32 round-off (oneDNN kernels differ
# between CPUs), and such maps were seen to move by up to 0.3 % of their largest value
# (171 of 3072 pixels beyond the tolerance above). Its maps are held to the method's own
# precision instead: every pixel within 1 % of the map's largest |value|.
IG_RELATIVE_TO_MAX = 0.01
PREDICTION_RTOL = 1e-4
PHANTOM_HINT = ("(if fetalhc.data.write_phantom_dataset changed, the regenerated phantoms "
                "are no longer those of c5c3278)")


@pytest.fixture(scope="module")
def data(phantom_dir_factory) -> Path:
    return phantom_dir_factory(n=30, challenge=2)


@pytest.fixture(scope="module")
def expected():
    with np.load(FIXTURE / "expected.npz") as stored:
        return {key: stored[key] for key in stored.files}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A copy of the old run folder (read only by the tests that use it)."""
    return Path(shutil.copytree(FIXTURE / "run", tmp_path_factory.mktemp("compat") / "run"))


@pytest.fixture(scope="module")
def run(run_dir):
    return load_run(run_dir)


@pytest.fixture(scope="module")
def model(run):
    return fetalhc.load_model(run.model_path)


@pytest.fixture(scope="module")
def test_index(run, data) -> pd.DataFrame:
    return run_split_index(run.config, data, "test")


def test_the_old_run_folder_loads(run, run_dir, model, expected):
    assert run.model_path == run_dir / "model.keras"
    assert run.config["split"]["test"] == expected["filename"].tolist()
    assert run.config["data"]["image_size"] == 32 and run.image_size == 32
    assert run.config["model"]["filters"] == [8, 16] and run.config["model"]["aux_ellipse"]
    assert run.config["run"]["monitor"] == "val_hc_px_input_mae_mm"
    assert [tensor.shape[1:] for tensor in model.inputs] == [(32, 32, 1)]
    assert sorted(model.output_names) == ["ellipse", "hc_px_input"]


def test_predictions_equal_the_old_code(model, run, test_index, expected):
    table = predict_hc_mm(model, test_index, run.image_size)
    predicted = dict(zip(table["filename"], table["prediction (mm)"], strict=True))
    assert sorted(predicted) == sorted(expected["filename"].tolist())
    new = np.array([predicted[name] for name in expected["filename"]])
    np.testing.assert_allclose(new, expected["prediction_mm"], rtol=PREDICTION_RTOL,
                               err_msg=f"test-split predictions differ from c5c3278 {PHANTOM_HINT}")


@pytest.mark.parametrize("method", METHODS)
def test_maps_equal_the_old_code(model, run, test_index, expected, method):
    dataset = make_dataset(test_index.iloc[:3], image_size=run.image_size, batch_size=3,
                           shuffle=False)
    maps = explain(model, dataset, method=method)
    assert maps.shape == expected[method].shape == (3, 32, 32) and maps.dtype == np.float32
    tolerance = dict(MAP_TOLERANCE)
    if method == "integrated_gradients":
        tolerance["atol"] = IG_RELATIVE_TO_MAX * float(np.abs(expected[method]).max())
    np.testing.assert_allclose(maps, expected[method], **tolerance,
                               err_msg=f"{method} maps differ from c5c3278 {PHANTOM_HINT}")


def test_the_killed_old_run_resumes_to_its_end(data, tmp_path):
    out = Path(shutil.copytree(FIXTURE / "run", tmp_path / "run"))
    first_epoch = pd.read_csv(out / "history.csv")
    assert first_epoch["epoch"].tolist() == [0] and (out / "backup").is_dir()
    config = tmp_path / "config.toml"
    write_config(ORIGINAL_CONFIG, config)
    # the run's config.toml records data_dir /tmp/compat/phantoms, which is gone: --data
    result = CliRunner().invoke(cli, ["train", "--config", str(config), "--data", str(data),
                                      "--out", str(out), "--resume", "--quiet"])
    assert result.exit_code == 0, result.output
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == [0, 1, 2]
    pd.testing.assert_frame_equal(history.iloc[:1][first_epoch.columns], first_epoch)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == 3 and metrics["test"]["n"] == 6
    assert not (out / "backup").exists()
    assert (FIXTURE / "run" / "backup").is_dir()  # the committed fixture is untouched
    fetalhc.load_model(out / "model.keras")

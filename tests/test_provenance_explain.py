"""#17: an ``explain`` / ``merge`` folder is never silently wrong.

A re-run into an explain folder made with another target, split, model file, method option
or pre-processing is refused with one line naming the field and ``--overwrite``; the same
request resumes and reuses; a run killed with SIGKILL and resumed equals an uninterrupted
run; ``merge`` refuses shards of different provenance; ``stack_maps`` carries the
provenance to ``evaluate --maps``. (Before #17 every one of these re-runs exited 0 and kept
the old maps, keyed on the file stem alone.)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from fetalhc.cli.main import cli

CONFIG = {
    "data": {"image_size": 32, "val_fraction": 0.2, "test_fraction": 0.2},
    "model": {"backbone": "small_cnn", "dropout": 0.0},
    "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 8, "learning_rate": 3e-3,
              "tensorboard": False},
}
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(phantoms):
    return phantoms


@pytest.fixture(scope="module")
def run_dir(data, tmp_path_factory):
    from fetalhc.training import train

    out = tmp_path_factory.mktemp("provenance_explain") / "run"
    train(CONFIG, data, out)
    return out


def _model(seed: int):
    import keras

    from fetalhc.models import build_model

    keras.utils.set_random_seed(seed)
    return build_model("small_cnn", input_shape=(32, 32, 1), hc_mean_px=60.0, hc_std_px=10.0)


@pytest.fixture(scope="module")
def bare_model(tmp_path_factory):
    """An untrained small CNN saved as a bare .keras file (explains --split challenge)."""
    path = tmp_path_factory.mktemp("bare") / "model.keras"
    _model(0).save(path)
    return path


def _explain(*args):
    return CliRunner().invoke(cli, ["explain", *map(str, args)])


def _ok(result):
    assert result.exit_code == 0, result.output
    return result


def _refused(result, *words):
    """Exit 1, one line, naming every word (a field and --overwrite)."""
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1, result.output
    for word in words:
        assert word in result.output, result.output
    return result


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _stored(path: Path) -> dict:
    with np.load(path) as stored:
        return {key: stored[key] for key in stored.files}


# ----------------------------------------------------------------------------- refusals
def test_another_target_is_refused_and_overwrite_recomputes(bare_model, data, tmp_path):
    out = tmp_path / "maps"
    common = ("--model", bare_model, "--data", data, "--split", "challenge",
              "--methods", "gradient", "--out", out)
    _ok(_explain(*common))
    before = _snapshot(out)
    _refused(_explain(*common, "--target", "hc_px_input"), "target", "--overwrite")
    assert _snapshot(out) == before  # nothing changed
    assert set(pd.read_csv(out / "index.csv")["target"]) == {"hc_mm"}

    result = _ok(_explain(*common, "--target", "hc_px_input", "--overwrite"))
    assert "wrote 4, skipped 0" in result.output
    assert set(pd.read_csv(out / "index.csv")["target"]) == {"hc_px_input"}
    assert set(pd.read_csv(out / "index.csv")["target units"]) == {"px"}
    record = json.loads((out / "provenance.json").read_text())
    assert record["kind"] == "explain" and record["result"]["target"] == "hc_px_input"


def test_another_split_sharing_file_names_is_refused(run_dir, data, tmp_path):
    """HC18's training_set/ and test_set/ both hold 000_HC.png ...: the challenge maps of
    a name must never stand for the training image of that name."""
    from fetalhc.data import load_index
    from fetalhc.training import load_run

    config = load_run(run_dir).config
    challenge = set(load_index(data, "challenge", validate=False)["filename"])
    split = next(s for s in ("train", "val", "test") if challenge & set(config["split"][s]))
    shared = sorted(challenge & set(config["split"][split]))[0]
    out = tmp_path / "maps"
    common = ("--model", run_dir, "--data", data, "--methods", "gradient", "--out", out)
    _ok(_explain(*common, "--split", "challenge"))
    stem = Path(shared).stem
    challenge_map = _stored(out / "gradient" / f"{stem}.npz")
    _refused(_explain(*common, "--split", split), "split", "--overwrite")
    assert str(challenge_map["set"]) == "test_set"
    assert np.array_equal(_stored(out / "gradient" / f"{stem}.npz")["map"], challenge_map["map"])

    _ok(_explain(*common, "--split", split, "--overwrite"))
    training_map = _stored(out / "gradient" / f"{stem}.npz")
    assert str(training_map["set"]) == "training_set" and str(training_map["filename"]) == shared
    assert not np.array_equal(training_map["image"], challenge_map["image"])
    assert sorted(p.stem for p in (out / "gradient").glob("*.npz")) == \
        sorted(Path(name).stem for name in config["split"][split])  # no challenge leftovers
    table = pd.read_csv(out / "index.csv")
    assert table["filename"].tolist() == config["split"][split]


def test_another_model_file_at_the_same_path_is_refused(data, tmp_path):
    model_path = tmp_path / "model.keras"
    _model(0).save(model_path)
    out = tmp_path / "maps"
    common = ("--model", model_path, "--data", data, "--split", "challenge",
              "--methods", "gradient", "--out", out)
    _ok(_explain(*common))
    _model(1).save(model_path)  # retrained, saved over the old file
    _refused(_explain(*common), "model", "--overwrite")
    _ok(_explain(*common, "--overwrite"))


def test_another_method_option_is_refused(bare_model, data, tmp_path):
    out = tmp_path / "maps"
    common = ("--model", bare_model, "--data", data, "--split", "challenge", "--methods",
              "integrated_gradients", "--out", out, "--option",
              "integrated_gradients.tolerance=none")
    _ok(_explain(*common, "--option", "integrated_gradients.steps=4"))
    _refused(_explain(*common, "--option", "integrated_gradients.steps=6"),
             "integrated_gradients.steps", "--overwrite")
    _refused(_explain(*common), "integrated_gradients.steps")  # the default, 8
    # the same options spelt differently are the same request: resumed
    again = _ok(_explain(*common[:-2], "--option", "integrated_gradients.tolerance=None",
                         "--option", "integrated_gradients.steps=4"))
    assert "wrote 0, skipped 4" in again.output


def test_another_preprocessing_is_refused(run_dir, data, tmp_path):
    """The same model.keras under a run folder saying image size 48: refused before any
    image is loaded."""
    from fetalhc.training import read_toml, write_config

    other = tmp_path / "run48"
    shutil.copytree(run_dir, other)
    config = read_toml(other / "config.toml")
    config["data"]["image_size"] = 48
    config["preprocessing"]["image_size"] = 48
    write_config(config, other / "config.toml")
    out = tmp_path / "maps"
    common = ("--data", data, "--split", "challenge", "--methods", "gradient", "--out", out)
    _ok(_explain("--model", run_dir, *common))
    _refused(_explain("--model", other, *common), "preprocessing.image_size", "--overwrite")


def test_a_foreign_folder_is_refused_and_never_deleted(bare_model, data, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    common = ("--model", bare_model, "--data", data, "--split", "challenge",
              "--methods", "gradient", "--out", out)
    _refused(_explain(*common), "provenance.json", "--overwrite")
    _refused(_explain(*common, "--overwrite"), "refusing to delete")
    assert (out / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- resume
def test_the_same_request_resumes_and_checks_each_map_key(bare_model, data, tmp_path):
    out = tmp_path / "maps"
    common = ("--model", bare_model, "--data", data, "--split", "challenge", "--methods",
              "gradient,gradcam", "--out", out, "--batch-size", 2)
    _ok(_explain(*common))
    record = json.loads((out / "provenance.json").read_text())
    assert record["result"]["image_keys"] == [["test_set", f"{i:03d}_HC.png"]
                                              for i in range(4)]
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")}
    again = _ok(_explain(*common))
    assert "wrote 0, skipped 8" in again.output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")} == stamps
    assert json.loads((out / "provenance.json").read_text()) == record  # kept, not rewritten

    # an .npz recording another image (or method key) is not reused: its batch is redone
    path = out / "gradient" / "003_HC.npz"
    stored = _stored(path)
    np.savez_compressed(path, **{**stored, "set": np.array("training_set")})
    third = _ok(_explain(*common))
    assert "wrote 2, skipped 6" in third.output
    assert str(_stored(path)["set"]) == "test_set"
    assert (out / "gradient" / "000_HC.npz").stat().st_mtime_ns == \
        stamps[out / "gradient" / "000_HC.npz"]


def _count(folder: Path) -> int:
    return len(list(folder.glob("*.npz"))) if folder.is_dir() else 0


def test_a_killed_run_resumes_to_the_uninterrupted_run(run_dir, data, tmp_path):
    """SIGKILL mid-batch, resume: every map and index.csv equal an uninterrupted run's.

    IG with a noise baseline draws the noise per batch, so a resume that re-batched only
    the missing images (the old behaviour) gave other maps."""
    batch = 3
    args = ["explain", "--model", str(run_dir), "--data", str(data), "--split", "train",
            "--methods", "integrated_gradients", "--batch-size", str(batch),
            "--option", "integrated_gradients.baseline=noise",
            "--option", "integrated_gradients.steps=16",
            "--option", "integrated_gradients.tolerance=none"]
    from fetalhc.training import load_run

    total = len(load_run(run_dir).config["split"]["train"])
    killed = tmp_path / "killed"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO_ROOT)}
    log = tmp_path / "killed.log"
    with log.open("wb") as stream:
        process = subprocess.Popen([sys.executable, "-m", "fetalhc.cli.main", *args, "--out",
                                    str(killed)], env=env, stdout=stream, stderr=stream)
    folder = killed / "integrated_gradients"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            count = _count(folder)
            # two maps of a batch on disk, the first with its overlay: a resume that
            # re-batched only the missing images would shift the batches by one or two
            if count > batch and count % batch == batch - 1:
                break
            assert process.poll() is None, f"finished before the kill: {log.read_text()}"
            time.sleep(0.01)
        else:
            pytest.fail(f"the run wrote no maps in time: {log.read_text()}")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    done = _count(folder)
    assert 0 < done < total and not (killed / "index.csv").exists()
    record = (killed / "provenance.json").read_bytes() \
        if (killed / "provenance.json").is_file() else None

    resumed = _ok(CliRunner().invoke(cli, [*args, "--out", str(killed)]))
    assert "skipped" in resumed.output
    clean = tmp_path / "clean"
    _ok(CliRunner().invoke(cli, [*args, "--out", str(clean)]))

    a, b = pd.read_csv(killed / "index.csv"), pd.read_csv(clean / "index.csv")
    assert a.columns.tolist() == b.columns.tolist() and len(a) == len(b)
    for column in a.columns:
        if pd.api.types.is_float_dtype(b[column]):
            np.testing.assert_allclose(a[column], b[column], rtol=1e-6, atol=0, err_msg=column)
        else:
            assert a[column].tolist() == b[column].tolist(), column
    names = sorted(p.name for p in (clean / "integrated_gradients").glob("*.npz"))
    assert sorted(p.name for p in folder.glob("*.npz")) == names
    for name in names:
        got, want = _stored(folder / name)["map"], _stored(clean / "integrated_gradients" / name)["map"]
        scale = float(np.abs(want).max()) or 1.0
        assert float(np.abs(got - want).max()) <= 1e-6 * scale, name
        assert (folder / name).with_suffix(".png").is_file()
    assert record is not None  # written before the first map, kept by the resume
    assert (killed / "provenance.json").read_bytes() == record


# ----------------------------------------------------------------------------- merge
def _tables(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.csv"))}


def _shards(model, data, root: Path, count: int = 2) -> list[Path]:
    folders = []
    for i in range(1, count + 1):
        folder = root / f"shard{i}"
        _ok(_explain("--model", model, "--data", data, "--split", "challenge", "--methods",
                     "gradient", "--out", folder, "--shard", f"{i}/{count}"))
        folders.append(folder)
    return folders


def test_merge_checks_provenance_and_its_output_folder(data, tmp_path):
    from fetalhc.cli.merge import merge_command

    model_path = tmp_path / "model.keras"
    _model(0).save(model_path)
    shutil.copyfile(model_path, tmp_path / "first.keras")  # its bytes, to put back later
    shard1, shard2 = _shards(model_path, data, tmp_path)
    whole = tmp_path / "whole"
    _ok(_explain("--model", model_path, "--data", data, "--split", "challenge", "--methods",
                 "gradient", "--out", whole))

    # the same model path, another model between the shards: refused, naming both folders
    _model(1).save(model_path)
    other = tmp_path / "other"
    _ok(_explain("--model", model_path, "--data", data, "--split", "challenge", "--methods",
                 "gradient", "--out", other, "--shard", "2/2"))
    result = CliRunner().invoke(cli, ["merge", str(shard1), str(other), "--out",
                                      str(tmp_path / "m")])
    _refused(result, "model", str(shard1), str(other))
    assert not (tmp_path / "m").exists()

    # a shard without provenance: refused
    bare = tmp_path / "bare2"
    shutil.copytree(shard2, bare)
    (bare / "provenance.json").unlink()
    with pytest.raises(ValueError, match="no provenance.json"):
        merge_command([shard1, bare], tmp_path / "m")

    # merged: the record of an unsharded run
    merged = tmp_path / "merged"
    merge_command([shard2, shard1], merged)
    record = json.loads((merged / "provenance.json").read_text())
    assert record["result"] == json.loads((whole / "provenance.json").read_text())["result"]
    assert record["result"]["shard"] is None
    # ... so explain (the first model file back in place) resumes into it, reusing all
    shutil.copyfile(tmp_path / "first.keras", model_path)
    again = _ok(_explain("--model", model_path, "--data", data, "--split", "challenge",
                         "--methods", "gradient", "--out", merged))
    assert "wrote 0, skipped 4" in again.output
    assert _tables(merged) == _tables(whole)

    # the output folder: a non-empty foreign folder is refused, --overwrite only deletes ours
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    _refused(CliRunner().invoke(cli, ["merge", str(shard1), str(shard2), "--out",
                                      str(foreign)]), "provenance.json", "--overwrite")
    _refused(CliRunner().invoke(cli, ["merge", str(shard1), str(shard2), "--out",
                                      str(foreign), "--overwrite"]), "refusing to delete")
    assert (foreign / "keep.txt").is_file()
    # another explain folder at --out: refused naming the field, replaced with --overwrite
    _refused(CliRunner().invoke(cli, ["merge", str(shard1), str(shard2), "--out",
                                      str(other)]), "model", "--overwrite")
    _ok(CliRunner().invoke(cli, ["merge", str(shard1), str(shard2), "--out", str(other),
                                 "--overwrite"]))
    assert json.loads((other / "provenance.json").read_text())["result"] == record["result"]


# ----------------------------------------------------------------------------- stack_maps
def test_stack_maps_carries_the_explain_provenance(bare_model, data, tmp_path):
    from fetalhc.report.explanations import stack_maps

    out = tmp_path / "explain"
    _ok(_explain("--model", bare_model, "--data", data, "--split", "challenge", "--methods",
                 "gradient,gradcam", "--out", out))
    names = [f"{i:03d}_HC.png" for i in range(4)]
    maps = tmp_path / "maps"
    stack_maps(out, maps, ["gradient"], names)
    stacked = np.load(maps / "gradient.npy")
    assert stacked.shape == (4, 32, 32) and stacked.dtype == np.float32
    np.testing.assert_array_equal(stacked[2], _stored(out / "gradient" / "002_HC.npz")["map"])
    assert json.loads((maps / "filenames.json").read_text()) == names
    assert json.loads((maps / "provenance.json").read_text()) == \
        json.loads((out / "provenance.json").read_text())
    with pytest.raises(ValueError, match="other images"):
        stack_maps(out, maps, ["gradient"], names[::-1])
    with pytest.raises(ValueError, match="no maps of lrp_z"):
        stack_maps(out, maps, ["lrp_z"])
    with pytest.raises(ValueError, match="no explain provenance.json"):
        stack_maps(tmp_path, tmp_path / "m2", ["gradient"])
    (out / "gradcam" / "001_HC.npz").unlink()
    with pytest.raises(FileNotFoundError, match="001_HC.npz is missing"):
        stack_maps(out, maps, ["gradcam"])

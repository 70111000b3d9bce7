"""``fetalhc evaluate`` never gives a silently wrong result (#17): the output folder's
``provenance.json`` decides whether a re-run resumes (same model contents, images, split,
options, pre-processing) or is refused naming the field (``--overwrite`` recomputes);
maps from ``--maps`` must be maps of this model, images, target and pre-processing; and an
evaluation killed mid-run and resumed writes the tables of an uninterrupted run."""

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

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZE = 32
LIMIT = 4
FAST = ("--metrics", "aopc", "--grid", 2, "--steps", 3, "--n-boot", 50, "--no-figures",
        "--no-progress")
TABLES = ("per_image.csv", "summary.csv", "summary_by_error.csv")  # + methods/<m>/*.csv


# ----------------------------------------------------------------------------- helpers
def any_size_model(seed: int):
    """A tiny CNN taking any input size (so --image-size can change), HC output in px."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 1))
    features = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    output = keras.layers.Dense(1, name="hc_px_input",
                                bias_initializer=keras.initializers.Constant(60.0))(pooled)
    return keras.Model(inputs, output, name=f"any_size_{seed}")


def save_model(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    any_size_model(seed).save(path)
    return path


@pytest.fixture(scope="module")
def data(phantom_dir_factory):
    return phantom_dir_factory(n=8, challenge=3)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("models") / "model.keras", seed=0)


def invoke(*args):
    return CliRunner().invoke(cli, ["evaluate", *map(str, args)], catch_exceptions=False)


def args(model, data, out, *extra, methods="gradient"):
    """A quick run: the first LIMIT images of the whole training part, 2 x 2 regions."""
    return ("--model", model, "--data", data, "--split", "all", "--limit", LIMIT,
            "--image-size", SIZE, "--methods", methods, "--out", out, *FAST, *extra)


def ok(result):
    assert result.exit_code == 0, result.output
    return result


def refused(result, *words):
    """Exit status 1 and one ``Error:`` line holding every one of ``words``."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its size and modification time."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def rows(data: Path, limit: int = LIMIT, start: int = 0) -> pd.DataFrame:
    """The index rows a quick run evaluates (--split all --limit LIMIT)."""
    from fetalhc.data import load_index

    index = load_index(data, "training", validate=False)
    return index.iloc[start:start + limit].reset_index(drop=True)


def write_maps(folder: Path, model, index, maps: dict[str, np.ndarray], *,
               target: str = "hc_mm", image_size: int = SIZE, split: str = "all") -> Path:
    """``<method>.npy`` with the ``provenance.json`` of an explain folder of ``model`` on
    ``index`` (what fetalhc.report.explanations.stack_maps copies beside the stacks)."""
    from fetalhc.report.explanations import explain_provenance
    from fetalhc.report.provenance import write_provenance

    folder.mkdir(parents=True, exist_ok=True)
    for method, array in maps.items():
        np.save(folder / f"{method}.npy", np.asarray(array, np.float32))
    write_provenance(folder, explain_provenance(
        None, index, image_size, list(maps), target=target, split=split, model_file=model))
    return folder


def assert_tables_equal(folder: Path, reference: Path, names=TABLES) -> None:
    """The tables of two evaluate folders (``names``, and every method's ``per_image.csv``
    and ``curves.csv``) are equal: text columns exactly, numbers within 1e-6 relative (NaN
    where the other has NaN)."""
    methods = sorted(p.name for p in (reference / "methods").iterdir())
    assert sorted(p.name for p in (folder / "methods").iterdir()) == methods
    names = [*names, *(f"methods/{m}/{t}" for m in methods for t in ("per_image.csv",
                                                                      "curves.csv"))]
    for name in names:
        got, want = pd.read_csv(folder / name), pd.read_csv(reference / name)
        assert list(got.columns) == list(want.columns), name
        assert len(got) == len(want), name
        for column in want.columns:
            if pd.api.types.is_numeric_dtype(want[column]):
                np.testing.assert_allclose(got[column].to_numpy(float),
                                           want[column].to_numpy(float), rtol=1e-6, atol=0,
                                           equal_nan=True, err_msg=f"{name}: {column}")
            else:
                assert got[column].tolist() == want[column].tolist(), (name, column)


# ----------------------------------------------------------------------------- the folder
def test_another_model_at_the_same_path_is_refused_and_overwrite_recomputes(data, tmp_path):
    model = save_model(tmp_path / "model.keras", seed=0)
    out = tmp_path / "evaluation"
    ok(invoke(*args(model, data, out)))
    first = pd.read_csv(out / "per_image.csv")

    save_model(model, seed=1)  # another model, saved at the same path
    before = snapshot(out)
    line = refused(invoke(*args(model, data, out)), "another model", "--overwrite")
    assert str(out) in line
    assert snapshot(out) == before  # refused before anything was written
    assert json.loads((out / "provenance.json").read_text())["kind"] == "evaluate"

    ok(invoke(*args(model, data, out, "--overwrite")))
    ok(invoke(*args(model, data, tmp_path / "fresh")))
    again, fresh = pd.read_csv(out / "per_image.csv"), pd.read_csv(tmp_path / "fresh" /
                                                                   "per_image.csv")
    np.testing.assert_array_equal(again["hc_pred_mm"], fresh["hc_pred_mm"])
    assert not np.allclose(again["hc_pred_mm"], first["hc_pred_mm"])
    assert_tables_equal(out, tmp_path / "fresh")


@pytest.fixture(scope="module")
def finished(data, model_file, tmp_path_factory):
    """A finished quick evaluation (copied by the tests that re-run into it)."""
    out = tmp_path_factory.mktemp("finished") / "evaluation"
    ok(invoke(*args(model_file, data, out)))
    return out


@pytest.mark.parametrize("change, field", [
    (("--target", "hc_px_input"), "settings.explain_target"),
    (("--split", "challenge"), "split"),
    (("--grid", 4), "settings.grid"),
    (("--image-size", 48), "preprocessing.image_size"),
    (("--limit", 3), "limit"),
    (("--metrics", "aopc,deletion"), "metrics"),
])
def test_a_changed_setting_is_refused_naming_the_field(data, model_file, finished, tmp_path,
                                                       change, field):
    out = tmp_path / "evaluation"
    shutil.copytree(finished, out)
    before = snapshot(out)
    line = refused(invoke(*args(model_file, data, out, *change)), f"another {field} (",
                   "--overwrite")
    assert snapshot(out) == before, line
    ok(invoke(*args(model_file, data, out, *change, "--overwrite")))
    record = json.loads((out / "provenance.json").read_text())
    assert record["result"]["split"] == ("challenge" if "challenge" in change else "all")


def test_changed_images_at_the_same_path_are_refused(model_file, tmp_path, phantom_dir_factory):
    data = tmp_path / "data"
    shutil.copytree(phantom_dir_factory(n=8, challenge=3), data)
    out = tmp_path / "evaluation"
    ok(invoke(*args(model_file, data, out)))
    first = sorted((data / "training_set").glob("*HC.png"))[0]
    second = sorted((data / "training_set").glob("*HC.png"))[1]
    shutil.copyfile(second, first)  # another image under the same file name
    refused(invoke(*args(model_file, data, out)), "another index (", "--overwrite")


def test_same_provenance_resumes_whatever_the_paths_and_adds_a_method(data, model_file,
                                                                      finished, tmp_path):
    out = tmp_path / "evaluation"
    shutil.copytree(finished, out)
    done = out / "methods" / "gradient" / "done.json"
    stamp = done.stat().st_mtime_ns
    tables = (out / "methods" / "gradient" / "per_image.csv").read_bytes()
    # the same model bytes and the same images, spelled through other paths
    model_copy = tmp_path / "elsewhere" / "copy.keras"
    model_copy.parent.mkdir()
    shutil.copyfile(model_file, model_copy)
    data_link = tmp_path / "data_link"
    data_link.symlink_to(data, target_is_directory=True)
    ok(invoke(*args(model_copy, data_link, out)))
    assert done.stat().st_mtime_ns == stamp  # reused, not recomputed

    ok(invoke(*args(model_copy, data_link, out, methods="gradient,input_x_gradient")))
    assert done.stat().st_mtime_ns == stamp
    assert (out / "methods" / "gradient" / "per_image.csv").read_bytes() == tables
    assert (out / "methods" / "input_x_gradient" / "done.json").is_file()
    both = pd.read_csv(out / "per_image.csv")
    assert list(both["method"].unique()) == ["gradient", "input_x_gradient"]
    assert len(both) == 2 * LIMIT
    # the folder's provenance does not hold the methods; each method folder holds its own
    record = json.loads((out / "provenance.json").read_text())
    assert "methods" not in record["result"]
    method = json.loads((out / "methods" / "input_x_gradient" / "provenance.json").read_text())
    assert method["result"]["method"] == "input_x_gradient"
    assert method["result"]["evaluation"] == record["result"]


def test_a_folder_without_provenance_is_refused_and_overwrite_only_deletes_ours(
        data, model_file, finished, tmp_path):
    out = tmp_path / "evaluation"
    shutil.copytree(finished, out)
    (out / "provenance.json").unlink()  # e.g. made by an older fetalhc
    refused(invoke(*args(model_file, data, out)), "no provenance.json", "--overwrite")
    ok(invoke(*args(model_file, data, out, "--overwrite")))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    refused(invoke(*args(model_file, data, foreign, "--overwrite")), "refusing to delete")
    assert (foreign / "notes.txt").read_text() == "mine"


def test_each_shard_records_its_shard_and_otherwise_the_same_provenance(data, model_file,
                                                                         tmp_path):
    results = []
    for shard in ("1/2", "2/2"):
        ok(invoke(*args(model_file, data, tmp_path / shard.replace("/", "of"), "--shard",
                        shard)))
        results.append(json.loads((tmp_path / shard.replace("/", "of") / "provenance.json")
                                  .read_text())["result"])
    assert [r["shard"] for r in results] == ["1/2", "2/2"]
    assert {**results[0], "shard": None} == {**results[1], "shard": None}


# ----------------------------------------------------------------------------- --maps
def test_maps_must_be_maps_of_this_evaluation(data, model_file, tmp_path):
    maps = {"gradient": np.random.default_rng(0).normal(size=(LIMIT, SIZE, SIZE))}
    other_model = save_model(tmp_path / "other.keras", seed=1)
    out = tmp_path / "evaluation"

    def run(maps_dir, *extra):
        return invoke(*args(model_file, data, out, "--maps", maps_dir, *extra))

    bare = tmp_path / "bare"
    bare.mkdir()
    np.save(bare / "gradient.npy", maps["gradient"].astype(np.float32))
    refused(run(bare), f"the maps in {bare} have no provenance.json", "stack_maps")
    wrong = {
        "model": write_maps(tmp_path / "m1", other_model, rows(data), maps),
        "target": write_maps(tmp_path / "m2", model_file, rows(data), maps,
                             target="hc_px_input"),
        "preprocessing.image_size": write_maps(tmp_path / "m3", model_file, rows(data), maps,
                                               image_size=48),
        "index": write_maps(tmp_path / "m4", model_file, rows(data, start=1), maps),
    }
    for field, maps_dir in wrong.items():
        line = refused(run(maps_dir), f"the maps in {maps_dir} were made with another "
                                      f"{field} (")
        assert not out.exists(), line  # refused before anything was created

    good = write_maps(tmp_path / "good", model_file, rows(data), maps)
    ok(run(good))
    method = json.loads((out / "methods" / "gradient" / "provenance.json").read_text())
    assert method["result"]["maps"]["sha256"]
    first = pd.read_csv(out / "per_image.csv")
    stamp = (out / "methods" / "gradient" / "done.json").stat().st_mtime_ns
    ok(run(good))
    assert (out / "methods" / "gradient" / "done.json").stat().st_mtime_ns == stamp

    # other maps of the same evaluation under the same name: the method is recomputed
    write_maps(good, model_file, rows(data), {"gradient": -maps["gradient"]})
    ok(run(good))
    again = pd.read_csv(out / "per_image.csv")
    assert not np.allclose(again["aopc_morf_shift_mm"], first["aopc_morf_shift_mm"])
    np.testing.assert_allclose(again["aopc_morf_shift_mm"], first["aopc_lerf_shift_mm"],
                               rtol=1e-5, atol=1e-6)  # negated maps: MoRF <-> LeRF

    # a shard takes its rows of the whole split's maps, or maps made for its own rows
    whole = invoke(*args(model_file, data, tmp_path / "shard2", "--maps", good,
                         "--shard", "2/2"))
    ok(whole)
    own = write_maps(tmp_path / "own", model_file, rows(data).iloc[[1, 3]],
                     {"gradient": -maps["gradient"][[1, 3]]})
    ok(invoke(*args(model_file, data, tmp_path / "shard2own", "--maps", own, "--shard",
                    "2/2")))
    assert_tables_equal(tmp_path / "shard2own", tmp_path / "shard2")
    refused(invoke(*args(model_file, data, tmp_path / "shard1", "--maps", own, "--shard",
                         "1/2")), "were made with another index (")


def test_stacked_explain_maps_evaluate_like_explain_in_the_run(data, tmp_path):
    """The whole chain: fetalhc explain → stack_maps → evaluate --maps gives the numbers
    of evaluating the method directly."""
    import keras

    from fetalhc.models import build_model
    from fetalhc.report.explanations import stack_maps

    keras.utils.set_random_seed(0)
    model = tmp_path / "fixed.keras"
    build_model("small_cnn", input_shape=(SIZE, SIZE, 1), hc_mean_px=60.0,
                hc_std_px=10.0).save(model)
    result = CliRunner().invoke(cli, ["explain", "--model", str(model), "--data", str(data),
                                      "--split", "challenge", "--methods", "gradient",
                                      "--out", str(tmp_path / "explained")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stack_maps(tmp_path / "explained", tmp_path / "maps", ["gradient"])
    common = ("--model", model, "--data", data, "--split", "challenge", "--methods",
              "gradient", *FAST)
    ok(invoke(*common, "--maps", tmp_path / "maps", "--out", tmp_path / "with_maps"))
    ok(invoke(*common, "--out", tmp_path / "direct"))
    assert_tables_equal(tmp_path / "with_maps", tmp_path / "direct")


# ----------------------------------------------------------------------------- resume
def test_a_method_gives_the_same_numbers_whichever_methods_ran_before(data, model_file,
                                                                      tmp_path):
    """Random orders and noise are seeded per method: input_x_gradient's numbers do not
    depend on whether gradient ran before it in the same process."""
    noisy = ("--perturbation", "noise", "--metrics", "aopc,deletion", "--baseline", "noise",
             "--deletion-steps", 4)
    ok(invoke(*args(model_file, data, tmp_path / "alone", *noisy,
                    methods="input_x_gradient")))
    ok(invoke(*args(model_file, data, tmp_path / "after", *noisy,
                    methods="gradient,input_x_gradient")))
    for name in ("per_image.csv", "curves.csv"):
        alone = pd.read_csv(tmp_path / "alone" / "methods" / "input_x_gradient" / name)
        after = pd.read_csv(tmp_path / "after" / "methods" / "input_x_gradient" / name)
        pd.testing.assert_frame_equal(alone, after)


def _start(*arguments) -> subprocess.Popen:
    code = "import sys; from fetalhc.cli.main import main; sys.exit(main())"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen([sys.executable, "-c", code, "evaluate", *map(str, arguments)],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def _finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output.decode(errors="replace")[-3000:]


def test_an_evaluation_killed_mid_run_resumes_to_the_tables_of_a_clean_run(data, model_file,
                                                                          tmp_path):
    methods = "gradient,smoothgrad,integrated_gradients"
    heavy = ("--limit", 8, "--metrics", "aopc,deletion,insertion", "--grid", 4, "--steps",
             15, "--deletion-steps", 16, "--baseline", "noise")
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    ok(invoke(*args(model_file, data, clean, *heavy, methods=methods)))  # in this process

    process = _start(*args(model_file, data, killed, *heavy, methods=methods))
    first_done = killed / "methods" / "gradient" / "done.json"
    deadline = time.monotonic() + 600
    try:
        while not first_done.is_file():
            assert process.poll() is None, process.communicate()[0].decode(errors="replace")
            assert time.monotonic() < deadline, "the first method never finished"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "summary.csv").exists(), "killed too late: the run had finished"
    finished_later = [m for m in methods.split(",")[1:]
                      if (killed / "methods" / m / "done.json").is_file()]
    assert len(finished_later) < 2, "killed too late: every method had finished"

    stamp = first_done.stat().st_mtime_ns
    _finish(_start(*args(model_file, data, killed, *heavy, methods=methods)))
    assert first_done.stat().st_mtime_ns == stamp  # the finished method was reused
    assert_tables_equal(killed, clean, TABLES + tuple(
        f"methods/{m}/perturbation_steps.csv" for m in methods.split(",")))

"""``fetalhc evaluate --maps`` reads a ``fetalhc explain`` output folder itself (#22).

The maps of the folder's methods are read from its ``.npz`` files, the other methods are
computed; the numbers equal those of an evaluation that computes every map itself. The
folder must be of this model, target, split and image size, and its images the first
images of the split, at least as many as are evaluated; an unfinished or sharded folder
is refused; a re-run after the folder's maps changed recomputes the method.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fetalhc.cli.main import cli

SIZE = 32
EXPLAINED = 6  # images in the shared explain folder (two batches of 4)
LIMIT = 4  # images an evaluation takes: the first LIMIT of the explain folder's
FAST = ("--metrics", "aopc", "--grid", 2, "--steps", 3, "--n-boot", 50, "--no-figures",
        "--no-progress")


def save_model(path: Path, seed: int) -> Path:
    """An untrained small CNN of 32 px inputs, saved as a bare ``.keras`` file."""
    import keras

    from fetalhc.models import build_model

    keras.utils.set_random_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    build_model("small_cnn", input_shape=(SIZE, SIZE, 1), hc_mean_px=60.0,
                hc_std_px=10.0).save(path)
    return path


@pytest.fixture(scope="module")
def data(phantom_dir_factory):
    return phantom_dir_factory(n=8, challenge=3)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("models") / "model.keras", seed=0)


def explain(model, data, out, *extra, methods="gradient"):
    result = CliRunner().invoke(cli, ["explain", "--model", str(model), "--data", str(data),
                                      "--split", "all", "--methods", methods, "--out",
                                      str(out), "--no-progress", *map(str, extra)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def explained(model_file, data, tmp_path_factory):
    """An explain folder of the first EXPLAINED images of --split all (gradient, gradcam)."""
    return explain(model_file, data, tmp_path_factory.mktemp("explained") / "explain",
                   "--limit", EXPLAINED, "--batch-size", 4, methods="gradient,gradcam")


def evaluate(model, data, out, *extra, methods="gradient", limit=LIMIT):
    limited = () if limit is None else ("--limit", limit)
    return CliRunner().invoke(cli, ["evaluate", *map(str, (
        "--model", model, "--data", data, "--split", "all", *limited, "--methods", methods,
        "--out", out, *FAST, *extra))], catch_exceptions=False)


def ok(result):
    assert result.exit_code == 0, result.output
    return result


def refused(result, *words):
    """Exit status 1 and one ``Error:`` line holding every one of ``words``."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def tables(folder: Path) -> dict[str, bytes]:
    """The result tables of an evaluate folder, as bytes."""
    return {name: data for name, data in files(folder).items()
            if name.endswith(".csv") and not name.endswith("settings.csv")}


def first_names(data: Path, count: int) -> list[str]:
    from fetalhc.data import load_index

    return list(load_index(data, "training", validate=False)["filename"][:count])


# ----------------------------------------------------------------------------- same numbers
def test_an_explain_folder_gives_the_numbers_of_maps_computed_in_the_run(
        model_file, data, explained, tmp_path):
    """gradient comes from the folder (its first LIMIT of EXPLAINED images), input_x_gradient
    (not in it) is computed, gradcam (not asked for) is left alone; every table equals, to
    the byte, that of the evaluation computing both maps itself; the folder is not
    touched."""
    before = files(explained)
    both = "gradient,input_x_gradient"
    ok(evaluate(model_file, data, tmp_path / "with_maps", "--maps", explained, methods=both))
    ok(evaluate(model_file, data, tmp_path / "direct", methods=both))
    assert tables(tmp_path / "with_maps") == tables(tmp_path / "direct")
    assert files(explained) == before

    record = json.loads((explained / "provenance.json").read_text())["result"]
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    gradient = json.loads((tmp_path / "with_maps" / "methods" / "gradient" /
                           "provenance.json").read_text())["result"]["maps"]
    assert gradient["explain_folder"] == {"provenance": f"sha256:{digest}", "images": LIMIT}
    assert gradient["sha256"].startswith("sha256:") and gradient["options"] == {}
    computed = json.loads((tmp_path / "with_maps" / "methods" / "input_x_gradient" /
                           "provenance.json").read_text())["result"]["maps"]
    assert computed is None

    # a shard takes its rows of the folder's first LIMIT maps
    ok(evaluate(model_file, data, tmp_path / "shard", "--maps", explained, "--shard", "2/2"))
    ok(evaluate(model_file, data, tmp_path / "shard_direct", "--shard", "2/2"))
    assert tables(tmp_path / "shard") == tables(tmp_path / "shard_direct")

    # all EXPLAINED images: the folder's every map
    ok(evaluate(model_file, data, tmp_path / "all", "--maps", explained, limit=EXPLAINED))
    ok(evaluate(model_file, data, tmp_path / "all_direct", limit=EXPLAINED))
    assert tables(tmp_path / "all") == tables(tmp_path / "all_direct")


def test_stacked_maps_still_work_beside_the_explain_folder(model_file, data, explained,
                                                          tmp_path):
    from fetalhc.report.explanations import stack_maps

    stack_maps(explained, tmp_path / "stacked", ["gradient"])
    ok(evaluate(model_file, data, tmp_path / "stacked_eval", "--maps", tmp_path / "stacked",
                limit=EXPLAINED))
    ok(evaluate(model_file, data, tmp_path / "folder_eval", "--maps", explained,
                limit=EXPLAINED))
    assert tables(tmp_path / "stacked_eval") == tables(tmp_path / "folder_eval")
    # the stacked form takes exactly the images it was made of
    refused(evaluate(model_file, data, tmp_path / "fewer", "--maps", tmp_path / "stacked"),
            "were made with another index (")


# ----------------------------------------------------------------------------- refusals
def test_an_explain_folder_of_something_else_is_refused_naming_the_field(
        model_file, data, tmp_path):
    other_data = tmp_path / "other_data"
    shutil.copytree(data, other_data)
    names = first_names(data, 2)
    shutil.copyfile(other_data / "training_set" / names[1], other_data / "training_set" /
                    names[0])  # another image under the same file name
    cases = {
        "target ('hc_px_input' there, 'hc_mm' now)":
            explain(model_file, data, tmp_path / "target", "--limit", LIMIT, "--target",
                    "hc_px_input"),
        "model (": explain(save_model(tmp_path / "other.keras", seed=1), data,
                           tmp_path / "model", "--limit", LIMIT),
        "split ('challenge' there, 'all' now)":
            explain(model_file, data, tmp_path / "split", "--split", "challenge"),
        "index (the same file names, but an image file":
            explain(model_file, other_data, tmp_path / "index", "--limit", LIMIT),
    }
    out = tmp_path / "evaluation"
    for words, folder in cases.items():
        refused(evaluate(model_file, data, out, "--maps", folder),
                f"the maps in {folder} were made with another {words}")
        assert not out.exists(), words


def test_an_explain_folder_with_fewer_images_is_refused_naming_the_first_missing(
        model_file, data, explained, tmp_path):
    out = tmp_path / "evaluation"
    missing = first_names(data, EXPLAINED + 1)[-1]
    refused(evaluate(model_file, data, out, "--maps", explained, limit=None),
            f"has maps of the first {EXPLAINED} images of split 'all' only, not of "
            f"training_set/{missing} (image {EXPLAINED + 1} of the 8 evaluated)",
            f"--limit {EXPLAINED}")
    assert not out.exists()


def test_an_unfinished_or_sharded_explain_folder_is_refused(model_file, data, explained,
                                                           tmp_path):
    out = tmp_path / "evaluation"
    names = first_names(data, EXPLAINED)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(explained, unfinished)
    (unfinished / "gradient" / f"{Path(names[2]).stem}.npz").unlink()  # its batch unwritten
    refused(evaluate(model_file, data, out, "--maps", unfinished),
            f"{Path(names[2]).stem}.npz is missing", "is unfinished",
            "re-run the same command")
    assert not out.exists()

    started = tmp_path / "started"  # killed before its first map: its provenance only
    started.mkdir()
    shutil.copyfile(explained / "provenance.json", started / "provenance.json")
    refused(evaluate(model_file, data, out, "--maps", started), "is unfinished")
    assert not out.exists()

    # maps the evaluation does not read (beyond --limit) need not be there
    tail = tmp_path / "tail"
    shutil.copytree(explained, tail)
    (tail / "gradient" / f"{Path(names[-1]).stem}.npz").unlink()
    ok(evaluate(model_file, data, tmp_path / "first", "--maps", tail))

    shard = explain(model_file, data, tmp_path / "shard", "--limit", LIMIT, "--shard", "1/2")
    refused(evaluate(model_file, data, out, "--maps", shard), "holds shard 1/2",
            "fetalhc merge")
    assert not out.exists()


# ----------------------------------------------------------------------------- re-runs
def test_a_re_run_reuses_the_method_until_the_folder_maps_change(model_file, data, explained,
                                                                tmp_path):
    from fetalhc.files import write_npz

    folder = tmp_path / "explain"
    shutil.copytree(explained, folder)
    out = tmp_path / "evaluation"
    ok(evaluate(model_file, data, out, "--maps", folder))
    done = out / "methods" / "gradient" / "done.json"
    stamp = done.stat().st_mtime_ns
    first = (out / "per_image.csv").read_bytes()
    ok(evaluate(model_file, data, out, "--maps", folder))
    assert done.stat().st_mtime_ns == stamp  # the same folder: reused

    names = first_names(data, EXPLAINED)
    beyond = folder / "gradient" / f"{Path(names[-1]).stem}.npz"  # not evaluated
    with np.load(beyond) as stored:
        write_npz(beyond, **{**stored, "map": stored["map"] + 1})
    ok(evaluate(model_file, data, out, "--maps", folder))
    assert done.stat().st_mtime_ns == stamp

    read = folder / "gradient" / f"{Path(names[0]).stem}.npz"  # evaluated: recomputed
    with np.load(read) as stored:
        write_npz(read, **{**stored, "map": -stored["map"]})
    ok(evaluate(model_file, data, out, "--maps", folder))
    assert done.stat().st_mtime_ns != stamp
    assert (out / "per_image.csv").read_bytes() != first

    explain(model_file, data, folder, "--limit", EXPLAINED, "--batch-size", 4, "--target",
            "hc_px_input", "--overwrite", methods="gradient,gradcam")
    before = files(out)
    refused(evaluate(model_file, data, out, "--maps", folder), "another target (")
    assert files(out) == before

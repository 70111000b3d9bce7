"""#18 for ``evaluate``: every option is checked before work starts and a refused request
leaves nothing at ``--out``; choices, ranges and help text in ``--help`` come from
``fetalhc.evaluate.settings``; ``--help`` and the settings import no TensorFlow; the progress
bar counts images x methods and is drawn only on a terminal unless asked for.

The run folder here is what ``train`` writes, with an untrained model (no fit needed to check
options); the quick evaluations use 2 x 2 regions on the first images of the split."""

from __future__ import annotations

import shutil
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from fetalhc.cli import evaluate as evaluate_cli
from fetalhc.cli.main import cli

SIZE = 32
LIMIT = 4
CONFIG = {
    "data": {"image_size": SIZE, "val_fraction": 0.2, "test_fraction": 0.3, "cache": False},
    "model": {"backbone": "small_cnn", "dropout": 0.0},
    "train": {"epochs": 1, "batch_size": 8, "tensorboard": False},
}
QUICK = ("--split", "all", "--limit", LIMIT, "--metrics", "aopc", "--grid", 2, "--steps", 3,
         "--n-boot", 20, "--no-figures", "--no-progress")


@pytest.fixture(scope="module")
def data(phantom_dir_factory):
    return phantom_dir_factory(n=8, challenge=3)


@pytest.fixture(scope="module")
def run_dir(data, tmp_path_factory):
    """A run folder as ``train`` lays it out (config.toml with its split, model.keras),
    holding an untrained small CNN."""
    import keras

    from fetalhc.models import build_model
    from fetalhc.training import resolve_config
    from fetalhc.training.run_folder import plan_run, start_run

    out = tmp_path_factory.mktemp("options_evaluate") / "run"
    config, _ = plan_run(resolve_config(CONFIG), data, out, False, False)
    start_run(config, out, False, False)
    keras.utils.set_random_seed(0)
    build_model("small_cnn", input_shape=(SIZE, SIZE, 1), hc_mean_px=config["run"]["hc_mean_px"],
                hc_std_px=config["run"]["hc_std_px"]).save(out / "model.keras")
    return out


def invoke(*args):
    return CliRunner().invoke(cli, ["evaluate", *map(str, args)])


def request(run_dir, data, out, *extra):
    """A quick ``evaluate`` of gradient maps; ``extra`` options come last, so they win."""
    return invoke("--model", run_dir, "--data", data, "--methods", "gradient", "--out", out,
                  *QUICK, *extra)


def one_line_error(result, *messages):
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for message in messages:
        assert message in lines[0], lines[0]
    assert "KeyError" not in result.output and "Traceback" not in result.output
    return lines[0]


def write_maps(folder: Path, model_file: Path, index, maps: dict[str, np.ndarray]) -> Path:
    """``<method>.npy`` with the provenance.json of an explain folder of ``model_file`` on
    ``index`` (what stack_maps copies beside the stacks)."""
    from fetalhc.report.explanations import explain_provenance
    from fetalhc.report.provenance import write_provenance

    folder.mkdir(parents=True, exist_ok=True)
    for method, array in maps.items():
        np.save(folder / f"{method}.npy", array)
    write_provenance(folder, explain_provenance(None, index, SIZE, list(maps), target="hc_mm",
                                                split="all", model_file=model_file))
    return folder


def first_rows(data, limit=LIMIT):
    from fetalhc.data import load_index

    return load_index(data, "training", validate=False).head(limit).reset_index(drop=True)


# --------------------------------------------------------------------------- usage errors
@pytest.mark.parametrize("args, option", [
    (("--grid", 0), "--grid"),
    (("--steps", 0), "--steps"),
    (("--regions-per-step", 0), "--regions-per-step"),
    (("--deletion-steps", 0), "--deletion-steps"),
    (("--n-boot", 0), "--n-boot"),
    (("--batch-size", 0), "--batch-size"),
    (("--batch-size", -3), "--batch-size"),
    (("--randomisation-images", 0), "--randomisation-images"),
    (("--limit", 0), "--limit"),
    (("--image-size", 0), "--image-size"),
    (("--seed", -1), "--seed"),
    (("--noise-sd", -0.1), "--noise-sd"),
    (("--blur-sigma", 0), "--blur-sigma"),
    (("--band-mm", 0), "--band-mm"),
    (("--top-percent", 101), "--top-percent"),
    (("--similarity-threshold", 2), "--similarity-threshold"),
    (("--perturbation", "salt"), "--perturbation"),
    (("--baseline", "salt"), "--baseline"),
    (("--aggregation", "max"), "--aggregation"),
    (("--deletion-unit", "rows"), "--deletion-unit"),
    (("--relevance", "negative"), "--relevance"),
    (("--similarity", "pearson"), "--similarity"),
    (("--target", "hc"), "--target"),
    (("--precision", "float8"), "--precision"),
    (("--protocol", "zhang"), "--protocol"),
    (("--split", "bogus"), "--split"),
    (("--metrics", "aopc,faithfulness"), "--metrics"),
    (("--metrics", ","), "--metrics"),
    (("--error-quantiles", "1.5"), "--error-quantiles"),
    (("--error-quantiles", "0"), "--error-quantiles"),
    (("--error-threshold-mm", "-2"), "--error-threshold-mm"),
    (("--error-threshold-mm", "two"), "--error-threshold-mm"),
    (("--maps", "no/such/maps"), "--maps"),
])
def test_usage_errors_create_nothing(run_dir, data, tmp_path, args, option):
    out = tmp_path / "evaluation"
    result = request(run_dir, data, out, *args)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output, result.output
    assert not out.exists()


@pytest.mark.parametrize("option", ["--model", "--data"])
def test_missing_model_or_data_are_usage_errors(run_dir, data, tmp_path, option):
    out = tmp_path / "evaluation"
    given = {"--model": run_dir, "--data": data, option: tmp_path / "absent"}
    result = invoke("--model", given["--model"], "--data", given["--data"], "--out", out)
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in result.output
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (("--methods", "magic"), "unknown method(s) magic; available: "),
    (("--methods", ","), "no method given"),
    (("--shard", "3/2"), "shard index must lie in 1..2"),
    (("--shard", "0/2"), "shards are 1-based"),
    (("--shard", "x"), "--shard expects i/n"),
    (("--shard", "5/5"), "shard 5/5 is empty: the split has only 4 image(s)"),
    (("--shard", "1/2", "--metrics", "randomisation"), "cannot be sharded"),
    (("--error-threshold-mm", "2", "--error-quantiles", "0.5"), "not both"),
    (("--grid", 64), "a grid of 64 regions per side needs at least 64 px"),
    (("--grid", 5), "a grid of 5 regions does not divide the image height 32 px"),
    (("--grid", 4, "--steps", 17), "the 4 x 4 grid has only 16"),
    (("--deletion-steps", 2000, "--metrics", "deletion"),
     "deletion steps must lie between 1 and the number of pixels (1024)"),
    (("--protocol", "paper"), "the paper protocol uses 128 x 128 inputs"),
    (("--image-size", 48), "takes 32x32 px inputs, got image size 48"),
    (("--split", "test", "--limit", 2, "--shard", "3/3"), "shard 3/3 is empty"),
])
def test_request_errors_are_one_line_and_create_nothing(run_dir, data, tmp_path, args,
                                                        message):
    out = tmp_path / "evaluation"
    one_line_error(request(run_dir, data, out, *args), message)
    assert not out.exists()


def test_a_bare_model_file_without_its_run_only_evaluates_all_or_challenge(run_dir, data,
                                                                            tmp_path):
    bare = tmp_path / "bare" / "model.keras"
    bare.parent.mkdir()
    shutil.copyfile(run_dir / "model.keras", bare)
    out = tmp_path / "evaluation"
    one_line_error(request(bare, data, out, "--split", "test"), "has no run folder")
    assert not out.exists()
    empty_run = tmp_path / "empty_run"
    shutil.copytree(run_dir, empty_run)
    (empty_run / "model.keras").unlink()
    one_line_error(request(empty_run, data, out), "the run folder has no model.keras")
    assert not out.exists()


# --------------------------------------------------------------------------- --maps
def test_maps_of_the_wrong_count_shape_or_values_are_refused_before_any_output(
        run_dir, data, tmp_path):
    model_file = run_dir / "model.keras"
    out = tmp_path / "evaluation"
    cases = {
        "fewer": (np.zeros((LIMIT - 1, SIZE, SIZE), np.float32),
                  f"maps have shape ({LIMIT - 1}, 32, 32) but the images need ({LIMIT}, 32, "
                  f"32) ({LIMIT} images)"),
        "smaller": (np.zeros((LIMIT, 16, 16), np.float32), "maps have shape (4, 16, 16)"),
        "three_channels": (np.zeros((LIMIT, SIZE, SIZE, 3), np.float32), "(4, 32, 32, 3)"),
        "nan": (np.where(np.eye(SIZE, dtype=bool), np.nan, 1.0)[None].repeat(LIMIT, 0)
                .astype(np.float32), "the map of image 0 contains NaN or infinite values"),
        "text": (np.full((LIMIT, SIZE, SIZE), "a"), "maps must be real numbers"),
    }
    for name, (maps, message) in cases.items():
        maps_dir = write_maps(tmp_path / name, model_file, first_rows(data),
                              {"gradient": maps})
        one_line_error(request(run_dir, data, out, "--maps", maps_dir), message)
        assert not out.exists(), name


def test_maps_checks_also_guard_a_later_method(run_dir, data, tmp_path):
    """The maps of every method are checked before the first method runs."""
    model_file = run_dir / "model.keras"
    maps_dir = write_maps(tmp_path / "maps", model_file, first_rows(data), {
        "gradient": np.ones((LIMIT, SIZE, SIZE), np.float32),
        "input_x_gradient": np.full((LIMIT, SIZE, SIZE), np.inf, np.float32)})
    out = tmp_path / "evaluation"
    one_line_error(invoke("--model", run_dir, "--data", data, "--methods",
                          "gradient,input_x_gradient", "--maps", maps_dir, "--out", out,
                          *QUICK), "input_x_gradient.npy")
    assert not out.exists()


# --------------------------------------------------------------------------- overwrite
def test_overwrite_keeps_the_old_folder_when_the_model_is_refused(run_dir, data, tmp_path):
    out = tmp_path / "evaluation"
    done = request(run_dir, data, out)
    assert done.exit_code == 0, done.output
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    one_line_error(request(run_dir, data, out, "--image-size", 48, "--overwrite"),
                   "takes 32x32 px inputs")
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


# --------------------------------------------------------------------------- progress
class RecordingBar:
    """Stands in for tqdm: records what the evaluation counts."""

    made: list[RecordingBar] = []

    def __init__(self, iterable=None, total=None, desc=None, unit="it", disable=False,
                 **_):
        self.total, self.desc, self.unit, self.disable = total, desc, unit, disable
        self.n, self.updates = 0, []
        RecordingBar.made.append(self)

    def update(self, count=1):
        if not self.disable:
            self.n += count
            self.updates.append(count)

    def set_postfix_str(self, text):
        pass

    def close(self):
        pass


def test_progress_counts_images_times_methods_per_batch(run_dir, data, tmp_path, monkeypatch):
    monkeypatch.setattr("tqdm.auto.tqdm", RecordingBar)
    RecordingBar.made = []
    result = invoke("--model", run_dir, "--data", data, "--methods",
                    "gradient,input_x_gradient", "--out", tmp_path / "shown", "--split", "all",
                    "--limit", LIMIT, "--metrics", "aopc,deletion", "--grid", 2, "--steps", 3,
                    "--deletion-steps", 3, "--batch-size", 4, "--n-boot", 20, "--no-figures",
                    "--progress")
    assert result.exit_code == 0, result.output
    [bar] = [bar for bar in RecordingBar.made if bar.desc == "evaluate"]
    assert (bar.unit, bar.total, bar.n, bar.disable) == ("image", 2 * LIMIT, 2 * LIMIT, False)
    assert all(isinstance(k, int) and k > 0 for k in bar.updates), bar.updates
    assert len(bar.updates) >= 2 * LIMIT  # per batch of images, not per method

    # a resumed method counts whole; without --progress no bar is drawn off a terminal
    RecordingBar.made = []
    again = invoke("--model", run_dir, "--data", data, "--methods",
                   "gradient,input_x_gradient", "--out", tmp_path / "shown", "--split", "all",
                   "--limit", LIMIT, "--metrics", "aopc,deletion", "--grid", 2, "--steps", 3,
                   "--deletion-steps", 3, "--batch-size", 4, "--n-boot", 20, "--no-figures")
    assert again.exit_code == 0, again.output
    [bar] = [bar for bar in RecordingBar.made if bar.desc == "evaluate"]
    assert bar.disable and bar.n == 0


def test_evaluate_maps_reports_every_image_once():
    """The evaluators' progress (images per curve pass) becomes images of the method."""
    from fetalhc.evaluate.suite import _ImageShares

    seen = []
    shares = _ImageShares(seen.append, 5, 15)  # 5 images, 3 curve passes each
    for count in (2, 3, 1, 4, 5):
        shares(count)
    shares.finish()
    assert sum(seen) == 5 and all(k > 0 for k in seen) and len(seen) >= 3
    nothing = []
    only_localisation = _ImageShares(nothing.append, 5, 0)
    only_localisation.finish()
    assert nothing == [5]


# --------------------------------------------------------------------------- the library
def test_library_callers_get_the_same_checks_before_any_output(run_dir, data, tmp_path):
    from fetalhc.evaluate import EvaluationSettings
    from fetalhc.report.evaluation import check_evaluation_request, write_evaluation

    with pytest.raises(ValueError, match=r"unknown option\(s\) bogus for method 'gradient'"):
        check_evaluation_request(["gradient"], "aopc",
                                 EvaluationSettings(explain_options={"bogus": 1}))
    with pytest.raises(ValueError, match="n_boot must be an integer >= 1; got 0"):
        check_evaluation_request(["gradient"], "aopc", EvaluationSettings(n_boot=0))
    with pytest.raises(ValueError, match="limit must be an integer >= 1; got 0"):
        check_evaluation_request(["gradient"], "aopc", EvaluationSettings(), limit=0)
    with pytest.raises(ValueError, match="error quantiles must each lie strictly between 0 and 1"):
        check_evaluation_request(["gradient"], "aopc", EvaluationSettings(),
                                 error_quantiles=[1.0])
    out = tmp_path / "evaluation"
    for settings in (EvaluationSettings(grid=3), EvaluationSettings(seed=-1),
                     EvaluationSettings(orders=("morf", "sideways"))):
        with pytest.raises(ValueError):
            write_evaluation(run_dir / "model.keras", first_rows(data), ["gradient"], "aopc",
                             settings, out, image_size=SIZE, split="all", source={})
        assert not out.exists()


def test_methods_are_checked_against_the_model_before_any_output(run_dir, data, tmp_path):
    """A method option that only the model can refuse (Grad-CAM's layer) stops the
    evaluation before its folder exists, naming the option and the layers to choose from."""
    from fetalhc.evaluate import EvaluationSettings
    from fetalhc.report.evaluation import write_evaluation

    out = tmp_path / "evaluation"
    settings = EvaluationSettings(explain_options={"layer_name": "nope"})
    with pytest.raises(ValueError, match="gradcam: layer_name 'nope' does not exist") as error:
        write_evaluation(run_dir / "model.keras", first_rows(data), ["gradcam"], "aopc",
                         settings, out, image_size=SIZE, split="all", source={})
    assert "choose one of" in str(error.value)
    assert not out.exists()


def test_one_place_for_each_choice():
    """The evaluators use the lists of fetalhc.evaluate.settings; the explanation targets
    there are the explain registry's."""
    import fetalhc.explain as fe
    from fetalhc.evaluate import deletion, forward, localisation, randomisation, regions, settings

    assert tuple(fe.TARGETS) == settings.EXPLAIN_TARGETS
    assert regions.ORDERS is settings.ORDERS
    assert regions.PERTURBATIONS is settings.PERTURBATIONS
    assert deletion.DELETION_UNITS is settings.DELETION_UNITS
    assert localisation.RELEVANCE_MODES is settings.RELEVANCE_MODES
    assert randomisation.SIMILARITIES is settings.SIMILARITIES
    assert forward.PRECISIONS is settings.PRECISIONS


def test_every_option_of_evaluate_train_and_data_has_help():
    from fetalhc.cli import data as data_cli
    from fetalhc.cli import train as train_cli

    commands = [evaluate_cli.command, train_cli.command, *data_cli.command.commands.values()]
    for command in commands:
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{command.name} {param.opts} has no help text"

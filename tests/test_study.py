"""``fetalhc study`` on two tiny phantom runs: the page with its tables and figures, the
page rewritten from the stored files alone, a resume after an interrupt equal to an
uninterrupted study, a changed option or model refused (recomputed with --overwrite), one-line
input errors, and the seed paper's table from package data."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from fetalhc.cli.main import cli

SIZE = 32
METHODS = "gradient,input_x_gradient,guided_backprop"
FAST = ("--images", "2", "--methods", METHODS, "--randomisation-images", "1", "--n-boot",
        "200", "--no-progress")
REPO_ROOT = Path(__file__).resolve().parents[1]
FIELD_NOTES = REPO_ROOT.parent / "shared" / "docs" / "field-notes.md"


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from fetalhc.data import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("data") / "phantoms", n=14, seed=0,
                                 width=96, height=72)


@pytest.fixture(scope="module")
def runs(phantoms, tmp_path_factory):
    """Two tiny runs (one epoch, 32 px): MAE and MSE loss."""
    from fetalhc.training import train

    folder = tmp_path_factory.mktemp("runs")
    for name, loss in (("tiny-mae", "mae"), ("tiny-mse", "mse")):
        train({"data": {"image_size": SIZE, "val_fraction": 0.2, "test_fraction": 0.3,
                        "cache": False},
               "model": {"backbone": "small_cnn", "dropout": 0.0, "filters": [4, 8]},
               "train": {"epochs": 1, "batch_size": 8, "tensorboard": False, "loss": loss}},
              phantoms, folder / name)
    return [folder / "tiny-mae", folder / "tiny-mse"]


def study(runs, phantoms, out, *extra, catch=False):
    return CliRunner().invoke(
        cli, ["study", "--runs", ",".join(map(str, runs)), "--data", str(phantoms),
              "--out", str(out), *FAST, *map(str, extra)], catch_exceptions=catch)


@pytest.fixture(scope="module")
def baseline(runs, phantoms, tmp_path_factory):
    """An uninterrupted study of both runs."""
    out = tmp_path_factory.mktemp("study") / "baseline"
    result = study(runs, phantoms, out)
    assert result.exit_code == 0, result.output
    return out


def test_paper_table_is_package_data():
    from fetalhc.report.study import paper_reference

    paper = paper_reference()
    assert "iMIMIC" in paper["source"] and paper["units"] == "original px"
    vgg, resnet = paper["models"]["VGG16"]["aopc"], paper["models"]["ResNet50"]["aopc"]
    assert set(vgg) == set(resnet) and len(vgg) == 8
    if FIELD_NOTES.is_file():  # the values as the field notes transcribe them
        text = FIELD_NOTES.read_text()
        short = {"G": "gradient", "SG": "smoothgrad", "DCN": "deconvnet", "DT": "deep_taylor",
                 "GB": "guided_backprop", "IxG": "input_x_gradient",
                 "IG": "integrated_gradients", "LRP": "lrp_z"}
        line = " ".join(text[text.index("Their AOPC (pixels)"):].split("\n\n")[0].split())
        for model, values in (("VGG16", vgg), ("ResNet50", resnet)):
            part = line[line.index(model):].split(";")[0]
            found = {short[k]: float(v) for k, v in re.findall(r"(\w+) (-\d+\.\d+)", part)}
            assert found == values
    config = (REPO_ROOT / "setup.cfg").read_text()  # shipped in the wheel
    assert re.search(r"\[options.package_data\][^[]*fetalhc.report = data/\*\.json", config)


def test_study_writes_page_tables_and_figures(baseline):
    page = (baseline / "study.md").read_text()
    info = json.loads((baseline / "study.json").read_text())
    assert info["models"] == ["tiny-mae", "tiny-mse"]
    assert info["methods"] == METHODS.split(",") and info["protocols"] == ["paper", "rich"]
    summary = pd.read_csv(baseline / "tables" / "summary.csv")
    assert set(summary["protocol"]) == {"paper", "rich"}
    assert set(summary["model"]) == {"tiny-mae", "tiny-mse"}
    aopc = summary[(summary["metric"] == "aopc_morf_abs_error_px_original")
                   & (summary["protocol"] == "paper")]
    assert len(aopc) == 2 * 3 and np.isfinite(aopc["mean (units)"]).all()
    assert (aopc["images"] == 2).all()
    ranks = pd.read_csv(baseline / "tables" / "paper_ranks.csv")
    assert len(ranks) == 2 * 2 * 3  # our models x the paper's x the shared methods
    # the per-image values the claims rest on, gzip-compressed and byte-stable
    compressed = baseline / "tables" / "per_image.csv.gz"
    per_image = pd.read_csv(compressed)
    assert len(per_image) == 2 * 2 * 3 * 2  # models x protocols x methods x images
    assert compressed.read_bytes()[4:8] == b"\0\0\0\0"  # no time stamp in the gzip header
    for _, group in ranks.groupby(["model", "paper model"]):
        assert sorted(group["our rank"]) == sorted(group["paper rank"]) == [1.0, 2.0, 3.0]
    correlation = pd.read_csv(baseline / "tables" / "paper_correlation.csv")
    assert correlation["Spearman rho (1)"].between(-1, 1).all()
    randomisation = pd.read_csv(baseline / "tables" / "randomisation.csv")
    assert len(randomisation) == 2 * 3
    assert set(randomisation["method"]) == set(METHODS.split(","))
    for path in info["figures"].values():
        assert (baseline / path).is_file() and f"]({path})" in page
    for name in ("tiny-mae", "tiny-mse", "gradient", "guided_backprop", "−9.19"):
        assert name in page
    # the command as given is quoted (here with the tests' temporary paths); nothing else
    # holds an absolute path
    command = info.pop("command")
    assert command.startswith("fetalhc study --runs ") and "--images 2" in command
    assert f"```bash\n{command}\n```" in page
    for text in (page.replace(command, ""), json.dumps(info),
                 *(path.read_text() for path in (baseline / "tables").glob("*.csv"))):
        assert str(baseline.parent) not in text and "/tmp" not in text
    times = pd.read_csv(baseline / "tables" / "step_times.csv")
    assert times[["model", "step"]].values.tolist() == [
        [name, step] for name in ("tiny-mae", "tiny-mse")
        for step in ("explain", "evaluate-paper", "evaluate-rich", "diagnose")]
    assert (times["wall time (s)"] > 0).all() and (times["CPU time (s)"] > 0).all()
    # the floor: n (1 + K + 2 M K) passes for an AOPC protocol (n = 2, K = 15, M = 3)
    floor = times.set_index(["model", "step"])["floor forward passes"]
    assert floor[("tiny-mae", "evaluate-paper")] == 2 * (1 + 15 + 2 * 3 * 15)
    assert np.isnan(floor[("tiny-mae", "explain")])
    assert (times["forward rate (img/s)"] > 0).all()
    assert "## What was run, and how long it took" in page and "## In short" in page
    assert "## The seed paper's claims, decided" in page
    claims = pd.read_csv(baseline / "tables" / "claims.csv")
    assert set(claims["verdict"]) <= {"reproduced", "refuted", "undecided at this n"}
    paired = pd.read_csv(baseline / "tables" / "paired_vs_random.csv")
    assert len(paired) == 2 * 2 * 3 and paired["Holm p"].between(0, 1).all()
    strength = pd.read_csv(baseline / "tables" / "perturbation_strength.csv")
    assert set(strength["perturbation"]) == {"noise", "mean", "blur", "speckle"}
    assert "## Why a map may not beat random: the perturbations" in page


def test_rank_statistics_known_answers():
    from fetalhc.report.study import permutation_p, ranks, rho_interval, spearman

    a = [-9.0, -7.0, -5.0, -3.0]
    assert spearman(a, a) == pytest.approx(1.0) and spearman(a, a[::-1]) == pytest.approx(-1)
    assert permutation_p(a, a) == pytest.approx(1 / 24)  # only the identity reaches rho = 1
    assert permutation_p(a, a[::-1]) == pytest.approx(1.0)
    np.testing.assert_allclose(ranks([-3.0, -1.0, -1.0, 2.0]), [1, 2.5, 2.5, 4])
    rows = [{"filename": f"{image}.png", "method": method, "aopc": 10.0 * position + image}
            for image in range(5) for position, method in enumerate("wxyz")]
    frame = pd.DataFrame(rows)  # every image orders the methods as ``a`` does
    assert rho_interval(frame, list("wxyz"), a, "aopc", n_boot=100) == pytest.approx((1, 1))
    assert rho_interval(frame, list("wxyz"), a[::-1], "aopc", n_boot=100) == \
        pytest.approx((-1, -1))


def test_page_regenerates_from_stored_files_alone(baseline, tmp_path):
    from fetalhc.report.study import write_page

    copy = tmp_path / "copy"
    shutil.copytree(baseline / "tables", copy / "tables")
    shutil.copy(baseline / "study.json", copy / "study.json")
    write_page(copy)  # no models, no data, no step folders
    assert (copy / "study.md").read_bytes() == (baseline / "study.md").read_bytes()
    write_page(baseline)
    assert (baseline / "study.md").read_bytes() == (copy / "study.md").read_bytes()


def test_resume_after_interrupt_skips_finished_steps(runs, phantoms, baseline, tmp_path,
                                                     monkeypatch):
    import fetalhc.evaluate
    import fetalhc.report.study as study_module

    calls = {"explain": 0, "evaluate": 0, "maps": 0}
    original_maps = fetalhc.evaluate.evaluate_maps
    original_explain, original_evaluate = (study_module.write_explanations,
                                           study_module.write_evaluation)

    def counting(kind, function, fail_at=None):
        def wrapper(*args, **kwargs):
            calls[kind] += 1
            if calls[kind] == fail_at:
                raise RuntimeError("interrupted")
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(study_module, "write_explanations", counting("explain", original_explain))
    monkeypatch.setattr(study_module, "write_evaluation", counting("evaluate", original_evaluate))
    # 3 methods per protocol: the 5th scoring is the second method of the rich evaluation
    monkeypatch.setattr(fetalhc.evaluate, "evaluate_maps",
                        counting("maps", original_maps, fail_at=5))
    out = tmp_path / "resumed"
    result = study(runs[:1], phantoms, out, catch=True)
    assert isinstance(result.exception, RuntimeError), result.output
    assert calls == {"explain": 1, "evaluate": 2, "maps": 5}
    assert not (out / "study.md").exists()
    model_dir = out / "models" / "tiny-mae"
    finished = sorted((model_dir / "explain").rglob("*.npz")) + \
        sorted((model_dir / "evaluate-paper").rglob("*.csv")) + \
        sorted((model_dir / "evaluate-rich" / "methods" / "gradient").rglob("*"))
    stamps = {path: path.stat().st_mtime_ns for path in finished}

    calls.update(explain=0, evaluate=0, maps=0)
    monkeypatch.setattr(fetalhc.evaluate, "evaluate_maps", counting("maps", original_maps))
    result = study(runs[:1], phantoms, out)
    assert result.exit_code == 0, result.output
    assert "tiny-mae: explain already done" in result.output
    assert "tiny-mae: evaluate-paper already done" in result.output
    # only the rich evaluation ran, and only its 2 unfinished methods were scored
    assert calls == {"explain": 0, "evaluate": 1, "maps": 2}
    assert {path: path.stat().st_mtime_ns for path in finished} == stamps
    # the same numbers as the uninterrupted study of both runs
    for name in ("maps/gradient.npy", "maps/guided_backprop.npy", "explain/index.csv",
                 "evaluate-paper/per_image.csv", "evaluate-paper/summary.csv",
                 "evaluate-rich/per_image.csv", "evaluate-rich/summary.csv",
                 "evaluate-rich/summary_by_error.csv", "evaluate-rich/randomisation.csv"):
        assert (model_dir / name).read_bytes() == \
            (baseline / "models" / "tiny-mae" / name).read_bytes(), name
    resumed = pd.read_csv(out / "tables" / "summary.csv")
    uninterrupted = pd.read_csv(baseline / "tables" / "summary.csv")
    pd.testing.assert_frame_equal(
        resumed, uninterrupted[uninterrupted["model"] == "tiny-mae"].reset_index(drop=True))

    calls.update(explain=0, evaluate=0, maps=0)  # a third run recomputes nothing
    before = {path: path.stat().st_mtime_ns for path in model_dir.rglob("*")}
    result = study(runs[:1], phantoms, out)
    assert result.exit_code == 0 and calls == {"explain": 0, "evaluate": 0, "maps": 0}
    assert {path: path.stat().st_mtime_ns for path in model_dir.rglob("*")} == before


def test_changed_option_or_model_is_refused_then_recomputed_with_overwrite(runs, phantoms,
                                                                          tmp_path):
    run = tmp_path / "runs" / "tiny"
    shutil.copytree(runs[0], run)
    out = tmp_path / "small"
    first = ("--protocols", "paper", "--methods", "gradient,input_x_gradient")
    result = study([run], phantoms, out, *first)
    assert result.exit_code == 0, result.output
    page = (out / "study.md").read_text()
    result = study([run], phantoms, out, *first, "--images", "3", catch=True)
    assert result.exit_code == 1
    message = result.output.strip()
    assert message.count("\n") == 0 and "another images (2 there, 3 now)" in message
    assert "--overwrite" in message
    assert (out / "study.md").read_text() == page  # nothing changed
    result = study([run], phantoms, out, *first, "--images", "3", "--overwrite")
    assert result.exit_code == 0, result.output
    assert "already done" not in result.output
    assert pd.read_csv(out / "tables" / "models.csv")["images"].tolist() == [3]
    shutil.copy(runs[1] / "model.keras", run / "model.keras")  # another model, same run
    result = study([run], phantoms, out, *first, "--images", "3", catch=True)
    assert result.exit_code == 1 and result.output.strip().count("\n") == 0
    assert "models/tiny was made with another model" in result.output


@pytest.mark.parametrize("args, expected", [
    (("--images", "1"), "--images must be an integer >= 2 or 'all'"),
    (("--images", "many"), "--images must be an integer >= 2 or 'all'"),
    (("--protocols", "paper,fancy"), "unknown protocol(s) fancy"),
    (("--methods", "gradient,nonsense"), "unknown explanation method 'nonsense'"),
])
def test_bad_input_is_one_line(runs, phantoms, tmp_path, args, expected):
    result = CliRunner().invoke(cli, ["study", "--runs", str(runs[0]), "--data", str(phantoms),
                                      "--out", str(tmp_path / "x"), *args])
    assert result.exit_code != 0
    assert expected in result.output and result.output.strip().count("\n") == 0
    assert not (tmp_path / "x").exists()


def test_unknown_run_is_one_line(phantoms, tmp_path):
    result = CliRunner().invoke(cli, ["study", "--runs", "no-such-run", "--data",
                                      str(phantoms), "--out", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "unknown run 'no-such-run'" in result.output
    assert result.output.strip().count("\n") == 0


def test_report_folder_holds_the_page_and_what_it_quotes(runs, phantoms, tmp_path):
    """--report: the page, study.json, tables/, figures/ and each model's exported results
    (models/<name>/) in their own folder, the bulky steps in --out; the report alone
    completes the study on a machine without --out; a changed result file is recomputed;
    a study of other options into it is refused."""
    out, report = tmp_path / "work", tmp_path / "docs" / "study"
    first = ("--protocols", "paper,rich", "--methods", "gradient,input_x_gradient")
    result = study(runs[:1], phantoms, out, *first, "--report", report)
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in report.iterdir()) == [
        "figures", "models", "provenance.json", "study.json", "study.md", "tables"]
    assert not (out / "study.md").exists() and (out / "models" / "tiny-mae").is_dir()
    exported = report / "models" / "tiny-mae"
    assert not (exported / "maps").exists() and not (exported / "explain").exists()
    info = json.loads((report / "study.json").read_text())
    for path in info["figures"].values():  # every figure inside the report folder
        assert path.startswith(("figures/", "models/tiny-mae/figures/"))
        assert (report / path).is_file()
    assert any("evaluate" not in path and "perturbation" in path
               for path in info["figures"].values())
    page = (report / "study.md").read_bytes()
    result = study(runs[:1], phantoms, out, *first, "--report", report)  # resumes
    assert result.exit_code == 0 and "steps skipped" in result.output
    assert (report / "study.md").read_bytes() == page, "resumed"
    shutil.rmtree(out)  # another machine: only the report folder is kept
    result = study(runs[:1], phantoms, out, *first, "--report", report)
    assert result.exit_code == 0 and "steps skipped" in result.output, result.output
    assert not (out / "models" / "tiny-mae").exists()
    assert (report / "study.md").read_bytes() == page, "from the report alone"
    summary = (report / "tables" / "summary.csv").read_bytes()
    table = exported / "evaluate-paper" / "per_image.csv"
    table.write_text(table.read_text().replace("gradient", "gradient ", 1))
    result = study(runs[:1], phantoms, out, *first, "--report", report)  # not reused
    assert result.exit_code == 0 and "explain (2 methods)" in result.output, result.output
    assert (report / "tables" / "summary.csv").read_bytes() == summary  # only times differ
    page = (report / "study.md").read_bytes()
    result = study(runs[1:], phantoms, tmp_path / "other", "--protocols", "paper",
                   "--methods", "gradient,input_x_gradient", "--report", report, catch=True)
    assert result.exit_code == 1 and result.output.strip().count("\n") == 0
    assert str(report) in result.output and "--overwrite" in result.output
    assert (report / "study.md").read_bytes() == page


def _claim_frames(aopc: dict, band: dict, n: int = 40, spread: float = 0.3) -> dict:
    """Per-image tables of two models (``p`` plain, ``r`` residual, MAE): each method's
    AOPC (mm) and contour-band ratio per image = the given mean + an image effect shared
    by every method + method noise of SD ``spread`` (0: methods of equal means give equal
    values); the random order's AOPC is -1 mm + the image effect."""
    rng = np.random.default_rng(0)
    image_effect = rng.normal(0, 1.0, n)
    frames = {}
    for model in ("p", "r"):
        rows = []
        for method, mean in aopc[model].items():
            noise = rng.normal(0, 1.0, (n, 2)) * spread
            for image in range(n):
                rows.append({"filename": f"{image:03d}.png", "method": method,
                             "abs_error_mm": float(image % 7),
                             "aopc_morf_abs_error_mm": mean + image_effect[image]
                             + noise[image, 0],
                             "aopc_random_abs_error_mm": -1.0 + image_effect[image],
                             "band_ratio": band.get(method, 1.0) + noise[image, 1] / 3})
        frame = pd.DataFrame(rows)
        frames[(model, "paper")] = frame
        frames[(model, "rich")] = frame
    return frames


def test_paper_claims_known_answers():
    """Planted differences of several SDs are decided; equal means stay undecided."""
    from fetalhc.report import study_claims

    methods = ["gradient", "input_x_gradient", "integrated_gradients", "lrp_z",
               "guided_backprop", "deep_taylor", "deconvnet"]
    base = dict.fromkeys(methods, -3.0)
    aopc = {"p": {**base, "input_x_gradient": -6.0, "lrp_z": -6.0,
                  "integrated_gradients": -9.0},
            "r": {**base, "input_x_gradient": -8.0, "lrp_z": -4.0,
                  "integrated_gradients": -2.0}}
    band = {"guided_backprop": 3.0, "deep_taylor": 2.5, "gradient": 1.0, "deconvnet": 0.5}
    frames = _claim_frames(aopc, band)
    models = pd.DataFrame([{"model": "p", "backbone": "small_cnn", "loss": "MAE"},
                           {"model": "r", "backbone": "small_resnet", "loss": "MAE"}])
    versus_random = study_claims.paired_vs_random(frames, methods)
    assert versus_random[versus_random["protocol"] == "paper"]["beats random"].all()
    pairs = pd.concat([study_claims.paired_methods(frames, methods),
                       study_claims.paired_methods(frames, methods, "band_ratio",
                                                   protocols=("rich",))])
    assert len(pairs) == 2 * 2 * 21 and pairs["Holm p"].between(0, 1).all()
    claims = study_claims.claims(models, frames, methods, pairs, versus_random)
    verdict = dict(zip(claims["claim"], claims["verdict"], strict=True))
    by_start = {claim.split(" ")[0] + claim.split(" ")[1]: v for claim, v in verdict.items()}
    # IxG: IG beats it on p -> refuted; LRP-z: IG beats it on p too -> refuted
    assert by_start["Inputx"] == "refuted" and by_start["LRP-zis"] == "refuted"
    assert by_start["IGis"] == "reproduced"  # IG significantly best on the plain MAE model
    assert by_start["IGfails"] == "reproduced"  # on r IG (-2) is worse than Gradient (-3)
    plain_only = study_claims.claims(models[models["model"] == "p"],
                                     {k: v for k, v in frames.items() if k[0] == "p"},
                                     methods, pairs, versus_random)
    assert plain_only.set_index("claim")["verdict"][
        "IG fails in some settings (ResNet50 / MAE: worse than Gradient)"] == \
        "undecided at this n"  # IG beats Gradient on p, but the claim is about a residual
    # r vs p: IxG better (-8 vs -6), LRP-z and IG worse -> refuted
    assert by_start["ResNet50explains"] == "refuted"
    assert by_start["GuidedBackprop"] == "reproduced"  # GB, DT above G, DCN everywhere
    assert by_start["Mapquality"] == "undecided at this n"  # AOPC does not follow error
    equal = _claim_frames({"p": base, "r": base}, {}, spread=0.0)
    pairs = study_claims.paired_methods(equal, methods)
    assert not pairs["significant"].any()
    claims = study_claims.claims(models, equal, methods, pairs,
                                 study_claims.paired_vs_random(equal, methods))
    assert "reproduced" not in set(claims["verdict"][claims["claim"].str.contains("Holm")])


def test_published_study_page_regenerates_unchanged(tmp_path):
    """docs/study/study.md is what write_page makes of the stored files beside it."""
    from fetalhc.report.study_page import write_page

    docs = REPO_ROOT / "docs" / "study"
    if not (docs / "study.json").is_file():
        pytest.skip("docs/study holds no study yet (fetalhc study --report docs/study)")
    shutil.copytree(docs / "tables", tmp_path / "tables")
    shutil.copy(docs / "study.json", tmp_path / "study.json")
    assert write_page(tmp_path).read_bytes() == (docs / "study.md").read_bytes()


def test_a_reference_diagnosis_goes_beside_the_models(runs, phantoms, baseline, tmp_path):
    """--compare-diagnosis: a diagnose folder made elsewhere (here a copy of one model's,
    with its model.json) appears as "phantoms (reference)" in the diagnosis tables; a
    folder that is not one is refused in one line."""
    out = Path(shutil.copytree(baseline, tmp_path / "study"))
    reference = Path(shutil.copytree(baseline / "models" / "tiny-mse" / "diagnose",
                                     tmp_path / "reference"))
    (reference / "model.json").write_text(json.dumps({
        "images": 2, "data": "14 phantoms", "overrides": {"train.epochs": 1},
        "MAE on the studied images (mm)": 9.5, "mean reference HC (mm)": 150.0,
        "command": "python scripts/phantom_diagnosis.py --epochs 1"}))
    result = study(runs, phantoms, out, "--compare-diagnosis", reference)
    assert result.exit_code == 0, result.output
    assert "steps skipped" in result.output
    strength = pd.read_csv(out / "tables" / "perturbation_strength.csv")
    assert set(strength["model"]) == {"tiny-mae", "tiny-mse", "phantoms (reference)"}
    mine = strength.set_index(["model", "perturbation", "metric"])["mean"]
    assert mine[("phantoms (reference)", "noise", "random_shift_mm")] == pytest.approx(
        mine[("tiny-mse", "noise", "random_shift_mm")])
    page = (out / "study.md").read_text()
    assert "*phantoms (reference)*" in page and "scripts/phantom_diagnosis.py --epochs 1" in page
    (reference / "model.json").unlink()
    result = study(runs, phantoms, out, "--compare-diagnosis", reference, catch=True)
    assert result.exit_code == 1 and result.output.strip().count("\n") == 0
    assert "not a diagnose folder (no model.json)" in result.output

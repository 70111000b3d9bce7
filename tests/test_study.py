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
    assert re.search(r"\[options.package_data\]\s*fetalhc.report = data/\*\.json", config)


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
        for step in ("explain", "evaluate-paper", "evaluate-rich")]
    assert (times["wall time (s)"] > 0).all() and (times["CPU time (s)"] > 0).all()
    assert "## What was run, and how long it took" in page and "## In short" in page
    assert "### The paper's claims, checked" in page


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
    """--report: the page, study.json, tables/ and figures/ (evaluation figures copied) in
    their own folder, the bulky steps in --out; another study into it is refused."""
    out, report = tmp_path / "work", tmp_path / "docs" / "study"
    first = ("--protocols", "paper,rich", "--methods", "gradient,input_x_gradient")
    result = study(runs[:1], phantoms, out, *first, "--report", report)
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in report.iterdir()) == [
        "figures", "provenance.json", "study.json", "study.md", "tables"]
    assert not (out / "study.md").exists() and (out / "models" / "tiny-mae").is_dir()
    info = json.loads((report / "study.json").read_text())
    for path in info["figures"].values():  # every figure inside the report folder
        assert path.startswith("figures/") and (report / path).is_file()
    assert any("evaluate" not in path and "perturbation" in path
               for path in info["figures"].values())
    page = (report / "study.md").read_bytes()
    result = study(runs[:1], phantoms, out, *first, "--report", report)  # resumes
    assert result.exit_code == 0 and "explain already done" in result.output
    assert (report / "study.md").read_bytes() == page
    result = study(runs[1:], phantoms, tmp_path / "other", *first, "--report", report,
                   catch=True)
    assert result.exit_code == 1 and result.output.strip().count("\n") == 0
    assert str(report) in result.output and "--overwrite" in result.output
    assert (report / "study.md").read_bytes() == page


def _claim_tables(folder: Path, our_ranks: dict, band: dict) -> Path:
    """Minimal stored tables for :func:`paper_claims`: two models (plain and residual, MAE)
    ranking four of the paper's methods as ``our_ranks`` says."""
    from fetalhc.files import write_csv

    methods = ["gradient", "input_x_gradient", "integrated_gradients", "lrp_z"]
    write_csv(pd.DataFrame([{"model": m, "paper model": "VGG16", "method": method,
                             "our rank": our_ranks[m][i], "paper rank": i + 1}
                            for m in our_ranks for i, method in enumerate(methods)]),
              folder / "paper_ranks.csv")
    write_csv(pd.DataFrame([{"model": "p", "backbone": "small_cnn", "loss": "MAE"},
                            {"model": "r", "backbone": "small_resnet", "loss": "MAE"}]),
              folder / "models.csv")
    rows = [{"protocol": "paper", "model": m, "method": method,
             "metric": "aopc_morf_abs_error_px_original", "mean (units)": mean,
             "CI low (units)": mean - 1, "CI high (units)": mean + 1}
            for m, mean in (("p", -2.0), ("r", -6.0)) for method in methods]
    rows += [{"protocol": "rich", "model": m, "method": method, "metric": "band_ratio",
              "mean (units)": band[method], "CI low (units)": 0, "CI high (units)": 9}
             for m in ("p", "r") for method in band]
    write_csv(pd.DataFrame(rows), folder / "summary.csv")
    write_csv(pd.DataFrame(columns=["protocol", "model", "method", "error group", "metric",
                                    "mean (units)"]), folder / "summary_by_error.csv")
    return folder


def test_paper_claims_known_answers(tmp_path):
    from fetalhc.report.study_page import paper_claims

    # p: IG best, IxG 2nd, LRP 4th; r: IxG 1st, LRP 2nd, IG below gradient
    band = {"guided_backprop": 3.0, "deep_taylor": 2.5, "gradient": 1.0, "deconvnet": 0.5}
    claims = paper_claims(_claim_tables(tmp_path, {"p": [3, 2, 1, 4], "r": [3, 1, 4, 2]},
                                        band)).set_index("paper's claim")["holds here?"]
    verdicts = list(claims)
    assert verdicts[0] == "yes"  # Input x Gradient in the top 3 of both
    assert verdicts[1] == "partly"  # LRP-z: top 3 for r only
    assert verdicts[2] == "yes"  # IG best for the plain MAE model
    assert verdicts[3] == "yes"  # IG below gradient for r
    assert verdicts[4] == "yes"  # residual's AOPC CIs below the plain one's for every method
    assert verdicts[5] == "yes"  # GB and DT above G and DCN by band ratio for both
    band = {"guided_backprop": 0.5, "deep_taylor": 2.5, "gradient": 3.0, "deconvnet": 1.0}
    claims = paper_claims(_claim_tables(tmp_path, {"p": [1, 2, 3, 4], "r": [1, 2, 3, 4]},
                                        band))
    assert list(claims["holds here?"]) == ["yes", "no", "no", "yes", "yes", "no"]


def test_published_study_page_regenerates_unchanged(tmp_path):
    """docs/study/study.md is what write_page makes of the stored files beside it."""
    from fetalhc.report.study_page import write_page

    docs = REPO_ROOT / "docs" / "study"
    if not (docs / "study.json").is_file():
        pytest.skip("docs/study holds no study yet (fetalhc study --report docs/study)")
    shutil.copytree(docs / "tables", tmp_path / "tables")
    shutil.copy(docs / "study.json", tmp_path / "study.json")
    assert write_page(tmp_path).read_bytes() == (docs / "study.md").read_bytes()

"""``scripts/hc18_model_report.py``: the committed docs/hc18-model.md is what the script
writes from the committed result files, and its tables are right on small known answers.

Fast: reads CSV/JSON/TOML only (no model, no HC18 data)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report():
    return _load("hc18_model_report")


@pytest.fixture(scope="module")
def levers():
    return _load("hc18_levers")


def test_committed_page_is_regenerated_unchanged(report, tmp_path):
    """docs/hc18-model.md == the script's output from the committed inputs; if this fails,
    regenerate it: `python scripts/hc18_model_report.py`."""
    assert report.main(["--docs", str(tmp_path)]) == 0
    written = (tmp_path / "hc18-model.md").read_bytes()
    assert written == (REPO / "docs" / "hc18-model.md").read_bytes()
    assert str(REPO) not in written.decode() and str(tmp_path) not in written.decode()
    # a second run gives the same bytes
    assert report.main(["--docs", str(tmp_path)]) == 0
    assert (tmp_path / "hc18-model.md").read_bytes() == written


def _frame(predictions, references, flipped=None, split="val", names=None):
    names = names or [f"{i:03d}_HC.png" for i in range(len(predictions))]
    frame = pd.DataFrame({"split": split, "filename": names,
                          "pixel size (mm)": 0.1, "reference (mm)": references,
                          "prediction (mm)": predictions})
    if flipped is not None:
        frame["h-flipped prediction (mm)"] = flipped
    return frame


def test_paired_difference_of_constant_differences(report, levers):
    reference = _frame([101.0, 99.0, 100.0], [100.0] * 3)  # |errors| 1, 1, 0
    variant = _frame([102.0, 98.0, 101.0], [100.0] * 3)  # |errors| 2, 2, 1
    result, why = report.compare(reference, variant)
    assert why == ""
    assert result["n"] == 3
    assert result["difference_mm"] == pytest.approx(1.0)
    assert (result["ci_low_mm"], result["ci_high_mm"]) == pytest.approx((1.0, 1.0))
    assert result["mae_a_mm"] == pytest.approx(2 / 3)
    assert result["mae_b_mm"] == pytest.approx(5 / 3)
    assert report.reading(result) == "variant worse"
    # the page and `hc18_levers.py compare` share one function
    assert levers.paired_difference(reference, variant) == result


def test_paired_difference_uses_shared_images_and_columns(report):
    reference = _frame([104.0, 96.0, 110.0], [100.0] * 3, flipped=[100.0, 100.0, 100.0])
    # the h-flip average halves the two first errors: 4 -> 2 and 4 -> 2; the third: 10 -> 5
    result, _ = report.compare(reference, reference, variant_column="h-flip average")
    assert result["n"] == 3
    assert result["difference_mm"] == pytest.approx(-(2 + 2 + 5) / 3)
    assert result["ci_high_mm"] < 0 and report.reading(result) == "variant better"
    # only the images both hold: the variant lacks the third
    variant = _frame([100.0, 100.0], [100.0] * 2, names=["000_HC.png", "001_HC.png"])
    result, _ = report.compare(reference, variant)
    assert result["n"] == 2 and result["difference_mm"] == pytest.approx(-4.0)


def test_missing_columns_skip_the_comparison(report):
    old = _frame([101.0, 99.0], [100.0] * 2)  # an older file: no flipped prediction
    result, why = report.compare(old, old, variant_column="h-flip average")
    assert result is None and "h-flipped" in why
    result, why = report.compare(old, old, variant_column="ellipse-head HC (mm)")
    assert result is None and "ellipse-head HC (mm)" in why


def test_compare_command_prints_the_paired_difference(levers, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "levers"
    folder.mkdir()
    _frame([101.0, 99.0, 100.0], [100.0] * 3).to_csv(folder / "a.csv", index=False)
    _frame([102.0, 98.0, 101.0], [100.0] * 3).to_csv(folder / "b.csv", index=False)
    monkeypatch.setattr(levers, "RESULTS", folder)
    levers.main(["compare", "a", "b"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["n"] == 3 and printed["difference_mm"] == pytest.approx(1.0)
    assert (printed["ci_low_mm"], printed["ci_high_mm"]) == pytest.approx((1.0, 1.0))
    _frame([1.0], [1.0], split="test").to_csv(folder / "c.csv", index=False)
    with pytest.raises(SystemExit, match="share no image"):
        levers.main(["compare", "a", "c"])


def test_band_rows(report):
    # errors +1, -2, +3, -4 mm, one image per band; 119.99 and 120 fall on either side
    frame = pd.DataFrame({"reference (mm)": [119.99, 120.0, 250.0, 300.0],
                          "prediction (mm)": [120.99, 118.0, 253.0, 296.0]})
    frame["h-flip average"] = frame["reference (mm)"] + 0.5
    rows = report.band_rows(frame, averaged="h-flip average")
    assert [row["band"] for row in rows] == ["< 120", "120–200", "200–280", "≥ 280"]
    assert [row["n"] for row in rows] == [1, 1, 1, 1]
    assert [row["mae_mm"] for row in rows] == pytest.approx([1.0, 2.0, 3.0, 4.0])
    assert [row["df_mm"] for row in rows] == pytest.approx([1.0, -2.0, 3.0, -4.0])
    assert [row["averaged_mae_mm"] for row in rows] == pytest.approx([0.5] * 4)
    empty = report.band_rows(frame.iloc[:1])
    assert [row["n"] for row in empty] == [1, 0, 0, 0] and empty[1]["mae_mm"] is None


def test_flag_rows_count_unknown_apart(report, tmp_path):
    frame = pd.DataFrame({"reference (mm)": [100.0] * 4,
                          "prediction (mm)": [104.0, 101.0, 110.0, 102.0],
                          "flag: flip disagreement": pd.array([True, False, None, True],
                                                              dtype="boolean")})
    frame["flagged"] = frame["flag: flip disagreement"].fillna(False)
    frame.to_csv(tmp_path / "per_image.csv", index=False)  # unknown = an empty cell
    rows = report.flag_rows(pd.read_csv(tmp_path / "per_image.csv"))
    assert [row["flag"] for row in rows] == ["flag: flip disagreement", "flagged"]
    flip, flagged = rows
    assert (flip["n_flagged"], flip["n_unflagged"], flip["n_unknown"]) == (2, 1, 1)
    assert flip["mae_flagged_mm"] == pytest.approx(3.0)
    assert flip["mae_unflagged_mm"] == pytest.approx(1.0)
    assert (flagged["n_flagged"], flagged["n_unflagged"], flagged["n_unknown"]) == (2, 2, 0)
    assert flagged["mae_unflagged_mm"] == pytest.approx(5.5)


def test_worst_rows(report):
    frame = pd.DataFrame({"rank": [3, 1, 2, 4], "abs error (mm)": [2.0, 9.0, 5.0, 1.0],
                          "reference (mm)": [100.0, 300.0, 200.0, 50.0],
                          "touches border": [False, True, False, False]})
    rows, notes = report.worst_rows(frame, count=2)
    assert rows[0] == ["abs error (mm), median", "7.00", "1.50"]
    assert rows[1] == ["reference (mm), median", "250.00", "75.00"]
    assert rows[-1] == ["touching the border (images)", "1 of 2", "0 of 2"]
    assert any("pixel size" in note for note in notes)  # missing columns are named


def test_page_from_sparse_inputs(report, tmp_path):
    """Missing JSON, CSV, columns, final folder and models: notes, never a crash."""
    results = tmp_path / "results"
    (results / "levers").mkdir(parents=True)
    (results / "levers.toml").write_text(
        'recipe = "final-one"\nworst = "gone"\n'
        '[[comparison]]\nstep = 1\nlever = "flip"\nreference = "old"\nvariant = "old"\n'
        'variant_column = "h-flip average"\n'
        '[[comparison]]\nstep = 2\nlever = "same"\nreference = "old"\nvariant = "old"\n'
        '[[comparison]]\nlever = "absent"\nreference = "old"\nvariant = "never-run"\n')
    _frame([101.0, 99.0], [100.0] * 2).to_csv(results / "levers" / "old.csv", index=False)
    docs = tmp_path / "docs"
    assert report.main(["--results", str(results), "--models", str(tmp_path / "models"),
                        "--docs", str(docs)]) == 0
    page = (docs / "hc18-model.md").read_text()
    assert "| same | 2 | old | old | – | 2 | 1.00 | 1.00 | 0.00 | [0.00, 0.00] |" in page
    assert "flip (step 1), `old` vs `old`: the variant has no `prediction (mm)` and " \
        "h-flipped prediction column" in page
    assert "absent: no `never-run.csv`" in page
    assert "`old`: no `old.json`" in page
    assert "No `docs/hc18-model/worst/gone.csv` yet" in page
    final = page.split("## The final recipe")[1].split("##")[0].strip()
    assert final.count("\n") == 0 and final.startswith("No final model yet")
    assert "None yet: `models/`" in page
    assert "Development page" in page and str(tmp_path) not in page
    assert not (docs / "hc18-model" / "bland_altman.png").exists()


def test_malformed_comparison_is_an_error(report, tmp_path):
    (tmp_path / "levers.toml").write_text('[[comparison]]\nlever = "x"\nreference = "a"\n')
    with pytest.raises(SystemExit, match="lacks variant"):
        report.read_levers_toml(tmp_path / "levers.toml")


def test_number_formats(report):
    assert report.number(1.005, 2) in {"1.00", "1.01"}  # fixed decimals, binary rounding
    assert report.number(float("nan")) == "–" and report.number(None) == "–"
    assert report.number(pd.NA) == "–" and report.number(np.float64(2)) == "2.00"
    assert report.interval(-0.1234, 0.5) == "[-0.12, 0.50]"
    assert report.minutes(90.0) == "1.5" and report.minutes(None) == "–"


def test_ensemble_is_the_mean_prediction_against_its_best_member(report, tmp_path):
    """Two members err +2 and −2 mm on every image: their mean is exact, and the best member
    (MAE 2, the first of equals) is beaten by exactly 2 mm."""
    results = tmp_path / "results"
    (results / "levers").mkdir(parents=True)
    _frame([102.0, 202.0, 302.0], [100.0, 200.0, 300.0]).to_csv(
        results / "levers" / "high.csv", index=False)
    _frame([98.0, 198.0, 298.0], [100.0, 200.0, 300.0]).to_csv(
        results / "levers" / "low.csv", index=False)
    mean = report.ensemble_frame([pd.read_csv(results / "levers" / name)
                                  for name in ("high.csv", "low.csv")])
    assert mean["prediction (mm)"].tolist() == [100.0, 200.0, 300.0]
    (results / "levers.toml").write_text(
        '[[ensemble]]\nname = "pair"\nmembers = ["high", "low"]\nnote = "two"\n'
        '[[ensemble]]\nname = "lost"\nmembers = ["high", "gone"]\n')
    docs = tmp_path / "docs"
    assert report.main(["--results", str(results), "--models", str(tmp_path / "models"),
                        "--docs", str(docs)]) == 0
    page = (docs / "hc18-model.md").read_text()
    assert ("| pair | high, low | two | 3 | high | 2.00 | 0.00 | -2.00 | [-2.00, -2.00] | "
            "variant better |") in page
    assert "`lost`: no `gone.csv`" in page
    (results / "levers.toml").write_text('[[ensemble]]\nname = "one"\nmembers = ["high"]\n')
    with pytest.raises(SystemExit, match="at least two members"):
        report.read_levers_toml(results / "levers.toml")


def test_make_time_section_reads_its_result_file(report, tmp_path):
    assert "Not measured yet" in "\n".join(report.make_time_section(tmp_path))
    record = {"command": "python scripts/hc18_make_time.py --run runs/x",
              "make_command": "make hc18-model HC18_RUN=runs/x", "wall_seconds": 3600.0,
              "cpu_seconds": 6600.0, "cpu_per_wall": 6600.0 / 3600.0, "cores": 2,
              "load_1min_before": 0.1, "load_1min_samples": [1.9, 2.1, 2.5],
              "stages": {"localiser": {"epochs_run": 200, "best_epoch": 180,
                                       "train_seconds": 1800.0, "val_mae_mm": 3.0,
                                       "test_mae_mm": 3.5}}}
    (tmp_path / "make-time.json").write_text(json.dumps(record))
    text = "\n".join(report.make_time_section(tmp_path))
    assert "wall time **60.0 min** on 2 cores" in text
    assert "1.83 CPU-seconds per second" in text
    assert "median 2.10 and maximum 2.50 over 3 samples" in text
    assert "| localiser | 200 | 180 | 30.0 | 3.00 | 3.50 |" in text

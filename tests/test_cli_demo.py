"""`fetalhc demo` end to end on a tiny phantom set: the report and its numbers exist."""

from __future__ import annotations

import json
import math
import re

import pandas as pd
import pytest
from click.testing import CliRunner

from fetalhc.cli.main import cli


def _run_demo(out, methods, epochs=2):
    result = CliRunner().invoke(cli, [
        "demo", "--out", str(out), "--n", "30", "--epochs", str(epochs), "--image-size", "32",
        "--explain-images", "2", "--evaluate-images", "3", "--methods", methods,
    ])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def _check_report(out, methods):
    report = (out / "report.md").read_text()
    for picture in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):
        assert (out / picture).is_file(), f"report links a missing figure {picture}"
    assert "explain/grid.png" in report and "predictions_bland_altman.png" in report
    assert "fetalhc train" in report and "fetalhc evaluate" in report  # how to reproduce
    metrics = json.loads((out / "predict" / "predictions_metrics.json").read_text())
    assert math.isfinite(metrics["mae_mm"]) and metrics["mae_mm"] >= 0
    summary = pd.read_csv(out / "evaluate" / "summary.csv")
    assert set(summary["method"]) == set(methods)
    aopc = summary[summary["metric"].str.startswith("aopc_morf_abs_error_mm")]
    assert len(aopc) == len(methods) and aopc["mean"].map(math.isfinite).all()
    band = summary[summary["metric"] == "band_ratio"]
    assert len(band) == len(methods) and band["mean"].map(math.isfinite).all()
    assert list((out / "run" / "logs" / "saliency").iterdir()), "no saliency event file"
    for method in methods:
        assert method in report


def test_demo_writes_a_complete_report(tmp_path):
    methods = ["gradient", "integrated_gradients", "lrp_z"]
    result = _run_demo(tmp_path / "demo", ",".join(methods))
    assert any(line.startswith("report: ") for line in result.output.splitlines())
    _check_report(tmp_path / "demo", methods)


def test_demo_rerun_after_more_epochs_recomputes_what_the_new_model_changes(tmp_path):
    """The run is deleted and the demo trains it again (3 epochs instead of 2), so the model
    file changes: the explain and evaluate folders hold the old model's results, and the
    demo recomputes them (provenance) instead of stopping or reusing them."""
    import shutil

    from fetalhc.report.provenance import model_digest, read_provenance

    out = tmp_path / "demo"
    methods = ["gradient"]
    _run_demo(out, "gradient")
    first = read_provenance(out / "explain")["result"]["model"]
    shutil.rmtree(out / "run")
    result = _run_demo(out, "gradient", epochs=3)
    now = model_digest(out / "run" / "model.keras")
    assert now != first
    for step in ("explain", "evaluate"):
        assert read_provenance(out / step)["result"]["model"] == now, step
    assert "the demo recomputes" in result.output
    _check_report(out, methods)


@pytest.mark.slow
def test_demo_with_every_registered_method(tmp_path):
    import fetalhc.explain as fe

    _run_demo(tmp_path / "demo", ",".join(fe.available_methods()))
    _check_report(tmp_path / "demo", fe.available_methods())

"""`fetalhc demo` end to end on a tiny phantom set: the report and its numbers exist."""

from __future__ import annotations

import json
import math
import re

import pandas as pd
import pytest
from click.testing import CliRunner

from fetalhc.cli.main import cli


def _run_demo(out, methods):
    result = CliRunner().invoke(cli, [
        "demo", "--out", str(out), "--n", "30", "--epochs", "2", "--image-size", "32",
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


@pytest.mark.slow
def test_demo_with_every_registered_method(tmp_path):
    import fetalhc.explain as fe

    _run_demo(tmp_path / "demo", ",".join(fe.available_methods()))
    _check_report(tmp_path / "demo", fe.available_methods())

"""The ``demo`` page: ``report.md`` from the files the demo's steps wrote (accuracy, the
saliency grid, explanation quality, time per step and the commands that reproduce it), and
:func:`check_demo_request`, the demo's checks before it creates anything."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fetalhc.files import markdown_table, write_text

QUALITY_COLUMNS = {
    "aopc_morf_abs_error_mm": "AOPC MoRF (mm)",
    "aopc_lerf_abs_error_mm": "AOPC LeRF (mm)",
    "aopc_random_abs_error_mm": "AOPC random (mm)",
    "aopc_gap_abs_error_mm": "MoRF − LeRF (mm)",
    "band_ratio": "contour band ratio",
    "top_distance_mm": "top-5 % distance to contour (mm)",
}


def _relative(path: Path, root: Path) -> str:
    return os.path.relpath(path, root)


def _table_lines(header, rows) -> list[str]:
    return markdown_table(header, rows).removesuffix("\n").split("\n")


def check_demo_request(out: Path, data_dir: Path | None = None,
                       methods: list[str] | None = None) -> list[str]:
    """Check what the demo is asked before it creates anything; returns the methods
    (default: every registered one). One-line errors: ``out`` exists and is not a folder,
    an unknown or repeated method, ``data_dir`` not an HC18-layout folder (its CSV and files,
    headers only: :func:`fetalhc.data.load_index`)."""
    import fetalhc.explain as fe

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    methods = list(methods) if methods else fe.available_methods()
    for method in methods:
        fe.get_method(method)  # unknown: a one-line ValueError listing the known methods
    repeated = sorted({method for method in methods if methods.count(method) > 1})
    if repeated:
        raise ValueError(f"--methods names {', '.join(repeated)} more than once")
    if data_dir is not None:
        from fetalhc.data import load_index

        load_index(data_dir, validate=False)
    return methods


def write_demo_report(out: Path, run_dir: Path, predictions: Path, explain_dir: Path,
                      evaluate_dir: Path, commands: list[str], timings: dict[str, float],
                      synthetic: bool) -> Path:
    """Write ``<out>/report.md`` from the run folder, ``fetalhc predict``'s ``predictions``
    CSV (and the metrics and plots beside it), the explain and evaluate folders, the
    ``commands`` that reproduce them and the seconds per step; returns its path."""
    out = Path(out)
    run_metrics = json.loads((run_dir / "metrics.json").read_text())
    prediction_metrics_path = predictions.with_name(f"{predictions.stem}_metrics.json")
    test = json.loads(prediction_metrics_path.read_text()) if prediction_metrics_path.is_file() \
        else run_metrics.get("test", {})
    accuracy = [test.get("n", "?"), "{:.2f}".format(test.get("mae_mm", float("nan"))),
                "{:.2f}".format(test.get("rmse_mm", float("nan"))),
                "{:+.2f}".format(test.get("df_mm", float("nan"))),
                "{:.2f}".format(test.get("pmae_percent", float("nan")))]
    lines = [
        "# fetalhc demo report",
        "",
        f"Data: {'synthetic phantoms (fetalhc.data.phantom)' if synthetic else 'HC18'}. "
        "A small CNN regresses head circumference (HC); every saliency method explains its "
        "predicted HC in mm (red raises HC, blue lowers it).",
        "",
        "## Accuracy on the held-out test split",
        "",
        *_table_lines(["n", "MAE (mm)", "RMSE (mm)", "DF (mm)", "PMAE (%)"], [accuracy]),
        "",
    ]
    for name in ("bland_altman", "scatter"):
        figure = predictions.with_name(f"{predictions.stem}_{name}.png")
        if figure.is_file():
            lines += [f"![{name.replace('_', '-')}]({_relative(figure, out)})", ""]
    lines += ["## Saliency maps", "", f"![methods x images]({_relative(explain_dir / 'grid.png', out)})",
              ""]
    summary_md = evaluate_dir / "summary.md"
    lines += ["## Explanation quality", "",
              "AOPC: mean over images of e(0) − mean_k e(k) for the absolute HC error e (mm) "
              "as regions are replaced most-relevant-first (MoRF), least-relevant-first "
              "(LeRF) or at random; more negative MoRF = more faithful. Band ratio: share of "
              "positive relevance within ±3 mm of the skull contour over the band's share of "
              "the image (1 = chance). 95 % bootstrap intervals in brackets.", ""]
    summary_csv = evaluate_dir / "summary.csv"
    if summary_csv.is_file():
        lines += [*quality_table(summary_csv), "",
                  f"Every metric with its interval: [{_relative(summary_md, out)}]"
                  f"({_relative(summary_md, out)}).", ""]
    for figure in sorted(evaluate_dir.rglob("*.png")):
        lines += [f"![{figure.stem}]({_relative(figure, out)})", ""]
    lines += ["## Time per step (s)", "",
              *_table_lines(["step", "seconds"],
                            [[name, f"{seconds:.1f}"] for name, seconds in timings.items()])]
    lines += ["", "## Reproduce", "", "```bash", *commands,
              f"tensorboard --logdir {run_dir / 'logs'}", "```", ""]
    return write_text(out / "report.md", "\n".join(lines))


def quality_table(summary_csv: Path) -> list[str]:
    """A compact methods x metrics Markdown table (its lines) from an evaluation's
    ``summary.csv``: mean [CI low, CI high] per metric, sorted by AOPC MoRF."""
    import pandas as pd

    summary = pd.read_csv(summary_csv)
    columns = [c for c in QUALITY_COLUMNS if c in set(summary["metric"])]
    table = summary.pivot_table(index="method", columns="metric", values="mean")
    low = summary.pivot_table(index="method", columns="metric", values="ci_low")
    high = summary.pivot_table(index="method", columns="metric", values="ci_high")
    if "aopc_morf_abs_error_mm" in columns:
        table = table.sort_values("aopc_morf_abs_error_mm")
    rows = [[method, *(f"{row[c]:.3g} [{low.loc[method, c]:.3g}, {high.loc[method, c]:.3g}]"
                       for c in columns)]
            for method, row in table.iterrows()]
    return _table_lines(["method", *(QUALITY_COLUMNS[c] for c in columns)], rows)

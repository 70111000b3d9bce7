"""The figures of an ``evaluate`` output folder (``<out>/figures/*.png``): perturbation and
deletion / insertion curves per quantity, localisation boxplots, and the error-split bars of
the headline metric. Drawn with ``fetalhc.viz.curves``, written atomically through it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

METRIC_LABELS = {"aopc_morf_abs_error_mm": "AOPC, MoRF, |error| (mm)",
                 "deletion_auc_abs_error_mm": "deletion AUC, |error| (mm)",
                 "band_ratio": "contour-band relevance ratio (1 = chance)"}
QUANTITY_LABELS = {"abs_error_mm": "|predicted HC - reference| (mm)",
                   "shift_mm": "|predicted HC - unperturbed prediction| (mm)",
                   "abs_error_px_original": "|predicted HC - reference| (original px)"}
# the metric of the error-split figure: the first of these that was computed
ERROR_SPLIT_METRICS = ("aopc_morf_abs_error_mm", "deletion_auc_abs_error_mm", "band_ratio")


def nested_curves(frame: pd.DataFrame) -> dict:
    """Curve rows (``method``, ``panel``, ``x``, ``mean``, ``ci_low``, ``ci_high``) as
    ``{method: {panel: (x, mean, low, high)}}``, the form ``fetalhc.viz.curves`` draws."""
    result = {}
    for (method, panel), group in frame.groupby(["method", "panel"], sort=False):
        group = group.sort_values("x")
        result.setdefault(method, {})[panel] = (group["x"].to_numpy(),
                                                group["mean"].to_numpy(),
                                                group["ci_low"].to_numpy(),
                                                group["ci_high"].to_numpy())
    return result


def write_figures(folder: Path, table: pd.DataFrame, curves: pd.DataFrame,
                  by_error: pd.DataFrame) -> dict:
    """Every figure the results allow, into ``folder``; returns ``{name: path}``.

    ``table``: per-image metrics of every method (with ``error_group``); ``curves``: the
    methods' mean curves; ``by_error``: the summary per method and error group."""
    from fetalhc.viz.curves import (
        deletion_insertion_figure,
        error_split_bars,
        localisation_boxplot,
        perturbation_figure,
        save_figure,
    )

    folder = Path(folder)
    written = {}
    if len(curves):
        perturbation = curves[curves["curve"] == "perturbation"].assign(
            panel=lambda f: f["order"])
        for quantity, group in perturbation.groupby("quantity", sort=False):
            if not group["mean"].notna().any():  # no references (e.g. challenge split)
                continue
            path = folder / f"perturbation_{quantity}.png"
            written[f"figure_perturbation_{quantity}"] = save_figure(
                perturbation_figure(nested_curves(group), ylabel=QUANTITY_LABELS[quantity]),
                path)
        deletion = curves[curves["curve"].isin(["deletion", "insertion"])].assign(
            panel=lambda f: f["curve"])
        for quantity, group in deletion.groupby("quantity", sort=False):
            if not group["mean"].notna().any():
                continue
            path = folder / f"deletion_insertion_{quantity}.png"
            written[f"figure_deletion_{quantity}"] = save_figure(
                deletion_insertion_figure(nested_curves(group),
                                          ylabel=QUANTITY_LABELS[quantity]), path)
    for column, ylabel, chance in (
            ("band_ratio", "contour-band ratio (1 = chance)", 1.0),
            ("inside_ratio", "inside-head ratio (1 = chance)", 1.0),
            ("top_distance_mm", "top pixels to contour (mm)", None)):
        if column in table:
            values = {m: g[column].to_numpy() for m, g in table.groupby("method", sort=False)}
            written[f"figure_{column}"] = save_figure(
                localisation_boxplot(values, ylabel, chance=chance),
                folder / f"localisation_{column}.png")
    metric = next((m for m in ERROR_SPLIT_METRICS if m in set(by_error["metric"])), None)
    if metric is not None:
        rows = by_error[by_error["metric"] == metric]
        methods = list(dict.fromkeys(rows["method"]))
        typical = table.groupby("error_group")["abs_error_mm"].median()
        groups = [g for g in typical.sort_values().index if g != "no reference"
                  and g in set(rows["error_group"])]
        if groups:
            shape = (len(methods), len(groups))
            means, lows, highs = (np.full(shape, np.nan) for _ in range(3))
            for row in rows.itertuples():
                if row.error_group in groups:
                    i, j = methods.index(row.method), groups.index(row.error_group)
                    means[i, j], lows[i, j], highs[i, j] = row.mean, row.ci_low, row.ci_high
            written["figure_error_split"] = save_figure(
                error_split_bars(groups, methods, means, lows, highs,
                                 ylabel=METRIC_LABELS.get(metric, metric)),
                folder / f"error_split_{metric}.png")
    return written

"""Agreement plots between predicted and reference HC (mm): Bland–Altman and scatter.

Rendering only (numpy in, matplotlib ``Figure`` out); imports no other fetalhc module but
``fetalhc.files`` (through ``figures``).
Figures are built with ``matplotlib.figure.Figure`` (no pyplot state, no GUI backend).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from fetalhc.viz.figures import save_figure  # noqa: F401  (re-exported)


def _pairs(prediction_mm, reference_mm) -> tuple[np.ndarray, np.ndarray]:
    prediction = np.asarray(prediction_mm, dtype=np.float64).reshape(-1)
    reference = np.asarray(reference_mm, dtype=np.float64).reshape(-1)
    if prediction.shape != reference.shape:
        raise ValueError(
            f"prediction and reference differ in length: {prediction.size} vs {reference.size}"
        )
    keep = np.isfinite(prediction) & np.isfinite(reference)
    if not keep.any():
        raise ValueError("no finite prediction/reference pairs to plot")
    return prediction[keep], reference[keep]


def limits_of_agreement(prediction_mm, reference_mm) -> tuple[float, float, float]:
    """(mean difference, lower, upper) 95 % limits of agreement in mm (pred - ref)."""
    prediction, reference = _pairs(prediction_mm, reference_mm)
    difference = prediction - reference
    mean = float(np.mean(difference))
    sd = float(np.std(difference, ddof=1)) if difference.size > 1 else 0.0
    return mean, mean - 1.96 * sd, mean + 1.96 * sd


def bland_altman_figure(prediction_mm, reference_mm, title: str | None = None) -> Figure:
    """Bland–Altman plot: difference (pred - ref, mm) against the mean of both (mm), with
    the mean difference and the 95 % limits of agreement (mean ± 1.96 SD)."""
    prediction, reference = _pairs(prediction_mm, reference_mm)
    mean_difference, lower, upper = limits_of_agreement(prediction, reference)
    average = (prediction + reference) / 2.0
    difference = prediction - reference
    figure = Figure(figsize=(6, 4.5), dpi=100)
    axes = figure.add_subplot(1, 1, 1)
    axes.scatter(average, difference, s=14, alpha=0.7, color="tab:blue", edgecolors="none")
    axes.axhline(mean_difference, color="tab:red",
                 label=f"mean difference {mean_difference:+.2f} mm")
    axes.axhline(lower, color="tab:gray", linestyle="--",
                 label=f"95 % limits {lower:+.2f} / {upper:+.2f} mm")
    axes.axhline(upper, color="tab:gray", linestyle="--")
    axes.axhline(0.0, color="black", linewidth=0.6)
    axes.set_xlabel("mean of predicted and reference HC (mm)")
    axes.set_ylabel("predicted - reference HC (mm)")
    axes.set_title(title or f"Bland–Altman (n = {prediction.size})")
    axes.legend(loc="best", fontsize="small")
    figure.tight_layout()
    return figure


def scatter_figure(prediction_mm, reference_mm, title: str | None = None) -> Figure:
    """Predicted against reference HC (mm), with the identity line."""
    prediction, reference = _pairs(prediction_mm, reference_mm)
    figure = Figure(figsize=(5, 5), dpi=100)
    axes = figure.add_subplot(1, 1, 1)
    low = float(min(prediction.min(), reference.min()))
    high = float(max(prediction.max(), reference.max()))
    margin = 0.05 * (high - low or 1.0)
    axes.plot([low - margin, high + margin], [low - margin, high + margin], color="black",
              linewidth=0.8, label="identity")
    axes.scatter(reference, prediction, s=14, alpha=0.7, color="tab:blue", edgecolors="none")
    mae = float(np.mean(np.abs(prediction - reference)))
    axes.set_xlim(low - margin, high + margin)
    axes.set_ylim(low - margin, high + margin)
    axes.set_aspect("equal")
    axes.set_xlabel("reference HC (mm)")
    axes.set_ylabel("predicted HC (mm)")
    axes.set_title(title or f"predicted vs reference (MAE {mae:.2f} mm, n = {prediction.size})")
    axes.legend(loc="upper left", fontsize="small")
    figure.tight_layout()
    return figure

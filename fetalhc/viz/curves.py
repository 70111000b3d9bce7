"""Figures of explanation evaluations: arrays in, matplotlib figures out.

- :func:`perturbation_figure`: MoRF / LeRF / random curves (one panel per order, one line
  per method, shaded CI), error in mm against regions removed.
- :func:`deletion_insertion_figure`: deletion and insertion curves per method.
- :func:`localisation_boxplot`: per-image localisation scores per method, chance line.
- :func:`error_split_bars`: a metric per method split by prediction-error group, with CIs.
- :func:`save_figure`: write a figure through :mod:`fetalhc.files`.

Curves are given as ``{method: {panel: (x, mean, low, high)}}`` with numpy arrays; ``low``
and ``high`` may be None. Figures are ``matplotlib.figure.Figure`` objects (no pyplot state,
no backend chosen). Imports no other fetalhc module but ``fetalhc.files`` (through
``figures``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from fetalhc.viz import figures

Curve = tuple  # (x, mean, low | None, high | None)

ORDER_TITLES = {"morf": "MoRF (most relevant first)", "lerf": "LeRF (least relevant first)",
                "random": "random order", "deletion": "deletion", "insertion": "insertion"}


def _curve_panels(curves: Mapping[str, Mapping[str, Curve]], panels: Sequence[str],
                  xlabel: str, ylabel: str, title: str | None) -> Figure:
    if not curves:
        raise ValueError("no curves to plot")
    figure = Figure(figsize=(4.2 * len(panels), 3.6))
    axes = figure.subplots(1, len(panels), sharey=True, squeeze=False)
    colours = colormaps["tab10"]
    for column, panel in enumerate(panels):
        axis = axes[0, column]
        for index, (method, by_panel) in enumerate(curves.items()):
            if panel not in by_panel:
                continue
            x, mean, low, high = (list(by_panel[panel]) + [None, None])[:4]
            x = np.asarray(x, dtype=float)
            colour = colours(index % 10)
            axis.plot(x, np.asarray(mean, dtype=float), marker="o", markersize=3,
                      color=colour, label=method)
            if low is not None and high is not None:
                axis.fill_between(x, np.asarray(low, float), np.asarray(high, float),
                                  color=colour, alpha=0.15, linewidth=0)
        axis.set_title(ORDER_TITLES.get(panel, panel))
        axis.set_xlabel(xlabel)
        axis.grid(alpha=0.3)
    axes[0, 0].set_ylabel(ylabel)
    axes[0, -1].legend(fontsize="small", frameon=False)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def perturbation_figure(curves: Mapping[str, Mapping[str, Curve]],
                        orders: Sequence[str] = ("morf", "lerf", "random"),
                        ylabel: str = "|predicted HC - reference| (mm)",
                        xlabel: str = "regions replaced", title: str | None = None) -> Figure:
    """One panel per order, one line per method (mean over images, shaded CI)."""
    present = [o for o in orders if any(o in c for c in curves.values())]
    return _curve_panels(curves, present or list(orders), xlabel, ylabel, title)


def deletion_insertion_figure(curves: Mapping[str, Mapping[str, Curve]],
                              ylabel: str = "|predicted HC - reference| (mm)",
                              xlabel: str = "fraction of pixels deleted / inserted",
                              title: str | None = None) -> Figure:
    """Deletion and insertion panels, one line per method."""
    present = [k for k in ("deletion", "insertion") if any(k in c for c in curves.values())]
    return _curve_panels(curves, present or ["deletion"], xlabel, ylabel, title)


def localisation_boxplot(values: Mapping[str, np.ndarray], ylabel: str,
                         chance: float | None = 1.0, title: str | None = None) -> Figure:
    """Boxplot of per-image scores per method; a dashed line marks chance (ratio 1)."""
    if not values:
        raise ValueError("no localisation scores to plot")
    names = list(values)
    data = [np.asarray(values[name], dtype=float) for name in names]
    data = [d[np.isfinite(d)] for d in data]
    figure = Figure(figsize=(max(4.0, 1.1 * len(names) + 1.5), 3.8))
    axis = figure.add_subplot(1, 1, 1)
    axis.boxplot(data, showmeans=True)
    axis.set_xticks(np.arange(1, len(names) + 1), names, rotation=30, ha="right")
    if chance is not None:
        axis.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
        axis.legend(fontsize="small", frameon=False)
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3, axis="y")
    if title:
        axis.set_title(title)
    figure.tight_layout()
    return figure


def error_split_bars(groups: Sequence[str], methods: Sequence[str], means, lows, highs,
                     ylabel: str, title: str | None = None) -> Figure:
    """Grouped bars: ``means`` ``(M, G)`` for methods × error groups, CI whiskers."""
    means = np.asarray(means, dtype=float)
    lows = np.asarray(lows, dtype=float)
    highs = np.asarray(highs, dtype=float)
    if means.shape != (len(methods), len(groups)):
        raise ValueError(f"means must be (methods, groups) = ({len(methods)}, {len(groups)}); "
                         f"got {means.shape}")
    figure = Figure(figsize=(max(4.5, 1.2 * len(methods) * len(groups) / 2 + 2), 3.8))
    axis = figure.add_subplot(1, 1, 1)
    width = 0.8 / max(len(groups), 1)
    x = np.arange(len(methods))
    for g, group in enumerate(groups):
        error = np.vstack([means[:, g] - lows[:, g], highs[:, g] - means[:, g]])
        axis.bar(x + (g - (len(groups) - 1) / 2) * width, means[:, g], width,
                 yerr=np.nan_to_num(error), capsize=3, label=group)
    axis.set_xticks(x, list(methods), rotation=30, ha="right")
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_ylabel(ylabel)
    axis.legend(fontsize="small", frameon=False, title="prediction error")
    axis.grid(alpha=0.3, axis="y")
    if title:
        axis.set_title(title)
    figure.tight_layout()
    return figure


def save_figure(figure: Figure, path, dpi: int = 120) -> Path:
    """Save ``figure`` to ``path`` atomically (format from the suffix). A ``Figure`` built
    here belongs to no pyplot manager: it is freed with its last reference."""
    return figures.save_figure(figure, path, dpi=dpi)

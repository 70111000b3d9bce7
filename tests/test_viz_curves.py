"""Evaluation figures: the right panels, lines, labels with units, atomic saving."""

from __future__ import annotations

import numpy as np
import pytest

from fetalhc.viz import curves


def _curve(slope):
    x = np.arange(5)
    mean = slope * x
    return (x, mean, mean - 1, mean + 1)


def test_perturbation_figure_has_one_panel_per_order_and_mm_label(tmp_path):
    data = {"gradient": {"morf": _curve(2.0), "lerf": _curve(0.5), "random": _curve(1.0)},
            "ig": {"morf": _curve(3.0), "lerf": _curve(0.1)}}
    figure = curves.perturbation_figure(data)
    axes = figure.axes
    assert [a.get_title() for a in axes] == ["MoRF (most relevant first)",
                                              "LeRF (least relevant first)", "random order"]
    assert "(mm)" in axes[0].get_ylabel()
    assert len(axes[0].get_lines()) == 2 and len(axes[2].get_lines()) == 1
    np.testing.assert_allclose(axes[0].get_lines()[1].get_ydata(), 3.0 * np.arange(5))
    path = curves.save_figure(figure, tmp_path / "sub" / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["p.png"]


def test_deletion_localisation_and_error_split_figures():
    data = {"m": {"deletion": _curve(1.0), "insertion": _curve(-1.0)}}
    figure = curves.deletion_insertion_figure(data)
    assert [a.get_title() for a in figure.axes] == ["deletion", "insertion"]
    box = curves.localisation_boxplot({"a": np.array([1.0, 2.0, np.nan]), "b": np.ones(3)},
                                      "band ratio")
    chance = [line for line in box.axes[0].get_lines() if line.get_label() == "chance"]
    assert len(chance) == 1 and chance[0].get_ydata()[0] == 1.0
    bars = curves.error_split_bars(["low", "high"], ["a", "b", "c"], np.ones((3, 2)),
                                   np.zeros((3, 2)), 2 * np.ones((3, 2)), "AOPC (mm)")
    assert len(bars.axes[0].patches) == 6
    with pytest.raises(ValueError, match="methods, groups"):
        curves.error_split_bars(["low"], ["a"], np.ones((2, 2)), np.ones((2, 2)),
                                np.ones((2, 2)), "x")
    with pytest.raises(ValueError, match="no curves"):
        curves.perturbation_figure({})

"""fetalhc.viz.overlay: signed colours, opacity, contour, grid, atomic save."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fetalhc.viz.overlay import (
    grid_figure,
    overlay_figure,
    saliency_rgba,
    save_figure,
    symmetric_limit,
)


def test_red_raises_blue_lowers_and_zero_is_transparent():
    saliency = np.array([[1.0, -1.0, 0.0]])
    rgba = saliency_rgba(saliency, limit=1.0)
    red, blue, zero = rgba[0]
    assert red[0] > 0.3 and red[0] > red[1] + 0.2 and red[0] > red[2] + 0.2  # positive: red
    assert blue[2] > 0.3 and blue[2] > blue[0] + 0.2  # negative: blue
    assert zero[3] == 0.0 and red[3] == pytest.approx(blue[3]) and red[3] > 0.5


def test_symmetric_limit():
    assert symmetric_limit(np.zeros((4, 4))) == 1.0
    values = np.concatenate([np.linspace(-1, 1, 999), [1000.0]])
    assert symmetric_limit(values, percentile=99) == pytest.approx(1.0, abs=0.01)
    assert symmetric_limit(np.array([0.0, -2.0]), percentile=100) == 2.0


def test_overlay_png_shows_the_map_and_the_contour(tmp_path):
    image = np.zeros((32, 32))
    saliency = np.zeros((32, 32))
    saliency[4:12, 4:12] = 1.0  # red block top-left
    saliency[20:28, 20:28] = -1.0  # blue block bottom-right
    contour = np.zeros((32, 32))
    contour[16, 2:30] = 1.0
    path = save_figure(overlay_figure(image, saliency, contour, title="t", units="mm"), tmp_path / "a.png")
    assert path.is_file() and not list(tmp_path.glob(".a.*"))
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    pixels = pixels[:, : int(pixels.shape[1] * 0.7)]  # the image panel, not the colour bar
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    reddish = (r > g + 50) & (r > b + 30)
    bluish = (b > r + 50)
    greenish = (g > r + 80) & (g > b + 80)
    assert reddish.sum() > 50 and bluish.sum() > 50 and greenish.sum() > 10
    assert np.argwhere(reddish)[:, 1].mean() < np.argwhere(bluish)[:, 1].mean()  # red left of blue


def test_grid_figure_and_errors(tmp_path):
    images = [np.random.default_rng(i).standard_normal((16, 16)) for i in range(3)]
    maps = {"gradient": [img * 0.1 for img in images], "occlusion": [-img for img in images]}
    figure = grid_figure(images, maps, contours=None, column_titles=["a", "b", "c"],
                         units={"gradient": "mm/unit", "occlusion": "mm"})
    assert len(figure.axes) == 6
    save_figure(figure, tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="2 maps for 3 images"):
        grid_figure(images, {"gradient": maps["gradient"][:2]})
    with pytest.raises(ValueError, match="differ in shape"):
        overlay_figure(np.zeros((8, 8)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="2-D"):
        overlay_figure(np.zeros((2, 8, 8, 1)), np.zeros((2, 8, 8, 1)))


def test_figure_to_rgb_renders_without_taking_the_figure_over():
    """TensorBoard's picture of a figure: RGB uint8 at the figure's size; the figure keeps
    its canvas and dpi (a notebook's pyplot figure stays usable)."""
    from matplotlib.figure import Figure

    from fetalhc.viz.figures import figure_to_rgb

    figure = Figure(figsize=(2, 1), dpi=50)
    figure.add_subplot(1, 1, 1).imshow(np.ones((4, 4)), cmap="gray")
    canvas = figure.canvas
    rgb = figure_to_rgb(figure)
    assert rgb.dtype == np.uint8 and rgb.shape == (50, 100, 3)
    assert figure_to_rgb(figure, dpi=100).shape == (100, 200, 3)
    assert figure.canvas is canvas and figure.dpi == 50

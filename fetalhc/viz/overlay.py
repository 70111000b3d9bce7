"""Signed saliency overlays: diverging colormap centred on 0 over the grey image.

Red raises the explained quantity (HC), blue lowers it; colour opacity follows the magnitude,
so weak relevance leaves the image visible. The annotation contour (a thin 0/1 outline) is
drawn as a thin line when given. Rendering only: arrays in, ``matplotlib.figure.Figure``
out (no pyplot state, no backend chosen); :func:`save_figure` writes atomically. Imports no other fetalhc
module but ``fetalhc.files`` (through ``figures``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from fetalhc.viz.figures import save_figure  # noqa: F401  (re-exported)

CMAP = "RdBu_r"  # red positive, blue negative
CONTOUR_COLOR = "#39ff14"


def _as_2d(array, name: str) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[-1] == 3:
        array = array.mean(axis=-1)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (H, W) or (H, W, 1); got shape {array.shape}")
    return array


def symmetric_limit(saliency, percentile: float = 99.5) -> float:
    """Colour limit ``v`` for the range ``[-v, v]``: a high percentile of ``|saliency|``
    (robust to a few extreme pixels); 1.0 for an all-zero or non-finite map."""
    magnitude = np.abs(np.asarray(saliency, dtype=np.float64))
    magnitude = magnitude[np.isfinite(magnitude)]
    if magnitude.size == 0:
        return 1.0
    limit = float(np.percentile(magnitude, percentile))
    if limit <= 0:
        limit = float(magnitude.max())
    return limit if limit > 0 else 1.0


def saliency_rgba(saliency, limit: float | None = None, max_alpha: float = 0.85,
                  gamma: float = 0.6) -> np.ndarray:
    """RGBA (H, W, 4) of a signed map: colour from the diverging map, opacity from ``|map|``."""
    saliency = _as_2d(saliency, "saliency")
    limit = symmetric_limit(saliency) if limit is None else float(limit)
    if not limit > 0:
        raise ValueError(f"colour limit must be > 0; got {limit}")
    scaled = np.clip(np.nan_to_num(saliency) / limit, -1.0, 1.0)
    rgba = colormaps[CMAP]((scaled + 1.0) / 2.0)
    rgba[..., 3] = max_alpha * np.abs(scaled) ** gamma
    return rgba


def draw_overlay(ax, image, saliency, contour=None, limit: float | None = None,
                 title: str | None = None, units: str | None = None, colorbar: bool = True):
    """Draw one overlay into a matplotlib Axes; returns the colour limit used."""
    image = _as_2d(image, "image")
    saliency = _as_2d(saliency, "saliency")
    if image.shape != saliency.shape:
        raise ValueError(f"image {image.shape} and saliency {saliency.shape} differ in shape")
    limit = symmetric_limit(saliency) if limit is None else float(limit)
    low, high = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
    ax.imshow(image, cmap="gray", vmin=low, vmax=high if high > low else low + 1,
              interpolation="nearest")
    ax.imshow(saliency_rgba(saliency, limit), interpolation="nearest")
    if contour is not None:
        contour = _as_2d(contour, "contour")
        if contour.shape != image.shape:
            raise ValueError(f"contour {contour.shape} and image {image.shape} differ in shape")
        if contour.max() > contour.min():
            ax.contour(contour, levels=[0.5 * (contour.max() + contour.min())],
                       colors=CONTOUR_COLOR, linewidths=0.6)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)
    if colorbar:
        mappable = ScalarMappable(norm=Normalize(-limit, limit), cmap=CMAP)
        bar = ax.figure.colorbar(mappable, ax=ax, fraction=0.046, pad=0.02)
        bar.ax.tick_params(labelsize=6)
        if units:
            bar.set_label(units, fontsize=7)
    return limit


def overlay_figure(image, saliency, contour=None, title: str | None = None,
                   units: str | None = None, size_inches: float = 3.2) -> Figure:
    """A one-panel figure: grey image, signed saliency (red raises, blue lowers), contour."""
    figure = Figure(figsize=(size_inches * 1.2, size_inches), dpi=120)
    ax = figure.add_subplot(1, 1, 1)
    draw_overlay(ax, image, saliency, contour, title=title, units=units)
    figure.tight_layout()
    return figure


def grid_figure(images: Sequence, maps: Mapping[str, Sequence], contours: Sequence | None = None,
                column_titles: Sequence[str] | None = None,
                units: Mapping[str, str] | None = None, cell_inches: float = 1.9) -> Figure:
    """Methods (rows) x images (columns). ``maps[method]`` holds one map per image; each
    cell has its own symmetric colour limit (printed in the cell title with the units)."""
    images = list(images)
    if not images or not maps:
        raise ValueError("grid_figure needs at least one image and one method")
    for method, method_maps in maps.items():
        if len(method_maps) != len(images):
            raise ValueError(f"method {method!r} has {len(method_maps)} maps for {len(images)} images")
    rows, columns = len(maps), len(images)
    figure = Figure(figsize=(cell_inches * columns + 0.8, cell_inches * rows + 0.4), dpi=110)
    axes = figure.subplots(rows, columns, squeeze=False)
    for row, (method, method_maps) in enumerate(maps.items()):
        for column, image in enumerate(images):
            ax = axes[row][column]
            contour = None if contours is None else contours[column]
            limit = symmetric_limit(method_maps[column])
            unit = (units or {}).get(method, "")
            heading = column_titles[column] + "\n" if column_titles and row == 0 else ""
            draw_overlay(ax, image, method_maps[column], contour, limit=limit,
                         title=f"{heading}±{limit:.3g} {unit}".strip(), colorbar=False)
            if column == 0:
                ax.set_ylabel(method, fontsize=8)
    figure.suptitle("red raises HC, blue lowers it", fontsize=8)
    figure.tight_layout()
    return figure

"""Figure plumbing shared by every renderer: saving through :mod:`fetalhc.files` (the one
atomic writer), and a figure as an RGB array (for TensorBoard). Imports no other fetalhc
module but ``fetalhc.files`` and its viz siblings.

Every fetalhc figure is a ``matplotlib.figure.Figure`` built without pyplot, and nothing here
chooses a backend: importing fetalhc in a notebook leaves its backend and its pyplot figures
alone. Saving and rendering need no GUI backend (``savefig`` picks the writer from the
format; :func:`figure_to_rgb` renders with Agg explicitly).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fetalhc.files import atomic_path


def figure_to_rgb(figure: Figure, dpi: int | None = None) -> np.ndarray:
    """Render ``figure`` off-screen to a uint8 RGB array ``(H, W, 3)``.

    The figure keeps its own canvas and dpi (a pyplot figure stays usable in a notebook)."""
    original_canvas, original_dpi = figure.canvas, figure.dpi
    try:
        if dpi is not None:
            figure.set_dpi(dpi)
        canvas = FigureCanvasAgg(figure)
        canvas.draw()
        return np.asarray(canvas.buffer_rgba())[..., :3].copy()
    finally:
        figure.set_canvas(original_canvas)
        figure.set_dpi(original_dpi)


def save_figure(figure: Figure, path, dpi: int | None = None) -> Path:
    """Write ``figure`` to ``path`` atomically (:func:`fetalhc.files.atomic_path`), so an
    interrupted run never leaves half a picture; returns the path. The format follows the
    suffix (``.png``, ``.pdf``, ``.svg``; matplotlib's default format without one)."""
    path = Path(path)
    file_format = path.suffix.lstrip(".").lower() or matplotlib.rcParams["savefig.format"]
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=dpi, format=file_format)
    return path

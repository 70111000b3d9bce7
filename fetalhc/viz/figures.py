"""Figure plumbing shared by every renderer: saving through :mod:`fetalhc.files` (the one
atomic writer), and a figure as an RGB array (for TensorBoard). Imports no other fetalhc
module but ``fetalhc.files`` and its viz siblings."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)

import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from fetalhc.files import atomic_path  # noqa: E402


def figure_to_rgb(figure: Figure, dpi: int | None = None) -> np.ndarray:
    """Render ``figure`` off-screen to a uint8 RGB array ``(H, W, 3)``."""
    if dpi is not None:
        figure.set_dpi(dpi)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_figure(figure: Figure, path, dpi: int | None = None) -> Path:
    """Write ``figure`` to ``path`` atomically (:func:`fetalhc.files.atomic_path`), so an
    interrupted run never leaves half a picture; returns the path. The format follows the
    suffix (``.png``, ``.pdf``, ``.svg``; matplotlib's default format without one)."""
    path = Path(path)
    file_format = path.suffix.lstrip(".").lower() or matplotlib.rcParams["savefig.format"]
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=dpi, format=file_format)
    return path

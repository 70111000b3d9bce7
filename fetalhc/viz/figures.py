"""Figure plumbing shared by every renderer: atomic saving, and a figure as an RGB array
(for TensorBoard). Imports no other fetalhc module but its viz siblings."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)

import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def figure_to_rgb(figure: Figure, dpi: int | None = None) -> np.ndarray:
    """Render ``figure`` off-screen to a uint8 RGB array ``(H, W, 3)``."""
    if dpi is not None:
        figure.set_dpi(dpi)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_figure(figure: Figure, path, dpi: int | None = None) -> Path:
    """Write ``figure`` to ``path`` atomically (a temporary file in the same folder, then
    ``os.replace``), so an interrupted run never leaves half a picture; returns the path.
    The format follows the suffix (``.png``, ``.pdf``, ``.svg``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix,
                                         dir=path.parent)
    os.close(handle)
    try:
        figure.savefig(temporary, dpi=dpi)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path

"""Figure plumbing shared by every renderer: a figure as an RGB array (for TensorBoard)."""

from __future__ import annotations

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

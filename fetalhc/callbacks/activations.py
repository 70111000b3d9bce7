"""`ActivationsVisualizationCallback`: what named 4-D layers compute on a fixed validation
subset, in TensorBoard while a model trains (tf-explain's callback of that name).

At the end of epochs 0, N, 2N, ... (``every_n_epochs``), a forward pass of the subset
through ``fetalhc.explain``'s view on each layer (the one Grad-CAM uses) gives, per layer
``<layer>``:

- the image ``activations/<layer>``: a grey-level grid, one row per image (at most
  ``max_images``), one column per channel (the first ``max_channels``), every tile on the
  same scale (the layer's minimum to maximum over the tiles shown), so channels compare;
- the scalars ``activations/<layer>/mean`` (mean activation) and
  ``activations/<layer>/zero_fraction`` (share of activations that are exactly 0: dead ReLU
  units show up as it climbs towards 1), also written into Keras' epoch ``logs``.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from fetalhc.callbacks.validation import validation_subset
from fetalhc.callbacks.writer import EpochWriterCallback
from fetalhc.explain import hc_output_model
from fetalhc.explain.views import check_conv_layer, layer_view


class ActivationsVisualizationCallback(EpochWriterCallback):
    """Log the activations of the 4-D layers ``layers_name`` to TensorBoard.

    Args:
        validation_data: any form :class:`SaliencyCallback` takes (tf-explain's ``(x, y)``
            included; ``y`` and the pixel sizes are not needed).
        layers_name: a layer name or a list of them, each with a 4-D output ``(B, H, W, C)``
            on the way to the HC output.
        output_dir: TensorBoard log folder (tf-explain's default folder; no timestamped
            sub-folder).
        every_n_epochs: log at the end of epochs 0, N, 2N, ... (0-based).
        max_images: images of ``validation_data`` used (the first ones; default 4).
        max_channels: channels drawn per layer (the first ones; default 16). The scalars
            use every channel.
        update_logs: also write the scalars into Keras' epoch ``logs`` (default True).
    """

    def __init__(self, validation_data, layers_name,
                 output_dir=Path("logs/activations_visualizations"), *, every_n_epochs: int = 1,
                 max_images: int = 4, max_channels: int = 16, update_logs: bool = True):
        super().__init__()
        names = [layers_name] if isinstance(layers_name, str) else list(layers_name or [])
        if not names or not all(isinstance(name, str) and name for name in names):
            raise ValueError(f"layers_name must be a layer name or a list of layer names; "
                             f"got {layers_name!r}")
        for name, value in (("every_n_epochs", every_n_epochs), ("max_images", max_images),
                            ("max_channels", max_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
        self.layers_name = names
        self.output_dir = str(output_dir or "logs/activations_visualizations")
        self.every_n_epochs = every_n_epochs
        self.max_channels = max_channels
        self.update_logs = bool(update_logs)
        self.images = validation_subset(validation_data, max_images)["image"]

    def views(self) -> list[keras.Model]:
        """Per layer, the view ``image -> [activation, HC]`` of ``fetalhc.explain`` (cached
        per model, shared with Grad-CAM); a one-line ValueError for a layer that is not a
        4-D layer on the way to the HC output."""
        hc_model = hc_output_model(self.model)
        for name in self.layers_name:
            check_conv_layer(hc_model, name, what="layers_name", model_name=self.model.name)
        return [layer_view(self.model, name) for name in self.layers_name]

    def check(self) -> None:
        self.views()  # a mistake stops fit() before the first epoch, not after it

    def log_epoch(self, epoch: int = 0) -> dict[str, float]:
        """One forward pass per layer; writes the grids and scalars, returns the scalars."""
        scalars: dict[str, float] = {}
        for name, view in zip(self.layers_name, self.views(), strict=True):
            values = np.asarray(view(self.images, training=False)[0], dtype=np.float32)
            scalars[f"activations/{name}/mean"] = float(values.mean())
            scalars[f"activations/{name}/zero_fraction"] = float(np.mean(values == 0))
            tf.summary.image(f"activations/{name}", tile(values, self.max_channels)[None],
                             max_outputs=1)
        for name, value in scalars.items():
            tf.summary.scalar(name, value)
        return scalars


def tile(values: np.ndarray, max_channels: int) -> np.ndarray:
    """``(B, H, W, C)`` activations -> a uint8 grid ``(rows, cols, 1)``: one row per image,
    one column per channel (the first ``max_channels``), one scale for all tiles, a 1-px
    white line between tiles."""
    shown = values[..., :max_channels]
    low, high = float(shown.min()), float(shown.max())
    scaled = (shown - low) / (high - low) if high > low else np.zeros_like(shown)
    n, height, width, channels = scaled.shape
    grid = np.ones((n * (height + 1) - 1, channels * (width + 1) - 1), np.float32)
    for row in range(n):
        for column in range(channels):
            top, left = row * (height + 1), column * (width + 1)
            grid[top:top + height, left:left + width] = scaled[row, :, :, column]
    return (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)[..., None]

"""Inference with a trained model: HC (mm) for index rows, the per-image error table, scores.

``predict_hc_mm`` runs the model on the images and pixel sizes only (the reference HC never
reaches it); ``prediction_table`` joins the predictions with the reference HC;
``predict_and_score`` does both and summarises the errors in mm. ``forward_pass`` (index
rows) and ``forward_images`` (pre-processed arrays) are the one forward loop under them: the
HC output of the image and, on request, of its horizontal flip and the auxiliary ``ellipse``
output, which ``fetalhc.models.reliability`` turns into per-image flags. This is prediction,
not the explanation evaluation of ``fetalhc.evaluate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from fetalhc.models.graph import (
    hc_in_units,
    hc_output_value,
    output_names,
    require_output_units,
)
from fetalhc.models.io import check_input_size

# --tta: the views averaged (training augmentation flips horizontally, never vertically)
TTA_VIEWS = ("identity", "horizontal flip")


@dataclass(frozen=True)
class ForwardPass:
    """What one pass of a model over images gave, per image in their order (float64).

    ``hc`` / ``hc_flipped``: the HC output of the image / of its horizontal flip (``None``
    unless asked for), in ``output_units``: ``"px"`` (pixels of the input, fetalhc's) or
    ``"mm"`` (a model declared to predict mm); :attr:`hc_px`, :attr:`hc_mm` and their
    flipped versions convert with the input pixel size. ``ellipse``: the ``(N, 6)``
    standardised auxiliary ``ellipse`` output of the image (``None`` unless asked for)."""

    filenames: list[str]
    input_pixel_size_mm: np.ndarray = field(repr=False)
    hc: np.ndarray = field(repr=False)
    hc_flipped: np.ndarray | None = field(default=None, repr=False)
    ellipse: np.ndarray | None = field(default=None, repr=False)
    output_units: str = "px"

    @property
    def hc_px(self) -> np.ndarray:
        """HC in pixels of the network input."""
        return hc_in_units(self.hc, self.input_pixel_size_mm, self.output_units, "px")

    @property
    def hc_px_flipped(self) -> np.ndarray | None:
        return hc_in_units(self.hc_flipped, self.input_pixel_size_mm, self.output_units, "px")

    @property
    def hc_mm(self) -> np.ndarray:
        """HC in mm."""
        return hc_in_units(self.hc, self.input_pixel_size_mm, self.output_units, "mm")

    @property
    def hc_mm_flipped(self) -> np.ndarray | None:
        return hc_in_units(self.hc_flipped, self.input_pixel_size_mm, self.output_units, "mm")


def _forward_batch(model, images, flipped: bool, ellipse: bool):
    """(HC px, HC px of the flip or None, standardised ellipse or None) of one batch."""
    from fetalhc.models.build import ELLIPSE_OUTPUT

    outputs = model(images, training=False)
    hc = np.asarray(hc_output_value(outputs, model), dtype=np.float64).reshape(-1)
    ellipse_values = np.asarray(hc_output_value(outputs, model, ELLIPSE_OUTPUT),
                                dtype=np.float64).reshape(-1, 6) if ellipse else None
    hc_flipped = None
    if flipped:
        output = hc_output_value(model(images[:, :, ::-1], training=False), model)
        hc_flipped = np.asarray(output, dtype=np.float64).reshape(-1)
    return hc, hc_flipped, ellipse_values


def _check_ellipse(model, ellipse: bool) -> None:
    from fetalhc.models.build import ELLIPSE_OUTPUT

    if ellipse and ELLIPSE_OUTPUT not in output_names(model):
        raise ValueError(f"the model has no {ELLIPSE_OUTPUT!r} output (its outputs: "
                         f"{', '.join(output_names(model))})")


def _collect(parts, filenames, pixel_sizes, flipped: bool, ellipse: bool,
             output_units: str) -> ForwardPass:
    hc, hc_flipped, shapes = zip(*parts, strict=True) if parts else ((), (), ())
    return ForwardPass(
        filenames=list(filenames), input_pixel_size_mm=np.asarray(pixel_sizes, np.float64),
        hc=np.concatenate(hc), hc_flipped=np.concatenate(hc_flipped) if flipped else None,
        ellipse=np.concatenate(shapes) if ellipse else None, output_units=output_units)


def forward_pass(model, index: pd.DataFrame, image_size: int, batch_size: int = 32, *,
                 flipped: bool = False, ellipse: bool = False, on_batch=None,
                 output_units: str | None = None, intensity: str = "zscore") -> ForwardPass:
    """Run ``model`` over the ``index`` rows (images and pixel sizes only: the reference HC
    is blanked before the pipeline), ``batch_size`` images at a time. ``flipped``: also the
    horizontally flipped images; ``ellipse``: also the ``ellipse`` output (a ``ValueError``
    when the model has none). ``on_batch(n)``: called after each batch. ``output_units``:
    ``"mm"`` or ``"px"``, the unit of the HC output of a model that is not fetalhc's (a
    fetalhc model says it itself; undeclared, another model is a ``ValueError``).
    ``intensity``: of the pre-processing (``fetalhc.data.INTENSITIES``; a model of your own
    may take ``"0-1"`` or ``"0-255"``)."""
    from fetalhc.data import make_dataset

    units = require_output_units(model, None, output_units)
    check_input_size(model, image_size)
    _check_ellipse(model, ellipse)
    if len(index) == 0:
        raise ValueError("nothing to predict: the split is empty")
    # hc_mm is replaced so the reference can never reach the computation.
    blind = index.assign(hc_mm=np.nan)
    dataset = make_dataset(blind, image_size=image_size, batch_size=batch_size, shuffle=False,
                           augment=False, cache=False, intensity=intensity)
    parts, names, pixel_sizes = [], [], []
    for batch in dataset:
        parts.append(_forward_batch(model, batch["image"], flipped, ellipse))
        pixel_sizes.extend(batch["pixel_size_mm"].numpy().astype(np.float64))
        names.extend(name.decode() for name in batch["filename"].numpy())
        if on_batch is not None:
            on_batch(int(batch["image"].shape[0]))
    return _collect(parts, names, pixel_sizes, flipped, ellipse, units)


def forward_images(model, images, index: pd.DataFrame, image_size: int, batch_size: int = 32,
                   *, flipped: bool = False, ellipse: bool = False,
                   on_batch=None, output_units: str | None = None) -> ForwardPass:
    """:func:`forward_pass` on pre-processed ``images`` ``(N, S, S, 1)`` of the ``index``
    rows (e.g. ``fetalhc.data.load_arrays(index, image_size)["image"]``); the input pixel
    sizes follow from the index (``fetalhc.data.input_pixel_size_mm``: letterbox or crop)."""
    from fetalhc.data import input_pixel_size_mm

    units = require_output_units(model, None, output_units)
    check_input_size(model, image_size)
    _check_ellipse(model, ellipse)
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[0] != len(index) or len(index) == 0:
        raise ValueError(f"images must be (N, S, S, C) with N = {len(index)} index rows > 0; "
                         f"got shape {images.shape}")
    pixel_sizes = input_pixel_size_mm(index, image_size)
    parts = []
    for start in range(0, len(images), int(batch_size)):
        chunk = images[start:start + int(batch_size)]
        parts.append(_forward_batch(model, chunk, flipped, ellipse))
        if on_batch is not None:
            on_batch(len(chunk))
    return _collect(parts, index["filename"].astype(str), pixel_sizes, flipped, ellipse,
                    units)


def prediction_frame(forward: ForwardPass, index: pd.DataFrame, tta: bool = False
                     ) -> pd.DataFrame:
    """The table of :func:`predict_hc_mm` from a forward pass of the ``index`` rows; ``tta``
    averages the image and its horizontal flip (in input px; the pass needs ``flipped``)."""
    prediction_px, prediction_mm = forward.hc_px, forward.hc_mm
    if tta:
        if forward.hc_flipped is None:
            raise ValueError("tta needs the flipped view; run the forward pass with flipped=True")
        prediction_px = (forward.hc_px + forward.hc_px_flipped) / 2
        prediction_mm = (forward.hc_mm + forward.hc_mm_flipped) / 2
    return pd.DataFrame({
        "filename": list(forward.filenames),
        "pixel size (mm)": index["pixel_size_mm"].to_numpy(np.float64),
        "input pixel size (mm)": forward.input_pixel_size_mm,
        "prediction (px)": prediction_px,
        "prediction (mm)": prediction_mm,
    })


def predict_hc_mm(model, index: pd.DataFrame, image_size: int, batch_size: int = 32,
                  tta: bool = False, on_batch=None,
                  output_units: str | None = None) -> pd.DataFrame:
    """Predict HC (mm) for the rows of ``index``; uses only images and pixel sizes.
    ``on_batch(n)`` (optional) is called after each batch with its number of images (e.g. a
    progress bar's ``update``).

    Returns a DataFrame with ``filename``, ``pixel size (mm)`` (of the original image),
    ``input pixel size (mm)``, ``prediction (px)`` (input px) and ``prediction (mm)``.
    ``tta`` (test-time augmentation) averages the predictions (in input px) of the image and
    of its horizontal flip (:data:`TTA_VIEWS`), which keeps the HC of an ellipse; vertical
    flips are left out: training augmentation never shows them, and they made
    predictions worse.
    """
    forward = forward_pass(model, index, image_size, batch_size, flipped=tta,
                           on_batch=on_batch, output_units=output_units)
    return prediction_frame(forward, index, tta=tta)


def prediction_table(predictions: pd.DataFrame, index: pd.DataFrame) -> pd.DataFrame:
    """Join predictions with the index's reference HC → the per-image error table (mm)."""
    reference = index["hc_mm"].to_numpy(np.float64)
    table = pd.DataFrame({
        "filename": predictions["filename"],
        "pixel size (mm)": predictions["pixel size (mm)"],
        "reference (mm)": reference,
        "prediction (mm)": predictions["prediction (mm)"],
    })
    table["error (mm)"] = table["prediction (mm)"] - table["reference (mm)"]
    table["abs error (mm)"] = table["error (mm)"].abs()
    return table


def predict_and_score(model, index: pd.DataFrame, image_size: int, batch_size: int = 32,
                      tta: bool = False) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Predict a labelled split and score it: (per-image table, metrics in mm).

    Re-exported as ``fetalhc.training.evaluate_split`` (its former name)."""
    from fetalhc.metrics import summarise_mm

    predictions = predict_hc_mm(model, index, image_size, batch_size=batch_size, tta=tta)
    table = prediction_table(predictions, index)
    return table, summarise_mm(table["prediction (mm)"], table["reference (mm)"])

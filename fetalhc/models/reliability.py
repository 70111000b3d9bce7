"""Per-image reliability flags a clinician can act on, from the model and the image only.

The reference HC never reaches these flags (``predict`` and ``explain`` compute them on the
challenge split too). Three flags, each ``True``, ``False`` or unknown (``<NA>``):

- ``flag: outside training range``: the prediction (mm) lies below the smallest or above
  the largest reference HC (mm) of the training split (``hc_range_mm``; a run records it as
  ``hc_min_mm`` / ``hc_max_mm`` in its config's ``[run]``, :func:`training_hc_range_mm`).
  Unknown without a range (a bare model file).
- ``flag: ellipse at border``: the head ellipse the auxiliary ``ellipse`` output predicts
  (mapped back to input px by ``fetalhc.models.ellipse_head``) reaches within
  ``border_tolerance_px`` input pixels of the image content (the resized image, not its
  zero padding, ``fetalhc.data.input_geometry``; for a crop the part of the crop inside the
  image) or beyond it: part of the skull may be cut off. Unknown for a model without the
  ``ellipse`` output.
- ``flag: flip disagreement``: ``|prediction - prediction of the horizontally flipped
  image|`` (mm; with TTA still the un-averaged prediction) exceeds ``flip_threshold_mm``.
  Training sees horizontal flips, so a model should agree with itself there.

``flagged`` is ``True`` when any known flag is. A non-finite prediction (or ellipse) counts
as flagged by every flag it feeds. :func:`reliability_flags` is the library entry;
``fetalhc predict`` and ``fetalhc explain`` write its columns.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping

import numpy as np
import pandas as pd

from fetalhc.models.prediction import ForwardPass, forward_images, forward_pass

DEFAULT_FLIP_THRESHOLD_MM = 5.0  # a flip disagreement above this is flagged
BORDER_TOLERANCE_PX = 1.0  # an ellipse this close (input px) to the content box is flagged

FLIPPED_COLUMN = "flipped prediction (mm)"
DISAGREEMENT_COLUMN = "flip disagreement (mm)"
RANGE_FLAG = "flag: outside training range"
BORDER_FLAG = "flag: ellipse at border"
FLIP_FLAG = "flag: flip disagreement"
FLAGGED = "flagged"
FLAG_COLUMNS = (RANGE_FLAG, BORDER_FLAG, FLIP_FLAG)
RELIABILITY_COLUMNS = (FLIPPED_COLUMN, DISAGREEMENT_COLUMN, *FLAG_COLUMNS, FLAGGED)


# ----------------------------------------------------------------------------- settings
def check_flip_threshold(value, name: str = "--flip-threshold-mm") -> float:
    """``value`` as a float, or a one-line ``ValueError`` unless it is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number of mm > 0 (e.g. "
                         f"{DEFAULT_FLIP_THRESHOLD_MM:g}); got {value!r}")
    return float(value)


def check_hc_range(hc_range_mm) -> tuple[float, float] | None:
    """``None``, or ``(min, max)`` in mm as floats; a one-line ``ValueError`` unless both are
    finite, positive and ``min <= max``."""
    if hc_range_mm is None:
        return None
    try:
        low, high = (float(value) for value in hc_range_mm)
    except (TypeError, ValueError):
        raise ValueError(f"hc_range_mm must be (min, max) in mm; got {hc_range_mm!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
        raise ValueError(f"hc_range_mm must be finite, > 0 and min <= max; got ({low}, {high})")
    return low, high


def check_border_tolerance(value) -> float:
    """``value`` as a float, or a one-line ``ValueError`` unless it is a finite number of
    input px >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"border_tolerance_px must be a finite number of input px >= 0; "
                         f"got {value!r}")
    return float(value)


def reliability_settings(hc_range_mm=None, flip_threshold_mm: float = DEFAULT_FLIP_THRESHOLD_MM,
                         border_tolerance_px: float = BORDER_TOLERANCE_PX) -> dict:
    """What the flags depend on besides the model and the images, as JSON values (recorded
    in provenance and metrics, so results of other settings are never mistaken for these)."""
    hc_range = check_hc_range(hc_range_mm)
    return {"flip_threshold_mm": check_flip_threshold(flip_threshold_mm),
            "hc_range_mm": None if hc_range is None else list(hc_range),
            "border_tolerance_px": check_border_tolerance(border_tolerance_px)}


def training_hc_range_mm(run_config: Mapping, data_dir: str | os.PathLike | None = None
                         ) -> tuple[float, float] | None:
    """The reference HC range (mm) of a run's training split: ``hc_min_mm`` / ``hc_max_mm``
    of its config's ``[run]`` (recorded since issue #19); for an older run, the min and max
    HC of the ``[split] train`` files in ``data_dir``'s index. ``None`` when neither is
    available (no such keys and no ``data_dir``, an empty train split, or a data folder that
    lacks some of its files or cannot be read)."""
    run = run_config.get("run", {}) or {}
    if "hc_min_mm" in run and "hc_max_mm" in run:
        return check_hc_range((run["hc_min_mm"], run["hc_max_mm"]))
    names = list((run_config.get("split", {}) or {}).get("train", []))
    if data_dir is None or not names:
        return None
    from fetalhc.data import DataError, load_index

    try:
        index = load_index(data_dir, "training", validate=False)
    except (DataError, OSError):
        return None
    hc = index.set_index("filename")["hc_mm"].reindex(names)
    if hc.isna().any():
        return None
    return check_hc_range((hc.min(), hc.max()))


# ----------------------------------------------------------------------------- geometry
def ellipse_boxes(ellipses) -> np.ndarray:
    """``(N, 4)`` bounding boxes ``x0, y0, x1, y1`` (input px) of ``(N, 5)`` ellipses ``cx,
    cy, a, b, angle_rad`` (``a`` along ``(cos θ, sin θ)``)."""
    cx, cy, a, b, angle = np.asarray(ellipses, dtype=np.float64).reshape(-1, 5).T
    cos, sin = np.cos(angle), np.sin(angle)
    half_x = np.sqrt((a * cos) ** 2 + (b * sin) ** 2)
    half_y = np.sqrt((a * sin) ** 2 + (b * cos) ** 2)
    return np.column_stack([cx - half_x, cy - half_y, cx + half_x, cy + half_y])


def content_boxes(index: pd.DataFrame, image_size: int) -> np.ndarray:
    """``(N, 4)`` boxes ``x0, y0, x1, y1`` of each row's image content in the input (input
    px, pixel-centre coordinates: the outer edges of the first and last content pixels):
    the resized image without its padding (``fetalhc.data.input_geometry``) or, for an index
    with crop regions, the part of the crop that shows the image
    (``fetalhc.data.crop_geometry(...).inside()``)."""
    from fetalhc.data import crop_geometry, index_regions, input_geometry

    regions = index_regions(index)
    boxes = []
    for row, (width, height) in enumerate(zip(index["width_px"], index["height_px"],
                                              strict=True)):
        if regions is None:
            geometry = input_geometry(int(width), int(height), int(image_size))
            left, top = geometry.offset_x, geometry.offset_y
            box_width, box_height = geometry.width, geometry.height
        else:
            cx, cy, side = regions[row]
            box_height, box_width, top, left = crop_geometry(
                cx, cy, side, int(width), int(height), int(image_size)).inside()
        boxes.append((left - 0.5, top - 0.5, left + box_width - 0.5, top + box_height - 0.5))
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def ellipse_at_border(standardised, boxes, image_size: int,
                      tolerance_px: float = BORDER_TOLERANCE_PX) -> np.ndarray:
    """Whether each predicted ellipse (the standardised ``ellipse`` output, mapped back to
    input px by ``fetalhc.models.ellipse_head.ellipse_from_output``) reaches within
    ``tolerance_px`` of its content box (``(N, 4)``, :func:`content_boxes`) or beyond it;
    ``True`` for a non-finite ellipse."""
    from fetalhc.models.ellipse_head import ellipse_from_output

    tolerance_px = check_border_tolerance(tolerance_px)
    values = np.asarray(standardised, dtype=np.float64).reshape(-1, 6)
    extent = ellipse_boxes(ellipse_from_output(values, image_size))
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    with np.errstate(invalid="ignore"):
        inside = ((extent[:, 0] > boxes[:, 0] + tolerance_px)
                  & (extent[:, 1] > boxes[:, 1] + tolerance_px)
                  & (extent[:, 2] < boxes[:, 2] - tolerance_px)
                  & (extent[:, 3] < boxes[:, 3] - tolerance_px))
    return ~inside


# ----------------------------------------------------------------------------- flags
def _known(values) -> pd.Series:
    return pd.Series(pd.array(values, dtype="boolean"))


def flag_frame(prediction_mm, flipped_mm, hc_range_mm=None, at_border=None,
               flip_threshold_mm: float = DEFAULT_FLIP_THRESHOLD_MM) -> pd.DataFrame:
    """The reliability columns (:data:`RELIABILITY_COLUMNS`) from per-image numbers:
    ``prediction_mm`` and ``flipped_mm`` (of the image and of its horizontal flip),
    ``at_border`` (bools, or ``None``: unknown). Flag columns are pandas ``boolean``
    (``<NA>`` = unknown)."""
    threshold = check_flip_threshold(flip_threshold_mm, "flip_threshold_mm")
    hc_range = check_hc_range(hc_range_mm)
    prediction = np.asarray(prediction_mm, dtype=np.float64).reshape(-1)
    flipped = np.asarray(flipped_mm, dtype=np.float64).reshape(-1)
    return _frame(prediction, prediction, flipped, hc_range, at_border, threshold)


def _frame(prediction, identity, flipped, hc_range, at_border, threshold) -> pd.DataFrame:
    n = len(prediction)
    disagreement = np.abs(identity - flipped)
    with np.errstate(invalid="ignore"):
        flip_flag = ~(disagreement <= threshold)  # NaN disagrees
        if hc_range is None:
            range_flag = [pd.NA] * n
        else:
            range_flag = ~((prediction >= hc_range[0]) & (prediction <= hc_range[1]))
    border = [pd.NA] * n if at_border is None else np.asarray(at_border, dtype=bool)
    frame = pd.DataFrame({FLIPPED_COLUMN: flipped, DISAGREEMENT_COLUMN: disagreement,
                          RANGE_FLAG: _known(range_flag), BORDER_FLAG: _known(border),
                          FLIP_FLAG: _known(flip_flag)})
    frame[FLAGGED] = frame[list(FLAG_COLUMNS)].fillna(False).any(axis=1).astype("boolean")
    return frame


def flags_from_forward(forward: ForwardPass, index: pd.DataFrame, image_size: int,
                       hc_range_mm=None, flip_threshold_mm: float = DEFAULT_FLIP_THRESHOLD_MM,
                       *, tta: bool = False,
                       border_tolerance_px: float = BORDER_TOLERANCE_PX) -> pd.DataFrame:
    """The reliability table of a forward pass (``fetalhc.models.prediction.forward_pass``
    with ``flipped=True``; ``ellipse=True`` for the border flag): ``filename``, ``prediction
    (mm)`` (the mean of the identity and the flip with ``tta``, as ``predict_hc_mm``) and
    :data:`RELIABILITY_COLUMNS`. The disagreement is always identity vs flip."""
    threshold = check_flip_threshold(flip_threshold_mm, "flip_threshold_mm")
    hc_range = check_hc_range(hc_range_mm)
    if forward.hc_flipped is None:
        raise ValueError("the forward pass has no flipped view; run it with flipped=True")
    if len(forward.hc) != len(index):
        raise ValueError(f"the forward pass has {len(forward.hc)} images, the index "
                         f"{len(index)} rows")
    identity, flipped = forward.hc_mm, forward.hc_mm_flipped
    prediction = (identity + flipped) / 2 if tta else identity
    at_border = None
    if forward.ellipse is not None:
        at_border = ellipse_at_border(forward.ellipse, content_boxes(index, image_size),
                                      image_size, border_tolerance_px)
    frame = _frame(prediction, identity, flipped, hc_range, at_border, threshold)
    frame.insert(0, "prediction (mm)", prediction)
    frame.insert(0, "filename", list(forward.filenames))
    return frame


def reliability_flags(model, index: pd.DataFrame, image_size: int, hc_range_mm=None,
                      flip_threshold_mm: float = DEFAULT_FLIP_THRESHOLD_MM, *,
                      tta: bool = False, batch_size: int = 32, images=None,
                      border_tolerance_px: float = BORDER_TOLERANCE_PX,
                      on_batch=None, output_units: str | None = None) -> pd.DataFrame:
    """Reliability flags of ``model`` on the ``index`` rows (images and pixel sizes only):
    ``filename``, ``prediction (mm)``, ``flipped prediction (mm)``, ``flip disagreement
    (mm)``, ``flag: outside training range``, ``flag: ellipse at border``, ``flag: flip
    disagreement``, ``flagged``; see the module docstring. ``hc_range_mm``: ``(min, max)``
    of the training split's reference HC (:func:`training_hc_range_mm`), ``None`` =
    unknown. ``images``: the rows' pre-processed inputs when the caller has them already
    (``fetalhc.data.load_arrays(index, image_size)["image"]``), else they are read.
    ``on_batch(n)``: called after each batch. ``output_units``: of a model that is not
    fetalhc's (``"mm"`` or ``"px"``)."""
    from fetalhc.models.build import ELLIPSE_OUTPUT
    from fetalhc.models.graph import output_names

    check_flip_threshold(flip_threshold_mm, "flip_threshold_mm")
    check_hc_range(hc_range_mm)
    ellipse = ELLIPSE_OUTPUT in output_names(model)
    if images is None:
        forward = forward_pass(model, index, image_size, batch_size, flipped=True,
                               ellipse=ellipse, on_batch=on_batch, output_units=output_units)
    else:
        forward = forward_images(model, images, index, image_size, batch_size, flipped=True,
                                 ellipse=ellipse, on_batch=on_batch, output_units=output_units)
    return flags_from_forward(forward, index, image_size, hc_range_mm, flip_threshold_mm,
                              tta=tta, border_tolerance_px=border_tolerance_px)


def flag_summary(flags: pd.DataFrame, abs_error_mm=None) -> dict:
    """Counts of flagged images (``n_flagged`` and per flag, with the unknown ones) and,
    with ``abs_error_mm`` (per image, same order), the MAE (mm) of the flagged and the
    unflagged images with an error (``None`` for an empty group; NaN errors, of images
    without a reference HC, left out)."""
    summary = {"n": int(len(flags)), "n_flagged": int(flags[FLAGGED].fillna(False).sum())}
    for column in FLAG_COLUMNS:
        key = column.removeprefix("flag: ").replace(" ", "_")
        summary[f"n_{key}"] = int(flags[column].fillna(False).sum())
        summary[f"n_{key}_unknown"] = int(flags[column].isna().sum())
    if abs_error_mm is not None:
        errors = np.asarray(abs_error_mm, dtype=np.float64).reshape(-1)
        flagged = flags[FLAGGED].fillna(False).to_numpy(bool)
        known = np.isfinite(errors)
        for name, chosen in (("flagged", flagged & known), ("unflagged", ~flagged & known)):
            summary[f"mae_{name}_mm"] = float(errors[chosen].mean()) if chosen.any() else None
    return summary

"""Square crops around the head: the input of a "localise, then measure" second stage.

A **region** is a square of whole original pixels, given per index row by the integer
columns ``region_cx_px``, ``region_cy_px`` (its centre pixel) and ``region_side_px`` (its
side), all in ORIGINAL image px. It covers the columns ``left .. left + side - 1`` with
``left = cx - side // 2`` (rows alike), may extend beyond the image, and must overlap it.
When an index has these columns, ``make_dataset`` / ``load_arrays`` feed the network the
region instead of the whole letterboxed image:

1. decode, z-score over the **whole original image** (mean 0, SD 1),
2. take the region; what lies outside the image is 0 (the image mean),
3. resize the ``side × side`` region to ``S × S`` (bilinear, anti-aliased).

So the input pixel size is exactly ``pixel_size_mm * side / S``, and an original point
``(x, y)`` (pixel-centre coordinates) lands at ``((x - left + 0.5) · S / side - 0.5,
(y - top + 0.5) · S / side - 0.5)`` (:class:`CropGeometry`). Regions come from ellipses in
original px (:func:`ellipse_regions`): the reference annotation's for training, a stage-1
localiser's at prediction time (``fetalhc.models.localise``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

REGION_COLUMNS = ("region_cx_px", "region_cy_px", "region_side_px")

# The crop pre-processing in words: recorded in a crop run's config.toml ([preprocessing])
CROP_PREPROCESSING = {
    "normalise": "z-score per image over the whole original image (mean 0, SD 1)",
    "crop": "square region of the original image (region_cx_px, region_cy_px, "
            "region_side_px), side = round(2 x crop_margin x semi-major axis); outside the "
            "image = 0 (the image mean after z-scoring)",
    "resize": "region side = image_size, bilinear with anti-aliasing",
    "pad_value": 0.0,
    "channels": 1,
}


def _round_half_up(values) -> np.ndarray:
    return np.floor(np.asarray(values, dtype=np.float64) + 0.5).astype(np.int64)


def ellipse_regions(ellipses, margin: float) -> np.ndarray:
    """Square regions around ellipses in original px → int64 ``(N, 3)``: cx, cy, side.

    ``ellipses``: ``(N, 5)`` (or one ``(5,)``) = cx, cy, semi-major, semi-minor, angle_rad
    in original px, as :func:`fetalhc.data.annotation_ellipses` gives them. The centre is
    rounded to the nearest pixel and the side is ``round(2 × margin × semi-major)`` (halves
    round up; at least 1 px), so with ``margin >= 1`` the square holds the whole head
    whatever its angle."""
    margin = float(margin)
    if not math.isfinite(margin) or margin <= 0:
        raise ValueError(f"margin must be a finite number > 0 (region side = 2 x margin x "
                         f"semi-major axis); got {margin!r}")
    ellipses = np.asarray(ellipses, dtype=np.float64)
    if ellipses.ndim == 1:
        ellipses = ellipses[None]
    if ellipses.ndim != 2 or ellipses.shape[1] != 5:
        raise ValueError("ellipses must have shape (N, 5): cx, cy, semi_major, semi_minor, "
                         f"angle_rad in original px; got {ellipses.shape}")
    if not np.all(np.isfinite(ellipses[:, :3])):
        raise ValueError("ellipses must have finite centres and semi-major axes")
    if np.any(ellipses[:, 2] <= 0):
        raise ValueError("ellipses must have a semi-major axis > 0 px")
    side = np.maximum(_round_half_up(2.0 * margin * ellipses[:, 2]), 1)
    return np.stack([_round_half_up(ellipses[:, 0]), _round_half_up(ellipses[:, 1]), side],
                    axis=1)


def clamp_regions(regions, width_px, height_px, min_side_px: int = 8) -> np.ndarray:
    """Regions ``(N, 3)`` kept usable whatever ellipse they came from (a localiser's guess):
    the centre moved into the image, the side within ``[min_side_px, 2 × longer side]``."""
    regions = np.array(regions, dtype=np.int64, copy=True).reshape(-1, 3)
    width = np.asarray(width_px, dtype=np.int64)
    height = np.asarray(height_px, dtype=np.int64)
    regions[:, 0] = np.clip(regions[:, 0], 0, width - 1)
    regions[:, 1] = np.clip(regions[:, 1], 0, height - 1)
    regions[:, 2] = np.clip(regions[:, 2], int(min_side_px), 2 * np.maximum(width, height))
    return regions


def with_regions(index: pd.DataFrame, regions) -> pd.DataFrame:
    """A copy of ``index`` with the region columns (int64) set from ``regions`` ``(N, 3)``."""
    regions = np.asarray(regions)
    if regions.shape != (len(index), 3):
        raise ValueError(f"regions must have shape ({len(index)}, 3) for the {len(index)} "
                         f"index rows (cx, cy, side in original px); got {regions.shape}")
    if not np.all(np.isfinite(regions)) or np.any(regions != np.round(regions)):
        raise ValueError("regions must be whole numbers of original px")
    out = index.copy()
    for position, column in enumerate(REGION_COLUMNS):
        out[column] = regions[:, position].astype(np.int64)
    return out


def index_regions(index: pd.DataFrame) -> np.ndarray | None:
    """The regions of ``index`` as int64 ``(N, 3)``, or ``None`` when it has no region
    columns. ``ValueError`` for some but not all of them, or values that are not whole
    numbers, or a side below 1 px."""
    present = [column for column in REGION_COLUMNS if column in index.columns]
    if not present:
        return None
    if len(present) != len(REGION_COLUMNS):
        missing = [column for column in REGION_COLUMNS if column not in present]
        raise ValueError(f"the index has region column(s) {present} but lacks {missing}; a "
                         "crop needs all of " + ", ".join(REGION_COLUMNS))
    try:
        values = index[list(REGION_COLUMNS)].to_numpy(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"the region columns {list(REGION_COLUMNS)} must be numbers") from None
    bad = ~np.all(np.isfinite(values) & (values == np.round(values)), axis=1)
    bad |= values[:, 2] < 1
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        name = index["filename"].iloc[row] if "filename" in index.columns else f"row {row}"
        raise ValueError(f"{name}: region {values[row].tolist()} (cx, cy, side) must be "
                         "whole original px with a side >= 1")
    return values.astype(np.int64)


@dataclass(frozen=True)
class CropGeometry:
    """Where a region of an original image lands in the square network input."""

    left: int  # original px column of the region's first column (may be < 0)
    top: int  # original px row of the region's first row (may be < 0)
    side: int  # region side, original px
    image_size: int  # S, input px
    width_px: int  # original image size
    height_px: int

    @property
    def scale(self) -> float:
        """Input px per original px (``S / side``)."""
        return self.image_size / self.side

    def to_input(self, x, y):
        """Original pixel-centre coordinates → input coordinates (numpy or floats)."""
        return ((np.asarray(x) - self.left + 0.5) * self.scale - 0.5,
                (np.asarray(y) - self.top + 0.5) * self.scale - 0.5)

    def to_original(self, x, y):
        """Input coordinates → original pixel-centre coordinates (the inverse of
        :meth:`to_input`)."""
        return ((np.asarray(x) + 0.5) / self.scale - 0.5 + self.left,
                (np.asarray(y) + 0.5) / self.scale - 0.5 + self.top)

    def inside(self) -> tuple[int, int, int, int]:
        """The part of the input that shows the image (the rest is outside it):
        ``(height, width, top, left)`` in input px, the ``box`` of the pipeline."""
        def span(start: int, size: int) -> tuple[int, int]:
            first = min(max(start, 0), size)
            last = min(max(start + self.side, 0), size)
            low = int(_round_half_up((first - start) * self.scale))
            high = int(_round_half_up((last - start) * self.scale))
            return max(high - low, 0), low

        height, top = span(self.top, self.height_px)
        width, left = span(self.left, self.width_px)
        return height, width, top, left


def crop_geometry(cx: int, cy: int, side: int, width_px: int, height_px: int,
                  image_size: int) -> CropGeometry:
    """The :class:`CropGeometry` of the region centred on pixel ``(cx, cy)`` with ``side``
    px, in a ``width_px`` × ``height_px`` image, resized to ``image_size``. ``ValueError``
    when the region does not overlap the image."""
    cx, cy, side = int(cx), int(cy), int(side)
    if side < 1 or image_size < 8 or width_px <= 0 or height_px <= 0:
        raise ValueError(f"bad crop: side {side} px, image {width_px}x{height_px}, "
                         f"image_size {image_size}")
    left, top = cx - side // 2, cy - side // 2
    if left >= width_px or top >= height_px or left + side <= 0 or top + side <= 0:
        raise ValueError(f"region centred on ({cx}, {cy}) with side {side} px lies outside "
                         f"the {width_px}x{height_px} image")
    return CropGeometry(left, top, side, int(image_size), int(width_px), int(height_px))


def crop_columns(index: pd.DataFrame, regions: np.ndarray, image_size: int,
                 ellipses: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The per-row numbers of the crop pipeline: ``region`` int32 ``(N, 3)`` (left, top,
    side in original px), ``box`` int32 ``(N, 4)`` (the inside part, see
    :meth:`CropGeometry.inside`), ``pixel_size_mm`` float32 (``pixel_size_mm × side / S``,
    computed in float64) and, given ``ellipses`` in original px, ``ellipse`` float32
    ``(N, 5)`` in input px of the crop."""
    geometries = []
    for row, (cx, cy, side) in enumerate(regions):
        try:
            geometries.append(crop_geometry(cx, cy, side, int(index["width_px"].iloc[row]),
                                            int(index["height_px"].iloc[row]), image_size))
        except ValueError as error:
            raise ValueError(f"{index['filename'].iloc[row]}: {error}") from None
    side = regions[:, 2].astype(np.float64)
    columns = {
        "region": np.array([[g.left, g.top, g.side] for g in geometries], dtype=np.int32),
        "box": np.array([g.inside() for g in geometries], dtype=np.int32),
        "pixel_size_mm": (index["pixel_size_mm"].to_numpy(np.float64) * side
                          / image_size).astype(np.float32),
    }
    if ellipses is not None:
        left = columns["region"][:, 0].astype(np.float64)
        top = columns["region"][:, 1].astype(np.float64)
        scale = image_size / side
        columns["ellipse"] = np.stack([
            (ellipses[:, 0] - left + 0.5) * scale - 0.5,
            (ellipses[:, 1] - top + 0.5) * scale - 0.5,
            ellipses[:, 2] * scale,
            ellipses[:, 3] * scale,
            ellipses[:, 4],
        ], axis=1).astype(np.float32)
    return columns


def input_pixel_size_mm(index: pd.DataFrame, image_size: int) -> np.ndarray:
    """mm per input px of every row, float64: ``pixel_size_mm × side / S`` for a crop
    (region columns), else ``pixel_size_mm × longer side / S`` (the letterbox)."""
    regions = index_regions(index)
    if regions is not None:
        extent = regions[:, 2].astype(np.float64)
    else:
        extent = np.maximum(index["width_px"].to_numpy(np.float64),
                            index["height_px"].to_numpy(np.float64))
    return index["pixel_size_mm"].to_numpy(np.float64) * extent / float(image_size)


def crop_image(image, region, image_size: int):
    """TensorFlow: one decoded ``(H, W, 1)`` float image → its ``(S, S, 1)`` crop input:
    z-scored over the whole image, the region ``(left, top, side)`` taken with 0 outside
    the image, resized to ``S`` (bilinear, anti-aliased)."""
    import tensorflow as tf

    mean = tf.reduce_mean(image)
    std = tf.math.reduce_std(image)
    image = (image - mean) / tf.maximum(std, 1e-6)
    shape = tf.shape(image)
    left, top, side = region[0], region[1], region[2]

    def span(start, size):
        first = tf.clip_by_value(start, 0, size)
        last = tf.clip_by_value(start + side, 0, size)
        before = tf.clip_by_value(first - start, 0, side)
        return first, last, [before, side - before - (last - first)]

    row_first, row_last, row_pad = span(top, shape[0])
    col_first, col_last, col_pad = span(left, shape[1])
    region_image = tf.pad(image[row_first:row_last, col_first:col_last],
                          [row_pad, col_pad, [0, 0]])
    resized = tf.image.resize(region_image, [image_size, image_size], method="bilinear",
                              antialias=True)
    return tf.ensure_shape(resized, (image_size, image_size, 1))

"""Where the relevance lies relative to the annotated skull contour.

The HC18 annotation is a thin ellipse outline (0/1). Three scores per image:

- band: the share of relevance mass within ±``band_mm`` of the contour divided by the
  band's share of the image area (1 = chance, ``1 / area share`` = all mass in the band);
- inside: the same ratio for the filled head (the outline's interior plus the outline);
- distance: the mean (and median) distance in mm from the top-q % most relevant pixels to
  the contour.

Relevance mass is the positive part of the map by default (what pushes HC up) or its
absolute value (``relevance="abs"``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from fetalhc.evaluate.inputs import as_vector
from fetalhc.evaluate.settings import RELEVANCE_MODES, require_choice


def _annotation_array(annotation) -> np.ndarray:
    array = np.asarray(annotation)
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise ValueError(f"annotation must have shape (N, H, W[, 1]); got {array.shape}")
    return array > 0.5


def contour_distance_mm(annotation, pixel_size_mm) -> np.ndarray:
    """Distance (mm) of every pixel to the nearest contour pixel, ``(N, H, W)``.

    Images whose annotation is empty get NaN everywhere.
    """
    outline = _annotation_array(annotation)
    pixel_size = as_vector(pixel_size_mm, outline.shape[0], "pixel_size_mm")
    distance = np.full(outline.shape, np.nan, dtype=np.float32)
    for i, mask in enumerate(outline):
        if mask.any():
            distance[i] = ndimage.distance_transform_edt(~mask) * pixel_size[i]
    return distance


def head_mask(annotation) -> np.ndarray:
    """The filled head (outline and interior), ``(N, H, W)`` bool.

    A resized outline can have pinholes; if filling finds no interior the outline is closed
    with a growing 3 x 3 structuring element (up to 3 times) before filling again.
    """
    outline = _annotation_array(annotation)
    filled = np.zeros_like(outline)
    for i, mask in enumerate(outline):
        current = mask
        for _ in range(4):
            filled_i = ndimage.binary_fill_holes(current)
            if filled_i.sum() > current.sum():
                break
            current = ndimage.binary_dilation(current, iterations=1)
        filled[i] = filled_i
    return filled


def _mass(maps: np.ndarray, relevance: str) -> np.ndarray:
    return np.clip(maps, 0, None) if relevance == "positive" else np.abs(maps)


def localisation_scores(
    maps,
    annotation,
    pixel_size_mm,
    *,
    band_mm: float = 3.0,
    relevance: str = "positive",
    top_percent: float = 5.0,
) -> pd.DataFrame:
    """Per-image localisation scores (see the module docstring), columns with units.

    Columns: ``band_mass_fraction``, ``band_area_fraction``, ``band_ratio``,
    ``inside_mass_fraction``, ``inside_area_fraction``, ``inside_ratio``,
    ``top_distance_mm``, ``top_distance_median_mm``. Images with no relevance mass or no
    annotation get NaN.
    """
    require_choice(relevance, RELEVANCE_MODES, "relevance")
    if band_mm <= 0:
        raise ValueError(f"band_mm must be positive; got {band_mm}")
    if not 0 < top_percent <= 100:
        raise ValueError(f"top_percent must lie in (0, 100]; got {top_percent}")
    values = np.asarray(maps, dtype=np.float64)
    if values.ndim == 4 and values.shape[-1] == 1:
        values = values[..., 0]
    outline = _annotation_array(annotation)
    if values.shape != outline.shape:
        raise ValueError(
            f"maps have shape {values.shape} but the annotations {outline.shape}; "
            "one map per annotated image of the same size is needed"
        )
    n = values.shape[0]
    distance = contour_distance_mm(outline, pixel_size_mm)
    band = distance <= band_mm
    inside = head_mask(outline)
    mass = _mass(values, relevance)
    total = mass.sum(axis=(1, 2))
    pixels = values.shape[1] * values.shape[2]
    annotated = outline.any(axis=(1, 2))
    has_mass = (total > 0) & annotated

    def fraction(region):
        out = np.full(n, np.nan)
        out[has_mass] = (mass * region).sum(axis=(1, 2))[has_mass] / total[has_mass]
        return out

    band_area = np.where(annotated, band.sum(axis=(1, 2)) / pixels, np.nan)
    inside_area = np.where(annotated, inside.sum(axis=(1, 2)) / pixels, np.nan)
    band_mass = fraction(band)
    inside_mass = fraction(inside)

    top_mean = np.full(n, np.nan)
    top_median = np.full(n, np.nan)
    k = max(1, int(round(pixels * top_percent / 100.0)))
    for i in np.flatnonzero(has_mass):
        flat = mass[i].reshape(-1)
        top = np.argsort(-flat, kind="stable")[:k]
        top = top[flat[top] > 0]  # never count pixels without relevance
        d = distance[i].reshape(-1)[top]
        top_mean[i] = d.mean()
        top_median[i] = np.median(d)

    with np.errstate(invalid="ignore", divide="ignore"):
        return pd.DataFrame({
            "band_mass_fraction": band_mass,
            "band_area_fraction": band_area,
            "band_ratio": band_mass / band_area,
            "inside_mass_fraction": inside_mass,
            "inside_area_fraction": inside_area,
            "inside_ratio": inside_mass / inside_area,
            "top_distance_mm": top_mean,
            "top_distance_median_mm": top_median,
        })

"""Checks of the evaluators' inputs: arrays into the shapes and dtypes they expect, and
with one-line ``ValueError`` messages (option values are checked against their choices
and ranges by :mod:`fetalhc.evaluate.settings`).

Everything here takes plain arrays: images ``(N, H, W, C)`` (z-scored, padded with 0),
maps ``(N, H, W)`` (signed relevance), pixel sizes in mm per input pixel ``(N,)`` and
reference HC in mm ``(N,)`` (NaN where there is none). The model predicts HC in input
pixels (output ``hc_px_input``); HC in mm is that times the image's pixel size.
"""

from __future__ import annotations

import numpy as np


def as_images(images) -> np.ndarray:
    """Images as float32 ``(N, H, W, C)``; a ``(N, H, W)`` array gets a channel axis."""
    array = np.asarray(images, dtype=np.float32)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise ValueError(
            f"images must have shape (N, H, W) or (N, H, W, C); got shape {array.shape}"
        )
    if array.shape[0] == 0:
        raise ValueError("no images to evaluate (the image array is empty)")
    return array


def as_maps(maps, images: np.ndarray, name: str = "maps") -> np.ndarray:
    """Maps as float32 ``(N, H, W)`` matching ``images`` ``(N, H, W, C)``; else ValueError."""
    array = np.asarray(maps, dtype=np.float32)
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    expected = tuple(images.shape[:3])
    if array.shape != expected:
        raise ValueError(
            f"{name} have shape {tuple(array.shape)} but the images need {expected} "
            "(one map per image, same height and width)"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contain NaN or infinite values")
    return array


def as_vector(values, n: int, name: str, allow_none: bool = False) -> np.ndarray:
    """A float32 ``(n,)`` vector from a scalar or a length-n sequence (None → NaN if allowed)."""
    if values is None:
        if allow_none:
            return np.full(n, np.nan, dtype=np.float32)
        raise ValueError(f"{name} is required")
    array = np.asarray(values, dtype=np.float32).reshape(-1)
    if array.size == 1:
        array = np.full(n, array[0], dtype=np.float32)
    if array.shape != (n,):
        raise ValueError(f"{name} needs one value per image ({n}); got {array.size} values")
    return array


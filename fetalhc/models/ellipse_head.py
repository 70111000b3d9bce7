"""The auxiliary ``ellipse`` output of a model: its 6 standardised values and back.

The input pipeline (``fetalhc.data``) gives the ``ellipse`` target as ``cx, cy, a, b`` in
input px (``a`` the semi-major, ``b`` the semi-minor axis) and ``sin 2θ, cos 2θ``. The
output layer ``ellipse`` (``fetalhc.models.build``) predicts them standardised, so that all
six are of order 1 for an ``S`` px input:

- centre ``(c - S/2) / (S/4)``,
- semi-axes ``(a - S/4) / (S/8)``,
- ``sin 2θ`` and ``cos 2θ`` unchanged (the doubled angle makes θ and θ + π one value).

:func:`standardise_ellipse` maps targets to output values (training),
:func:`unstandardise_ellipse` maps output values back to input px, and
:func:`ellipse_from_output` gives the ``(cx, cy, a, b, angle_rad)`` ellipse of an output in
input px, with ``a >= b`` and the angle in ``[0, π)``.
"""

from __future__ import annotations

import math

import numpy as np


def _size(image_size) -> float:
    size = float(image_size)
    if not math.isfinite(size) or size <= 0:
        raise ValueError(f"image_size must be a positive number of px; got {image_size!r}")
    return size


def _concat(parts, like):
    if isinstance(like, np.ndarray):
        return np.concatenate(parts, axis=-1)
    import tensorflow as tf

    return tf.concat(parts, axis=-1)


def _check_last_axis(values, name: str) -> None:
    shape = getattr(values, "shape", None)
    if shape is None or len(shape) == 0 or shape[-1] != 6:
        raise ValueError(f"{name} must have 6 values on its last axis (cx, cy, a, b, "
                         f"sin 2θ, cos 2θ); got shape {None if shape is None else tuple(shape)}")


def standardise_ellipse(ellipse, image_size: int):
    """Dataset ``ellipse`` (cx, cy, a, b in input px, sin 2θ, cos 2θ) → the 6 standardised
    values of the auxiliary output: centre ``(c - S/2) / (S/4)``, semi-axes
    ``(a - S/4) / (S/8)``, sin and cos unchanged. Works on numpy arrays and tensors."""
    size = _size(image_size)
    centre = (ellipse[..., 0:2] - size / 2) / (size / 4)
    axes = (ellipse[..., 2:4] - size / 4) / (size / 8)
    angle = ellipse[..., 4:6]
    return _concat([centre, axes, angle], ellipse)


def unstandardise_ellipse(values, image_size: int):
    """The inverse of :func:`standardise_ellipse`: output values → ``cx, cy, a, b`` in input
    px and ``sin 2θ, cos 2θ`` (as the network gave them, not renormalised). Works on numpy
    arrays and tensors; a list is read as a numpy array."""
    if isinstance(values, list | tuple):
        values = np.asarray(values, dtype=np.float64)
    _check_last_axis(values, "the ellipse output")
    size = _size(image_size)
    centre = values[..., 0:2] * (size / 4) + size / 2
    axes = values[..., 2:4] * (size / 8) + size / 4
    return _concat([centre, axes, values[..., 4:6]], values)


def ellipse_from_output(values, image_size: int) -> np.ndarray:
    """Ellipses ``(..., 5)`` float64 = cx, cy, a, b (input px), angle_rad of standardised
    output values ``(..., 6)`` (numpy or tensor).

    The angle is ``atan2(sin 2θ, cos 2θ) / 2`` taken into ``[0, π)``; the semi-axes are
    taken as magnitudes and, should the network give ``b > a``, swapped with the angle
    turned by π/2, so ``a >= b`` as in the data. A semi-axis of 0 stays 0 (a caller that
    needs a positive size clamps it)."""
    values = np.asarray(values, dtype=np.float64)
    plain = unstandardise_ellipse(values, image_size)
    a = np.abs(plain[..., 2])
    b = np.abs(plain[..., 3])
    angle = 0.5 * np.arctan2(plain[..., 4], plain[..., 5])
    swap = b > a
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    angle = np.mod(np.where(swap, angle + math.pi / 2, angle), math.pi)
    return np.stack([plain[..., 0], plain[..., 1], a, b, angle], axis=-1)

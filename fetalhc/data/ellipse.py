"""Ellipses: least-squares fit to an annotation, Ramanujan perimeter, HC from an annotation.

Coordinates are image pixel coordinates: ``x`` is the column, ``y`` the row (pointing down),
the centre of pixel ``(row, col)`` is at ``(x, y) = (col, row)``. ``angle_rad`` is the
direction of the semi-major axis, measured from the +x axis towards +y (clockwise on screen),
in ``[0, pi)``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fetalhc.data.errors import DataError


class Ellipse(NamedTuple):
    """An ellipse in pixel coordinates; ``semi_major >= semi_minor > 0``."""

    cx: float
    cy: float
    semi_major: float
    semi_minor: float
    angle_rad: float

    @property
    def perimeter(self) -> float:
        """Ramanujan's perimeter, in the same unit as the semi-axes."""
        return ellipse_perimeter(self.semi_major, self.semi_minor)


def ellipse_perimeter(a, b):
    """Ramanujan's (second) approximation of the perimeter of an ellipse with semi-axes a, b.

    Works on scalars and numpy arrays. Its relative error is below 1e-9 for b/a >= 0.5
    and exact for circles.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    h = ((a - b) / (a + b)) ** 2
    perimeter = math.pi * (a + b) * (1.0 + 3.0 * h / (10.0 + np.sqrt(4.0 - 3.0 * h)))
    return float(perimeter) if perimeter.ndim == 0 else perimeter


def _points_from(mask_or_points) -> np.ndarray:
    data = np.asarray(mask_or_points)
    is_points = data.ndim == 2 and data.shape[1] == 2 and data.dtype.kind == "f"
    if not is_points:
        if data.ndim == 3 and data.shape[-1] == 1:
            data = data[..., 0]
        if data.ndim != 2:
            raise ValueError(
                "fit_ellipse expects a 2-D mask (H, W) or float points (N, 2) as (x, y); "
                f"got an array of shape {data.shape}"
            )
        rows, cols = np.nonzero(data > 0)
        return np.stack([cols, rows], axis=1).astype(np.float64)
    return data.astype(np.float64)


def fit_ellipse(mask_or_points) -> Ellipse:
    """Least-squares ellipse through the foreground pixels of a mask or through points.

    ``mask_or_points`` is either a 2-D array (any pixel > 0 is foreground; a thin outline
    or a filled region's boundary) or a float array of shape (N, 2) holding ``(x, y)``
    points. Uses the direct algebraic fit constrained to ellipses (Fitzgibbon, Pilu and
    Fisher 1999) in the numerically stable form of Halir and Flusser (1998), on centred and
    scaled coordinates. Raises ``ValueError`` when fewer than 5 points are given or the
    points hold no ellipse (e.g. all on a line).
    """
    points = _points_from(mask_or_points)
    if len(points) < 5:
        raise ValueError(f"fit_ellipse needs at least 5 points; got {len(points)}")
    if not np.all(np.isfinite(points)):
        raise ValueError("fit_ellipse got non-finite points")
    centre = points.mean(axis=0)
    scale = np.sqrt(((points - centre) ** 2).sum(axis=1).mean())
    if not scale > 0:
        raise ValueError("fit_ellipse got points that all coincide")
    x = (points[:, 0] - centre[0]) / scale
    y = (points[:, 1] - centre[1]) / scale

    quadratic = np.stack([x * x, x * y, y * y], axis=1)
    linear = np.stack([x, y, np.ones_like(x)], axis=1)
    s1 = quadratic.T @ quadratic
    s2 = quadratic.T @ linear
    s3 = linear.T @ linear
    try:
        t = -np.linalg.solve(s3, s2.T)
    except np.linalg.LinAlgError:
        raise ValueError("fit_ellipse: the points hold no ellipse (degenerate)") from None
    m = s1 + s2 @ t
    # premultiply by inverse of the constraint matrix C1 = [[0, 0, 2], [0, -1, 0], [2, 0, 0]]
    m = np.stack([m[2] / 2.0, -m[1], m[0] / 2.0])
    eigenvalues, eigenvectors = np.linalg.eig(m)
    eigenvectors = np.real(eigenvectors)
    condition = 4.0 * eigenvectors[0] * eigenvectors[2] - eigenvectors[1] ** 2
    candidates = np.nonzero(condition > 0)[0]
    if len(candidates) == 0:
        raise ValueError("fit_ellipse: the points hold no ellipse")
    a1 = eigenvectors[:, candidates[0]]
    conic = np.concatenate([a1, t @ a1])
    return _conic_to_ellipse(conic, centre, scale)


def _conic_to_ellipse(conic: np.ndarray, centre: np.ndarray, scale: float) -> Ellipse:
    """Parameters of ``A x^2 + B xy + C y^2 + D x + E y + F = 0`` (in normalised coords)."""
    a, b, c, d, e, f = conic
    quadratic = np.array([[a, b / 2.0], [b / 2.0, c]])
    try:
        centre_n = np.linalg.solve(2.0 * quadratic, [-d, -e])
    except np.linalg.LinAlgError:
        raise ValueError("fit_ellipse: the points hold no ellipse (no centre)") from None
    value_at_centre = f + 0.5 * (d * centre_n[0] + e * centre_n[1])
    eigenvalues, eigenvectors = np.linalg.eigh(quadratic)
    axes_sq = -value_at_centre / eigenvalues
    if not np.all(axes_sq > 0):
        raise ValueError("fit_ellipse: the points hold no real ellipse")
    axes = np.sqrt(axes_sq) * scale
    major = int(np.argmax(axes))
    direction = eigenvectors[:, major]
    angle = math.atan2(direction[1], direction[0]) % math.pi
    if angle >= math.pi - 1e-12:
        angle = 0.0
    return Ellipse(
        cx=float(centre_n[0] * scale + centre[0]),
        cy=float(centre_n[1] * scale + centre[1]),
        semi_major=float(axes[major]),
        semi_minor=float(axes[1 - major]),
        angle_rad=float(angle),
    )


def read_annotation(path) -> np.ndarray:
    """The annotation PNG as a 2-D uint8 array; ``DataError`` naming the file if unreadable."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("L", "1", "P", "I", "I;16"):
                image = image.convert("L")
            array = np.asarray(image)
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file is missing") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read annotation ({error})") from None
    if array.ndim == 3:
        array = array[..., 0]
    return array


def annotation_ellipse(path) -> Ellipse:
    """Fit the ellipse drawn in an annotation PNG (original pixel coordinates)."""
    mask = read_annotation(path)
    if np.count_nonzero(mask) < 5:
        raise DataError(f"{path}: annotation holds no ellipse (fewer than 5 foreground pixels)")
    try:
        return fit_ellipse(mask)
    except ValueError as error:
        raise DataError(f"{path}: annotation holds no ellipse ({error})") from None


def hc_from_annotation(path, pixel_size_mm: float) -> float:
    """HC in mm of an annotation: Ramanujan perimeter of the fitted ellipse times pixel size.

    This is how HC18 defines its reference HC; it reproduces the CSV within 0.05 mm.
    """
    if not (np.isfinite(pixel_size_mm) and pixel_size_mm > 0):
        raise ValueError(f"pixel_size_mm must be a positive number; got {pixel_size_mm}")
    ellipse = annotation_ellipse(path)
    return ellipse.perimeter * float(pixel_size_mm)

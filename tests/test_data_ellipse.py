"""Ellipse fit, Ramanujan perimeter and HC from annotation, on analytic ellipses."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from scipy.special import ellipe

from fetalhc.data import DataError, Ellipse, ellipse_perimeter, fit_ellipse, hc_from_annotation


def exact_perimeter(a: float, b: float) -> float:
    """Perimeter by the complete elliptic integral of the second kind (scipy)."""
    a, b = max(a, b), min(a, b)
    return 4.0 * a * ellipe(1.0 - (b / a) ** 2)


def ellipse_points(cx, cy, a, b, angle, n=400):
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    u, v = a * np.cos(t), b * np.sin(t)
    x = cx + u * math.cos(angle) - v * math.sin(angle)
    y = cy + u * math.sin(angle) + v * math.cos(angle)
    return np.stack([x, y], axis=1)


def rasterised_outline(cx, cy, a, b, angle, height, width):
    """A 1-2 px outline: dense samples of the ellipse rounded to pixel centres."""
    mask = np.zeros((height, width), dtype=np.uint8)
    points = ellipse_points(cx, cy, a, b, angle, n=20000)
    cols = np.round(points[:, 0]).astype(int)
    rows = np.round(points[:, 1]).astype(int)
    mask[rows, cols] = 255
    return mask


def angle_difference(first: float, second: float) -> float:
    """Distance between two axis directions (mod pi)."""
    difference = (first - second) % math.pi
    return min(difference, math.pi - difference)


@pytest.mark.parametrize(("a", "b"), [(1.0, 1.0), (2.0, 1.0), (100.0, 70.0), (5.0, 4.9)])
def test_ramanujan_matches_elliptic_integral(a, b):
    assert ellipse_perimeter(a, b) == pytest.approx(exact_perimeter(a, b), rel=1e-8)
    assert ellipse_perimeter(b, a) == pytest.approx(ellipse_perimeter(a, b), rel=1e-15)


def test_perimeter_of_circle_is_two_pi_r_and_works_on_arrays():
    radii = np.array([1.0, 3.5, 100.0])
    np.testing.assert_allclose(ellipse_perimeter(radii, radii), 2 * math.pi * radii, rtol=1e-14)


@pytest.mark.parametrize("angle", [0.0, 0.3, 1.2, 2.9])
def test_fit_recovers_exact_points(angle):
    points = ellipse_points(40.5, 27.25, 30.0, 18.0, angle)
    ellipse = fit_ellipse(points)
    assert isinstance(ellipse, Ellipse)
    assert ellipse.cx == pytest.approx(40.5, abs=1e-8)
    assert ellipse.cy == pytest.approx(27.25, abs=1e-8)
    assert ellipse.semi_major == pytest.approx(30.0, abs=1e-8)
    assert ellipse.semi_minor == pytest.approx(18.0, abs=1e-8)
    assert angle_difference(ellipse.angle_rad, angle) < 1e-8
    assert 0.0 <= ellipse.angle_rad < math.pi


@pytest.mark.parametrize(("cx", "cy", "a", "b", "angle"), [
    (160.0, 108.0, 90.0, 70.0, 0.0),
    (150.3, 100.7, 80.0, 60.0, 0.7),
    (155.0, 110.0, 60.0, 58.0, 2.0),
    (80.0, 60.0, 30.0, 20.0, math.pi / 2),
])
def test_fit_on_rasterised_outline(cx, cy, a, b, angle):
    mask = rasterised_outline(cx, cy, a, b, angle, height=220, width=320)
    ellipse = fit_ellipse(mask)
    assert ellipse.cx == pytest.approx(cx, abs=0.05)
    assert ellipse.cy == pytest.approx(cy, abs=0.05)
    assert ellipse.semi_major == pytest.approx(a, abs=0.1)
    assert ellipse.semi_minor == pytest.approx(b, abs=0.1)
    if a - b > 5:
        assert angle_difference(ellipse.angle_rad, angle) < 0.01
    assert ellipse.perimeter == pytest.approx(exact_perimeter(a, b), rel=2e-3)


def test_fit_accepts_boolean_and_channel_masks():
    mask = rasterised_outline(50, 40, 30, 20, 0.4, 90, 110)
    expected = fit_ellipse(mask)
    assert fit_ellipse(mask > 0) == pytest.approx(expected)
    assert fit_ellipse(mask[..., None]) == pytest.approx(expected)


def test_fit_rejects_too_few_and_degenerate_points():
    with pytest.raises(ValueError, match="at least 5"):
        fit_ellipse(np.zeros((50, 50), dtype=np.uint8))
    line = np.stack([np.arange(20.0), 2.0 * np.arange(20.0)], axis=1)
    with pytest.raises(ValueError, match="no"):
        fit_ellipse(line)
    with pytest.raises(ValueError):
        fit_ellipse(np.zeros((2, 3, 4)))


def test_hc_from_annotation_png(tmp_path):
    a, b, pixel_size = 90.0, 65.0, 0.1734
    mask = rasterised_outline(160, 110, a, b, 0.5, 216, 320)
    path = tmp_path / "001_HC_Annotation.png"
    Image.fromarray(mask).save(path)
    hc = hc_from_annotation(path, pixel_size)
    assert hc == pytest.approx(exact_perimeter(a, b) * pixel_size, rel=2e-3)
    with pytest.raises(ValueError, match="pixel_size_mm"):
        hc_from_annotation(path, 0.0)


def test_hc_from_annotation_names_bad_files(tmp_path):
    empty = tmp_path / "empty_Annotation.png"
    Image.fromarray(np.zeros((40, 60), dtype=np.uint8)).save(empty)
    with pytest.raises(DataError, match="empty_Annotation.png.*no ellipse"):
        hc_from_annotation(empty, 0.1)
    with pytest.raises(DataError, match="missing"):
        hc_from_annotation(tmp_path / "absent.png", 0.1)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not a png")
    with pytest.raises(DataError, match="garbage.png"):
        hc_from_annotation(garbage, 0.1)

"""Deterministic ultrasound-like phantoms of a fetal head with a known HC.

Each phantom is a fan-shaped sector on black with speckled soft tissue, a bright elliptical
skull echo (its outer boundary is the reference ellipse) whose thickness and brightness vary
with the angle of incidence, acoustic shadows behind the near skull wall that partly hide
the far wall, a midline echo and a few blobs inside the head. HC is drawn from the clinical
range and the pixel size follows from it, so HC in pixels and pixel size both vary.

:func:`write_phantom_dataset` writes the HC18 layout, so everything that reads HC18 reads
phantoms too. The same seed gives byte-identical files.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fetalhc.data.ellipse import Ellipse, ellipse_perimeter, fit_ellipse
from fetalhc.data.index import ANNOTATION_SUFFIX, FILENAME_COLUMN, HC_COLUMN, PIXEL_SIZE_COLUMN
from fetalhc.files import atomic_path, folder_mode, write_bytes

DEFAULT_WIDTH = 320
DEFAULT_HEIGHT = 216
HC_RANGE_MM = (50.0, 340.0)
ANNOTATION_HALF_WIDTH_PX = 0.75


@dataclass(frozen=True)
class Phantom:
    """One rendered phantom: uint8 image and 0/255 outline, the ellipse, pixel size, HC.

    ``hc_mm`` is the reference as HC18 defines it: the least-squares refit of the drawn
    outline (Ramanujan perimeter) times the pixel size. ``hc_mm_drawn`` is the HC of the
    generating ``ellipse``; the two differ by less than 0.1 %.
    """

    image: np.ndarray
    annotation: np.ndarray
    ellipse: Ellipse
    pixel_size_mm: float
    hc_mm: float
    hc_mm_drawn: float


def _signed_distance(xx, yy, ellipse: Ellipse):
    """First-order (Sampson) signed distance in px to the ellipse; negative inside."""
    dx, dy = xx - ellipse.cx, yy - ellipse.cy
    cos, sin = math.cos(ellipse.angle_rad), math.sin(ellipse.angle_rad)
    u = dx * cos + dy * sin
    v = -dx * sin + dy * cos
    a2, b2 = ellipse.semi_major ** 2, ellipse.semi_minor ** 2
    value = u * u / a2 + v * v / b2 - 1.0
    gradient = 2.0 * np.sqrt((u / a2) ** 2 + (v / b2) ** 2)
    return value / np.maximum(gradient, 1e-9), u, v


def outline_mask(ellipse: Ellipse, width: int, height: int,
                 half_width_px: float = ANNOTATION_HALF_WIDTH_PX) -> np.ndarray:
    """A thin 0/255 uint8 outline of ``ellipse`` (pixel centres within ``half_width_px``)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    distance, _, _ = _signed_distance(xx, yy, ellipse)
    return np.where(np.abs(distance) <= half_width_px, 255, 0).astype(np.uint8)


def _smooth(field: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(field, sigma=sigma, mode="reflect")


def _band(distance, inner, outer, softness=0.6):
    """Soft indicator of inner <= distance <= outer."""
    from scipy.special import expit

    return expit((distance - inner) / softness) * expit((outer - distance) / softness)


def render_phantom(rng: np.random.Generator, width: int = DEFAULT_WIDTH,
                   height: int = DEFAULT_HEIGHT, hc_mm: float | None = None,
                   hc_range_mm: tuple[float, float] = HC_RANGE_MM) -> Phantom:
    """Render one phantom with random geometry drawn from ``rng``."""
    if width < 32 or height < 32:
        raise ValueError(f"phantom images must be at least 32x32 px; got {width}x{height}")
    unit = min(width, height) / DEFAULT_HEIGHT  # scales fixed pixel sizes of features
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)

    # fan-shaped sector with its apex above the top edge
    apex_x = width / 2.0 + rng.uniform(-0.03, 0.03) * width
    apex_y = -rng.uniform(0.08, 0.2) * height
    radius = np.hypot(xx - apex_x, yy - apex_y)
    beam = np.arctan2(xx - apex_x, yy - apex_y)  # 0 = straight down
    half_angle = math.radians(rng.uniform(36.0, 46.0))
    r_min = -apex_y + rng.uniform(0.02, 0.06) * height
    r_max = -apex_y + rng.uniform(0.97, 1.08) * height
    fan = _band(radius, r_min, r_max, 1.0) * _band(beam, -half_angle, half_angle, 0.004)

    # the head: outer skull boundary = reference ellipse, kept inside the frame
    semi_major = rng.uniform(0.24, 0.42) * height
    semi_minor = semi_major * rng.uniform(0.72, 0.9)
    angle = rng.uniform(0.0, math.pi)
    extent_x = math.hypot(semi_major * math.cos(angle), semi_minor * math.sin(angle))
    extent_y = math.hypot(semi_major * math.sin(angle), semi_minor * math.cos(angle))
    low_y, high_y = extent_y + 0.1 * height, height - extent_y - 0.04 * height
    cy = rng.uniform(low_y, high_y) if high_y > low_y else height * 0.53
    low_x, high_x = max(extent_x + 0.05 * width, 0.35 * width), min(
        width - extent_x - 0.05 * width, 0.65 * width)
    cx = rng.uniform(low_x, high_x) if high_x > low_x else width / 2.0
    ellipse = Ellipse(cx, cy, semi_major, semi_minor, angle)
    if hc_mm is None:
        hc_mm = rng.uniform(*hc_range_mm)
    pixel_size_mm = hc_mm / ellipse_perimeter(semi_major, semi_minor)

    distance, u, v = _signed_distance(xx, yy, ellipse)
    # incidence: the skull echoes brightest where the beam hits it head-on (top and bottom)
    normal = np.arctan2(v / semi_minor ** 2, u / semi_major ** 2) + angle
    beam_direction = beam  # beam travels along (sin beam, cos beam) in (x, y)
    incidence = np.abs(np.sin(normal) * np.cos(beam_direction)
                       + np.cos(normal) * np.sin(beam_direction))
    thickness = rng.uniform(2.0, 4.0) * unit * (0.45 + 0.9 * incidence)
    skull = _band(distance, -thickness, 0.0, 0.5)
    skull_brightness = rng.uniform(0.75, 0.95) * (0.4 + 0.6 * incidence)

    # soft tissue: low-frequency texture, attenuation with depth
    texture = _smooth(rng.standard_normal((height, width)), 6.0 * unit)
    texture /= texture.std() + 1e-9
    depth = (radius - r_min) / (r_max - r_min)
    tissue = (rng.uniform(0.22, 0.32) + 0.06 * texture) * np.exp(-rng.uniform(0.3, 0.9) * depth)
    inside = _band(distance, -1e9, -thickness, 0.8)
    brain_level = rng.uniform(0.06, 0.12)
    intensity = tissue * (1.0 - inside) + (brain_level + 0.03 * texture) * inside
    intensity = np.maximum(intensity, 0.0)

    # inner structures, in the head's frame (u along the major axis)
    midline = np.exp(-0.5 * (v / (0.9 * unit)) ** 2) * (np.abs(u) < 0.75 * semi_major)
    intensity += rng.uniform(0.25, 0.45) * midline * inside
    for side in (-1.0, 1.0):  # a pair of hypoechoic blobs (thalami) astride the midline
        bu, bv = 0.12 * semi_major, side * 0.28 * semi_minor
        blob = ((u - bu) / (0.22 * semi_major)) ** 2 + ((v - bv) / (0.2 * semi_minor)) ** 2
        intensity = np.where(blob < 1.0, intensity * 0.35, intensity)
        intensity += 0.12 * _band(blob, 0.85, 1.15, 0.05) * inside
    choroid_u = rng.uniform(-0.5, -0.3) * semi_major
    choroid = ((u - choroid_u) / (0.1 * semi_major)) ** 2 + (v / (0.08 * semi_minor)) ** 2
    intensity += rng.uniform(0.2, 0.35) * (choroid < 1.0) * inside

    intensity = intensity * (1.0 - skull) + skull_brightness * skull

    # acoustic shadows: sectors of the beam behind the near skull wall are dimmed
    centre_radius = math.hypot(cx - apex_x, cy - apex_y)
    for _ in range(int(rng.integers(1, 3))):
        centre_beam = math.atan2(cx - apex_x, cy - apex_y)
        start = centre_beam + rng.uniform(-0.6, 0.4) * semi_major / centre_radius
        span = rng.uniform(0.15, 0.35) * semi_major / centre_radius
        shadow = (_band(beam, start, start + span, 0.01)
                  * _band(radius, centre_radius - 0.3 * semi_minor, 1e9, 2.0))
        intensity = intensity * (1.0 - rng.uniform(0.5, 0.8) * shadow)

    # speckle: multiplicative, spatially correlated Rayleigh noise with unit mean
    speckle = rng.rayleigh(1.0, size=(height, width))
    speckle = _smooth(speckle, 0.7 * unit)
    speckle /= speckle.mean()
    intensity = intensity * speckle + 0.01 * rng.standard_normal((height, width))
    intensity = np.clip(intensity * fan, 0.0, 1.0) ** rng.uniform(0.8, 1.1)
    image = np.round(intensity * 255.0).astype(np.uint8)
    annotation = outline_mask(ellipse, width, height)
    reference_mm = fit_ellipse(annotation).perimeter * pixel_size_mm
    return Phantom(image, annotation, ellipse, float(pixel_size_mm), float(reference_mm),
                   float(hc_mm))


def _names(n: int, rng: np.random.Generator, second_fraction: float) -> list[str]:
    """HC18-style names: ``NNN_HC.png``; some IDs also get ``NNN_2HC.png``."""
    names: list[str] = []
    group = 0
    digits = 3
    while len(names) < n:
        names.append(f"{group:0{digits}d}_HC.png")
        if len(names) < n and rng.uniform() < second_fraction:
            names.append(f"{group:0{digits}d}_2HC.png")
        group += 1
        if group >= 10 ** digits:
            digits += 1
    return names


def _save_png(array: np.ndarray, path: Path, pixel_size_mm: float) -> None:
    from PIL import Image

    dots_per_inch = 25.4 / pixel_size_mm
    with atomic_path(path) as temporary:
        Image.fromarray(array, mode="L").save(temporary, dpi=(dots_per_inch, dots_per_inch))


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    lines = [",".join(header)] + [",".join(row) for row in rows]
    write_bytes(path, ("\r\n".join(lines) + "\r\n").encode("ascii"))


def write_phantom_dataset(out_dir, n: int = 200, seed: int = 0, challenge: int = 0,
                          width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT,
                          second_fraction: float = 0.2, overwrite: bool = False,
                          progress=None) -> Path:
    """Write ``n`` training phantoms (and ``challenge`` test phantoms) in the HC18 layout.

    ``training_set/NNN_HC.png`` with ``NNN_HC_Annotation.png`` (thin 0/255 outline),
    ``training_set_pixel_size_and_HC.csv`` (same header as HC18, CRLF); about
    ``second_fraction`` of the IDs get a second image ``NNN_2HC.png`` of the same head
    (HC within 2 %, new pose and pixel size). With ``challenge > 0`` also ``test_set/`` and
    ``test_set_pixel_size.csv``. As in HC18, the CSV HC is the least-squares refit of the
    drawn outline (Ramanujan perimeter) times the pixel size, rounded to 0.01 mm. Files are written to a temporary folder next
    to ``out_dir`` and moved into place at the end, so an error leaves no partial output.
    Refuses a non-empty ``out_dir`` unless ``overwrite``. Returns ``out_dir``.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer; got {n}")
    if int(challenge) != challenge or challenge < 0:
        raise ValueError(f"challenge must be a non-negative integer; got {challenge}")
    if not 0.0 <= second_fraction <= 1.0:
        raise ValueError(f"second_fraction must be in [0, 1]; got {second_fraction}")
    return write_folder_atomically(
        out_dir, lambda folder: _write_into(folder, int(n), int(seed), int(challenge), width,
                                            height, second_fraction, progress), overwrite)


def write_folder_atomically(out_dir, write, overwrite: bool = False) -> Path:
    """Run ``write(folder)`` on a temporary folder beside ``out_dir`` and move it into place
    at the end, so an error leaves no partial output; refuses a non-empty ``out_dir``
    unless ``overwrite`` (then replaced). Returns ``out_dir``."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        if not out_dir.is_dir():
            raise FileExistsError(f"{out_dir} exists and is not a folder")
        if any(out_dir.iterdir()) and not overwrite:
            raise FileExistsError(
                f"{out_dir} is not empty; choose another folder or allow overwriting"
            )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        os.chmod(temporary, folder_mode())  # mkdtemp's 0700 -> what mkdir gives (umask)
        write(temporary)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(temporary, out_dir)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return out_dir


def _write_into(folder: Path, n: int, seed: int, challenge: int, width: int, height: int,
                second_fraction: float, progress) -> None:
    seeds = np.random.SeedSequence(seed).spawn(3)
    names = _names(n, np.random.default_rng(seeds[0]), second_fraction)
    training = folder / "training_set"
    training.mkdir()
    render_rng = np.random.default_rng(seeds[1])
    jobs = [("training", name) for name in names]
    jobs += [("challenge", f"{i:03d}_HC.png") for i in range(challenge)]
    if challenge:
        (folder / "test_set").mkdir()
    if progress is not None:
        jobs = progress(jobs, desc="phantoms", unit="image")
    training_rows, challenge_rows = [], []
    head_hc: dict[str, float] = {}
    challenge_rng = np.random.default_rng(seeds[2])
    for part, name in jobs:
        if part == "training":
            stem = Path(name).stem
            group = stem.split("_")[0]
            hc_mm = None
            if group in head_hc:  # a second image of the same examination
                hc_mm = head_hc[group] * render_rng.uniform(0.98, 1.02)
            phantom = render_phantom(render_rng, width, height, hc_mm=hc_mm)
            head_hc.setdefault(group, phantom.hc_mm_drawn)
            _save_png(phantom.image, training / name, phantom.pixel_size_mm)
            _save_png(phantom.annotation, training / f"{stem}{ANNOTATION_SUFFIX}.png",
                      phantom.pixel_size_mm)
            training_rows.append([name, f"{phantom.pixel_size_mm:.12g}",
                                  f"{phantom.hc_mm:.2f}"])
        else:
            phantom = render_phantom(challenge_rng, width, height)
            _save_png(phantom.image, folder / "test_set" / name, phantom.pixel_size_mm)
            challenge_rows.append([name, f"{phantom.pixel_size_mm:.12g}"])
    _write_csv(folder / "training_set_pixel_size_and_HC.csv",
               [FILENAME_COLUMN, PIXEL_SIZE_COLUMN, HC_COLUMN], training_rows)
    if challenge:
        _write_csv(folder / "test_set_pixel_size.csv", [FILENAME_COLUMN, PIXEL_SIZE_COLUMN],
                   challenge_rows)

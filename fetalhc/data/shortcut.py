"""Phantoms with a planted shortcut: a bright marker whose position encodes the HC.

A ground-truth benchmark for saliency methods needs a model whose true evidence is known.
Each phantom is an ultrasound-like fan with speckle and an elliptical skull echo (as in
:mod:`fetalhc.data.phantom`), plus a small bright square **marker** (like a calliper mark
burned into an ultrasound frame) on a horizontal strip near the top edge. Three variants:

- ``"contour"``: the head carries the reference HC; the marker sits at a random position
  (it encodes an HC drawn independently of the reference: a decoy, a negative control);
- ``"marker"``: the marker's position encodes the reference HC; the head is drawn with an
  HC drawn independently of the reference (uninformative);
- ``"mixed"``: the head carries the reference HC and the marker encodes it too, with
  Gaussian noise of ``marker_noise_mm`` (clipped to the HC range).

The marker encodes HC linearly (:class:`MarkerStrip`)::

    x_px = x_start_px + (hc_mm - hc_low) / (hc_high - hc_low) * (x_stop_px - x_start_px)

where ``x_px`` is the marker centre's column (pixel-centre coordinates of the original
image, sub-pixel: the square is anti-aliased so that its intensity-weighted centroid is
exactly ``x_px``, see :meth:`MarkerStrip.coverage`). Every image of a
dataset has the same size and the same pixel size, so HC in mm and HC in pixels are
proportional and a model predicting pixels can read the marker. The strip lies above
every head (no head reaches it), so the two cues never overlap.

Interventions re-render one phantom with the marker moved to the position of another HC
(:func:`moved_marker`), removed (:func:`marker_removed`: the pixels the marker covered go
back to the local background, as rendered under it) or with the head hidden
(:func:`head_hidden`: the same tissue and speckle without the skull and brain). Everything
else stays byte-identical.

:func:`write_shortcut_dataset` writes the HC18 layout (so ``fetalhc.train`` trains on it)
plus ``marker_masks/NNN_HC_Marker.png`` (the marker's pixels dilated by
``marker_margin_px``, 0/255) and ``shortcut_phantoms.csv`` (what each marker and head
encodes). The HC18 index reads only the rows of its CSV, so the masks are never taken
for images. Note for ``fetalhc data check``: in the ``"marker"`` variant the CSV HC is
the marker's, not the drawn outline's, so its annotation refit differs by design.

One job past 400 lines: the shortcut phantom, from its encoding to its files. The marker's
encoding, the layered rendering the interventions re-composite and the writer that must
reproduce those renderings byte for byte belong together.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fetalhc.data.ellipse import Ellipse, ellipse_perimeter, fit_ellipse
from fetalhc.data.index import ANNOTATION_SUFFIX, FILENAME_COLUMN, HC_COLUMN, PIXEL_SIZE_COLUMN
from fetalhc.data.phantom import (
    DEFAULT_HEIGHT,
    DEFAULT_WIDTH,
    _band,
    _save_png,
    _signed_distance,
    _smooth,
    _write_csv,
    outline_mask,
    write_folder_atomically,
)
from fetalhc.files import write_csv

VARIANTS = ("contour", "marker", "mixed")
SHORTCUT_HC_RANGE_MM = (120.0, 340.0)
MARKER_SUFFIX = "_Marker"
MARKER_FOLDER = "marker_masks"
DETAILS_FILE = "shortcut_phantoms.csv"
DEFAULT_MARKER_NOISE_MM = 10.0
DEFAULT_MARKER_MARGIN_PX = 1
MIN_ASPECT = 0.72  # smallest semi-minor / semi-major of a drawn head
MAX_ASPECT = 0.9


def check_variant(variant: str) -> str:
    """``variant`` if it is one of :data:`VARIANTS`, else a one-line ``ValueError``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown shortcut variant {variant!r}; choose from {', '.join(VARIANTS)}")
    return variant


def _check_range(hc_range_mm) -> tuple[float, float]:
    low, high = (float(value) for value in hc_range_mm)
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low < high):
        raise ValueError(f"hc_range_mm must be (low, high) with 0 < low < high; got {hc_range_mm}")
    return low, high


@dataclass(frozen=True)
class MarkerStrip:
    """Where the marker can sit and how its position encodes HC (original px, mm).

    ``y_px`` is the marker centre's row; its column runs from ``x_start_px`` (HC
    ``hc_range_mm[0]``) to ``x_stop_px`` (HC ``hc_range_mm[1]``), linearly. The marker is
    a square of ``2 * half_size_px`` pixels a side.
    """

    width: int
    height: int
    x_start_px: float
    x_stop_px: float
    y_px: float
    half_size_px: float
    hc_range_mm: tuple[float, float]

    @property
    def mm_per_px(self) -> float:
        """HC change (mm) per pixel of marker movement."""
        low, high = self.hc_range_mm
        return (high - low) / (self.x_stop_px - self.x_start_px)

    def x_for_hc(self, hc_mm):
        """Marker column (px) encoding ``hc_mm`` (scalar or array, within the HC range)."""
        low, high = self.hc_range_mm
        values = np.asarray(hc_mm, dtype=np.float64)
        if not np.all(np.isfinite(values) & (values >= low) & (values <= high)):
            raise ValueError(f"marker HC must lie within the HC range {low}-{high} mm; "
                             f"got {np.ravel(values)[:4].tolist()}")
        x = self.x_start_px + (values - low) / self.mm_per_px
        return float(x) if x.ndim == 0 else x

    def hc_for_x(self, x_px):
        """HC (mm) encoded by a marker at column ``x_px`` (scalar or array, on the strip)."""
        values = np.asarray(x_px, dtype=np.float64)
        tolerance = 1e-9 * self.width
        if not np.all(np.isfinite(values) & (values >= self.x_start_px - tolerance)
                      & (values <= self.x_stop_px + tolerance)):
            raise ValueError(f"marker column must lie on the strip {self.x_start_px:.2f}-"
                             f"{self.x_stop_px:.2f} px; got {np.ravel(values)[:4].tolist()}")
        hc = self.hc_range_mm[0] + (values - self.x_start_px) * self.mm_per_px
        return float(hc) if hc.ndim == 0 else hc

    def coverage(self, x_px: float) -> np.ndarray:
        """Float (H, W) in [0, 1]: the marker square centred at ``(x_px, y_px)``, sampled
        with a triangle (linear) filter of one pixel's radius at every pixel centre.

        Its sum is the square's area and its weighted centroid is exactly ``(x_px, y_px)``
        (a box filter would bias the centroid towards pixel centres), so the marker's
        position is readable to a fraction of a pixel.
        """

        def ramp(u):  # integral of the unit triangle filter from -1 to u
            u = np.clip(u, -1.0, 1.0)
            return np.where(u < 0, 0.5 * (u + 1.0) ** 2, 1.0 - 0.5 * (1.0 - u) ** 2)

        def along(count, centre):
            pixels = np.arange(count, dtype=np.float64)
            return (ramp(centre + self.half_size_px - pixels)
                    - ramp(centre - self.half_size_px - pixels))

        return along(self.height, self.y_px)[:, None] * along(self.width, float(x_px))[None, :]

    def mask(self, x_px: float, margin_px: int = DEFAULT_MARKER_MARGIN_PX) -> np.ndarray:
        """Bool (H, W): every pixel the marker touches, dilated by ``margin_px`` pixels."""
        from scipy import ndimage

        touched = self.coverage(x_px) > 0
        if margin_px > 0:
            touched = ndimage.binary_dilation(touched, np.ones((3, 3), bool),
                                              iterations=int(margin_px))
        return touched


def marker_strip(width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT,
                 hc_range_mm=SHORTCUT_HC_RANGE_MM) -> MarkerStrip:
    """The marker strip of ``width`` x ``height`` images: half size ``max(2, 0.025 *
    min(W, H))`` px, centre row ``half + max(1, 0.02 H)``, columns from ``max(half + 1,
    0.08 W)`` to ``W - 1`` minus that."""
    if int(width) < 32 or int(height) < 32:
        raise ValueError(f"shortcut phantoms must be at least 32x32 px; got {width}x{height}")
    width, height = int(width), int(height)
    half = max(2.0, 0.025 * min(width, height))
    y = half + max(1.0, 0.02 * height)
    x_start = max(half + 1.0, 0.08 * width)
    return MarkerStrip(width, height, x_start, width - 1.0 - x_start, y, half,
                       _check_range(hc_range_mm))


def _head_top_px(strip: MarkerStrip) -> float:
    """The lowest row a head may reach up to: below the strip with a gap."""
    return strip.y_px + strip.half_size_px + 2.0 + 0.02 * strip.height + 1.0


def _largest_semi_major(strip: MarkerStrip) -> float:
    available = strip.height - _head_top_px(strip) - 0.03 * strip.height
    return min(0.48 * available, 0.47 * strip.width)


def default_pixel_size_mm(width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT,
                          hc_range_mm=SHORTCUT_HC_RANGE_MM) -> float:
    """The pixel size (mm) at which the largest HC, drawn as the flattest head, just fits
    between the marker strip and the bottom edge."""
    strip = marker_strip(width, height, hc_range_mm)
    largest = _largest_semi_major(strip)
    return strip.hc_range_mm[1] / ellipse_perimeter(largest, MIN_ASPECT * largest)


@dataclass(frozen=True)
class ShortcutPhantom:
    """One shortcut phantom (original px, uint8 images; see the module docstring).

    ``image``: what the dataset holds (head and marker). ``annotation``: 0/255 outline of
    the drawn head. ``marker_mask``: 0/255, the marker dilated by ``marker_margin_px``.
    ``hc_mm``: the reference (the CSV HC). ``head_hc_mm``: the drawn outline's refit
    (Ramanujan perimeter) times the pixel size, as HC18 defines a reference.
    ``marker_hc_mm``: the HC the marker's position encodes. ``background`` /
    ``background_no_head``: the rendering without the marker, with and without the head.
    """

    variant: str
    image: np.ndarray
    annotation: np.ndarray
    marker_mask: np.ndarray
    ellipse: Ellipse
    pixel_size_mm: float
    hc_mm: float
    head_hc_mm: float
    marker_hc_mm: float
    strip: MarkerStrip
    marker_margin_px: int
    background: np.ndarray = field(repr=False)
    background_no_head: np.ndarray = field(repr=False)

    @property
    def marker_x_px(self) -> float:
        """Column of the marker centre (original px)."""
        return self.strip.x_for_hc(self.marker_hc_mm)


def _composite(background: np.ndarray, strip: MarkerStrip, x_px: float) -> np.ndarray:
    """The marker (brightness 255) laid over a uint8 background by its pixel coverage."""
    alpha = strip.coverage(x_px)
    blended = (1.0 - alpha) * background.astype(np.float64) + alpha * 255.0
    return np.round(blended).astype(np.uint8)


def render_with(phantom: ShortcutPhantom, marker_hc_mm: float | None = None,
                marker: bool = True, head: bool = True) -> np.ndarray:
    """``phantom`` re-rendered (uint8 (H, W)): the marker at the position encoding
    ``marker_hc_mm`` (default: its own), or none (``marker=False``); the head or not."""
    background = phantom.background if head else phantom.background_no_head
    if not marker:
        return background.copy()
    hc = phantom.marker_hc_mm if marker_hc_mm is None else marker_hc_mm
    return _composite(background, phantom.strip, phantom.strip.x_for_hc(hc))


def moved_marker(phantom: ShortcutPhantom, hc_mm: float) -> np.ndarray:
    """``phantom`` with its marker moved to the position encoding ``hc_mm``."""
    return render_with(phantom, marker_hc_mm=hc_mm)


def marker_removed(phantom: ShortcutPhantom) -> np.ndarray:
    """``phantom`` without its marker: the local background (as rendered under it)."""
    return render_with(phantom, marker=False)


def head_hidden(phantom: ShortcutPhantom) -> np.ndarray:
    """``phantom`` with the head replaced by the tissue and speckle around it; marker kept."""
    return render_with(phantom, head=False)


def moved_marker_mask(phantom: ShortcutPhantom, hc_mm: float) -> np.ndarray:
    """0/255 uint8 marker mask of ``phantom`` with the marker moved to encode ``hc_mm``."""
    mask = phantom.strip.mask(phantom.strip.x_for_hc(hc_mm), phantom.marker_margin_px)
    return np.where(mask, 255, 0).astype(np.uint8)


def _head_ellipse(rng, strip: MarkerStrip, perimeter_px: float) -> Ellipse:
    aspect = rng.uniform(MIN_ASPECT, MAX_ASPECT)
    semi_major = perimeter_px / ellipse_perimeter(1.0, aspect)
    semi_minor = aspect * semi_major
    angle = rng.uniform(0.0, math.pi)
    extent_x = math.hypot(semi_major * math.cos(angle), semi_minor * math.sin(angle))
    extent_y = math.hypot(semi_major * math.sin(angle), semi_minor * math.cos(angle))
    width, height = strip.width, strip.height
    low_y, high_y = _head_top_px(strip) + extent_y, height - 0.03 * height - extent_y
    low_x, high_x = 0.03 * width + extent_x, width - 0.03 * width - extent_x
    if high_y < low_y or high_x < low_x:
        raise ValueError(
            f"a head of {perimeter_px:.1f} px perimeter does not fit a {width}x{height} image "
            "below the marker strip; use a larger pixel size or a smaller HC range")
    return Ellipse(rng.uniform(low_x, high_x), rng.uniform(low_y, high_y), semi_major,
                   semi_minor, angle)


def _render_layers(rng, strip: MarkerStrip, ellipse: Ellipse):
    """Uint8 renderings (with head, without head) sharing tissue, fan and speckle."""
    width, height = strip.width, strip.height
    unit = min(width, height) / DEFAULT_HEIGHT
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    apex_x = width / 2.0 + rng.uniform(-0.03, 0.03) * width
    apex_y = -rng.uniform(0.08, 0.2) * height
    radius = np.hypot(xx - apex_x, yy - apex_y)
    beam = np.arctan2(xx - apex_x, yy - apex_y)
    half_angle = math.radians(rng.uniform(40.0, 50.0))
    r_min, r_max = -apex_y + rng.uniform(0.0, 0.02) * height, -apex_y + 1.1 * height
    fan = _band(radius, r_min, r_max, 1.0) * _band(beam, -half_angle, half_angle, 0.004)

    texture = _smooth(rng.standard_normal((height, width)), 6.0 * unit)
    texture /= texture.std() + 1e-9
    depth = (radius - r_min) / (r_max - r_min)
    tissue = np.maximum((rng.uniform(0.22, 0.32) + 0.06 * texture)
                        * np.exp(-rng.uniform(0.3, 0.9) * depth), 0.0)

    distance, u, v = _signed_distance(xx, yy, ellipse)
    support = distance <= 2.0  # the head changes no pixel farther out than this
    normal = np.arctan2(v / ellipse.semi_minor ** 2, u / ellipse.semi_major ** 2)
    incidence = np.abs(np.sin(normal + ellipse.angle_rad) * np.cos(beam)
                       + np.cos(normal + ellipse.angle_rad) * np.sin(beam))
    thickness = rng.uniform(2.0, 4.0) * unit * (0.45 + 0.9 * incidence)
    skull = _band(distance, -thickness, 0.0, 0.5) * support
    inside = _band(distance, -1e9, -thickness, 0.8) * support
    brain = rng.uniform(0.06, 0.12) + 0.03 * texture
    midline = np.exp(-0.5 * (v / (0.9 * unit)) ** 2) * (np.abs(u) < 0.75 * ellipse.semi_major)
    brain = np.maximum(brain + rng.uniform(0.25, 0.45) * midline, 0.0)
    with_head = tissue * (1.0 - inside) + brain * inside
    with_head = with_head * (1.0 - skull) + rng.uniform(0.75, 0.95) * (0.4 + 0.6 * incidence) * skull

    speckle = _smooth(rng.rayleigh(1.0, size=(height, width)), 0.7 * unit)
    speckle /= speckle.mean()
    noise = 0.01 * rng.standard_normal((height, width))
    gamma = rng.uniform(0.8, 1.1)

    def finish(intensity):
        intensity = np.clip((intensity * speckle + noise) * fan, 0.0, 1.0) ** gamma
        return np.round(intensity * 255.0).astype(np.uint8)

    no_head = finish(tissue)
    head = np.where(support, finish(with_head), no_head)  # identical outside the support
    return head, no_head


def render_shortcut_phantom(rng: np.random.Generator, variant: str,
                            width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT,
                            hc_range_mm=SHORTCUT_HC_RANGE_MM, pixel_size_mm: float | None = None,
                            marker_noise_mm: float = DEFAULT_MARKER_NOISE_MM,
                            marker_margin_px: int = DEFAULT_MARKER_MARGIN_PX) -> ShortcutPhantom:
    """Render one shortcut phantom of ``variant`` with random draws from ``rng``.

    ``pixel_size_mm`` (mm per original px) defaults to :func:`default_pixel_size_mm`;
    ``marker_noise_mm`` is the SD of the marker's noise in the ``"mixed"`` variant.
    """
    check_variant(variant)
    strip = marker_strip(width, height, hc_range_mm)
    low, high = strip.hc_range_mm
    if pixel_size_mm is None:
        pixel_size_mm = default_pixel_size_mm(width, height, hc_range_mm)
    if not (math.isfinite(pixel_size_mm) and pixel_size_mm > 0):
        raise ValueError(f"pixel_size_mm must be a positive number; got {pixel_size_mm}")
    if not (math.isfinite(marker_noise_mm) and marker_noise_mm >= 0):
        raise ValueError(f"marker_noise_mm must be >= 0; got {marker_noise_mm}")
    if int(marker_margin_px) != marker_margin_px or marker_margin_px < 0:
        raise ValueError(f"marker_margin_px must be a whole number >= 0; got {marker_margin_px}")

    reference = rng.uniform(low, high)
    other = rng.uniform(low, high)  # the uninformative cue's HC
    noise = rng.standard_normal() * marker_noise_mm
    drawn_head = other if variant == "marker" else reference
    ellipse = _head_ellipse(rng, strip, drawn_head / pixel_size_mm)
    background, background_no_head = _render_layers(rng, strip, ellipse)
    annotation = outline_mask(ellipse, strip.width, strip.height)
    head_hc = float(fit_ellipse(annotation).perimeter * pixel_size_mm)
    if variant == "marker":
        hc, marker_hc = reference, reference
    elif variant == "mixed":
        hc, marker_hc = head_hc, float(np.clip(head_hc + noise, low, high))
    else:
        hc, marker_hc = head_hc, other
    x = strip.x_for_hc(marker_hc)
    mask = np.where(strip.mask(x, int(marker_margin_px)), 255, 0).astype(np.uint8)
    return ShortcutPhantom(
        variant=variant, image=_composite(background, strip, x), annotation=annotation,
        marker_mask=mask, ellipse=ellipse, pixel_size_mm=float(pixel_size_mm), hc_mm=float(hc),
        head_hc_mm=head_hc, marker_hc_mm=float(marker_hc), strip=strip,
        marker_margin_px=int(marker_margin_px), background=background,
        background_no_head=background_no_head)


def shortcut_phantoms(variant: str, n: int, seed: int = 0, width: int = DEFAULT_WIDTH,
                      height: int = DEFAULT_HEIGHT, **options) -> list[ShortcutPhantom]:
    """``n`` phantoms of ``variant``; the same seed gives identical arrays. Image ``i`` is
    drawn from its own stream (``SeedSequence(seed).spawn(n)[i]``). ``options``: those
    of :func:`render_shortcut_phantom`."""
    check_variant(variant)
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer; got {n}")
    streams = np.random.SeedSequence(int(seed)).spawn(int(n))
    return [render_shortcut_phantom(np.random.default_rng(stream), variant, width, height,
                                    **options) for stream in streams]


def marker_mask_name(filename: str) -> str:
    """``001_HC.png`` -> ``001_HC_Marker.png`` (in ``marker_masks/``, beside ``training_set/``)."""
    path = Path(filename)
    return f"{path.stem}{MARKER_SUFFIX}{path.suffix}"


def write_training_part(folder, filenames: Sequence[str], images, annotations,
                        pixel_sizes_mm, hc_mm) -> Path:
    """Write an HC18 training part into the existing ``folder``: ``training_set/`` with each
    image and its ``_Annotation.png`` and the CSV (HC rounded to 0.01 mm). Returns
    ``folder``."""
    folder = Path(folder)
    counts = {len(filenames), len(images), len(annotations), len(pixel_sizes_mm), len(hc_mm)}
    if len(counts) != 1:
        raise ValueError("filenames, images, annotations, pixel sizes and HCs differ in length")
    training = folder / "training_set"
    training.mkdir(exist_ok=True)
    rows = []
    for name, image, annotation, pixel_size, hc in zip(filenames, images, annotations,
                                                        pixel_sizes_mm, hc_mm, strict=True):
        _save_png(np.asarray(image, np.uint8), training / name, float(pixel_size))
        _save_png(np.asarray(annotation, np.uint8),
                  training / f"{Path(name).stem}{ANNOTATION_SUFFIX}.png", float(pixel_size))
        rows.append([name, f"{float(pixel_size):.12g}", f"{float(hc):.2f}"])
    _write_csv(folder / "training_set_pixel_size_and_HC.csv",
               [FILENAME_COLUMN, PIXEL_SIZE_COLUMN, HC_COLUMN], rows)
    return folder


def write_shortcut_dataset(out_dir, variant: str, n: int = 200, seed: int = 0,
                           width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT,
                           overwrite: bool = False, **options) -> Path:
    """Write ``n`` shortcut phantoms of ``variant`` in the HC18 layout (see the module
    docstring): ``training_set/NNN_HC.png`` + ``_Annotation.png``, the HC18 CSV, one
    ``marker_masks/NNN_HC_Marker.png`` per image and ``shortcut_phantoms.csv``.

    The same arguments give byte-identical files. Written to a temporary folder beside
    ``out_dir`` and moved into place at the end; refuses a non-empty ``out_dir`` unless
    ``overwrite``. ``options``: those of :func:`render_shortcut_phantom`.
    """
    phantoms = shortcut_phantoms(variant, n, seed, width, height, **options)

    def write(folder: Path) -> None:
        digits = max(3, len(str(len(phantoms) - 1)))
        names = [f"{i:0{digits}d}_HC.png" for i in range(len(phantoms))]
        write_training_part(folder, names, [p.image for p in phantoms],
                            [p.annotation for p in phantoms],
                            [p.pixel_size_mm for p in phantoms], [p.hc_mm for p in phantoms])
        masks = folder / MARKER_FOLDER
        masks.mkdir()
        for name, phantom in zip(names, phantoms, strict=True):
            _save_png(phantom.marker_mask, masks / marker_mask_name(name), phantom.pixel_size_mm)
        write_csv(pd.DataFrame(details_rows(names, phantoms)), folder / DETAILS_FILE,
                  float_format=None)

    return write_folder_atomically(out_dir, write, overwrite)


def ensure_shortcut_dataset(out_dir, variant: str, n: int = 200, seed: int = 0,
                            width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT,
                            overwrite: bool = False, **options) -> bool:
    """``out_dir`` as :func:`write_shortcut_dataset` writes it with these arguments: written
    when missing (or with ``overwrite``), else reused only when every file is byte-identical
    to a fresh copy (the generator is deterministic), so a folder of an older generator or
    other settings is never reused by its name (``ValueError``). Returns whether it was
    written."""
    import filecmp
    import tempfile

    out_dir = Path(out_dir)
    if overwrite or not out_dir.exists():
        write_shortcut_dataset(out_dir, variant, n, seed, width, height, overwrite=overwrite,
                               **options)
        return True
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as scratch:
        fresh = write_shortcut_dataset(Path(scratch) / "fresh", variant, n, seed, width,
                                       height, **options)
        names = sorted(str(path.relative_to(fresh)) for path in fresh.rglob("*")
                       if path.is_file())
        found = sorted(str(path.relative_to(out_dir)) for path in out_dir.rglob("*")
                       if path.is_file())
        _, mismatch, errors = filecmp.cmpfiles(fresh, out_dir, names, shallow=False)
    if names != found or mismatch or errors:
        differing = (mismatch + errors)[:1] or sorted(set(names) ^ set(found))[:1]
        raise ValueError(f"{out_dir} does not hold the {variant} phantoms these settings "
                         f"make (first difference: {differing[0]}); delete it, or retrain "
                         "with --overwrite")
    return False


def details_rows(filenames: Sequence[str], phantoms: Sequence[ShortcutPhantom]) -> list[dict]:
    """One dict per phantom: what its marker and head encode (the columns of
    ``shortcut_phantoms.csv``, units in the names)."""
    return [{
        "filename": name, "variant": p.variant, "hc_mm": round(p.hc_mm, 2),
        "marker_hc_mm": round(p.marker_hc_mm, 4), "head_hc_mm": round(p.head_hc_mm, 4),
        "marker_x_px": round(p.marker_x_px, 4), "marker_y_px": round(p.strip.y_px, 4),
        "marker_half_size_px": round(p.strip.half_size_px, 4),
        "pixel_size_mm": float(f"{p.pixel_size_mm:.12g}"),
    } for name, p in zip(filenames, phantoms, strict=True)]

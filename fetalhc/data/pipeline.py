"""tf.data input pipeline: index rows -> batched dicts of network inputs and targets.

Pre-processing (docs/architecture.md, docs/data.md): each image is resized preserving its
aspect ratio so that its longer side equals ``image_size`` (bilinear with anti-aliasing),
z-scored over its own pixels, then zero-padded to a square with the content **centred**
(offsets ``(S - w) // 2`` and ``(S - h) // 2``). 0 is the image mean after z-scoring.
The pixel size of the input is ``pixel_size_original * long_side / S``.

Element dict (batched): ``image`` float32 (B,S,S,1); ``pixel_size_mm`` float32 (B,) of the
input; ``hc_mm`` float32 (B,) (NaN without reference); ``hc_px_input`` = hc_mm /
pixel_size_mm; ``filename`` string (B,); optional ``annotation`` float32 (B,S,S,1), a 0/1
outline of the reference ellipse rasterised at input resolution; optional ``ellipse``
float32 (B,6) = cx, cy, a (semi-major), b (semi-minor) in input px, sin 2θ, cos 2θ.

Crops (``fetalhc.data.crop``): when the index has the region columns ``region_cx_px``,
``region_cy_px``, ``region_side_px`` (original px), each image is z-scored over the whole
original image, the square region is taken (0 outside the image) and resized to ``S``; the
input pixel size is ``pixel_size_original * side / S``, the ``box`` (content mask of the
brightness jitter) is the part of the crop inside the image, and the ``ellipse`` and
``annotation`` targets are in the crop's input px. The cache then holds the crops.

One job, the batches the networks see: augmentation and outline rasterisation live here
because they transform those batches inside the pipeline, in step with its geometry.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from fetalhc.data.crop import (
    REGION_COLUMNS,
    crop_columns,
    crop_image,
    ellipse_regions,
    index_regions,
    with_regions,
)
from fetalhc.data.errors import DataError
from fetalhc.data.images import check_images, image_byte_sizes

# half width, in input pixels, of the band around the ellipse that the `annotation` marks
OUTLINE_HALF_WIDTH_PX = 0.75

# The pre-processing above in words: recorded in a run's config.toml ([preprocessing], with
# the image size) and in the provenance of every result folder (fetalhc.report.provenance).
PREPROCESSING = {
    "resize": "keep aspect ratio, longer side = image_size, bilinear with anti-aliasing",
    "normalise": "z-score per image (mean 0, SD 1 over the image's own pixels)",
    "pad": "centred to a square with 0 (the image mean after z-scoring)",
    "pad_value": 0.0,
    "channels": 1,
}

# What the content's intensities become (``intensity=``; ``--intensity`` of predict /
# explain / evaluate for your own model): fetalhc's z-score, or the decoded intensities as
# they are, in [0, 1] or in [0, 255] (a model trained on ``x / 255`` or on raw pixels).
INTENSITIES = {
    "zscore": PREPROCESSING["normalise"],
    "0-1": "none: the decoded intensities in [0, 1] (8-bit value / 255)",
    "0-255": "none: the decoded intensities in [0, 255] (8-bit value)",
}


def check_intensity(intensity: str) -> str:
    """``intensity`` if it is one of :data:`INTENSITIES`, else a one-line ValueError."""
    if not isinstance(intensity, str) or intensity not in INTENSITIES:
        raise ValueError(f"unknown intensity {intensity!r}; choose one of: "
                         f"{', '.join(INTENSITIES)}")
    return intensity


def preprocessing_record(intensity: str = "zscore") -> dict:
    """:data:`PREPROCESSING` with the ``intensity`` rule (the z-score's record is
    :data:`PREPROCESSING` itself, so earlier records stay the same)."""
    if check_intensity(intensity) == "zscore":
        return dict(PREPROCESSING)
    return {**PREPROCESSING, "normalise": INTENSITIES[intensity],
            "pad": "centred to a square with 0"}


@dataclass(frozen=True)
class Augmentation:
    """Random geometric and intensity changes that keep ``hc_mm`` true.

    Geometry is one affine map about the input centre: optional flips, a rotation of up to
    ``max_rotation_deg``, a zoom factor in ``scale_range`` (``pixel_size_mm`` is divided by
    it, so ``hc_mm`` is unchanged while ``hc_px_input`` is multiplied by it) and a shift of
    up to ``max_translation`` x image size. The ``ellipse`` and ``annotation`` follow the
    same map. Intensity: after z-scoring, the image content (not the padding) becomes
    ``contrast * z + brightness``.
    """

    flip_horizontal: bool = True
    flip_vertical: bool = False
    max_rotation_deg: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    max_translation: float = 0.05
    brightness: float = 0.1
    contrast_range: tuple[float, float] = (0.9, 1.1)

    def __post_init__(self):
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high; got {self.scale_range}")
        low, high = self.contrast_range
        if not 0 < low <= high:
            raise ValueError(
                f"contrast_range must satisfy 0 < low <= high; got {self.contrast_range}"
            )
        if self.max_rotation_deg < 0 or self.max_translation < 0 or self.brightness < 0:
            raise ValueError("max_rotation_deg, max_translation and brightness must be >= 0")


@dataclass(frozen=True)
class Geometry:
    """Where an original image lands in the square network input."""

    scale: float  # input px per original px (isotropic)
    width: int  # resized content width, input px
    height: int
    offset_x: int  # left padding, input px
    offset_y: int  # top padding, input px


def input_geometry(width_px: int, height_px: int, image_size: int) -> Geometry:
    """Resize-and-pad geometry of a ``width_px`` x ``height_px`` image into ``image_size``^2.

    An original point ``(x, y)`` (pixel-centre coordinates) lands at
    ``((x + 0.5) * width / width_px - 0.5 + offset_x, (y + 0.5) * height / height_px - 0.5 +
    offset_y)``; lengths scale by ``scale = image_size / max(width_px, height_px)``.
    """
    if width_px <= 0 or height_px <= 0:
        raise ValueError(f"image size must be positive; got {width_px}x{height_px}")
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8; got {image_size}")
    scale = image_size / max(width_px, height_px)
    width = min(image_size, max(1, int(round(width_px * scale))))
    height = min(image_size, max(1, int(round(height_px * scale))))
    return Geometry(scale, width, height, (image_size - width) // 2, (image_size - height) // 2)


@lru_cache(maxsize=8192)
def _cached_annotation_ellipse(path: str, mtime_ns: int, size: int):
    from fetalhc.data.ellipse import annotation_ellipse

    return tuple(annotation_ellipse(path))


def annotation_ellipses(index: pd.DataFrame) -> np.ndarray:
    """Fitted ellipses of the index's annotations, (N, 5) float64 in ORIGINAL px.

    Columns: cx, cy, semi_major, semi_minor, angle_rad. Results are memoised per file.
    """
    if "annotation_path" not in index.columns:
        raise ValueError("the index has no 'annotation_path' column")
    ellipses = np.zeros((len(index), 5), dtype=np.float64)
    for i, (filename, path) in enumerate(zip(index["filename"], index["annotation_path"],
                                             strict=True)):
        if path is None or (isinstance(path, float) and math.isnan(path)):
            raise DataError(f"{filename}: no annotation, so no ellipse/annotation target")
        try:
            stat = Path(path).stat()
        except FileNotFoundError:
            raise DataError(f"{path}: annotation file is missing") from None
        ellipses[i] = _cached_annotation_ellipse(str(path), stat.st_mtime_ns, stat.st_size)
    return ellipses


def reference_regions(index: pd.DataFrame, margin: float) -> pd.DataFrame:
    """``index`` with the region columns of a crop around each reference (annotation)
    ellipse: side ``round(2 × margin × semi-major)``, see
    :func:`fetalhc.data.crop.ellipse_regions`. For training and for scoring on reference
    crops; a prediction takes its regions from a localiser (``fetalhc.models.localise``)."""
    return with_regions(index, ellipse_regions(annotation_ellipses(index), margin))


def _columns(index: pd.DataFrame, image_size: int, need_ellipse: bool) -> dict:
    required = ["filename", "image_path", "pixel_size_mm", "hc_mm", "width_px", "height_px"]
    missing = [column for column in required if column not in index.columns]
    if missing:
        raise ValueError(f"the index lacks column(s) {missing}; use fetalhc.data.load_index")
    if len(index) == 0:
        raise ValueError("the index is empty")
    regions = index_regions(index)  # checked before any file is read
    # decode every file now (memoised), so no bad file ever reaches tf.data; the byte sizes
    # let the graph name a file that changed after this check (see _load_element)
    file_sizes = image_byte_sizes(index, annotations=need_ellipse)
    if regions is not None:
        columns = {
            "image_path": index["image_path"].astype(str).to_numpy(),
            "filename": index["filename"].astype(str).to_numpy(),
            "hc_mm": index["hc_mm"].to_numpy(np.float64).astype(np.float32),
            "file_size": np.asarray(file_sizes, dtype=np.int64),
        }
        columns.update(crop_columns(index, regions, image_size,
                                    annotation_ellipses(index) if need_ellipse else None))
        return columns
    geometries = [input_geometry(int(w), int(h), image_size)
                  for w, h in zip(index["width_px"], index["height_px"], strict=True)]
    pixel_size = index["pixel_size_mm"].to_numpy(np.float64)
    scale = np.array([g.scale for g in geometries])
    columns = {
        "image_path": index["image_path"].astype(str).to_numpy(),
        "filename": index["filename"].astype(str).to_numpy(),
        "box": np.array([[g.height, g.width, g.offset_y, g.offset_x] for g in geometries],
                        dtype=np.int32),
        "pixel_size_mm": (pixel_size / scale).astype(np.float32),
        "hc_mm": index["hc_mm"].to_numpy(np.float64).astype(np.float32),
        "file_size": np.asarray(file_sizes, dtype=np.int64),
    }
    if need_ellipse:
        original = annotation_ellipses(index)
        width = index["width_px"].to_numpy(np.float64)
        height = index["height_px"].to_numpy(np.float64)
        box = columns["box"].astype(np.float64)
        columns["ellipse"] = np.stack([
            (original[:, 0] + 0.5) * box[:, 1] / width - 0.5 + box[:, 3],
            (original[:, 1] + 0.5) * box[:, 0] / height - 0.5 + box[:, 2],
            original[:, 2] * scale,
            original[:, 3] * scale,
            original[:, 4],
        ], axis=1).astype(np.float32)
    return columns


Z_SCORE_FLOOR = 1e-6  # the floor on an image's SD in the z-score


def prepare_image(images, height, width, image_size: int, intensity: str = "zscore"):
    """The deterministic pre-processing of one image ``(H, W, 1)`` or a batch of images of
    one size ``(B, H, W, 1)``, float: resize to ``height`` x ``width`` (bilinear,
    anti-aliased), z-score each image over its own pixels (or, by ``intensity``, keep the
    decoded [0, 1] values or scale them to [0, 255]: :data:`INTENSITIES`), pad with 0 to
    ``image_size`` squared with the content centred (offsets ``(S - h) // 2``,
    ``(S - w) // 2``, as :func:`input_geometry`). The one copy: the pipeline and an exported
    model's ``RawImagePreprocessing`` layer both call it."""
    import tensorflow as tf

    resized = tf.image.resize(images, tf.stack([height, width]), method="bilinear",
                              antialias=True)
    if check_intensity(intensity) == "zscore":
        axes = [-3, -2, -1]
        mean = tf.reduce_mean(resized, axis=axes, keepdims=True)
        deviation = tf.math.reduce_std(resized, axis=axes, keepdims=True)
        normalised = (resized - mean) / tf.maximum(deviation, Z_SCORE_FLOOR)
    else:
        normalised = resized * (255.0 if intensity == "0-255" else 1.0)
    top, left = (image_size - height) // 2, (image_size - width) // 2
    padding = [[top, image_size - height - top], [left, image_size - width - left], [0, 0]]
    if images.shape.rank == 4:
        padding = [[0, 0], *padding]
    return tf.pad(normalised, padding)


def _load_element(row, image_size: int, intensity: str = "zscore"):
    """Deterministic part: decode, resize, z-score, pad, or decode, z-score, crop, resize
    for rows with a ``region`` (cacheable)."""
    import tensorflow as tf

    raw = tf.io.read_file(row["image_path"])
    # check_images decoded this file before the dataset was built; should it have changed
    # since, fail naming it rather than with the decoder's nameless "Invalid PNG data"
    length = tf.cast(tf.strings.length(raw, unit="BYTE"), tf.int64)
    unchanged = tf.debugging.Assert(
        tf.equal(length, row["file_size"]),
        ["fetalhc: image file changed after it was checked (run `fetalhc data check`):",
         row["image_path"], "bytes now:", length, "bytes when checked:", row["file_size"]])
    with tf.control_dependencies([unchanged]):
        raw = tf.identity(raw)
    image = tf.io.decode_image(raw, channels=1, expand_animations=False, dtype=tf.float32)
    element = dict(row)
    if "region" in row:
        image = crop_image(image, element.pop("region"), image_size)
    else:
        box = row["box"]  # height, width and the centred offsets of input_geometry
        image = tf.ensure_shape(prepare_image(image, box[0], box[1], image_size, intensity),
                                (image_size, image_size, 1))
    del element["image_path"]
    del element["file_size"]
    element["image"] = image
    return element


def _content_mask(box, image_size: int):
    """(B, S, S, 1) float mask of the image content (not the padding) for boxes (B, 4)."""
    import tensorflow as tf

    rows = tf.range(image_size)[None, :, None]
    cols = tf.range(image_size)[None, None, :]
    height, width = box[:, 0, None, None], box[:, 1, None, None]
    top, left = box[:, 2, None, None], box[:, 3, None, None]
    inside = (rows >= top) & (rows < top + height) & (cols >= left) & (cols < left + width)
    return tf.cast(inside, tf.float32)[..., None]


def _augment_batch(batch, seed, image_size: int, augmentation: Augmentation):
    """Random affine + intensity jitter per element of a batch; targets follow the image."""
    import tensorflow as tf

    count = tf.shape(batch["image"])[0]
    seeds = tf.random.experimental.stateless_split(tf.stack([seed, seed // 7 + 11]), num=8)

    def uniform(i, low, high):
        return tf.random.stateless_uniform([count], seeds[i], minval=low, maxval=high,
                                           dtype=tf.float32)

    def constant(value):
        return tf.fill([count], tf.constant(float(value), tf.float32))

    def coin(i, enabled):
        if not enabled:
            return constant(1.0)
        return tf.where(uniform(i, 0.0, 1.0) < 0.5, -1.0, 1.0)

    flip_x = coin(0, augmentation.flip_horizontal)
    flip_y = coin(1, augmentation.flip_vertical)
    limit = math.radians(augmentation.max_rotation_deg)
    angle = uniform(2, -limit, limit) if limit > 0 else constant(0.0)
    low, high = augmentation.scale_range
    scale = uniform(3, low, high) if high > low else constant(low)
    shift_limit = augmentation.max_translation * image_size
    if shift_limit > 0:
        shift = tf.stack([uniform(4, -shift_limit, shift_limit),
                          uniform(5, -shift_limit, shift_limit)], axis=-1)
    else:
        shift = tf.zeros([count, 2])
    brightness = (uniform(6, -augmentation.brightness, augmentation.brightness)
                  if augmentation.brightness > 0 else None)
    low, high = augmentation.contrast_range
    contrast = uniform(7, low, high) if high > low else constant(low)

    # forward map p' = scale * R @ F @ (p - c) + c + shift, F = diag(flip_x, flip_y)
    cos, sin = tf.cos(angle), tf.sin(angle)
    rotation = tf.stack([tf.stack([cos, -sin], -1), tf.stack([sin, cos], -1)], -2)
    orientation = rotation @ tf.linalg.diag(tf.stack([flip_x, flip_y], -1))
    forward = scale[:, None, None] * orientation
    centre = tf.fill([2], (image_size - 1) / 2.0)
    # inverse = (R F)^T / scale = F R^T / scale: output pixel -> input pixel, as the op wants
    inverse = tf.linalg.matrix_transpose(orientation) / scale[:, None, None]
    offset = centre - tf.linalg.matvec(inverse, centre + shift)
    zeros = tf.zeros([count])
    transforms = tf.stack([inverse[:, 0, 0], inverse[:, 0, 1], offset[:, 0],
                           inverse[:, 1, 0], inverse[:, 1, 1], offset[:, 1], zeros, zeros],
                          axis=-1)

    def warp(images, interpolation):
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=images, transforms=transforms,
            output_shape=tf.constant([image_size, image_size]), fill_value=0.0,
            interpolation=interpolation, fill_mode="CONSTANT")

    batch = dict(batch)
    # intensity first (the warp is linear, so this equals jittering the warped image and
    # warping the content mask too, at the cost of one warp)
    image = batch["image"] * contrast[:, None, None, None]
    if brightness is not None:
        image = image + brightness[:, None, None, None] * _content_mask(batch["box"], image_size)
    batch["image"] = warp(image, "BILINEAR")
    batch["pixel_size_mm"] = batch["pixel_size_mm"] / scale
    if "ellipse" in batch:
        ellipse = batch["ellipse"]
        new_centre = tf.linalg.matvec(forward, ellipse[:, :2] - centre) + centre + shift
        axis = tf.stack([tf.cos(ellipse[:, 4]), tf.sin(ellipse[:, 4])], -1)
        direction = tf.linalg.matvec(orientation, axis)
        new_angle = tf.math.floormod(tf.atan2(direction[:, 1], direction[:, 0]), math.pi)
        batch["ellipse"] = tf.concat(
            [new_centre, ellipse[:, 2:4] * scale[:, None], new_angle[:, None]], axis=-1)
    return batch


def rasterise_outline(ellipse, image_size: int, half_width_px: float = OUTLINE_HALF_WIDTH_PX):
    """0/1 float32 outline of ellipses (cx, cy, a, b, angle_rad) in px, at ``image_size``.

    ``ellipse`` of shape (5,) gives (S, S, 1); shape (B, 5) gives (B, S, S, 1). Marks pixel
    centres whose (first-order, Sampson) distance to the ellipse is at most
    ``half_width_px``. A TensorFlow function; works eagerly too.
    """
    import tensorflow as tf

    ellipse = tf.convert_to_tensor(ellipse, tf.float32)
    single = ellipse.shape.rank == 1
    if single:
        ellipse = ellipse[None]
    e = [ellipse[:, i, None, None] for i in range(5)]
    coords = tf.range(image_size, dtype=tf.float32)
    dx = coords[None, None, :] - e[0]
    dy = coords[None, :, None] - e[1]
    cos, sin = tf.cos(e[4]), tf.sin(e[4])
    u = dx * cos + dy * sin
    v = -dx * sin + dy * cos
    a2, b2 = e[2] ** 2, e[3] ** 2
    value = u * u / a2 + v * v / b2 - 1.0
    gradient = 2.0 * tf.sqrt((u / a2) ** 2 + (v / b2) ** 2)
    distance = tf.abs(value) / tf.maximum(gradient, 1e-12)
    outline = tf.cast(distance <= half_width_px, tf.float32)[..., None]
    return outline[0] if single else outline


def _finish_batch(batch, image_size: int, with_annotation: bool, with_ellipse: bool):
    import tensorflow as tf

    out = {
        "image": batch["image"],
        "pixel_size_mm": batch["pixel_size_mm"],
        "hc_mm": batch["hc_mm"],
        "hc_px_input": batch["hc_mm"] / batch["pixel_size_mm"],
        "filename": batch["filename"],
    }
    if with_annotation:
        out["annotation"] = rasterise_outline(batch["ellipse"], image_size)
    if with_ellipse:
        ellipse = batch["ellipse"]
        out["ellipse"] = tf.concat([ellipse[:, :4], tf.sin(2.0 * ellipse[:, 4:5]),
                                    tf.cos(2.0 * ellipse[:, 4:5])], axis=-1)
    return out


def _cache_file(cache, columns: dict, image_size: int, need_ellipse: bool,
                intensity: str = "zscore") -> str:
    digest = hashlib.sha256()
    digest.update(repr((image_size, need_ellipse)).encode())
    if intensity != "zscore":
        digest.update(intensity.encode())
    for name in ("image_path", "filename"):
        digest.update("\n".join(columns[name].tolist()).encode())
    digest.update(columns["pixel_size_mm"].tobytes())
    digest.update(columns["hc_mm"].tobytes())
    if "region" in columns:  # crops: the regions too (whole images hash as they always did)
        digest.update(columns["region"].tobytes())
    path = Path(cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"{path}_{digest.hexdigest()[:16]}"


def make_dataset(index: pd.DataFrame, image_size: int = 128, batch_size: int = 16,
                 shuffle: bool = False, augment=False, with_annotation: bool = False,
                 with_ellipse: bool = False, cache=False, seed: int = 0,
                 drop_remainder: bool = False, intensity: str = "zscore"):
    """A ``tf.data.Dataset`` of batched element dicts for the rows of ``index``.

    ``augment``: False, True (default :class:`Augmentation`), an ``Augmentation`` or a dict
    of its fields (e.g. from a run config).
    ``cache``: False, True (in memory) or a path prefix for a file cache (a digest of the
    rows and settings is appended, so different inputs never share a cache file). The cache
    holds the deterministic part (decode, resize, z-score, pad; or the crop at ``S`` px);
    shuffling and augmentation come after it. ``seed`` fixes the shuffle order and the augmentation draws (both change
    from epoch to epoch, deterministically). Without shuffle/augment the order is the
    index order.

    An index with the region columns (``fetalhc.data.crop.REGION_COLUMNS``, integer
    original px) gives crops around the regions instead of whole letterboxed images (see
    the module docstring); add them with :func:`reference_regions`,
    :func:`fetalhc.data.crop.with_regions` or ``fetalhc.models.localise.localised_index``.

    Every image of ``index`` (and its annotation, with ``with_annotation`` /
    ``with_ellipse``) is decoded by :func:`~fetalhc.data.check_images` before the dataset
    is built (memoised per file version), so a missing, truncated or undecodable file raises
    a one-line :class:`~fetalhc.data.DataError` naming it here, not deep inside tf.data; a
    file that changes afterwards fails in the graph with a message naming it.

    ``intensity``: what the content's intensities become (:data:`INTENSITIES`; fetalhc's
    models take the default z-score, a model of your own may take ``"0-1"`` or ``"0-255"``);
    crops are z-scored only.
    """
    import tensorflow as tf

    check_intensity(intensity)
    if intensity != "zscore" and set(REGION_COLUMNS) & set(index.columns):
        raise ValueError(f"crops are z-scored; intensity {intensity!r} applies to whole "
                         "images only")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size}")
    image_size = int(image_size)
    if augment is True:
        augmentation = Augmentation()
    elif augment is False or augment is None:
        augmentation = None
    elif isinstance(augment, Augmentation):
        augmentation = augment
    elif isinstance(augment, dict):
        try:
            augmentation = Augmentation(**augment)
        except TypeError as error:
            raise ValueError(f"bad augmentation settings {augment!r}: {error}") from None
    else:
        raise ValueError(
            f"augment must be a bool, an Augmentation or a dict of its fields; got {augment!r}"
        )
    need_ellipse = bool(with_annotation or with_ellipse)
    columns = _columns(index, image_size, need_ellipse)
    autotune = tf.data.AUTOTUNE

    dataset = tf.data.Dataset.from_tensor_slices(columns)
    dataset = dataset.map(lambda row: _load_element(row, image_size, intensity),
                          num_parallel_calls=autotune, deterministic=True)
    if cache is True:
        dataset = dataset.cache()
    elif cache:
        dataset = dataset.cache(_cache_file(cache, columns, image_size, need_ellipse,
                                            intensity))
    if shuffle:
        dataset = dataset.shuffle(len(index), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(int(batch_size), drop_remainder=drop_remainder)
    if augmentation is not None:
        # one random draw per batch seeds every element's transform (stateless, so a given
        # seed reproduces the whole stream; a new draw each epoch)
        randoms = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        dataset = tf.data.Dataset.zip((dataset, randoms))
        dataset = dataset.map(
            lambda batch, random: _augment_batch(batch, random, image_size, augmentation),
            num_parallel_calls=autotune, deterministic=True)
    dataset = dataset.map(
        lambda batch: _finish_batch(batch, image_size, with_annotation, with_ellipse),
        num_parallel_calls=autotune, deterministic=True)
    return dataset.prefetch(autotune)


def load_arrays(index: pd.DataFrame, image_size: int = 128, with_annotation: bool = False,
                with_ellipse: bool = False, intensity: str = "zscore") -> dict[str, np.ndarray]:
    """The whole index pre-processed into numpy arrays (same keys as :func:`make_dataset`;
    ``intensity`` as there).

    No shuffling or augmentation; rows keep the index order; ``filename`` is a str array.
    Every file is decoded by :func:`~fetalhc.data.check_images` first (memoised), so a bad
    file raises a one-line :class:`~fetalhc.data.DataError` naming it.
    """
    import tensorflow as tf

    dataset = make_dataset(index, image_size=image_size, batch_size=64, shuffle=False,
                           augment=False, with_annotation=with_annotation,
                           with_ellipse=with_ellipse, intensity=intensity)
    parts: dict[str, list] = {}
    try:
        for batch in dataset.as_numpy_iterator():
            for key, value in batch.items():
                parts.setdefault(key, []).append(value)
    except tf.errors.OpError as error:  # a file changed or broke after make_dataset checked it
        raise _decode_error(index, error, with_annotation or with_ellipse) from None
    arrays = {key: np.concatenate(values, axis=0) for key, values in parts.items()}
    arrays["filename"] = np.array([name.decode() for name in arrays["filename"]])
    return arrays


def _decode_error(index: pd.DataFrame, error, annotations: bool) -> DataError:
    """The one-line DataError for a TensorFlow error met while reading the index's images.

    Re-checks the files (a changed file has a new memo key, so it is decoded again) and
    names the first bad one; else the first line of the error (the file named by the
    pipeline's own check, when that is what failed).
    """
    try:
        check_images(index, annotations=annotations)
    except DataError as named:
        return named
    lines = [line.strip() for line in str(error.message).splitlines() if line.strip()]
    ours = [line for line in lines if "fetalhc:" in line]
    detail = (ours or lines or [type(error).__name__])[0]
    return DataError(f"cannot decode the images of the index: {detail}")


def augmentation_config(augment) -> dict:
    """The augmentation settings as a plain dict (for run configs); {} when off."""
    if augment is True:
        return asdict(Augmentation())
    if isinstance(augment, Augmentation):
        return asdict(augment)
    return {}

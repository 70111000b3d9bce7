"""What explain is asked to explain: images (array, tensor or dataset of dicts), pixel sizes and
reference HCs, validated into one :class:`Inputs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf


@dataclass
class Inputs:
    """Validated inputs of one explanation run."""

    images: np.ndarray  # float32 (N, H, W, C)
    pixel_size: np.ndarray | None  # float32 (N,)
    reference: np.ndarray | None  # float32 (N,)
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # filename, annotation


def _per_image(value, n: int, name: str) -> np.ndarray | None:
    if value is None:
        return None
    array = np.asarray(value.numpy() if isinstance(value, tf.Tensor) else value)
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} must be numeric; got dtype {array.dtype}")
    array = array.astype(np.float32).reshape(-1)
    if array.size == 1:
        array = np.full(n, array[0], np.float32)
    if array.size != n:
        raise ValueError(f"{name} needs one value per image ({n}); got {array.size}")
    return array


def _from_dataset(dataset: tf.data.Dataset):
    images, pixel_sizes, references, extra = [], [], [], {}
    for element in dataset.as_numpy_iterator():
        if not isinstance(element, Mapping) or "image" not in element:
            raise ValueError(
                "a tf.data.Dataset for explain must yield dicts with an 'image' key "
                "(as fetalhc.data.make_dataset does)"
            )
        image = np.asarray(element["image"])
        batched = image.ndim == 4
        if not batched:
            image = image[None]
        images.append(image)
        n = len(image)
        pixel_sizes.append(element.get("pixel_size_mm"))
        references.append(element.get("hc_mm"))
        for key in ("filename", "annotation"):
            if key in element:
                value = np.asarray(element[key])
                extra.setdefault(key, []).append(value if batched else value[None])
        if element.get("pixel_size_mm") is not None:
            pixel_sizes[-1] = np.asarray(element["pixel_size_mm"], np.float32).reshape(n)
        if element.get("hc_mm") is not None:
            references[-1] = np.asarray(element["hc_mm"], np.float32).reshape(n)
    if not images:
        raise ValueError("the dataset yielded no images")
    pixel_size = None if any(p is None for p in pixel_sizes) else np.concatenate(pixel_sizes)
    reference = None if any(r is None for r in references) else np.concatenate(references)
    extra = {
        key: np.concatenate(values) for key, values in extra.items() if len(values) == len(images)
    }
    if "filename" in extra and extra["filename"].dtype.kind == "O":  # tf.string → bytes
        extra["filename"] = np.array([name.decode() if isinstance(name, bytes) else str(name)
                                      for name in extra["filename"]])
    return np.concatenate(images), pixel_size, reference, extra


def normalise_inputs(images, pixel_size=None, reference=None, input_shape=None) -> Inputs:
    """Images (numpy, tensor or dataset of dicts) -> :class:`Inputs`, validated.

    Explicit ``pixel_size`` / ``reference`` override values taken from a dataset.
    """
    extra: dict[str, np.ndarray] = {}
    if isinstance(images, tf.data.Dataset):
        array, data_pixel_size, data_reference, extra = _from_dataset(images)
        pixel_size = data_pixel_size if pixel_size is None else pixel_size
        reference = data_reference if reference is None else reference
    elif isinstance(images, tf.Tensor | tf.Variable):
        if not images.dtype.is_floating:
            raise ValueError(f"images must be floating point (z-scored); got dtype {images.dtype.name}")
        array = images.numpy()
    elif isinstance(images, np.ndarray):
        array = images
    else:
        raise ValueError(
            "images must be a numpy array, a tensor (N, H, W, C) or a tf.data.Dataset of "
            f"dicts; got {type(images).__name__}"
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"images must be floating point (z-scored); got dtype {array.dtype}")
    if array.ndim != 4:
        raise ValueError(f"images must be 4-D (N, H, W, C); got shape {tuple(array.shape)}")
    if array.shape[0] == 0:
        raise ValueError("no images to explain")
    if input_shape is not None and any(
        expected is not None and expected != got
        for expected, got in zip(input_shape, array.shape[1:], strict=True)
    ):
        raise ValueError(
            f"images of shape {tuple(array.shape[1:])} do not fit the model input "
            f"{tuple(input_shape)}"
        )
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.all(np.isfinite(array)):
        raise ValueError("images contain NaN or infinite values")
    n = len(array)
    return Inputs(
        images=array,
        pixel_size=_per_image(pixel_size, n, "pixel_size"),
        reference=_per_image(reference, n, "reference"),
        extra=extra,
    )

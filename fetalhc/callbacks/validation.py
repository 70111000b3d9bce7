"""The ``validation_data`` a callback explains, in any accepted form, as one dict of arrays.

Accepted forms (at most ``max_images`` images are kept, always the first ones):

- a dict of arrays with ``image`` and optional ``pixel_size_mm``, ``hc_mm``, ``annotation``
  (what ``fetalhc.data.load_arrays`` returns);
- ``(x, y)`` or ``(x, y, sample_weight)`` as Keras and tf-explain take it, ``y`` being
  ``None``, the HC in mm ``(N,)`` / ``(N, 1)``, fetalhc's packed training targets ``(N, 2)``
  = ``[hc_mm, pixel_size_mm]`` (``fetalhc.losses.pack_targets``), or a dict holding one of
  those under the HC output's name (``hc_px_input``, a model with an auxiliary output);
- images alone (an array or tensor ``(N, H, W, C)``);
- a ``tf.data`` dataset of the dicts above (``fetalhc.data.make_dataset``) or of ``(x, y)``
  tuples (what ``model.fit`` takes as ``validation_data``).

``pixel_size`` (mm per pixel of the network input: one number, or one per image) gives the
pixel sizes a form does not carry; given twice (also in the data), the two must agree.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from fetalhc.models.graph import HC_OUTPUT

PACKED_HINT = "[hc_mm, pixel_size_mm] (fetalhc.losses.pack_targets)"


def validation_subset(validation_data, max_images: int, pixel_size=None) -> dict[str, np.ndarray]:
    """``validation_data`` (module docstring) -> ``{"image", ["pixel_size_mm"], ["hc_mm"],
    ["annotation"]}`` float32 arrays of the first ``max_images`` images. ``hc_mm`` is dropped
    when any value is not finite (no reference); one-line ValueErrors otherwise."""
    from_dataset = isinstance(validation_data, tf.data.Dataset)
    if from_dataset:
        validation_data = _from_dataset(validation_data, max_images)
    if isinstance(validation_data, Mapping):
        if "image" not in validation_data:
            raise ValueError(
                "validation_data as a dict needs 'image' (and 'pixel_size_mm', mm per input "
                f"pixel, or pixel_size=); got keys {sorted(validation_data)}"
            )
        subset = {"image": _floats(validation_data["image"], "image")}
        for key in ("pixel_size_mm", "hc_mm", "annotation"):
            if validation_data.get(key) is not None:
                subset[key] = _floats(validation_data[key], key)
    elif isinstance(validation_data, tuple | list) and len(validation_data) in (2, 3):
        subset = {"image": _floats(validation_data[0], "x"), **_targets(validation_data[1])}
    elif isinstance(validation_data, np.ndarray | tf.Tensor):
        subset = {"image": _floats(validation_data, "x")}
    else:
        raise ValueError(
            "validation_data must be (x, y), images, a dict of arrays or a tf.data dataset; "
            f"got {type(validation_data).__name__}"
        )
    images = subset["image"]
    if images.ndim != 4:
        raise ValueError(f"validation images must be (N, H, W, C); got shape {images.shape}")
    if len(images) == 0:
        raise ValueError("validation_data holds no image")
    total = len(images)
    for key in ("pixel_size_mm", "hc_mm"):
        if key in subset:  # one value per image; one number stands for all
            values = subset[key].reshape(-1)
            subset[key] = np.full(total, values[0], np.float32) if values.size == 1 else values
    for key, value in subset.items():
        if key != "image" and len(value) != total:
            raise ValueError(f"validation_data has {total} images but {len(value)} {key} values")
    n = min(int(max_images), total)
    subset = {key: value[:n] for key, value in subset.items()}
    if pixel_size is not None:
        subset["pixel_size_mm"] = _merge_pixel_size(pixel_size, subset.get("pixel_size_mm"),
                                                    None if from_dataset else total, n)
    sizes = subset.get("pixel_size_mm")
    if sizes is not None and not np.all(np.isfinite(sizes) & (sizes > 0)):
        raise ValueError(f"pixel sizes must be finite and > 0 (mm per input pixel); got {sizes}")
    if "hc_mm" in subset and not np.all(np.isfinite(subset["hc_mm"])):
        del subset["hc_mm"]
    return subset


def _floats(value, name: str) -> np.ndarray:
    array = np.asarray(value.numpy() if isinstance(value, tf.Tensor) else value)
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"validation_data {name} must be numeric; got dtype {array.dtype}")
    return array.astype(np.float32)


def _targets(y) -> dict[str, np.ndarray]:
    """``y`` of ``(x, y)`` -> ``hc_mm`` and, when packed, ``pixel_size_mm``."""
    if y is None:
        return {}
    if isinstance(y, Mapping):
        if HC_OUTPUT not in y:
            raise ValueError(
                f"validation_data=(x, y) with y a dict needs the HC output's target under "
                f"{HC_OUTPUT!r}; got keys {sorted(y)}"
            )
        y = y[HC_OUTPUT]
    y = _floats(y, "y")
    if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1):
        return {"hc_mm": y.reshape(-1)}
    if y.ndim == 2 and y.shape[1] == 2:
        return {"hc_mm": y[:, 0], "pixel_size_mm": y[:, 1]}
    raise ValueError(
        "validation_data=(x, y) needs y as the HC in mm (N,) with pixel_size= given, or "
        f"packed as (N, 2) = {PACKED_HINT}; got shape {y.shape}"
    )


def _merge_pixel_size(pixel_size, carried, total: int | None, n: int) -> np.ndarray:
    """``pixel_size=`` (one number or one per image) for the first ``n`` of ``total`` images
    (``None``: a dataset, whose length is unknown: at least ``n`` values), checked against
    the pixel sizes the data carries, if any."""
    given = _floats(pixel_size, "pixel_size").reshape(-1)
    if given.size == 1:
        given = np.full(n, given[0], np.float32)
    elif given.size == total or (total is None and given.size >= n):
        given = given[:n]
    else:
        expected = f"one per validation image ({total})" if total else f"at least {n}"
        raise ValueError(f"pixel_size needs one number or {expected}; got {given.size} values")
    if carried is not None and not np.allclose(given, carried, rtol=1e-5, atol=0):
        raise ValueError(
            "pixel sizes given twice and they differ: pixel_size= and those in "
            "validation_data; pass one of them"
        )
    return given


def _from_dataset(dataset: tf.data.Dataset, max_images: int):
    """The first ``max_images`` images of a dataset of dicts or ``(x, y)`` tuples."""
    parts: dict[str, list] = {}
    tuples: list[tuple] = []
    count = 0
    for element in dataset:
        if isinstance(element, Mapping):
            if "image" not in element:
                raise ValueError(
                    "a validation dataset of dicts needs 'image' (fetalhc.data.make_dataset); "
                    f"got keys {sorted(element)}"
                )
            batched = np.ndim(element["image"]) == 4  # else one unbatched element
            for key, value in element.items():
                value = np.asarray(value)
                parts.setdefault(key, []).append(value if batched else value[None])
            count += len(parts["image"][-1])
        elif isinstance(element, tuple) and len(element) in (2, 3):
            x, y = np.asarray(element[0]), element[1]
            batched = x.ndim == 4
            x = x if batched else x[None]
            if isinstance(y, Mapping):
                y = {key: _batch(value, batched) for key, value in y.items()}
            elif y is not None:
                y = _batch(y, batched)
            tuples.append((x, y))
            count += len(x)
        else:
            raise ValueError(
                "a validation dataset must yield dicts with 'image' (fetalhc.data.make_dataset) "
                f"or (x, y) tuples; got {type(element).__name__}"
            )
        if count >= max_images:
            break
    if parts:
        return {key: np.concatenate(values) for key, values in parts.items()}
    if not tuples:
        raise ValueError("validation_data holds no image")
    x = np.concatenate([x for x, _ in tuples])
    ys = [y for _, y in tuples]
    if any(y is None for y in ys):
        return (x, None)
    if isinstance(ys[0], dict):
        return (x, {key: np.concatenate([y[key] for y in ys]) for key in ys[0]})
    return (x, np.concatenate(ys))


def _batch(value, batched: bool) -> np.ndarray:
    value = np.asarray(value)
    return value if batched else value[None]

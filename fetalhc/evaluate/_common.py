"""Input checks, the HC output view and the batched forward pass shared by the evaluators.

Everything here takes plain arrays: images ``(N, H, W, C)`` (z-scored, padded with 0),
maps ``(N, H, W)`` (signed relevance), pixel sizes in mm per input pixel ``(N,)`` and
reference HC in mm ``(N,)`` (NaN where there is none). The model predicts HC in input
pixels (output ``hc_px_input``); HC in mm is that times the image's pixel size.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

PERTURBATIONS = ("noise", "mean", "zeros", "blur")
AGGREGATIONS = ("mean", "abs")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
HC_OUTPUT_NAME = "hc_px_input"


# ----------------------------------------------------------------------------- inputs
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


def check_choice(value: str, choices, what: str) -> str:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")
    return value


# ----------------------------------------------------------------------------- model view
def hc_output_model(model: keras.Model) -> keras.Model:
    """The single-output view on the HC output (``hc_px_input``, or the only output).

    Uses ``fetalhc.explain.hc_output_model`` when it exists (the shared contract); the local
    fallback follows the same rule.
    """
    try:
        from fetalhc.explain import hc_output_model as shared_view
    except ImportError:
        shared_view = None
    if shared_view is not None:
        return shared_view(model)
    outputs = model.outputs if isinstance(model.outputs, list | tuple) else [model.outputs]
    if len(outputs) == 1:
        return model
    names = list(getattr(model, "output_names", []) or [])
    if HC_OUTPUT_NAME not in names:
        raise ValueError(
            f"the model has {len(outputs)} outputs and none is named {HC_OUTPUT_NAME!r}"
        )
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, outputs[names.index(HC_OUTPUT_NAME)])


def cast_model(model: keras.Model, precision: str) -> keras.Model:
    """A copy of ``model`` whose layers compute in ``precision`` (output layers stay float32).

    ``"float32"`` returns the model itself. Mixed precision runs on CPU too
    (``mixed_bfloat16`` is the CPU-friendly one); predictions are cast back to float32.
    """
    check_choice(precision, PRECISIONS, "precision")
    if precision == "float32":
        return model
    from fetalhc.explain.base import clone_with_dtype

    output_layers = {tensor._keras_history.operation.name for tensor in model.outputs}
    try:
        return clone_with_dtype(model, precision, keep=output_layers)
    except Exception as error:  # noqa: BLE001 - custom layers without a usable config
        raise ValueError(f"cannot run this model in {precision}: {error}") from None


# ----------------------------------------------------------------------------- forward
class BatchedForward:
    """Forward passes of many perturbed images in large batches under one tf.function.

    ``perturbed(images, replacement, rank, counts)`` builds, for every image ``i`` and every
    step ``j``, ``where(rank[i] < counts[j], replacement[i], images[i])`` inside the graph
    and returns the HC predictions in input pixels, shape ``(N, len(counts))``. At most
    ``batch_size`` images go through the model at once, so memory stays bounded.
    """

    def __init__(self, model: keras.Model, batch_size: int = 256, precision: str = "float32"):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1; got {batch_size}")
        self.model = cast_model(hc_output_model(model), precision)
        self.batch_size = int(batch_size)
        self._predict = tf.function(self._predict_graph, reduce_retracing=True)
        self._perturbed = tf.function(self._perturbed_graph, reduce_retracing=True)

    def _predict_graph(self, images):
        outputs = self.model(images, training=False)
        return tf.reshape(tf.cast(outputs, tf.float32), [tf.shape(images)[0]])

    def _perturbed_graph(self, images, replacement, rank, counts):
        batch = tf.shape(images)[0]
        steps = tf.shape(counts)[0]
        mask = rank[:, None, :, :] < counts[None, :, None, None]  # (B, F, H, W)
        stacked = tf.where(mask[..., None], replacement[:, None], images[:, None])
        flat = tf.reshape(stacked, tf.concat([[batch * steps], tf.shape(images)[1:]], axis=0))
        outputs = tf.cast(self.model(flat, training=False), tf.float32)
        return tf.reshape(outputs, [batch, steps])

    def predict(self, images: np.ndarray) -> np.ndarray:
        """HC in input pixels for ``images`` ``(N, H, W, C)``, shape ``(N,)``."""
        results = []
        for start in range(0, len(images), self.batch_size):
            chunk = tf.constant(images[start:start + self.batch_size])
            results.append(self._predict(chunk).numpy())
        return np.concatenate(results).astype(np.float32)

    def perturbed(
        self,
        images: np.ndarray,
        replacement: np.ndarray,
        rank: np.ndarray,
        counts: np.ndarray,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Predictions ``(N, F)`` on the perturbed versions described above."""
        counts = tf.constant(np.asarray(counts, dtype=np.int32))
        steps = int(counts.shape[0])
        chunk_images = max(1, self.batch_size // max(steps, 1))
        results = []
        for start in range(0, len(images), chunk_images):
            stop = start + chunk_images
            results.append(
                self._perturbed(
                    tf.constant(images[start:stop]),
                    tf.constant(replacement[start:stop]),
                    tf.constant(rank[start:stop].astype(np.int32)),
                    counts,
                ).numpy()
            )
            if progress is not None:
                progress(min(stop, len(images)) - start)
        return np.concatenate(results).astype(np.float32)

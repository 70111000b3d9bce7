"""The batched forward pass of the evaluators: HC predictions of many (perturbed) images
in large batches under one ``tf.function``, optionally in mixed precision.

The model is reduced to its HC output with ``fetalhc.explain.hc_output_model`` (the
shared HC output rule, cached per model); predictions are the HC output, float32: HC in
input pixels for a fetalhc model, or in mm for a model declared to predict mm
(``output_units``); :meth:`BatchedForward.in_mm` turns either into mm.

One :class:`BatchedForward` remembers what it has predicted: a request it has answered
before (the same images, replacement, ranks and counts, and the same weights, compared by
digest) is answered from memory, and the unperturbed step of a curve (count 0) is the prediction of the
images themselves. Shared by every method of an evaluation, the seeded random-order curve
and the unperturbed predictions cost one forward pass per image, not one per method.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from fetalhc.evaluate.settings import PRECISIONS, require_choice


def cast_model(model: keras.Model, precision: str) -> keras.Model:
    """A copy of ``model`` whose layers compute in ``precision`` (output layers stay float32).

    ``"float32"`` returns the model itself. Mixed precision runs on CPU too
    (``mixed_bfloat16`` is the CPU-friendly one); predictions are cast back to float32.
    """
    require_choice(precision, PRECISIONS, "precision")
    if precision == "float32":
        return model
    from fetalhc.models.graph import clone_with_dtype, output_layer_names

    try:
        return clone_with_dtype(model, precision, keep=output_layer_names(model))
    except Exception as error:  # noqa: BLE001 - custom layers without a usable config
        raise ValueError(f"cannot run this model in {precision}: {error}") from None


class BatchedForward:
    """Forward passes of many perturbed images in large batches under one tf.function.

    ``perturbed(images, replacement, rank, counts)`` builds, for every image ``i`` and every
    step ``j``, ``where(rank[i] < counts[j], replacement[i], images[i])`` inside the graph
    and returns the HC predictions (in :attr:`output_units`), shape ``(N, len(counts))``. At
    most ``batch_size`` images go through the model at once, so memory stays bounded.
    ``output_units``: ``"mm"`` or ``"px"`` for a model that is not fetalhc's (a fetalhc model
    says px itself; undeclared, another model is a one-line ``ValueError``).
    """

    def __init__(self, model: keras.Model, batch_size: int = 256, precision: str = "float32",
                 output_units: str | None = None):
        from fetalhc.explain import hc_output_model
        from fetalhc.models.graph import require_output_units

        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1; got {batch_size}")
        self.output_units = require_output_units(model, None, output_units)
        self.model = cast_model(hc_output_model(model), precision)
        self.batch_size = int(batch_size)
        self._answers: dict[str, np.ndarray] = {}  # request digest -> predictions
        self.passes = 0  # images sent through the model (the memory's hits excluded)
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

    def _digest(self, kind: str, *arrays) -> str:
        """The key of a request: its kind, its arrays and the model's current weights (a
        forward kept while the weights train must not answer from an earlier state)."""
        digest = hashlib.sha1(kind.encode("utf-8"))
        for array in (*arrays, *(keras.ops.convert_to_numpy(w) for w in self.model.weights)):
            array = np.ascontiguousarray(array)
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(array.data)
        return digest.hexdigest()

    def in_mm(self, predictions, pixel_size_mm) -> np.ndarray:
        """Predictions of this forward (``(N,)`` or ``(N, ...)``) in mm: times the mm per
        input pixel ``pixel_size_mm`` ``(N,)`` for a px output, as they are for an mm one
        (:func:`fetalhc.models.graph.hc_in_units`)."""
        from fetalhc.models.graph import hc_in_units

        return np.asarray(hc_in_units(predictions, pixel_size_mm, self.output_units, "mm"))

    def predict(self, images: np.ndarray) -> np.ndarray:
        """The HC output (:attr:`output_units`) for ``images`` ``(N, H, W, C)``, shape
        ``(N,)``."""
        key = self._digest("predict", images)
        if key not in self._answers:
            results = []
            for start in range(0, len(images), self.batch_size):
                chunk = tf.constant(images[start:start + self.batch_size])
                results.append(self._predict(chunk).numpy())
            self.passes += len(images)
            self._answers[key] = np.concatenate(results).astype(np.float32)
        return self._answers[key].copy()

    def perturbed(
        self,
        images: np.ndarray,
        replacement: np.ndarray,
        rank: np.ndarray,
        counts: np.ndarray,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Predictions ``(N, F)`` on the perturbed versions described above."""
        counts = np.asarray(counts, dtype=np.int32)
        rank = np.asarray(rank).astype(np.int32)
        key = self._digest("perturbed", images, replacement, rank, counts)
        if key in self._answers:
            if progress is not None:
                progress(len(images))
            return self._answers[key].copy()
        unperturbed = counts <= 0  # nothing replaced: the images themselves
        columns = np.empty((len(images), len(counts)), dtype=np.float32)
        if unperturbed.any():
            columns[:, unperturbed] = self.predict(images)[:, None]
        if not unperturbed.all():
            columns[:, ~unperturbed] = self._perturbed_batches(
                images, replacement, rank, counts[~unperturbed], progress)
        elif progress is not None:
            progress(len(images))
        self._answers[key] = columns
        return columns.copy()

    def _perturbed_batches(self, images, replacement, rank, counts, progress):
        steps = len(counts)
        counts = tf.constant(counts)
        chunk_images = max(1, self.batch_size // max(steps, 1))
        results = []
        for start in range(0, len(images), chunk_images):
            stop = start + chunk_images
            results.append(
                self._perturbed(
                    tf.constant(images[start:stop]),
                    tf.constant(replacement[start:stop]),
                    tf.constant(rank[start:stop]),
                    counts,
                ).numpy()
            )
            self.passes += (min(stop, len(images)) - start) * steps
            if progress is not None:
                progress(min(stop, len(images)) - start)
        return np.concatenate(results).astype(np.float32)

"""`SaliencyCallback`: signed saliency maps and explanation scores in TensorBoard while a
regression CNN trains.

Every ``every_n_epochs`` epochs, for a fixed small validation subset, each requested method
of the ``fetalhc.explain`` registry explains the predicted HC; the maps are rendered on the
images (diverging colour map centred on zero: red raises HC, blue lowers it) and logged with
``tf.summary.image``. Beside them, ``tf.summary.scalar`` logs, per epoch:

- ``saliency/subset_mae_mm``: the subset's MAE in mm (of the HC output),
- ``saliency/<method>/time_ms``: what explaining the subset cost,
- ``saliency/<method>/completeness_gap_mm`` (IG) / ``conservation_gap_mm`` (relevance),
- ``saliency/<method>/aopc_morf_mm`` and ``aopc_random_mm``: region-perturbation AOPC on a
  coarse grid (more negative = more faithful; a method should beat random),
- ``saliency/<method>/contour_band_ratio``: relevance mass in a band around the annotated
  skull contour over the band's area share (1 = chance), when annotations are given.

The traced explanation functions are cached per model and input shape by
``fetalhc.explain``, so the cost after the first epoch is the computation alone.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from fetalhc import evaluate, explain
from fetalhc.viz import overlay
from fetalhc.viz.figures import figure_to_rgb

SCORES = ("aopc", "localisation")


class SaliencyCallback(keras.callbacks.Callback):
    """Log signed saliency maps and explanation scores of the HC output to TensorBoard.

    Args:
        validation_data: the subset to explain, as ``(images, targets)`` with ``targets``
            packed like fetalhc's training targets (``(N, 2)``: hc_mm, pixel_size_mm), or a
            dict of arrays with keys ``image``, ``pixel_size_mm``, optional ``hc_mm`` and
            ``annotation`` (what ``fetalhc.data.load_arrays`` returns), or a ``tf.data``
            dataset of such dicts. At most ``max_images`` images are used.
        methods: registered method names (``fetalhc.explain.available_methods()``).
        every_n_epochs: log at the end of every N-th epoch.
        output_dir: TensorBoard log folder (a sub-folder ``saliency`` of the training logs
            is a good choice).
        method_options: per-method keyword options, e.g. ``{"gradcam": {"layer_name": ...}}``.
        target: what the maps explain (``"hc_mm"`` by default).
        scores: which explanation scores to log: ``"aopc"``, ``"localisation"`` (needs
            annotations), or ``()`` for pictures only.
        grid: regions per side for the coarse AOPC.
        aopc_steps / regions_per_step: perturbation steps of the coarse AOPC and regions
            replaced per step (default 7 x 2 of the 16 regions: half the forward passes of
            the paper's 15 x 1, which is what an every-epoch score can afford).
    """

    def __init__(
        self,
        validation_data,
        methods: Sequence[str] = ("gradient",),
        every_n_epochs: int = 1,
        output_dir: str | Path = "logs/saliency",
        max_images: int = 8,
        method_options: Mapping[str, Mapping] | None = None,
        target: str = "hc_mm",
        scores: Sequence[str] = SCORES,
        grid: int = 4,
        aopc_steps: int = 7,
        regions_per_step: int = 2,
        band_mm: float = 3.0,
    ):
        super().__init__()
        if isinstance(methods, str):
            methods = [m.strip() for m in methods.split(",") if m.strip()]
        known = explain.available_methods()
        unknown = [m for m in methods if m not in known]
        if unknown or not methods:
            raise ValueError(
                f"unknown saliency method(s) {unknown or methods!r}; known: {', '.join(known)}"
            )
        if int(every_n_epochs) < 1:
            raise ValueError(f"every_n_epochs must be >= 1; got {every_n_epochs}")
        if int(max_images) < 1:
            raise ValueError(f"max_images must be >= 1; got {max_images}")
        bad_scores = [s for s in scores if s not in SCORES]
        if bad_scores:
            raise ValueError(f"unknown score(s) {bad_scores}; known: {', '.join(SCORES)}")
        self.methods = list(methods)
        self.every_n_epochs = int(every_n_epochs)
        self.output_dir = str(output_dir)
        self.method_options = {name: dict(opts) for name, opts in (method_options or {}).items()}
        self.target = target
        self.scores = tuple(scores)
        self.grid = int(grid)
        self.aopc_steps = int(aopc_steps)
        self.regions_per_step = int(regions_per_step)
        if self.aopc_steps * self.regions_per_step > self.grid**2:
            raise ValueError(
                f"aopc_steps x regions_per_step = {self.aopc_steps * self.regions_per_step} "
                f"exceeds the {self.grid**2} regions of a {self.grid} x {self.grid} grid"
            )
        self.band_mm = float(band_mm)
        self.subset = _subset(validation_data, int(max_images))
        if "localisation" in self.scores and self.subset.get("annotation") is None:
            self.scores = tuple(s for s in self.scores if s != "localisation")
        self._writer = None
        self._forward_model = None
        self._forward = None  # one traced forward pass for the AOPC curves, built lazily

    # ------------------------------------------------------------------ Keras hooks
    def on_train_begin(self, logs=None):
        self._writer = tf.summary.create_file_writer(self.output_dir)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.output_dir)
        with self._writer.as_default(step=epoch):
            self.log_epoch(epoch)
        self._writer.flush()

    # ------------------------------------------------------------------ the work
    def log_epoch(self, epoch: int) -> dict[str, float]:
        """Explain the subset with every method and write images and scalars at ``epoch``.

        Returns the scalars written (also useful outside TensorBoard)."""
        images = self.subset["image"]
        pixel_size = self.subset["pixel_size_mm"]
        reference = self.subset.get("hc_mm")
        scalars: dict[str, float] = {}
        hc_model = explain.hc_output_model(self.model)
        prediction_mm = np.asarray(hc_model(images, training=False)).reshape(-1) * pixel_size
        if reference is not None and np.all(np.isfinite(reference)):
            scalars["saliency/subset_mae_mm"] = float(np.mean(np.abs(prediction_mm - reference)))
        for method in self.methods:
            options = self.method_options.get(method, {})
            start = time.perf_counter()
            result = explain.explain_batch(
                self.model, images, method=method, target=self.target,
                pixel_size=pixel_size, reference=reference, **options,
            )
            scalars[f"saliency/{method}/time_ms"] = 1000.0 * (time.perf_counter() - start)
            for gap in ("completeness_gap", "conservation_gap"):
                if gap in result.metadata:
                    values = np.abs(np.asarray(result.metadata[gap], dtype=np.float64))
                    scalars[f"saliency/{method}/{gap}_mm"] = float(np.nanmean(values))
            scalars.update(self._scores(method, result.maps, images, pixel_size, reference))
            annotation = self.subset.get("annotation")
            picture = figure_to_rgb(overlay.grid_figure(
                list(images[..., 0]), {method: list(result.maps)},
                contours=None if annotation is None else list(annotation[..., 0]),
                units={method: result.units},
            ))
            tf.summary.image(f"saliency/{method}", picture[None], max_outputs=1)
        for name, value in scalars.items():
            tf.summary.scalar(name, value)
        return scalars

    def _scores(self, method, maps, images, pixel_size, reference) -> dict[str, float]:
        scores: dict[str, float] = {}
        if "aopc" in self.scores:
            if self._forward is None or self._forward_model is not self.model:
                # built once and reused every epoch: it reads the model's current weights
                self._forward = evaluate.BatchedForward(self.model)
                self._forward_model = self.model
            curves = evaluate.region_perturbation(
                self.model, images, maps, pixel_size, reference,
                grid=self.grid, steps=self.aopc_steps,
                regions_per_step=self.regions_per_step, orders=("morf", "random"),
                perturbation="noise", forward=self._forward,
            )
            quantity = "abs_error_mm" if reference is not None else "shift_mm"
            for order in ("morf", "random"):
                scores[f"saliency/{method}/aopc_{order}_mm"] = float(
                    np.nanmean(curves.aopc(quantity, order))
                )
        if "localisation" in self.scores:
            table = evaluate.localisation_scores(
                maps, self.subset["annotation"], pixel_size, band_mm=self.band_mm,
            )
            scores[f"saliency/{method}/contour_band_ratio"] = float(
                np.nanmean(table["band_ratio"].to_numpy())
            )
        return scores


# ---------------------------------------------------------------------- helpers
def _subset(validation_data, max_images: int) -> dict[str, np.ndarray]:
    """Normalise the accepted validation data forms to a dict of numpy arrays."""
    if isinstance(validation_data, tf.data.Dataset):
        batches: dict[str, list[np.ndarray]] = {}
        count = 0
        for element in validation_data:
            if not isinstance(element, Mapping):
                raise ValueError(
                    "a validation dataset must yield dicts with 'image' and 'pixel_size_mm' "
                    "(fetalhc.data.make_dataset); got " + type(element).__name__
                )
            for key, value in element.items():
                batches.setdefault(key, []).append(np.asarray(value))
            count += len(np.asarray(element["image"]))
            if count >= max_images:
                break
        validation_data = {key: np.concatenate(parts) for key, parts in batches.items()}
    if isinstance(validation_data, Mapping):
        if "image" not in validation_data or "pixel_size_mm" not in validation_data:
            raise ValueError(
                "validation_data as a dict needs 'image' and 'pixel_size_mm' (mm per input "
                f"pixel); got keys {sorted(validation_data)}"
            )
        subset = {
            "image": np.asarray(validation_data["image"], np.float32),
            "pixel_size_mm": np.asarray(validation_data["pixel_size_mm"], np.float32),
        }
        for key in ("hc_mm", "annotation"):
            if validation_data.get(key) is not None:
                subset[key] = np.asarray(validation_data[key], np.float32)
    elif isinstance(validation_data, tuple | list) and len(validation_data) == 2:
        images, targets = validation_data
        targets = np.asarray(targets, np.float32)
        if targets.ndim != 2 or targets.shape[1] != 2:
            raise ValueError(
                "validation_data=(images, targets) needs targets packed as (N, 2) = "
                "[hc_mm, pixel_size_mm] (fetalhc.losses.pack_targets); got shape "
                f"{targets.shape}"
            )
        subset = {
            "image": np.asarray(images, np.float32),
            "hc_mm": targets[:, 0],
            "pixel_size_mm": targets[:, 1],
        }
    else:
        raise ValueError(
            "validation_data must be (images, targets), a dict of arrays or a tf.data "
            f"dataset of dicts; got {type(validation_data).__name__}"
        )
    if subset["image"].ndim != 4:
        raise ValueError(
            f"validation images must be (N, H, W, C); got shape {subset['image'].shape}"
        )
    n = min(max_images, len(subset["image"]))
    if n == 0:
        raise ValueError("validation_data holds no image")
    subset = {key: value[:n] for key, value in subset.items()}
    if "hc_mm" in subset and not np.all(np.isfinite(subset["hc_mm"])):
        del subset["hc_mm"]
    return subset


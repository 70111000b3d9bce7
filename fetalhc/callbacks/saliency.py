"""`SaliencyCallback`: signed saliency maps and explanation scores in TensorBoard while a
regression CNN trains, and the same scores in Keras' epoch ``logs``.

At the end of epochs 0, N, 2N, ... (``every_n_epochs`` = N; 0-based, like Keras'
``TensorBoard(histogram_freq=N)``), for a fixed small validation subset, each requested
method of the ``fetalhc.explain`` registry explains the predicted HC; the maps are rendered
on the images (diverging colour map centred on zero: red raises HC, blue lowers it) and
logged with ``tf.summary.image``. Beside them, per logged epoch, these scalars go to
``tf.summary.scalar`` and, under the same names, into the ``logs`` dict Keras passes on to
the callbacks after this one (``EarlyStopping(monitor=...)``, ``CSVLogger``, ``History``):

- ``saliency/subset_mae_mm``: the subset's MAE in mm (of the HC output; needs the reference
  HC and the pixel sizes),
- ``saliency/<method>/time_ms``: what explaining the subset cost,
- ``saliency/<method>/completeness_gap_mm`` (IG) / ``conservation_gap_mm`` (relevance),
- ``saliency/<method>/contour_band_ratio``: relevance mass in a band around the annotated
  skull contour over the band's area share (1 = chance), when annotations are given
  (``"localisation"``, on by default: numpy on the maps, no forward pass),
- ``saliency/<method>/aopc_morf_mm`` and ``aopc_random_mm``: region-perturbation AOPC on a
  coarse grid (more negative = more faithful; a method should beat random). Off by
  default: ``scores=("aopc", "localisation")`` turns it on (2 orders x (steps + 1) forward
  passes of the subset per method, plus one trace on the first logged epoch).

Cheap by default. A logged epoch does, per method: one explanation of at most 8 images at
the method's fixed cost (``Method.fixed_cost``: Integrated Gradients uses its plain 8-point
rule, not the refinement to a completeness tolerance; gradient, Grad-CAM, LRP: one backward
pass; SmoothGrad: 25 samples; occlusion: 225 patches at 128 px), one figure and the contour
score; plus one forward pass of the subset for the MAE. No AOPC. Measured
(benchmarks/results/bench_callbacks.txt: 8 HC18 images at 128 px, an untrained small CNN,
a shared 2-core CPU at load 5-7, so upper bounds): 0.7-1.0 s per later logged epoch for
gradient, Input x Gradient, Grad-CAM and LRP-z, 2.5 s for IG, 4.4 s for SmoothGrad, 16 s
for occlusion; the first logged epoch adds the tracing (1-4 s). On the trained
``models/hc18-plain-mae`` IG took 2.3 s at the defaults against 10.1 s with AOPC on and IG
refined (``scores=("aopc", "localisation")``, ``method_options={"integrated_gradients":
{"tolerance": 0.01}}``), the expensive settings. The traced explanation functions are
cached per model and input shape by ``fetalhc.explain``, so the cost after the first
logged epoch is the computation alone.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from fetalhc import evaluate, explain
from fetalhc.callbacks.validation import PACKED_HINT, validation_subset
from fetalhc.callbacks.writer import EpochWriterCallback
from fetalhc.models.graph import check_output_units, hc_in_units
from fetalhc.viz import overlay
from fetalhc.viz.figures import figure_to_rgb

SCORES = ("aopc", "localisation")
DEFAULT_SCORES = ("localisation",)  # cheap; skipped without annotations


class SaliencyCallback(EpochWriterCallback):
    """Log signed saliency maps and explanation scores of the HC output to TensorBoard and
    to Keras' epoch ``logs``.

    Args:
        validation_data: the subset to explain: ``(x, y)`` with ``y`` the HC in mm (pixel
            sizes from ``pixel_size``) or packed like fetalhc's training targets (``(N, 2)``
            = hc_mm, pixel_size_mm), images alone, a dict of arrays with ``image`` and
            optional ``pixel_size_mm``, ``hc_mm``, ``annotation`` (what
            ``fetalhc.data.load_arrays`` returns), or a ``tf.data`` dataset of such dicts or
            of ``(x, y)`` tuples. The first ``max_images`` images are used, every time.
        methods: registered method names (``fetalhc.explain.available_methods()``).
        every_n_epochs: log at the end of epochs 0, N, 2N, ... (0-based).
        output_dir: TensorBoard log folder (a sub-folder ``saliency`` of the training logs
            is a good choice).
        max_images: how many images of ``validation_data`` to explain (default 8).
        method_options: per-method keyword options, e.g. ``{"gradcam": {"layer_name": ...}}``,
            applied over the method's fixed-cost options (``{"integrated_gradients":
            {"tolerance": 0.01}}`` brings IG's refinement back).
        target: what the maps explain (``"hc_mm"`` by default; needs pixel sizes).
        scores: explanation scores to log: ``"aopc"`` (costs forward passes),
            ``"localisation"`` (needs annotations), or ``()`` for pictures only. Default
            (``None``): ``("localisation",)`` when annotations and pixel sizes are given,
            else none.
        grid: regions per side for the coarse AOPC.
        aopc_steps / regions_per_step: perturbation steps of the coarse AOPC and regions
            replaced per step (default 7 x 2 of the 16 regions: half the forward passes of
            the paper's 15 x 1).
        band_mm: half-width of the contour band of ``"localisation"``.
        pixel_size: mm per pixel of the network input (one number, or one per image of
            ``validation_data``), for data that does not carry it.
        update_logs: also write the scalars into Keras' epoch ``logs`` (default True).
        output_units: ``"mm"`` or ``"px"``, the unit of the HC output of a model whose
            output is not a fetalhc one (``hc_px_input``); undeclared, such a model is
            refused for the targets in mm rather than guessed.
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
        scores: Sequence[str] | None = None,
        grid: int = 4,
        aopc_steps: int = 7,
        regions_per_step: int = 2,
        band_mm: float = 3.0,
        pixel_size=None,
        update_logs: bool = True,
        output_units: str | None = None,
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
        self.methods = list(methods)
        self.every_n_epochs = int(every_n_epochs)
        self.output_dir = str(output_dir)
        self.method_options = _method_options(self.methods, method_options or {})
        self.target = explain.get_target(target).name
        self.grid = int(grid)
        self.aopc_steps = int(aopc_steps)
        self.regions_per_step = int(regions_per_step)
        if self.aopc_steps * self.regions_per_step > self.grid**2:
            raise ValueError(
                f"aopc_steps x regions_per_step = {self.aopc_steps * self.regions_per_step} "
                f"exceeds the {self.grid**2} regions of a {self.grid} x {self.grid} grid"
            )
        self.band_mm = float(band_mm)
        self.update_logs = bool(update_logs)
        self.subset = validation_subset(validation_data, int(max_images), pixel_size)
        self._check_target()
        self.scores = self._resolve_scores(scores)
        self.output_units = check_output_units(output_units)
        self._forward_model = None
        self._forward = None  # one traced forward pass for the AOPC curves, built lazily

    # ------------------------------------------------------------------ checks
    def _check_target(self) -> None:
        target = explain.get_target(self.target)
        if target.needs_pixel_size and "pixel_size_mm" not in self.subset:
            raise ValueError(
                f"validation_data carries no pixel sizes, which target={self.target!r} needs: "
                "pass pixel_size=<mm per input pixel> (one number or one per image), or y "
                f"packed as (N, 2) = {PACKED_HINT}, or target='hc_px_input'"
            )
        if target.needs_reference and "hc_mm" not in self.subset:
            raise ValueError(
                f"target={self.target!r} needs the reference HC in mm of every image: y of "
                "validation_data=(x, y), or 'hc_mm' in a dict"
            )

    def _resolve_scores(self, scores) -> tuple[str, ...]:
        has_mm = "pixel_size_mm" in self.subset
        has_contour = self.subset.get("annotation") is not None
        if scores is None:
            return tuple(s for s in DEFAULT_SCORES if has_mm and (has_contour or s != "localisation"))
        scores = (scores,) if isinstance(scores, str) else tuple(scores)
        bad = [s for s in scores if s not in SCORES]
        if bad:
            raise ValueError(f"unknown score(s) {bad}; known: {', '.join(SCORES)}")
        if scores and not has_mm:
            raise ValueError(
                f"scores {list(scores)} are in mm and need pixel sizes: pass pixel_size=<mm "
                "per input pixel>, or scores=()"
            )
        if "localisation" in scores and not has_contour:
            raise ValueError(
                "score 'localisation' needs the skull contour: validation_data as a dict with "
                "'annotation' (fetalhc.data.load_arrays(..., with_annotation=True))"
            )
        return scores

    def check_model(self) -> None:
        """Everything explaining the subset would refuse about the model (Grad-CAM layer,
        occlusion patch, relevance coverage, ...), checked without computing a map."""
        explain.check_methods(
            self.model, self.methods, target=self.target, options=self.method_options,
            images=self.subset["image"], pixel_size=self.subset.get("pixel_size_mm"),
            reference=self.subset.get("hc_mm"), output_units=self.output_units,
        )

    # ------------------------------------------------------------------ Keras hooks
    def check(self) -> None:
        self.check_model()  # a mistake stops fit() before the first epoch, not after it

    # ------------------------------------------------------------------ the work
    def explain_subset(self, method: str) -> explain.Explanation:
        """The maps of ``method`` on the subset (a subclass may split the work)."""
        return explain.explain_batch(
            self.model, self.subset["image"], method=method, target=self.target,
            pixel_size=self.subset.get("pixel_size_mm"), reference=self.subset.get("hc_mm"),
            output_units=self.output_units, **self.method_options[method],
        )

    def log_epoch(self, epoch: int) -> dict[str, float]:
        """Explain the subset with every method and write images and scalars at ``epoch``.

        Returns the scalars written (what ``on_epoch_end`` adds to Keras' ``logs``)."""
        images = self.subset["image"]
        pixel_size = self.subset.get("pixel_size_mm")
        reference = self.subset.get("hc_mm")
        scalars: dict[str, float] = {}
        if pixel_size is not None and reference is not None:
            hc_model = explain.hc_output_model(self.model)
            prediction = np.asarray(hc_model(images, training=False), np.float64).reshape(-1)
            units = explain.resolve_output_units(self.model, self.target, None,
                                                 self.output_units)
            error = np.abs(hc_in_units(prediction, pixel_size, units, "mm") - reference)
            scalars["saliency/subset_mae_mm"] = float(np.mean(error))
        for method in self.methods:
            start = time.perf_counter()
            result = self.explain_subset(method)
            scalars[f"saliency/{method}/time_ms"] = 1000.0 * (time.perf_counter() - start)
            for gap in ("completeness_gap", "conservation_gap"):
                if gap in result.metadata:
                    values = np.abs(np.asarray(result.metadata[gap], dtype=np.float64))
                    scalars[f"saliency/{method}/{gap}_mm"] = float(np.nanmean(values))
            scalars.update(self._scores(method, result.maps))
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

    def _scores(self, method, maps) -> dict[str, float]:
        images, pixel_size = self.subset["image"], self.subset.get("pixel_size_mm")
        reference = self.subset.get("hc_mm")
        scores: dict[str, float] = {}
        if "aopc" in self.scores:
            if self._forward is None or self._forward_model is not self.model:
                # built once and reused every epoch: it reads the model's current weights
                self._forward = evaluate.BatchedForward(self.model,
                                                        output_units=self.output_units)
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


def _method_options(methods: list[str], given: Mapping[str, Mapping]) -> dict[str, dict]:
    """Each method's options: its fixed-cost options, then the caller's; checked now (the
    method refuses unknown or bad options with a one-line ValueError)."""
    stray = sorted(set(given) - set(methods))
    if stray:
        raise ValueError(f"method_options given for {', '.join(map(repr, stray))}, which is not "
                         f"among the methods ({', '.join(methods)})")
    options = {}
    for name in methods:
        method_class = explain.get_method(name)
        options[name] = {**method_class.fixed_cost, **dict(given.get(name, {}))}
        method_class(**options[name])  # validates
    return options

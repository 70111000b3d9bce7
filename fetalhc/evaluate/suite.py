"""All metrics for one method's maps in one call, with settings checked up front
(:class:`~fetalhc.evaluate.settings.EvaluationSettings`, the metric names and every choice
live in the TensorFlow-free :mod:`fetalhc.evaluate.settings`).

This is what ``fetalhc evaluate`` runs per method; it is also the easiest entry point from
Python::

    settings = EvaluationSettings.paper()          # or EvaluationSettings(grid=8, ...)
    settings.validate(images.shape, metrics)       # fail fast, before any map is computed
    report = evaluate_maps(model, images, maps, pixel_size_mm, reference_mm,
                           metrics=("aopc", "deletion", "insertion"), settings=settings)
    report.per_image      # one row per image, metric columns with units
    report.curves         # mean curves per order / kind (mm), for figures

and the tables over methods: :func:`summary_table` (mean and bootstrap CI per method and
metric) and :func:`wide_table` (methods x metrics). Writing them to a folder is
``fetalhc.report.evaluation``'s job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fetalhc.evaluate import stats
from fetalhc.evaluate.deletion import deletion_insertion
from fetalhc.evaluate.forward import BatchedForward
from fetalhc.evaluate.inputs import as_images, as_maps, as_vector
from fetalhc.evaluate.localisation import localisation_scores
from fetalhc.evaluate.perturbation import region_perturbation
from fetalhc.evaluate.randomisation import cascading_randomisation
from fetalhc.evaluate.settings import EvaluationSettings, parse_metrics


@dataclass
class MethodEvaluation:
    """The results for one method: per-image metrics, mean curves, randomisation stages."""

    per_image: pd.DataFrame
    curves: pd.DataFrame
    randomisation: pd.DataFrame | None = None
    steps: pd.DataFrame | None = None  # per image, order and step (region perturbation)
    # per-image curves behind ``curves``: (label, quantity, x, values (N, F)), for merging
    curve_values: list | None = None


def mean_curves(values: np.ndarray, x: np.ndarray, label: dict, quantity: str) -> list[dict]:
    """Mean over images and 95 % normal CI per point of per-image curves ``(N, F)``: one
    row (``label``, ``quantity``, ``x``, ``mean``, ``ci_low``, ``ci_high``, ``n``) per point,
    over the images whose whole curve is finite. ``fetalhc merge`` rebuilds ``curves.csv``
    with it from the shards' per-image curves."""
    rows = []
    finite = np.isfinite(values).all(axis=1)
    data = values[finite]
    for j, position in enumerate(x):
        column = data[:, j] if len(data) else np.array([np.nan])
        mean = float(np.mean(column))
        half = float(1.96 * np.std(column, ddof=1) / np.sqrt(len(column))) if len(column) > 1 \
            else 0.0
        rows.append({**label, "quantity": quantity, "x": float(position), "mean": mean,
                     "ci_low": mean - half, "ci_high": mean + half, "n": int(len(data))})
    return rows


def evaluate_maps(
    model,
    images,
    maps,
    pixel_size_mm,
    reference_mm=None,
    *,
    metrics=("aopc", "deletion", "insertion"),
    settings: EvaluationSettings | None = None,
    annotation=None,
    pixel_size_original_mm=None,
    method: str | None = None,
    forward: BatchedForward | None = None,
    progress: Callable[[int], None] | None = None,
    positions=None,
    output_units: str | None = None,
) -> MethodEvaluation:
    """Run the requested metrics on one method's ``maps``.

    ``localisation`` needs ``annotation`` (0/1 outlines, ``(N, H, W[, 1])``);
    ``randomisation`` and ``settings.recompute`` need ``method`` (an explain registry name).
    Per-image columns carry their unit (``_mm``, ``_px_original``, ratios are unitless).
    ``positions``: the images' positions in a larger set (a shard of it): random draws
    (noise, random orders) are then the whole set's, so shard results merge exactly.
    ``progress(k)`` is told the images finished as the curves advance (per batch of images
    through the model); over one call the counts add up to the number of images.
    ``output_units``: ``"mm"`` or ``"px"``, the unit of the HC output of a model that is not
    fetalhc's (``forward``'s when given).
    """
    settings = settings or EvaluationSettings()
    metrics = parse_metrics(metrics)
    images = as_images(images)
    settings.validate(images.shape, metrics)
    maps = as_maps(maps, images)
    n = images.shape[0]
    pixel_size = as_vector(pixel_size_mm, n, "pixel_size_mm")
    reference = as_vector(reference_mm, n, "reference_mm", allow_none=True)
    if "localisation" in metrics and annotation is None:
        raise ValueError("localisation needs the annotated contours (annotation=...)")
    if ("randomisation" in metrics or settings.recompute) and method is None:
        raise ValueError("randomisation and recomputed maps need the explain method's name")
    forward = forward or BatchedForward(model, settings.batch_size, settings.precision,
                                        output_units=output_units)
    columns: dict[str, np.ndarray] = {}
    curve_rows: list[dict] = []
    curve_values: list = []
    steps_frame = None
    kinds = [k for k in ("deletion", "insertion") if k in metrics]
    shares = _ImageShares(progress, n, n * (len(settings.orders) * ("aopc" in metrics)
                                            + len(kinds)))
    common = dict(seed=settings.seed, forward=forward,
                  progress=None if progress is None else shares)

    unperturbed = forward.in_mm(forward.predict(images), pixel_size)
    columns["hc_pred_mm"] = unperturbed
    columns["reference_mm"] = reference
    columns["abs_error_mm"] = np.abs(unperturbed - reference)

    if "aopc" in metrics:
        curves = region_perturbation(
            model, images, maps, pixel_size, reference, grid=settings.grid,
            steps=settings.steps, regions_per_step=settings.regions_per_step,
            orders=settings.orders, perturbation=settings.perturbation,
            noise_sd=settings.noise_sd, blur_sigma=settings.blur_sigma,
            aggregation=settings.aggregation,
            recompute=method if settings.recompute else None,
            target=settings.explain_target, explain_options=settings.explain_options,
            pixel_size_original_mm=pixel_size_original_mm, positions=positions, **common)
        steps_frame = curves.to_frame()
        table = curves.per_image()
        for name in table.columns:
            if name.startswith("aopc_"):
                columns[name] = table[name].to_numpy()
        for order in curves.orders:
            for quantity in curves.quantities():
                label = {"curve": "perturbation", "order": order}
                values = curves.curve(quantity, order)
                curve_values.append((label, quantity, curves.regions_removed, values))
                curve_rows += mean_curves(values, curves.regions_removed, label, quantity)

    if kinds:
        result = deletion_insertion(
            model, images, maps, pixel_size, reference, kinds=kinds,
            unit=settings.deletion_unit, steps=settings.deletion_steps,
            grid=settings.grid if settings.deletion_unit == "regions" else None,
            baseline=settings.baseline, noise_sd=settings.noise_sd,
            blur_sigma=settings.blur_sigma, aggregation=settings.aggregation,
            positions=positions, **common)
        for kind, curves in result.items():
            for name, values in curves.per_image().items():
                columns[name] = values.to_numpy()
            for quantity in ("abs_error_mm", "shift_mm"):
                label = {"curve": kind, "order": "morf"}
                values = getattr(curves, quantity)
                curve_values.append((label, quantity, curves.fractions, values))
                curve_rows += mean_curves(values, curves.fractions, label, quantity)

    if "localisation" in metrics:
        scores = localisation_scores(maps, annotation, pixel_size, band_mm=settings.band_mm,
                                     relevance=settings.relevance,
                                     top_percent=settings.top_percent)
        for name in scores.columns:
            columns[name] = scores[name].to_numpy()

    randomisation = None
    if "randomisation" in metrics:
        count = min(n, max(1, int(settings.randomisation_images)))
        result = cascading_randomisation(
            model, images[:count], method, pixel_size[:count], reference[:count],
            maps=maps[:count], target=settings.explain_target,
            explain_options=settings.explain_options, similarity=settings.similarity,
            threshold=settings.similarity_threshold, seed=settings.seed,
            stages=settings.randomisation_stages,
            fixed_cost=settings.randomisation_fixed_cost, output_units=forward.output_units)
        randomisation = result.stage_means()
        randomisation["final_similarity"] = result.final_similarity
        randomisation["similarity"] = settings.similarity
        randomisation["flagged"] = result.flagged

    shares.finish()
    return MethodEvaluation(pd.DataFrame(columns), pd.DataFrame(curve_rows), randomisation,
                            steps_frame, curve_values)


class _ImageShares:
    """The evaluators' progress (images through one curve's forward passes, ``passes`` in
    all) as whole images of one :func:`evaluate_maps` call (``n`` in all): each call of
    ``report(k)`` says ``k`` more images are done; :meth:`finish` reports the rest."""

    def __init__(self, report: Callable[[int], None] | None, n: int, passes: int):
        self.report, self.n, self.passes = report, int(n), int(passes)
        self.done = self.reported = 0

    def __call__(self, count: int) -> None:
        self.done += int(count)
        if self.passes > 0:
            self._advance(min(self.n, self.done * self.n // self.passes))

    def finish(self) -> None:
        self._advance(self.n)

    def _advance(self, images: int) -> None:
        if self.report is not None and images > self.reported:
            self.report(images - self.reported)
            self.reported = images


# ----------------------------------------------------------------------------- tables
def metric_columns(per_image: pd.DataFrame) -> list[str]:
    """The per-image columns that are evaluation metrics (not predictions or labels)."""
    skip = {"method", "filename", "image", "hc_pred_mm", "reference_mm", "abs_error_mm",
            "error_group"}
    return [c for c in per_image.columns
            if c not in skip and pd.api.types.is_numeric_dtype(per_image[c])]


def summary_table(per_image: pd.DataFrame, by=("method",), confidence: float = 0.95,
                  n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Long summary: group(s) × metric with mean and bootstrap CI over images."""
    return stats.summarise(per_image, metric_columns(per_image), by=by,
                           confidence=confidence, n_boot=n_boot, seed=seed)


def wide_table(summary: pd.DataFrame, index=("method",), digits: int = 3) -> pd.DataFrame:
    """Methods (rows) × metrics (columns), cells ``"mean [low, high]"``."""
    index = list(index)
    cells = summary.assign(cell=[
        "n/a" if not np.isfinite(m) else
        f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
        for m, lo, hi in zip(summary["mean"], summary["ci_low"], summary["ci_high"],
                             strict=True)])
    wide = cells.pivot_table(index=index, columns="metric", values="cell", aggfunc="first",
                             sort=False)
    order = list(dict.fromkeys(summary["metric"]))
    return wide.reindex(columns=[m for m in order if m in wide.columns])


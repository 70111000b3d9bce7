"""Evaluate explanations of the HC regression CNN: perturbation curves, AOPC in mm,
deletion / insertion, localisation against the skull contour, randomisation checks.

The core takes arrays — images ``(N, H, W, C)``, signed maps ``(N, H, W)``, pixel sizes
(mm per input pixel) and reference HC (mm) — and a Keras model predicting ``hc_px_input``.
Only recomputing maps during perturbation and the randomisation check (when given a method
name) go through the ``fetalhc.explain`` registry. See docs/evaluate.md.
"""

from fetalhc.evaluate.deletion import DeletionCurves, deletion_insertion
from fetalhc.evaluate.forward import BatchedForward, cast_model
from fetalhc.evaluate.inputs import PERTURBATIONS, PRECISIONS
from fetalhc.evaluate.localisation import contour_distance_mm, head_mask, localisation_scores
from fetalhc.evaluate.perturbation import (
    PAPER_PROTOCOL,
    PerturbationCurves,
    check_paper_input,
    pixel_size_original,
    region_perturbation,
)
from fetalhc.evaluate.randomisation import (
    RandomisationResult,
    cascading_randomisation,
    layers_top_down,
    randomised_models,
    spearman_per_image,
    ssim_per_image,
)
from fetalhc.evaluate.regions import ORDERS, make_grid, replacement_images
from fetalhc.evaluate.stats import aopc, area_under_curve, bootstrap_ci, error_groups, summarise
from fetalhc.evaluate.suite import (
    METRICS,
    EvaluationSettings,
    MethodEvaluation,
    evaluate_maps,
    mean_curves,
    metric_columns,
    parse_metrics,
    summary_table,
    wide_table,
)
from fetalhc.files import markdown_frame as markdown_table  # the one Markdown table

__all__ = [
    "METRICS", "EvaluationSettings", "MethodEvaluation", "evaluate_maps", "markdown_table",
    "mean_curves", "metric_columns", "parse_metrics", "summary_table", "wide_table",
    "ORDERS", "PAPER_PROTOCOL", "PERTURBATIONS", "PRECISIONS", "BatchedForward",
    "DeletionCurves", "PerturbationCurves", "RandomisationResult", "aopc", "area_under_curve",
    "bootstrap_ci", "cascading_randomisation", "cast_model",
    "check_paper_input", "contour_distance_mm", "deletion_insertion", "error_groups",
    "head_mask", "layers_top_down", "localisation_scores", "make_grid", "pixel_size_original",
    "randomised_models", "region_perturbation", "replacement_images", "spearman_per_image",
    "ssim_per_image", "summarise",
]

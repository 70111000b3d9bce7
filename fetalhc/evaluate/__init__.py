"""Evaluate explanations of the HC regression CNN: perturbation curves, AOPC in mm,
deletion / insertion, localisation against the skull contour, randomisation checks.

The core takes arrays — images ``(N, H, W, C)``, signed maps ``(N, H, W)``, pixel sizes
(mm per input pixel) and reference HC (mm) — and a Keras model predicting ``hc_px_input``.
Only recomputing maps during perturbation and the randomisation check (when given a method
name) go through the ``fetalhc.explain`` registry. See docs/evaluate.md.

The names below load on first use (PEP 562): ``from fetalhc.evaluate import
EvaluationSettings`` imports only :mod:`fetalhc.evaluate.settings`, which needs neither
TensorFlow nor numpy (the command line builds its options from it); the evaluators load
TensorFlow when one of them is asked for.
"""

from __future__ import annotations

import importlib

# public name -> the submodule defining it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("METRICS", "ORDERS", "PAPER_PROTOCOL", "PERTURBATIONS", "PRECISIONS",
                     "EvaluationSettings", "check_paper_input", "parse_metrics"), "settings"),
    **dict.fromkeys(("DeletionCurves", "deletion_insertion"), "deletion"),
    **dict.fromkeys(("BatchedForward", "cast_model"), "forward"),
    **dict.fromkeys(("CueComparison", "InterventionResult", "MarkerRelevance",
                     "ShortcutInputs", "cue_influence", "intervention_check",
                     "marker_relevance", "prepare_shortcut_inputs"), "groundtruth"),
    **dict.fromkeys(("contour_distance_mm", "head_mask", "localisation_scores"),
                    "localisation"),
    **dict.fromkeys(("PerturbationCurves", "pixel_size_original", "region_perturbation"),
                    "perturbation"),
    **dict.fromkeys(("RandomisationResult", "cascading_randomisation", "layers_top_down",
                     "randomised_models", "spearman_per_image", "ssim_per_image"),
                    "randomisation"),
    **dict.fromkeys(("make_grid", "replacement_images"), "regions"),
    **dict.fromkeys(("aopc", "area_under_curve", "bootstrap_ci", "error_groups", "summarise"),
                    "stats"),
    **dict.fromkeys(("MethodEvaluation", "evaluate_maps", "mean_curves", "metric_columns",
                     "summary_table", "wide_table"), "suite"),
}
_SUBMODULES = ("deletion", "forward", "groundtruth", "inputs", "localisation", "perturbation",
               "randomisation", "regions", "settings", "stats", "suite")

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
    "CueComparison", "InterventionResult", "MarkerRelevance", "ShortcutInputs",
    "cue_influence", "intervention_check", "marker_relevance", "prepare_shortcut_inputs",
]


def __getattr__(name: str):
    if name == "markdown_table":  # the one Markdown table
        from fetalhc.files import markdown_frame

        value = markdown_frame
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # looked up once
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))

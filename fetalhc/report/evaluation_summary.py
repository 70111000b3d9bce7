"""The summaries of an ``evaluate`` folder: per-method tables in, ``summary.csv`` /
``summary.md``, ``summary_by_error.csv`` / ``.md``, ``randomisation.csv`` and the figures
out. :mod:`fetalhc.report.evaluation` and the merge (:mod:`fetalhc.report.merge`) both call
:func:`write_summaries`, so a merged folder is summarised exactly like a whole run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fetalhc.files import markdown_frame, write_csv, write_text

FAMILIES = (("AOPC, region perturbation (more negative is better)", "aopc_"),
            ("Deletion / insertion, normalised areas", "deletion_"),
            ("", "insertion_"),
            ("Localisation against the annotated contour", ""))


def summary_tables(per_image: Sequence[pd.DataFrame], methods: Sequence[str], *,
                   confidence: float = 0.95, n_boot: int = 2000, seed: int = 0,
                   error_threshold_mm=None, error_quantiles=None):
    """(the per-image table of every method with its error group, the summary per method,
    the summary per method and error group) from the methods' per-image tables. The error
    split defaults to the median error; groups run from the smallest to the largest errors,
    methods in the order of ``methods``."""
    from fetalhc.evaluate import error_groups, summary_table

    table = pd.concat(per_image, ignore_index=True)
    if error_threshold_mm is None and error_quantiles is None:
        error_quantiles = [0.5]
    table["error_group"] = error_groups(table["abs_error_mm"], threshold_mm=error_threshold_mm,
                                        quantiles=error_quantiles)
    first = ["method", "filename", "hc_pred_mm", "reference_mm", "abs_error_mm", "error_group"]
    table = table[first + [c for c in table.columns if c not in first]]
    summary = summary_table(table, by=("method",), confidence=confidence, n_boot=n_boot,
                            seed=seed)
    by_error = summary_table(table, by=("method", "error_group"), confidence=confidence,
                             n_boot=n_boot, seed=seed)
    typical = table.groupby("error_group")["abs_error_mm"].median().fillna(np.inf)
    by_error = by_error.assign(
        _method=by_error["method"].map({m: i for i, m in enumerate(methods)}),
        _group=by_error["error_group"].map(typical.rank(method="first")),
    ).sort_values(["_method", "_group"], kind="stable").drop(columns=["_method", "_group"])
    return table, summary, by_error


def write_summaries(out, per_image: Sequence[pd.DataFrame], curves: Sequence[pd.DataFrame],
                    methods: Sequence[str], split: str, *,
                    randomisation: Sequence[pd.DataFrame] = (), confidence: float = 0.95,
                    n_boot: int = 2000, seed: int = 0, error_threshold_mm=None,
                    error_quantiles=None, figures: bool = True):
    """The tables, Markdown pages and figures of an evaluation folder from the per-method
    results (frames with a ``method`` column); returns (paths written, summary,
    randomisation table or None)."""
    out = Path(out)
    table, summary, by_error = summary_tables(
        per_image, methods, confidence=confidence, n_boot=n_boot, seed=seed,
        error_threshold_mm=error_threshold_mm, error_quantiles=error_quantiles)
    written = {"per_image": out / "per_image.csv", "summary": out / "summary.csv",
               "summary_md": out / "summary.md", "by_error": out / "summary_by_error.csv",
               "by_error_md": out / "summary_by_error.md"}
    write_csv(table, written["per_image"])
    write_csv(summary, written["summary"])
    write_csv(by_error, written["by_error"])
    markdown = [f"# Explanation evaluation ({split} split, {table['filename'].nunique()} "
                f"images)\n", "Mean over images [95 % bootstrap CI]. AOPC: more negative is "
                "better; deletion AUC: larger is better; insertion AUC: smaller is better; "
                "band / inside ratios: 1 = chance. Units in column names.\n",
                *family_tables(summary)]
    random_frame = None
    if randomisation:
        random_frame = pd.concat(randomisation, ignore_index=True)
        written["randomisation"] = out / "randomisation.csv"
        write_csv(random_frame, written["randomisation"])
        final = random_frame.groupby("method", sort=False).agg(
            similarity=("similarity", "first"), final_similarity=("final_similarity", "first"),
            flagged=("flagged", "first")).round(3)
        markdown += ["\n## Model randomisation (cascading, top layer first)\n",
                     "A flagged method's maps stay similar to the trained model's once every "
                     "layer is random.\n", markdown_frame(final)]
    write_text(written["summary_md"], "\n".join(markdown))
    write_text(written["by_error_md"], "\n".join(
        ["# Explanation evaluation split by prediction error\n"]
        + family_tables(by_error, ("method", "error_group"))))
    if figures:
        from fetalhc.report.evaluation_figures import write_figures

        written.update(write_figures(out / "figures", table,
                                     pd.concat(curves, ignore_index=True), by_error))
    return written, summary, random_frame


def family_tables(summary: pd.DataFrame, index: Sequence[str] = ("method",)) -> list[str]:
    """One Markdown table per metric family (``index`` rows x metrics, "mean [CI]" cells) of
    a long summary, each under a ``##`` title, so the tables stay readable."""
    from fetalhc.evaluate import wide_table

    parts, used = [], set()
    metrics = list(dict.fromkeys(summary["metric"]))
    for position, (title, prefix) in enumerate(FAMILIES):
        if prefix == "deletion_":  # deletion and insertion share one table
            chosen = [m for m in metrics if m.startswith(("deletion_", "insertion_"))]
        elif prefix == "insertion_":
            continue
        elif position == len(FAMILIES) - 1:
            chosen = [m for m in metrics if m not in used]
        else:
            chosen = [m for m in metrics if m.startswith(prefix)]
        used.update(chosen)
        if chosen:
            rows = summary[summary["metric"].isin(chosen)]
            parts += [f"\n## {title}\n", markdown_frame(wide_table(rows, index=index))]
    return parts

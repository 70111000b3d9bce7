"""Whole-dataset check: every row problem, every file decoded, summary numbers, the refit."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fetalhc.data.ellipse import annotation_ellipse
from fetalhc.data.errors import DataError
from fetalhc.data.images import image_problems
from fetalhc.data.index import PARTS, index_problems

REFIT_TOLERANCE_MM = 0.05


def refit_hc(index: pd.DataFrame, progress=None) -> tuple[pd.DataFrame, list[str]]:
    """Refit every annotation of ``index``: HC of the fitted ellipse vs the CSV HC.

    Returns a DataFrame ``filename, hc_mm, hc_refit_mm, abs_difference_mm`` (rows whose
    annotation holds no ellipse are left out) and the list of problems for those rows.
    """
    rows, problems = [], []
    items = zip(index["filename"], index["annotation_path"], index["pixel_size_mm"],
                index["hc_mm"], strict=True)
    if progress is not None:
        items = progress(items, total=len(index), desc="refit", unit="image")
    for filename, path, pixel_size, hc_mm in items:
        try:
            refit = annotation_ellipse(path).perimeter * pixel_size
        except DataError as error:
            problems.append(f"{filename}: {error}")
            continue
        rows.append((filename, hc_mm, refit, abs(refit - hc_mm)))
    table = pd.DataFrame(rows, columns=["filename", "hc_mm", "hc_refit_mm",
                                        "abs_difference_mm"])
    return table, problems


@dataclass
class CheckReport:
    """What ``fetalhc data check`` found. ``ok`` is True when there are no problems."""

    root: Path
    training: pd.DataFrame
    challenge: pd.DataFrame | None
    refit: pd.DataFrame | None
    tolerance_mm: float
    problems: list[str] = field(default_factory=list)
    decoded_files: int = 0  # images and annotations fully decoded
    undecodable_files: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary_lines(self) -> list[str]:
        lines = [f"dataset: {self.root}"]
        for name, table in (("training", self.training), ("challenge", self.challenge)):
            if table is None:
                lines.append(f"{name}: no {PARTS[name][0]}/ (skipped)")
                continue
            lines.append(_part_summary(name, table))
        lines.append(
            f"decoded in full (as the pipeline will): {self.decoded_files} images and "
            f"annotations, {self.undecodable_files} missing, truncated or undecodable"
        )
        if self.refit is not None and len(self.refit):
            worst = self.refit.loc[self.refit["abs_difference_mm"].idxmax()]
            lines.append(
                f"refit vs CSV HC: max |Δ| {worst['abs_difference_mm']:.4f} mm "
                f"({worst['filename']}), mean |Δ| "
                f"{self.refit['abs_difference_mm'].mean():.4f} mm over {len(self.refit)} "
                f"annotations (tolerance {self.tolerance_mm} mm)"
            )
        return lines


def _part_summary(name: str, table: pd.DataFrame) -> str:
    if len(table) == 0:
        return f"{name}: 0 usable images"
    per_group = table.groupby("group_id").size().value_counts().sort_index()
    group_text = ", ".join(f"{count} with {size}" for size, count in per_group.items())
    sizes = (table["width_px"].astype(str) + "x" + table["height_px"].astype(str)).value_counts()
    size_text = ", ".join(f"{size} ({count})" for size, count in sizes.head(3).items())
    if len(sizes) > 3:
        size_text += f", {len(sizes) - 3} other sizes"
    text = (
        f"{name}: {len(table)} images, {table['group_id'].nunique()} IDs "
        f"({table['group_id'].min()}..{table['group_id'].max()}; images per ID: {group_text}); "
        f"sizes {size_text}; pixel size {table['pixel_size_mm'].min():.4f}.."
        f"{table['pixel_size_mm'].max():.4f} mm"
    )
    if np.isfinite(table["hc_mm"]).any():
        text += f"; HC {table['hc_mm'].min():.2f}..{table['hc_mm'].max():.2f} mm"
    return text


def check_dataset(root, refit: bool = True, tolerance_mm: float = REFIT_TOLERANCE_MM,
                  progress=None) -> CheckReport:
    """Validate an HC18-layout folder and collect every problem.

    The training part is required; the challenge part (``test_set/``) is checked when its
    folder or CSV exists. Every image and annotation of both parts is decoded in full
    (:func:`~fetalhc.data.images.image_problems`, what ``check_images`` checks), so a
    missing, truncated or undecodable file is a problem. With ``refit``, every annotation
    is refitted and a CSV HC that differs from the refit by more than ``tolerance_mm`` is a
    problem. Folder- and CSV-level problems raise :class:`~fetalhc.data.DataError`.
    """
    tolerance = float(tolerance_mm)
    if not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"the refit tolerance must be a number of mm >= 0; got {tolerance_mm}")
    root = Path(root)
    training, problems = index_problems(root, "training", validate=not refit,
                                        progress=progress)
    decoded = _decoded_count(training)
    training_bad = image_problems(training, annotations=True, progress=progress)
    problems += [message for _, message in training_bad]
    bad_files = len(training_bad)
    challenge = None
    folder, csv_name = PARTS["challenge"]
    if (root / folder).exists() or (root / csv_name).exists():
        challenge, challenge_problems = index_problems(root, "challenge", progress=progress)
        problems += challenge_problems
        decoded += _decoded_count(challenge)
        challenge_bad = image_problems(challenge, annotations=False, progress=progress)
        problems += [message for _, message in challenge_bad]
        bad_files += len(challenge_bad)
    refit_table = None
    if refit:
        # rows whose files did not decode are reported once, above, not again by the refit
        bad_rows = sorted({position for position, _ in training_bad})
        readable = training.drop(training.index[bad_rows]) if bad_rows else training
        refit_table, refit_problems = refit_hc(readable, progress=progress)
        problems += refit_problems
        too_far = refit_table[refit_table["abs_difference_mm"] > tolerance_mm]
        problems += [
            f"{row.filename}: CSV HC {row.hc_mm:.2f} mm differs from the annotation refit "
            f"{row.hc_refit_mm:.2f} mm by {row.abs_difference_mm:.3f} mm "
            f"(> {tolerance_mm} mm)"
            for row in too_far.itertuples()
        ]
    if len(training) == 0 and not problems:
        problems.append(f"{root}: no usable training images")
    return CheckReport(root, training, challenge, refit_table, tolerance_mm, problems,
                       decoded_files=decoded, undecodable_files=bad_files)


def _decoded_count(index: pd.DataFrame) -> int:
    return len(index) + int(index["annotation_path"].notna().sum())

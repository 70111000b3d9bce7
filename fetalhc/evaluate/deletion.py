"""Deletion and insertion curves (Petsiuk et al. 2018) scored per image, in mm.

Deletion replaces the most relevant pixels (or regions) of the image by a baseline, a
growing fraction at a time; insertion starts from the baseline and puts the most relevant
pixels of the image back. Each image is scored on its own curves — |prediction − reference|
and |prediction − unperturbed prediction| — and the areas under those curves (normalised
by the fraction axis, so in mm) are averaged over images. Raw predictions are never averaged
across images: HC differs from image to image, so their mean curve means nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np
import pandas as pd

from fetalhc.evaluate import stats
from fetalhc.evaluate.forward import BatchedForward
from fetalhc.evaluate.inputs import as_images, as_maps, as_vector
from fetalhc.evaluate.regions import (
    make_grid,
    pixel_rank_map,
    region_rank_map,
    region_scores,
    removal_order,
    replacement_images,
)
from fetalhc.evaluate.settings import AGGREGATIONS, DELETION_UNITS, require_choice

KINDS = ("deletion", "insertion")


@dataclass
class DeletionCurves:
    """Per-image curves of one kind: ``hc_mm`` ``(N, F)`` at ``fractions`` ``(F,)``.

    For deletion the fraction is what has been replaced by the baseline; for insertion what
    has been put back. ``unperturbed_mm`` is the prediction on the original image.
    """

    kind: str
    fractions: np.ndarray
    hc_mm: np.ndarray
    reference_mm: np.ndarray
    unperturbed_mm: np.ndarray
    settings: dict = field(default_factory=dict)

    @property
    def abs_error_mm(self) -> np.ndarray:
        return np.abs(self.hc_mm - self.reference_mm[:, None])

    @property
    def shift_mm(self) -> np.ndarray:
        return np.abs(self.hc_mm - self.unperturbed_mm[:, None])

    def area(self, quantity: str = "abs_error_mm") -> np.ndarray:
        """Per-image normalised area under the curve (mm).

        Deletion: larger is better (the error grows fast when relevant pixels go).
        Insertion: smaller is better (the error falls fast when they come back).
        """
        require_choice(quantity, ("abs_error_mm", "shift_mm"), "quantity")
        return stats.area_under_curve(getattr(self, quantity), self.fractions)

    def per_image(self) -> pd.DataFrame:
        return pd.DataFrame({
            f"{self.kind}_auc_abs_error_mm": self.area("abs_error_mm"),
            f"{self.kind}_auc_shift_mm": self.area("shift_mm"),
        })

    def to_frame(self) -> pd.DataFrame:
        n, f = self.hc_mm.shape
        return pd.DataFrame({
            "image": np.repeat(np.arange(n), f),
            "kind": self.kind,
            "fraction": np.tile(self.fractions, n),
            "hc_pred_mm": self.hc_mm.reshape(-1),
            "abs_error_mm": self.abs_error_mm.reshape(-1),
            "shift_mm": self.shift_mm.reshape(-1),
        })


def deletion_insertion(
    model: keras.Model,
    images,
    maps,
    pixel_size_mm,
    reference_mm=None,
    *,
    kinds=KINDS,
    unit: str = "pixels",
    steps: int = 20,
    grid=None,
    region_size=None,
    baseline: str = "zeros",
    noise_sd: float = 0.3,
    blur_sigma: float = 4.0,
    aggregation: str = "mean",
    seed: int = 0,
    batch_size: int = 256,
    precision: str = "float32",
    forward: BatchedForward | None = None,
    progress: Callable[[int], None] | None = None,
    positions=None,
    output_units: str | None = None,
) -> dict[str, DeletionCurves]:
    """Deletion and/or insertion curves of ``maps``; returns ``{kind: DeletionCurves}``.

    ``unit="pixels"`` ranks single pixels by relevance (signed, or ``aggregation="abs"``);
    ``unit="regions"`` ranks the regions of ``grid`` / ``region_size`` by their mean.
    ``steps`` equal increments of the fraction from 0 to 1 (``steps + 1`` points). The
    baseline is ``"zeros"`` (the image mean in the z-scored convention), ``"mean"``,
    ``"blur"`` or ``"noise"``. ``output_units``: of a model that is not fetalhc's
    (``"mm"`` or ``"px"``; ``forward``'s when given).
    """
    images = as_images(images)
    maps = as_maps(maps, images)
    n, height, width = maps.shape
    pixel_size = as_vector(pixel_size_mm, n, "pixel_size_mm")
    reference = as_vector(reference_mm, n, "reference_mm", allow_none=True)
    kinds = tuple(kinds)
    for kind in kinds:
        require_choice(kind, KINDS, "curve kind")
    require_choice(unit, DELETION_UNITS, "unit")
    require_choice(aggregation, AGGREGATIONS, "aggregation")
    steps = int(steps)
    if unit == "pixels":
        rank = pixel_rank_map(maps, aggregation)
        total = height * width
    else:
        if grid is None and region_size is None:
            grid = 4
        region_grid = make_grid((height, width), grid=grid, region_size=region_size)
        scores = region_scores(maps, region_grid, aggregation)
        rank = region_rank_map(removal_order(scores, "morf"), region_grid)
        total = region_grid.n_regions
    if steps < 1 or steps > total:
        raise ValueError(f"steps must lie between 1 and the number of {unit} ({total}); "
                         f"got {steps}")
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = np.round(fractions * total).astype(np.int32)
    base = replacement_images(images, baseline, noise_sd=noise_sd, blur_sigma=blur_sigma,
                              seed=seed, positions=positions)
    forward = forward or BatchedForward(model, batch_size=batch_size, precision=precision,
                                        output_units=output_units)
    settings = {"unit": unit, "steps": steps, "baseline": baseline, "aggregation": aggregation,
                "seed": seed}
    curves = {}
    for kind in kinds:
        if kind == "deletion":
            hc_mm = forward.in_mm(forward.perturbed(images, base, rank, counts, progress),
                                  pixel_size)
            unperturbed = hc_mm[:, 0]
        else:  # insertion: start from the baseline, put the most relevant pixels back
            hc_mm = forward.in_mm(forward.perturbed(base, images, rank, counts, progress),
                                  pixel_size)
            unperturbed = hc_mm[:, -1]
        curves[kind] = DeletionCurves(
            kind=kind,
            fractions=counts / total,
            hc_mm=hc_mm,
            reference_mm=reference,
            unperturbed_mm=unperturbed,
            settings=settings,
        )
    return curves

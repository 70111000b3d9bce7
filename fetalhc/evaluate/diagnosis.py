"""How far each perturbation moves a model's prediction at all: the random-order curve.

A saliency method "beats random" when replacing its most relevant regions first moves the
prediction further than replacing regions in a random order. That comparison only has
power when the replacement moves the prediction at all: a perturbation the model shrugs
off gives flat curves for every order. :func:`perturbation_strength` measures, per image
and perturbation, the random-order curve of the region perturbation (the same grid and
steps as the protocol) and summarises it as

- ``random_shift_mm``: mean |HC after k steps − HC unperturbed| over the steps 0..K (the
  random order's AOPC of the shift, mm; 0 = the model ignores the perturbation);
- ``final_shift_mm``: |shift| after the last step (most of the image replaced);
- ``shift_slope_mm``: least-squares slope of |shift| against the fraction of the image
  replaced, through the origin (mm per whole image);
- ``random_shift_percent``: ``random_shift_mm`` as a percentage of the unperturbed HC (so
  data sets of other head sizes compare);
- ``random_aopc_abs_error_mm``: the random order's AOPC of the absolute error (NaN without
  a reference), the quantity the protocols compare methods against.

The random order is the same for every perturbation (seeded by ``seed`` and the images'
positions), so the perturbations are compared on the same regions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fetalhc.evaluate import stats
from fetalhc.evaluate.forward import BatchedForward
from fetalhc.evaluate.inputs import as_images, as_vector
from fetalhc.evaluate.perturbation import region_perturbation
from fetalhc.evaluate.settings import PERTURBATIONS, require_choice

# zeros equals mean under the z-score convention of the pre-processing, so it is left out
DIAGNOSED = ("noise", "mean", "blur", "speckle")
STRENGTH_COLUMNS = ("random_shift_mm", "final_shift_mm", "shift_slope_mm",
                    "random_shift_percent", "random_aopc_abs_error_mm")


def perturbation_strength(model, images, pixel_size_mm, reference_mm=None, *,
                          perturbations=DIAGNOSED, grid: int = 4, steps: int | None = None,
                          regions_per_step: int = 1, noise_sd: float = 0.3,
                          blur_sigma: float = 4.0, seed: int = 0,
                          forward: BatchedForward | None = None, positions=None,
                          batch_size: int = 256, precision: str = "float32") -> pd.DataFrame:
    """One row per image and perturbation: ``image`` (row of ``images``), ``perturbation``,
    ``hc_pred_mm`` and the :data:`STRENGTH_COLUMNS` (see the module docstring)."""
    images = as_images(images)
    n = images.shape[0]
    pixel_size = as_vector(pixel_size_mm, n, "pixel_size_mm")
    reference = as_vector(reference_mm, n, "reference_mm", allow_none=True)
    perturbations = tuple(perturbations)
    if not perturbations:
        raise ValueError(f"no perturbation given; choose from: {', '.join(PERTURBATIONS)}")
    for name in perturbations:
        require_choice(name, PERTURBATIONS, "perturbation")
    forward = forward or BatchedForward(model, batch_size, precision)
    no_maps = np.zeros(images.shape[:3], dtype=np.float32)  # the random order ignores them
    frames = []
    for name in perturbations:
        curves = region_perturbation(
            model, images, no_maps, pixel_size, reference, grid=grid, steps=steps,
            regions_per_step=regions_per_step, orders=("random",), perturbation=name,
            noise_sd=noise_sd, blur_sigma=blur_sigma, seed=seed, forward=forward,
            positions=positions)
        shift = curves.curve("shift_mm", "random")  # (N, K + 1), shift[:, 0] = 0
        fraction = curves.regions_removed / curves.n_regions
        unperturbed = curves.unperturbed_mm
        random_shift = shift.mean(axis=1)
        frames.append(pd.DataFrame({
            "image": np.arange(n), "perturbation": name, "hc_pred_mm": unperturbed,
            "random_shift_mm": random_shift,
            "final_shift_mm": shift[:, -1],
            "shift_slope_mm": (shift * fraction).sum(axis=1) / float((fraction ** 2).sum()),
            "random_shift_percent": 100.0 * random_shift / np.abs(unperturbed),
            "random_aopc_abs_error_mm": stats.aopc(curves.curve("abs_error_mm", "random"))
            if reference is not None and np.isfinite(reference).all()
            else np.full(n, np.nan)}))
    return pd.concat(frames, ignore_index=True)


def strength_summary(per_image: pd.DataFrame, by=("perturbation",), n_boot: int = 2000,
                     seed: int = 0) -> pd.DataFrame:
    """Mean and bootstrap CI of every :data:`STRENGTH_COLUMNS` column per ``by`` group."""
    columns = [c for c in STRENGTH_COLUMNS if c in per_image.columns]
    return stats.summarise(per_image, columns, by=by, n_boot=n_boot, seed=seed)

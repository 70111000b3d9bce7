"""Region perturbation curves (Samek et al. 2017) and AOPC adapted to regression.

Regions of a grid are ranked by their aggregated relevance and replaced step by step,
most relevant first (MoRF), least relevant first (LeRF) or in a seeded random order. For
every image and step the predicted HC (mm), its absolute error against the reference (mm)
and its shift from the unperturbed prediction (mm) are recorded; AOPC is computed per image
and averaged with a bootstrap CI.
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
    region_rank_map,
    region_scores,
    removal_order,
    replacement_images,
)
from fetalhc.evaluate.settings import AGGREGATIONS, ORDERS, require_choice

QUANTITIES = ("abs_error_mm", "shift_mm", "abs_error_px_original")


@dataclass
class PerturbationCurves:
    """Predicted HC after each perturbation step, per image and order.

    ``hc_mm`` is ``(N, O, K+1)`` for the orders in ``orders``; step 0 is the unperturbed
    image. Derived curves (all ``(N, O, K+1)``, in mm unless named otherwise):
    ``abs_error_mm`` = |HC − reference|, ``shift_mm`` = |HC − unperturbed HC|,
    ``abs_error_px_original`` = error in pixels of the original image.
    """

    orders: tuple[str, ...]
    hc_mm: np.ndarray
    reference_mm: np.ndarray
    pixel_size_mm: np.ndarray
    regions_removed: np.ndarray
    n_regions: int
    pixel_size_original_mm: np.ndarray | None = None
    settings: dict = field(default_factory=dict)

    @property
    def unperturbed_mm(self) -> np.ndarray:
        return self.hc_mm[:, 0, 0]

    @property
    def abs_error_mm(self) -> np.ndarray:
        return np.abs(self.hc_mm - self.reference_mm[:, None, None])

    @property
    def shift_mm(self) -> np.ndarray:
        return np.abs(self.hc_mm - self.hc_mm[:, :, :1])

    @property
    def abs_error_px_original(self) -> np.ndarray:
        if self.pixel_size_original_mm is None:
            raise ValueError(
                "errors in original pixels need pixel_size_original_mm (mm per original pixel)"
            )
        return self.abs_error_mm / self.pixel_size_original_mm[:, None, None]

    def quantities(self) -> tuple[str, ...]:
        names = ("abs_error_mm", "shift_mm")
        return names + (("abs_error_px_original",) if self.pixel_size_original_mm is not None
                        else ())

    def curve(self, quantity: str = "abs_error_mm", order: str = "morf") -> np.ndarray:
        """Per-image curves ``(N, K+1)`` of one quantity for one order."""
        require_choice(quantity, QUANTITIES, "quantity")
        require_choice(order, self.orders, "order")
        return getattr(self, quantity)[:, self.orders.index(order)]

    def aopc(self, quantity: str = "abs_error_mm", order: str = "morf") -> np.ndarray:
        """Per-image AOPC ``(N,)`` (more negative = better); NaN without a reference."""
        return stats.aopc(self.curve(quantity, order))

    def aopc_gap(self, quantity: str = "abs_error_mm") -> np.ndarray:
        """Per-image MoRF − LeRF AOPC (more negative = better ranking of both ends)."""
        return self.aopc(quantity, "morf") - self.aopc(quantity, "lerf")

    def per_image(self) -> pd.DataFrame:
        """One row per image: unperturbed prediction and every AOPC, columns with units."""
        columns = {
            "hc_pred_mm": self.unperturbed_mm,
            "reference_mm": self.reference_mm,
            "abs_error_mm": np.abs(self.unperturbed_mm - self.reference_mm),
        }
        for quantity in self.quantities():
            unit_name = quantity
            for order in self.orders:
                columns[f"aopc_{order}_{unit_name}"] = self.aopc(quantity, order)
            if "morf" in self.orders and "lerf" in self.orders:
                columns[f"aopc_gap_{unit_name}"] = self.aopc_gap(quantity)
        return pd.DataFrame(columns)

    def to_frame(self) -> pd.DataFrame:
        """Long table: image, order, step, regions removed, HC, |error|, |shift| and signed
        shift (mm; positive = the perturbed prediction is larger)."""
        n, n_orders, n_steps = self.hc_mm.shape
        image = np.repeat(np.arange(n), n_orders * n_steps)
        order = np.tile(np.repeat(np.asarray(self.orders, dtype=object), n_steps), n)
        step = np.tile(np.arange(n_steps), n * n_orders)
        frame = pd.DataFrame({
            "image": image,
            "order": order,
            "step": step,
            "regions_removed": np.tile(self.regions_removed, n * n_orders),
            "fraction_removed": np.tile(self.regions_removed / self.n_regions, n * n_orders),
            "hc_pred_mm": self.hc_mm.reshape(-1),
            "abs_error_mm": self.abs_error_mm.reshape(-1),
            "shift_mm": self.shift_mm.reshape(-1),
            "signed_shift_mm": (self.hc_mm - self.hc_mm[:, :, :1]).reshape(-1),
        })
        if self.pixel_size_original_mm is not None:
            frame["abs_error_px_original"] = self.abs_error_px_original.reshape(-1)
        return frame

    def summary(self, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0):
        """Mean AOPC over images with bootstrap CIs: one row per metric."""
        frame = self.per_image()
        metrics = [c for c in frame.columns if c.startswith("aopc_")]
        return stats.summarise(frame, metrics, by=(), confidence=confidence, n_boot=n_boot,
                               seed=seed)


Explainer = Callable[[np.ndarray], np.ndarray]


def _registry_explainer(model, method, pixel_size_mm, reference_mm, target, options,
                        output_units: str = "px"):
    """An explainer for recomputing maps each step, through the fetalhc.explain registry."""
    from fetalhc.explain import explain

    def explainer(images: np.ndarray) -> np.ndarray:
        return np.asarray(explain(model, images, method, target=target, pixel_size=pixel_size_mm,
                                  reference=reference_mm, output_units=output_units,
                                  **options), dtype=np.float32)

    return explainer


def region_perturbation(
    model: keras.Model,
    images,
    maps,
    pixel_size_mm,
    reference_mm=None,
    *,
    grid=4,
    region_size=None,
    steps: int | None = None,
    regions_per_step: int = 1,
    orders=ORDERS,
    perturbation: str = "noise",
    noise_sd: float = 0.3,
    blur_sigma: float = 4.0,
    aggregation: str = "mean",
    recompute: str | Explainer | None = None,
    target: str = "hc_mm",
    explain_options: dict | None = None,
    pixel_size_original_mm=None,
    seed: int = 0,
    batch_size: int = 256,
    precision: str = "float32",
    forward: BatchedForward | None = None,
    progress: Callable[[int], None] | None = None,
    positions=None,
    output_units: str | None = None,
) -> PerturbationCurves:
    """Region-perturbation curves of ``maps`` for ``model`` on ``images``.

    Args:
        model: Keras model predicting HC in input pixels (output ``hc_px_input``), or
            another regression model whose ``output_units`` (``"mm"`` or ``"px"``) are
            declared (``forward``'s when given).
        images: ``(N, H, W, C)`` z-scored inputs. maps: ``(N, H, W)`` signed relevance.
        pixel_size_mm: mm per input pixel, ``(N,)`` or a scalar.
        reference_mm: reference HC (mm); None → errors are NaN, shifts still defined.
        grid / region_size: regions per side, or region size in pixels (exactly one).
        steps: perturbation steps K (default: all regions but one, as the paper).
        regions_per_step: regions replaced per step; ``steps * regions_per_step`` must not
            exceed the number of regions.
        orders: any of ``"morf"``, ``"lerf"``, ``"random"`` (seeded by ``seed``).
        perturbation: ``"noise"`` (N(0, noise_sd)), ``"mean"``, ``"zeros"``, ``"blur"``.
        aggregation: ``"mean"`` signed relevance per region, or ``"abs"``.
        recompute: None (maps computed once, as the paper) or an explain method name (uses
            the fetalhc.explain registry with ``target`` / ``explain_options``) or a callable
            ``images -> maps`` re-run on the perturbed images before every step.
        pixel_size_original_mm: mm per original-image pixel, for errors in original pixels.
        batch_size: images per forward pass (memory bound); precision: ``"float32"``,
            ``"mixed_float16"`` or ``"mixed_bfloat16"`` for the forward passes.
        positions: the images' positions in a larger set (a shard's); the noise and random
            orders are then those of the whole set, so shards merge exactly.
    """
    images = as_images(images)
    maps = as_maps(maps, images)
    n = images.shape[0]
    pixel_size = as_vector(pixel_size_mm, n, "pixel_size_mm")
    reference = as_vector(reference_mm, n, "reference_mm", allow_none=True)
    original = (None if pixel_size_original_mm is None
                else as_vector(pixel_size_original_mm, n, "pixel_size_original_mm"))
    orders = tuple(orders)
    if not orders:
        raise ValueError("no orders given; choose from morf, lerf, random")
    for order in orders:
        require_choice(order, ORDERS, "order")
    require_choice(aggregation, AGGREGATIONS, "aggregation")
    region_grid = make_grid(images.shape[1:3], grid=grid, region_size=region_size)
    n_regions = region_grid.n_regions
    regions_per_step = int(regions_per_step)
    if regions_per_step < 1:
        raise ValueError(f"regions_per_step must be at least 1; got {regions_per_step}")
    if steps is None:
        steps = max(1, (n_regions - 1) // regions_per_step)
    steps = int(steps)
    if steps < 1 or steps * regions_per_step > n_regions:
        raise ValueError(
            f"{steps} steps of {regions_per_step} region(s) need {steps * regions_per_step} "
            f"regions but the grid has only {n_regions}; use at most "
            f"{n_regions // regions_per_step} steps"
        )
    replacement = replacement_images(images, perturbation, noise_sd=noise_sd,
                                     blur_sigma=blur_sigma, seed=seed, positions=positions)
    forward = forward or BatchedForward(model, batch_size=batch_size, precision=precision,
                                        output_units=output_units)
    counts = np.arange(steps + 1) * regions_per_step
    rng = np.random.default_rng(seed + 1)
    scores = region_scores(maps, region_grid, aggregation)

    hc = np.empty((n, len(orders), steps + 1), dtype=np.float32)  # forward's output units
    for index, order in enumerate(orders):
        if recompute is not None and order != "random":
            if isinstance(recompute, str):
                explainer = _registry_explainer(model, recompute, pixel_size, reference, target,
                                                dict(explain_options or {}),
                                                forward.output_units)
            else:
                explainer = recompute
            hc[:, index] = _recomputed_curve(
                forward, explainer, images, replacement, scores, region_grid, order, steps,
                regions_per_step, aggregation)
            if progress is not None:
                progress(n)
            continue
        rank = region_rank_map(removal_order(scores, order, rng, positions), region_grid)
        hc[:, index] = forward.perturbed(images, replacement, rank, counts, progress)

    return PerturbationCurves(
        orders=orders,
        hc_mm=forward.in_mm(hc, pixel_size),
        reference_mm=reference,
        pixel_size_mm=pixel_size,
        regions_removed=counts,
        n_regions=n_regions,
        pixel_size_original_mm=original,
        settings={
            "grid": (region_grid.rows, region_grid.cols),
            "region_size_px": (region_grid.height, region_grid.width),
            "steps": steps, "regions_per_step": regions_per_step,
            "perturbation": perturbation, "noise_sd": noise_sd, "blur_sigma": blur_sigma,
            "aggregation": aggregation, "recompute": recompute if isinstance(recompute, str)
            else (None if recompute is None else "callable"), "seed": seed,
        },
    )


def _recomputed_curve(forward, explainer, images, replacement, scores, grid, order, steps,
                      regions_per_step, aggregation):
    """Predictions ``(N, K+1)`` when the maps are recomputed on the perturbed image each step."""
    n = images.shape[0]
    labels = grid.labels()
    removed = np.zeros((n, grid.n_regions), dtype=bool)
    current = images.copy()
    hc = [forward.predict(current)]
    step_scores = scores
    for step in range(steps):
        if step > 0:
            step_maps = as_maps(explainer(current), images, name="recomputed maps")
            step_scores = region_scores(step_maps, grid, aggregation)
        masked = np.where(removed, np.inf if order == "lerf" else -np.inf, step_scores)
        chosen = removal_order(masked, order)[:, :regions_per_step]
        removed[np.arange(n)[:, None], chosen] = True
        pixel_removed = removed[:, labels]  # (N, H, W)
        current = np.where(pixel_removed[..., None], replacement, images).astype(np.float32)
        hc.append(forward.predict(current))
    return np.stack(hc, axis=1)


def pixel_size_original(pixel_size_input_mm, input_size: int, original_long_side) -> np.ndarray:
    """mm per original pixel from the input's: ``pixel_size_input * S / original_long_side``.

    Valid for the aspect-preserving resize of the pre-processing convention (the longer
    side of the original image becomes the input size ``S``).
    """
    size = np.asarray(pixel_size_input_mm, dtype=np.float64)
    long_side = np.asarray(original_long_side, dtype=np.float64)
    if np.any(long_side <= 0):
        raise ValueError("original_long_side must be positive (pixels of the original image)")
    return (size * float(input_size) / long_side).astype(np.float32)


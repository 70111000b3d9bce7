"""Ground-truth faithfulness: saliency maps of a model whose evidence is known.

The shortcut phantoms of :mod:`fetalhc.data.shortcut` plant a bright marker whose position
encodes the HC. Two measurements per model, on the network inputs the pipeline makes
(:func:`prepare_shortcut_inputs`: letterbox and z-score by ``fetalhc.data.load_arrays``):

- :func:`intervention_check`: what the model *uses*, by intervention. Per image the
  prediction change (mm) when the marker is moved to encode another HC (by default the
  HC mirrored about the middle of the range), when it is removed and when the head is
  hidden. The slope of the predicted change on the marker-encoded change (through the
  origin) says how far the model follows the marker: 1 = fully, 0 = not at all.
- :func:`marker_relevance`: where each saliency method *puts* the relevance: the share of
  relevance mass on the marker mask against its area share, the marker region's rank among
  grid regions, the share on the contour band, and the prediction change when the regions
  are perturbed in the method's order (first ``steps`` regions) against the change when
  the marker's region goes first.

:func:`cue_influence` sets the two side by side for models that may use both cues (the
``"mixed"`` variant): the marker's share of the intervention effect against each method's
marker share of the relevance on the two cues. Columns carry their unit (``(mm)``,
``share``); CIs are percentile bootstraps over images (:func:`fetalhc.evaluate.stats.bootstrap_ci`).

One job past 400 lines: the benchmark on one set of prepared inputs. Intervention effects
and relevance splits are only comparable when both come from the same inputs, which this
module prepares once.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import keras
import numpy as np
import pandas as pd

from fetalhc.data.shortcut import (
    ShortcutPhantom,
    head_hidden,
    marker_removed,
    moved_marker,
    write_training_part,
)
from fetalhc.evaluate import stats
from fetalhc.evaluate.forward import BatchedForward
from fetalhc.evaluate.localisation import contour_distance_mm
from fetalhc.evaluate.perturbation import region_perturbation
from fetalhc.evaluate.regions import make_grid, region_scores

KINDS = ("image", "moved", "removed", "hidden", "mask")
RELEVANCE_METRICS = (
    "marker positive mass share", "marker abs mass share", "marker area share",
    "marker abs enrichment (x area share)", "marker region rank (1 = top)",
    "contour band positive mass share", "contour band abs mass share", "contour band area share",
    "marker positive cue share", "marker abs cue share",
    "MoRF first-k mean shift (mm)", "marker-first mean shift (mm)",
)
VERDICT_RULE = ("uses_marker: the lower bound of the slope's CI exceeds {min_slope} and the "
                "median |head hidden change| is below {max_hidden_ratio} x the median "
                "|marker moved change|")


@dataclass
class ShortcutInputs:
    """Shortcut phantoms as network inputs ``(N, S, S, 1)`` (z-scored, letterboxed).

    ``images``, ``moved``, ``removed``, ``hidden``: the phantoms as they are, with the
    marker moved to encode ``moved_marker_hc_mm``, removed, and with the head hidden.
    ``marker_mask``: bool ``(N, S, S)``, every input pixel the (dilated) marker mask
    reaches. ``annotation``: 0/1 ``(N, S, S)`` outline of the drawn head. ``pixel_size_mm``:
    mm per input pixel. HCs in mm: reference, marker-encoded, moved-marker, drawn head.
    """

    variant: tuple[str, ...]
    images: np.ndarray
    moved: np.ndarray
    removed: np.ndarray
    hidden: np.ndarray
    marker_mask: np.ndarray
    annotation: np.ndarray
    pixel_size_mm: np.ndarray
    hc_mm: np.ndarray
    marker_hc_mm: np.ndarray
    moved_marker_hc_mm: np.ndarray
    head_hc_mm: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    @property
    def marker_encoded_change_mm(self) -> np.ndarray:
        """The HC change the moved marker encodes, ``moved - own``, mm ``(N,)``."""
        return self.moved_marker_hc_mm - self.marker_hc_mm


def prepare_shortcut_inputs(phantoms: Sequence[ShortcutPhantom], image_size: int,
                            moved_hc_mm=None) -> ShortcutInputs:
    """Network inputs of ``phantoms`` and their interventions at ``image_size`` px.

    Every rendering goes through the library's own pre-processing: it is written as an
    HC18 training part to a temporary folder and read back with
    :func:`fetalhc.data.load_arrays` (annotation rasterised by the pipeline). The marker
    mask goes through the same resize and letterbox; an input pixel belongs to it when the
    resized mask exceeds its own mean (any overlap). ``moved_hc_mm``: the HC each moved
    marker encodes, ``(N,)`` or a scalar; default the mirror ``low + high - marker HC``.
    """
    from fetalhc.data import load_arrays, load_index

    phantoms = list(phantoms)
    if not phantoms:
        raise ValueError("no shortcut phantoms given")
    for i, phantom in enumerate(phantoms):
        if not isinstance(phantom, ShortcutPhantom):
            raise ValueError(f"item {i} is a {type(phantom).__name__}, not a ShortcutPhantom")
        if not np.any(phantom.marker_mask):
            raise ValueError(f"phantom {i} has no marker in its marker mask")
    if int(image_size) != image_size or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8; got {image_size}")
    image_size, n = int(image_size), len(phantoms)
    own = np.array([p.marker_hc_mm for p in phantoms])
    if moved_hc_mm is None:
        moved_to = np.array([sum(p.strip.hc_range_mm) - p.marker_hc_mm for p in phantoms])
    else:
        moved_to = np.asarray(moved_hc_mm, dtype=np.float64).reshape(-1)
        moved_to = np.full(n, moved_to[0]) if moved_to.size == 1 else moved_to
        if moved_to.shape != (n,):
            raise ValueError(f"moved_hc_mm needs one HC per phantom ({n}) or one for all; "
                             f"got {moved_to.size}")
    names, images, annotations, pixel_sizes, hcs = [], [], [], [], []
    for i, (phantom, target) in enumerate(zip(phantoms, moved_to, strict=True)):
        renderings = (phantom.image, moved_marker(phantom, float(target)),
                      marker_removed(phantom), head_hidden(phantom), phantom.marker_mask)
        for kind, rendering in zip(KINDS, renderings, strict=True):
            names.append(f"{i:06d}_{kind}.png")
            images.append(rendering)
            annotations.append(phantom.annotation)
            pixel_sizes.append(phantom.pixel_size_mm)
            hcs.append(phantom.hc_mm)
    with tempfile.TemporaryDirectory(prefix="fetalhc-shortcut-") as folder:
        write_training_part(folder, names, images, annotations, pixel_sizes, hcs)
        index = load_index(folder, "training", validate=False)
        arrays = load_arrays(index, image_size=image_size, with_annotation=True)
    shape = (n, len(KINDS), image_size, image_size)
    stacked = arrays["image"].reshape(*shape, 1)
    marker_mask = stacked[:, KINDS.index("mask"), ..., 0] > 0
    empty = np.flatnonzero(~marker_mask.any(axis=(1, 2)))
    if empty.size:
        raise ValueError(f"the marker of phantom {int(empty[0])} vanishes at {image_size} px; "
                         "use a larger image_size")
    return ShortcutInputs(
        variant=tuple(p.variant for p in phantoms),
        images=stacked[:, 0], moved=stacked[:, 1], removed=stacked[:, 2], hidden=stacked[:, 3],
        marker_mask=marker_mask,
        annotation=arrays["annotation"].reshape(*shape, 1)[:, 0, ..., 0],
        pixel_size_mm=arrays["pixel_size_mm"].reshape(n, len(KINDS))[:, 0].astype(np.float64),
        hc_mm=np.array([p.hc_mm for p in phantoms]), marker_hc_mm=own,
        moved_marker_hc_mm=moved_to, head_hc_mm=np.array([p.head_hc_mm for p in phantoms]))


def _declared_size(model: keras.Model) -> int:
    from fetalhc.explain import hc_output_model
    from fetalhc.explain.views import model_input_shape

    shape = model_input_shape(hc_output_model(model))
    if shape is None or shape[0] is None or shape[0] != shape[1]:
        raise ValueError(f"the model {model.name!r} has no fixed square input; prepare the "
                         "inputs with prepare_shortcut_inputs(phantoms, image_size)")
    return int(shape[0])


def _as_inputs(model: keras.Model, inputs) -> ShortcutInputs:
    """``inputs`` as prepared inputs that fit ``model``'s input (phantoms are prepared)."""
    size = _declared_size(model)
    if not isinstance(inputs, ShortcutInputs):
        return prepare_shortcut_inputs(inputs, size)
    if inputs.images.shape[1:3] != (size, size):
        raise ValueError(f"the inputs are {inputs.images.shape[1]}x{inputs.images.shape[2]} px "
                         f"but the model takes {size}x{size}; prepare them at {size} px")
    return inputs


@dataclass
class InterventionResult:
    """What the model uses, by intervention (see :func:`intervention_check`)."""

    per_image: pd.DataFrame
    slope: float
    slope_ci_low: float
    slope_ci_high: float
    median_abs_moved_change_mm: float
    median_abs_removed_change_mm: float
    median_abs_hidden_change_mm: float
    uses_marker: bool
    rule: str
    settings: dict = field(default_factory=dict)

    def summary(self) -> pd.DataFrame:
        """One row per quantity: ``quantity``, ``value`` (the unit in the quantity's name)."""
        values = {
            "slope of predicted on marker-encoded change (mm per mm)": self.slope,
            "slope CI low (mm per mm)": self.slope_ci_low,
            "slope CI high (mm per mm)": self.slope_ci_high,
            "median |marker moved change| (mm)": self.median_abs_moved_change_mm,
            "median |marker removed change| (mm)": self.median_abs_removed_change_mm,
            "median |head hidden change| (mm)": self.median_abs_hidden_change_mm,
            "uses marker (1 = yes)": float(self.uses_marker),
            "images": float(len(self.per_image)),
        }
        return pd.DataFrame({"quantity": list(values), "value": list(values.values())})


def intervention_check(model: keras.Model, inputs, *, min_slope: float = 0.5,
                       max_hidden_ratio: float = 0.5, confidence: float = 0.95,
                       n_boot: int = 2000, seed: int = 0,
                       batch_size: int = 64) -> InterventionResult:
    """Prediction changes (mm) under the three interventions, and the verdict.

    ``inputs``: :class:`ShortcutInputs` at the model's input size, or shortcut phantoms
    (prepared here). The slope through the origin of the predicted change on the
    marker-encoded change is ``b = mean(Δpred · Δenc) / mean(Δenc²)``; its CI is the
    bootstrap CI of the per-image influence terms ``b + (Δpred - b Δenc) Δenc / mean(Δenc²)``
    (whose mean is ``b``): a first-order bootstrap of the ratio. Verdict (:data:`VERDICT_RULE`): ``uses_marker`` is True when the slope's CI lower
    bound exceeds ``min_slope`` and the median |head hidden change| is below
    ``max_hidden_ratio`` times the median |marker moved change|.
    """
    inputs = _as_inputs(model, inputs)
    if not (np.isfinite(min_slope) and np.isfinite(max_hidden_ratio) and max_hidden_ratio > 0):
        raise ValueError("min_slope must be a finite number and max_hidden_ratio a positive "
                         f"one; got {min_slope} and {max_hidden_ratio}")
    encoded = inputs.marker_encoded_change_mm
    mean_square = float(np.mean(encoded ** 2))
    if not np.sqrt(mean_square) > 1e-3:  # below a micrometre: no change at all
        raise ValueError("the moved markers encode no HC change; choose moved_hc_mm that "
                         "differ from the markers' own")
    forward = BatchedForward(model, batch_size=batch_size)
    size = inputs.pixel_size_mm

    def predict(images):
        return forward.in_mm(forward.predict(images).astype(np.float64), size)

    prediction = predict(inputs.images)
    moved = predict(inputs.moved) - prediction
    removed = predict(inputs.removed) - prediction
    hidden = predict(inputs.hidden) - prediction
    slope = float(np.mean(moved * encoded) / mean_square)
    # per-image influence terms of the ratio: their mean is the slope, their bootstrap CI a
    # first-order (linearised) bootstrap CI of it
    terms = slope + (moved - slope * encoded) * encoded / mean_square
    _, low, high, _ = stats.bootstrap_ci(terms, confidence, n_boot, seed)
    median_moved = float(np.median(np.abs(moved)))
    median_hidden = float(np.median(np.abs(hidden)))
    uses = bool(low > min_slope and median_hidden < max_hidden_ratio * median_moved)
    per_image = pd.DataFrame({
        "image": np.arange(len(inputs)),
        "variant": list(inputs.variant),
        "reference HC (mm)": inputs.hc_mm,
        "marker HC (mm)": inputs.marker_hc_mm,
        "head HC (mm)": inputs.head_hc_mm,
        "prediction (mm)": prediction,
        "moved marker HC (mm)": inputs.moved_marker_hc_mm,
        "marker-encoded change (mm)": encoded,
        "marker moved change (mm)": moved,
        "marker removed change (mm)": removed,
        "head hidden change (mm)": hidden,
    })
    return InterventionResult(
        per_image=per_image, slope=slope, slope_ci_low=low, slope_ci_high=high,
        median_abs_moved_change_mm=median_moved,
        median_abs_removed_change_mm=float(np.median(np.abs(removed))),
        median_abs_hidden_change_mm=median_hidden, uses_marker=uses,
        rule=VERDICT_RULE.format(min_slope=min_slope, max_hidden_ratio=max_hidden_ratio),
        settings={"min_slope": min_slope, "max_hidden_ratio": max_hidden_ratio,
                  "confidence": confidence, "n_boot": n_boot, "seed": seed})


def _share(mass: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Per-image share of ``mass`` ``(N, H, W)`` inside ``region``; NaN without mass."""
    total = mass.sum(axis=(1, 2))
    inside = (mass * region).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)


def _cue_share(marker: np.ndarray, band: np.ndarray) -> np.ndarray:
    both = marker + band
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(both > 0, marker / np.where(both > 0, both, 1.0), np.nan)


@dataclass
class MarkerRelevance:
    """Per-method relevance on the marker and the contour (see :func:`marker_relevance`)."""

    per_image: pd.DataFrame
    settings: dict = field(default_factory=dict)

    def summary(self, confidence: float = 0.95, n_boot: int = 2000,
                seed: int = 0) -> pd.DataFrame:
        """Long table: method, metric, mean, bootstrap CI over images, n."""
        return stats.summarise(self.per_image, RELEVANCE_METRICS, by=("method",),
                               confidence=confidence, n_boot=n_boot, seed=seed)


def marker_relevance(model: keras.Model, inputs, methods: Sequence[str] | None = None,
                     options: Mapping[str, Mapping] | None = None, *, grid=8, steps: int = 3,
                     perturbation: str = "mean", aggregation: str = "abs",
                     band_mm: float = 3.0, seed: int = 0, batch_size: int | None = None,
                     progress=None) -> MarkerRelevance:
    """Where every saliency method puts its relevance on shortcut phantoms.

    ``methods``: registered method names (default: all); ``options``: name -> options.
    Per method and image: the share of positive and of absolute relevance mass on the marker
    mask and its area share (abs share / area share = enrichment); the rank of the marker's
    grid region (the region holding most of the mask; ``grid`` regions per side, scored by
    ``aggregation``: ``"abs"`` mean |relevance| by default, since a marker encoding a
    small HC may rightly get negative relevance; ``"mean"`` signed) among all regions,
    1 = most relevant; the same shares on the contour
    band (within ``band_mm`` of the outline, marker pixels left out) and the marker's share
    of the mass on the two cues; the mean |prediction change| (mm) over the first ``steps``
    MoRF region perturbations (``perturbation`` fill) in the method's order, and in the
    order that perturbs the marker's region first (the same for every method).
    ``progress``: called with each method's name before it runs.
    """
    from fetalhc.explain import available_methods, explain, get_method

    inputs = _as_inputs(model, inputs)
    methods = list(available_methods() if methods is None else methods)
    if not methods:
        raise ValueError("no methods given; choose from " + ", ".join(available_methods()))
    for name in methods:
        get_method(name)  # unknown names: one-line ValueError before any work
    options = dict(options or {})
    stray = sorted(set(options) - set(methods))
    if stray:
        raise ValueError(f"options given for {', '.join(stray)}, not among the methods")
    if not band_mm > 0:
        raise ValueError(f"band_mm must be positive; got {band_mm}")
    images, mask = inputs.images, inputs.marker_mask
    n, size = len(inputs), images.shape[1]
    region_grid = make_grid((size, size), grid=grid)
    forward = BatchedForward(model, batch_size=64)
    marker_region = np.argmax(region_scores(mask.astype(np.float32), region_grid), axis=1)
    band = (np.nan_to_num(contour_distance_mm(inputs.annotation, inputs.pixel_size_mm),
                          nan=np.inf) <= band_mm) & ~mask

    def first_steps_shift(maps):
        curves = region_perturbation(model, images, maps, inputs.pixel_size_mm, grid=grid,
                                     steps=steps, orders=("morf",), perturbation=perturbation,
                                     aggregation=aggregation, seed=seed, forward=forward)
        return curves.shift_mm[:, 0, 1:].mean(axis=1)

    oracle = first_steps_shift(mask.astype(np.float32))
    frames = []
    for name in methods:
        if progress is not None:
            progress(name)
        maps = explain(model, images, name, target="hc_mm", pixel_size=inputs.pixel_size_mm,
                       batch_size=batch_size, **dict(options.get(name, {})))
        positive, absolute = np.clip(maps, 0.0, None), np.abs(maps)
        scores = region_scores(maps, region_grid, aggregation)
        own = scores[np.arange(n), marker_region]
        marker_abs, band_abs = _share(absolute, mask), _share(absolute, band)
        marker_pos, band_pos = _share(positive, mask), _share(positive, band)
        area = mask.mean(axis=(1, 2))
        frames.append(pd.DataFrame({
            "method": name,
            "image": np.arange(n),
            "marker positive mass share": marker_pos,
            "marker abs mass share": marker_abs,
            "marker area share": area,
            "marker abs enrichment (x area share)": marker_abs / area,
            "marker region rank (1 = top)": 1 + (scores > own[:, None]).sum(axis=1),
            "contour band positive mass share": band_pos,
            "contour band abs mass share": band_abs,
            "contour band area share": band.mean(axis=(1, 2)),
            "marker positive cue share": _cue_share(marker_pos, band_pos),
            "marker abs cue share": _cue_share(marker_abs, band_abs),
            "MoRF first-k mean shift (mm)": first_steps_shift(maps),
            "marker-first mean shift (mm)": oracle,
        }))
    return MarkerRelevance(pd.concat(frames, ignore_index=True), settings={
        "grid": (region_grid.rows, region_grid.cols), "steps": steps,
        "perturbation": perturbation, "aggregation": aggregation, "band_mm": band_mm,
        "seed": seed, "options": {name: dict(value) for name, value in options.items()}})


@dataclass
class CueComparison:
    """Intervention effect of each cue against each method's relevance split."""

    per_image: pd.DataFrame

    def summary(self, confidence: float = 0.95, n_boot: int = 2000,
                seed: int = 0) -> pd.DataFrame:
        """Long table: method, metric, mean, bootstrap CI over images, n."""
        metrics = ["intervention marker share", "marker positive cue share",
                   "marker abs cue share", "abs share minus intervention share"]
        return stats.summarise(self.per_image, metrics, by=("method",),
                               confidence=confidence, n_boot=n_boot, seed=seed)


def cue_influence(intervention: InterventionResult, relevance: MarkerRelevance) -> CueComparison:
    """Each cue's measured influence set against each method's relevance split.

    Per image the marker's share of the intervention effect is
    ``|marker removed change| / (|marker removed change| + |head hidden change|)`` (both
    interventions take one cue away entirely; NaN when neither changes the prediction); each
    method's split is the marker's share of the relevance mass on marker and contour band.
    ``abs share minus intervention share`` > 0: the method over-credits the marker.
    """
    effect = intervention.per_image
    images = set(relevance.per_image["image"])
    if images != set(effect["image"]):
        raise ValueError(f"the intervention covers {len(effect)} images but the relevance "
                         f"{len(images)}; run both on the same inputs")
    removed = effect["marker removed change (mm)"].abs().to_numpy()
    hidden = effect["head hidden change (mm)"].abs().to_numpy()
    table = pd.DataFrame({
        "image": effect["image"],
        "marker removed change (mm)": effect["marker removed change (mm)"],
        "head hidden change (mm)": effect["head hidden change (mm)"],
        "intervention marker share": _cue_share(removed, hidden),
    })
    merged = relevance.per_image[["method", "image", "marker positive cue share",
                                  "marker abs cue share"]].merge(table, on="image")
    merged["abs share minus intervention share"] = (merged["marker abs cue share"]
                                                    - merged["intervention marker share"])
    return CueComparison(merged)

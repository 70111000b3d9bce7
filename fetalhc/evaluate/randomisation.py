"""Model-randomisation sanity check (Adebayo et al. 2018), cascading from the top.

The layers with weights are re-initialised one after the other from the output towards the
input, on a clone (the caller's model is never touched). After each step the maps are
recomputed and compared with the maps of the trained model by Spearman rank correlation
and SSIM, per image. A method whose maps stay similar once the whole model is random
(mean similarity above ``threshold`` at the last stage) is flagged: its maps do not depend
on what the model learned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd
from scipy import ndimage, stats

from fetalhc.evaluate.inputs import as_images, as_maps, as_vector
from fetalhc.evaluate.settings import SIMILARITIES, require_choice

ModelExplainer = Callable[[keras.Model, np.ndarray], np.ndarray]


def spearman_per_image(a, b) -> np.ndarray:
    """Spearman rank correlation per image of two map stacks ``(N, H, W)``.

    A constant map has no ranking: its correlation is NaN.
    """
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    ra = stats.rankdata(a, axis=1)
    rb = stats.rankdata(b, axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    denominator = np.sqrt((ra ** 2).sum(axis=1) * (rb ** 2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (ra * rb).sum(axis=1) / denominator, np.nan)


def ssim_per_image(a, b, sigma: float = 1.5) -> np.ndarray:
    """Structural similarity per image of two map stacks ``(N, H, W)``.

    Each map is first divided by its own maximum absolute value (maps have arbitrary scale),
    so the data range is 2; Gaussian window of ``sigma`` pixels (Wang et al. 2004 constants).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)

    def normalise(x):
        scale = np.abs(x).max(axis=(1, 2), keepdims=True)
        return np.divide(x, scale, out=np.zeros_like(x), where=scale > 0)

    a, b = normalise(a), normalise(b)
    c1, c2 = (0.01 * 2.0) ** 2, (0.03 * 2.0) ** 2
    window = (0, sigma, sigma)
    mu_a = ndimage.gaussian_filter(a, window)
    mu_b = ndimage.gaussian_filter(b, window)
    var_a = ndimage.gaussian_filter(a * a, window) - mu_a ** 2
    var_b = ndimage.gaussian_filter(b * b, window) - mu_b ** 2
    cov = ndimage.gaussian_filter(a * b, window) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return ssim_map.mean(axis=(1, 2))


def layers_top_down(model: keras.Model) -> list[str]:
    """Names of the layers holding weights, from the output towards the input."""
    return [layer.name for layer in reversed(model.layers) if layer.weights]


def _reinitialise(layer, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for index, variable in enumerate(layer.weights):
        name = variable.name.split("/")[-1].split(":")[0]
        initializer = getattr(layer, f"{name}_initializer", None)
        shape = tuple(variable.shape)
        if initializer is not None:
            config = keras.initializers.serialize(keras.initializers.get(initializer))
            inner = config.get("config", {})
            if "seed" in inner:
                inner["seed"] = int(seed) + index
            value = keras.ops.convert_to_numpy(keras.initializers.get(config)(shape,
                                                                               variable.dtype))
        else:  # no initializer known: a normal draw with the weights' own spread
            spread = float(np.std(keras.ops.convert_to_numpy(variable))) or 0.05
            value = rng.normal(0.0, spread, size=shape)
        variable.assign(np.asarray(value, dtype=variable.dtype))


def checkpoints(n_layers: int, stages: int = 0) -> list[int]:
    """The cascade stages (1 = the top layer randomised, ``n_layers`` = all) at which the
    maps are recomputed: every stage when ``stages`` is 0 or at least ``n_layers``, else
    ``stages`` stages evenly spaced from the first to the last (always included)."""
    if stages < 0:
        raise ValueError(f"randomisation stages must be 0 (every layer) or more; got {stages}")
    if stages == 0 or stages >= n_layers:
        return list(range(1, n_layers + 1))
    if stages == 1:
        return [n_layers]
    return sorted({int(round(v)) for v in np.linspace(1, n_layers, int(stages))})


def randomised_models(model: keras.Model, seed: int = 0, max_layers: int | None = None,
                      stages: int = 0):
    """Yield ``(stage, layer_name, clone)`` with the top 1, 2, ... weighted layers
    re-initialised, at the :func:`checkpoints` of ``stages`` (0: after every layer).

    One clone is made and randomised cumulatively (each layer with the seed of its own
    stage, so a checkpoint's model is the same whatever the checkpoints); do not keep the
    yielded model past the next step. The input model is left unchanged.
    """
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    names = layers_top_down(clone)
    if max_layers is not None:
        names = names[: int(max_layers)]
    wanted = set(checkpoints(len(names), stages)) if names else set()
    for step, name in enumerate(names):
        _reinitialise(clone.get_layer(name), seed + 1000 * step)
        if step + 1 in wanted:
            yield step + 1, name, clone


@dataclass
class RandomisationResult:
    """Per image and cascade stage similarities to the maps of the trained model."""

    frame: pd.DataFrame  # stage, layer, image, spearman, spearman_abs, ssim
    similarity: str
    threshold: float

    def stage_means(self) -> pd.DataFrame:
        return (self.frame.groupby(["stage", "layer"], sort=True)[list(SIMILARITIES)]
                .mean().reset_index())

    @property
    def final_similarity(self) -> float:
        last = self.frame[self.frame["stage"] == self.frame["stage"].max()]
        return float(np.nanmean(last[self.similarity]))

    @property
    def flagged(self) -> bool:
        """True when the maps of the fully randomised model still look like the originals."""
        return bool(self.final_similarity > self.threshold)


def cascading_randomisation(
    model: keras.Model,
    images,
    explainer: str | ModelExplainer,
    pixel_size_mm=None,
    reference_mm=None,
    *,
    maps=None,
    target: str = "hc_mm",
    explain_options: dict | None = None,
    similarity: str = "spearman_abs",
    threshold: float = 0.5,
    max_layers: int | None = None,
    seed: int = 0,
    stages: int = 0,
    fixed_cost: bool = False,
    output_units: str | None = None,
) -> RandomisationResult:
    """Cascading model randomisation of one explanation method.

    ``explainer`` is an explain method name (through the fetalhc.explain registry, with
    ``target``, ``pixel_size_mm``, ``reference_mm`` and ``explain_options``) or a callable
    ``(model, images) -> maps``. ``maps`` are the trained model's maps (computed if None).
    ``similarity`` (``spearman``, ``spearman_abs`` or ``ssim``) and ``threshold`` decide
    the flag. ``stages``: the maps are recomputed at that many cascade checkpoints
    (:func:`checkpoints`; 0: after every layer). ``fixed_cost`` (a method name only): the
    trained and the randomised models are explained alike at the method's fixed-cost
    options (``Method.fixed_cost``), ``maps`` are then recomputed when those options
    change anything. ``output_units``: of a model that is not fetalhc's (``"mm"`` or
    ``"px"``), for a method name.
    """
    from fetalhc.explain import hc_output_model, resolve_output_units

    require_choice(similarity, SIMILARITIES, "similarity")
    images = as_images(images)
    n = images.shape[0]
    view = hc_output_model(model)
    if isinstance(explainer, str):
        units = resolve_output_units(model, target, None, output_units)
        from fetalhc.explain import explain

        method = explainer
        pixel_size = as_vector(pixel_size_mm, n, "pixel_size_mm") if pixel_size_mm is not None \
            else None
        options = dict(explain_options or {})
        if fixed_cost:
            from fetalhc.explain import get_method

            cheaper = {**options, **get_method(method).fixed_cost}
            if cheaper != options:
                options, maps = cheaper, None  # the trained model's maps at the same rule

        def explainer(m, x):
            return explain(m, x, method, target=target, pixel_size=pixel_size,
                           reference=reference_mm, output_units=units, **options)

    original = as_maps(explainer(view, images) if maps is None else maps, images)
    rows = []
    for stage, layer, randomised in randomised_models(view, seed, max_layers, stages):
        new = as_maps(explainer(randomised, images), images, name="randomised maps")
        rho = spearman_per_image(original, new)
        rho_abs = spearman_per_image(np.abs(original), np.abs(new))
        ssim = ssim_per_image(original, new)
        for i in range(n):
            rows.append({"stage": stage, "layer": layer, "image": i, "spearman": rho[i],
                         "spearman_abs": rho_abs[i], "ssim": ssim[i]})
    if not rows:
        raise ValueError("the model has no layer with weights to randomise")
    return RandomisationResult(pd.DataFrame(rows), similarity, float(threshold))

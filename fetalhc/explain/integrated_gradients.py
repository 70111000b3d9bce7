"""Integrated Gradients (Sundararajan et al. 2017) with a chosen quadrature.

``map = (x - b) * sum_k w_k grad f(b + a_k (x - b))`` for quadrature nodes ``a_k`` and
weights ``w_k`` on [0, 1]. Completeness says ``sum(map) = f(x) - f(b)``; each image's
``completeness_gap = |sum(map) - (f(x) - f(b))|`` (target units, mm for ``hc_mm``) and
``completeness_gap_relative`` (divided by ``|f(x) - f(b)|``) are reported in the metadata.

Baselines: ``"zeros"`` (0 = the image mean after z-scoring: average brightness, no
structure), ``"blur"`` (Gaussian blur of the image, SD ``blur_sigma`` px), ``"noise"``
(N(0, ``noise_sd``), seeded), a number, or an array ``(H, W, C)`` / ``(N, H, W, C)``.

The default rule (``DEFAULT_RULE``, ``DEFAULT_STEPS``) was chosen with
``benchmarks/calibrate_ig.py`` (see docs/explain.md). On ReLU networks the integrand is
piecewise constant along the path, so every rule converges only like 1/steps and a fixed
number of points cannot bound the gap of every image. Hence images whose relative gap
exceeds ``tolerance`` (default 1 %) are recomputed with twice the points, up to
``max_steps``; the points finally used are reported per image as ``steps``
(``tolerance=None`` turns this off).
"""

from __future__ import annotations

import numbers

import numpy as np
import tensorflow as tf

from fetalhc.explain.base import Method, check_choice, check_positive_int
from fetalhc.explain.registry import register

RULES = ("riemann_left", "riemann_right", "riemann_middle", "trapezoid", "gauss_legendre")
BASELINES = ("zeros", "blur", "noise")
DEFAULT_RULE = "riemann_middle"
DEFAULT_STEPS = 64
DEFAULT_TOLERANCE = 0.01
DEFAULT_MAX_STEPS = 512


def quadrature(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights on [0, 1] (float32) of ``rule`` with ``steps`` points."""
    if rule not in RULES:
        raise ValueError(f"unknown quadrature rule {rule!r}; choose one of: {', '.join(RULES)}")
    if steps < 1 or (rule == "trapezoid" and steps < 2):
        raise ValueError(f"quadrature {rule!r} needs steps >= {2 if rule == 'trapezoid' else 1}")
    k = np.arange(steps, dtype=np.float64)
    if rule == "riemann_left":
        nodes, weights = k / steps, np.full(steps, 1.0 / steps)
    elif rule == "riemann_right":
        nodes, weights = (k + 1) / steps, np.full(steps, 1.0 / steps)
    elif rule == "riemann_middle":
        nodes, weights = (k + 0.5) / steps, np.full(steps, 1.0 / steps)
    elif rule == "trapezoid":
        nodes = k / (steps - 1)
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[[0, -1]] *= 0.5
    else:
        points, gauss_weights = np.polynomial.legendre.leggauss(steps)
        nodes, weights = (points + 1.0) / 2.0, gauss_weights / 2.0
    return nodes.astype(np.float32), weights.astype(np.float32)


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of ``(N, H, W, C)`` images, edges reflected."""
    if sigma <= 0:
        return images.copy()
    radius = max(1, int(round(3 * sigma)))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    blurred = images.astype(np.float64)
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (radius, radius)
        padded = np.pad(blurred, pad, mode="reflect" if images.shape[axis] > radius else "edge")
        blurred = sum(
            weight * np.take(padded, np.arange(i, i + images.shape[axis]), axis=axis)
            for i, weight in enumerate(kernel)
        )
    return blurred.astype(np.float32)


def make_baseline(images: np.ndarray, baseline, blur_sigma: float, noise_sd: float, seed: int) -> np.ndarray:
    """Baselines ``(N, H, W, C)`` float32 for ``images`` (see the module docstring)."""
    if isinstance(baseline, str):
        if baseline == "zeros":
            return np.zeros_like(images)
        if baseline == "blur":
            return gaussian_blur(images, blur_sigma)
        if baseline == "noise":
            generator = np.random.default_rng(seed)
            return (generator.standard_normal(images.shape) * noise_sd).astype(np.float32)
        raise ValueError(f"unknown baseline {baseline!r}; choose one of: {', '.join(BASELINES)}, a number or an array")
    if isinstance(baseline, numbers.Real):
        return np.full_like(images, float(baseline))
    array = np.asarray(baseline.numpy() if isinstance(baseline, tf.Tensor) else baseline, np.float32)
    if array.shape == images.shape[1:]:
        array = np.broadcast_to(array, images.shape)
    if array.shape != images.shape:
        raise ValueError(f"baseline of shape {array.shape} does not fit images {images.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("baseline contains NaN or infinite values")
    return np.ascontiguousarray(array)


@register()
class IntegratedGradients(Method):
    name = "integrated_gradients"
    description = "path integral of gradients from a baseline to the input, times (x - baseline)"
    defaults = {
        "steps": DEFAULT_STEPS,
        "rule": DEFAULT_RULE,
        "baseline": "zeros",
        "blur_sigma": 5.0,
        "noise_sd": 0.3,
        "seed": 0,
        "tolerance": DEFAULT_TOLERANCE,
        "max_steps": DEFAULT_MAX_STEPS,
    }

    def validate(self):
        check_positive_int(self.options, "steps", self.name, 2 if self.options["rule"] == "trapezoid" else 1)
        check_choice(self.options, "rule", self.name, RULES)
        baseline = self.options["baseline"]
        if isinstance(baseline, str):
            check_choice(self.options, "baseline", self.name, BASELINES)
        tolerance = self.options["tolerance"]
        if tolerance is not None and (not isinstance(tolerance, numbers.Real) or not tolerance > 0):
            raise ValueError(f"integrated_gradients: tolerance must be None or a number > 0; got {tolerance!r}")
        check_positive_int(self.options, "max_steps", self.name)
        for name in ("blur_sigma", "noise_sd"):
            value = self.options[name]
            if not isinstance(value, numbers.Real) or not value >= 0:
                raise ValueError(f"integrated_gradients: {name} must be a number >= 0; got {value!r}")

    def cache_key(self):
        # the baseline is a traced input, so its kind does not change the graph
        return tuple((key, self.options[key]) for key in ("steps", "rule"))

    def refine_indices(self, reports):
        """Images whose relative completeness gap exceeds ``tolerance``."""
        tolerance = self.options["tolerance"]
        if tolerance is None or int(self.options["steps"]) >= int(self.options["max_steps"]):
            return None
        return np.flatnonzero(reports["completeness_gap_relative"] > tolerance)

    def refined(self):
        """The same IG with twice the points (at most ``max_steps``)."""
        steps, limit = int(self.options["steps"]), int(self.options["max_steps"])
        if steps >= limit:
            return None
        return type(self)(**{**self.options, "steps": min(2 * steps, limit)})

    def prepare(self, context, images):
        options = self.options
        baseline = make_baseline(images, options["baseline"], float(options["blur_sigma"]),
                                 float(options["noise_sd"]), int(options["seed"]))
        return {"baseline": baseline}

    def metadata(self, context):
        info = super().metadata(context)
        info["baseline"] = info["baseline"] if isinstance(self.options["baseline"], str | numbers.Real) else "array"
        return info

    def attribute(self, context, images, pixel_size, reference, baseline):
        nodes, weights = quadrature(self.options["rule"], int(self.options["steps"]))
        nodes, weights = tf.constant(nodes), tf.constant(weights)
        delta = images - baseline

        def step(start, stop):
            alphas = nodes[start:stop]
            points = baseline[None] + alphas[:, None, None, None, None] * delta[None]
            _, gradient = context.points_value_and_gradient(points, pixel_size, reference)
            return tf.tensordot(weights[start:stop], gradient, axes=1)

        average_gradient = context.accumulate(int(nodes.shape[0]), step, tf.zeros_like(images))
        attribution = delta * average_gradient
        both = context.points_value(tf.stack([images, baseline]), pixel_size, reference)
        difference = both[0] - both[1]
        gap = tf.abs(tf.reduce_sum(attribution, axis=[1, 2, 3]) - difference)
        return {
            "map": attribution,
            "completeness_gap": gap,
            "completeness_gap_relative": gap / tf.maximum(tf.abs(difference), 1e-12),
            "baseline_target": both[1],
            "steps": tf.fill(tf.shape(gap), float(nodes.shape[0])),
        }

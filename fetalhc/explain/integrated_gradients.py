"""Integrated Gradients (Sundararajan et al. 2017) with a chosen quadrature and per-image
refinement to a completeness tolerance.

``map = (x - b) * sum_k w_k grad f(b + a_k (x - b))`` for quadrature nodes ``a_k`` and
weights ``w_k`` on [0, 1]. Completeness says ``sum(map) = f(x) - f(b)``; each image's
``completeness_gap = |sum(map) - (f(x) - f(b))|`` (target units, mm for ``hc_mm``) and
``completeness_gap_relative`` (divided by ``|f(x) - f(b)|``) are reported in the metadata.

Baselines: ``"zeros"`` (0 = the image mean after z-scoring: average brightness, no
structure), ``"blur"`` (Gaussian blur of the image, SD ``blur_sigma`` px), ``"noise"``
(N(0, ``noise_sd``), seeded), a number, or an array ``(H, W, C)`` / ``(N, H, W, C)``.

Refinement: every image starts with ``steps`` points of ``rule``; an image whose relative
gap exceeds ``tolerance`` gets ``refinement_factor(rule)`` times the points (midpoint: 3,
others: 2), up to ``max_steps``. Midpoint (tripled), trapezoid and left / right Riemann
(doubled) are nested: the refined rule contains the old nodes, so only the new nodes are
evaluated and the earlier gradients are kept (Gauss-Legendre is recomputed). Refinement
runs inside the traced function on a flat list of (image, node) pairs in passes of
``chunk_size`` model inputs, so only the images still over the tolerance cost anything and
every pass is full. The points finally used are reported per image as ``steps``
(``tolerance=None``: a plain fixed rule). An image whose ``f(x)`` equals ``f(b)`` to float32
round-off (gap below ``ROUNDOFF`` x (|f(x)| + |f(b)|)) also counts as converged.

The default (``DEFAULT_RULE``, ``DEFAULT_STEPS`` + ``DEFAULT_TOLERANCE``) was chosen with
``benchmarks/calibrate_ig.py`` on calibration images before any timing (docs/explain.md).
"""

from __future__ import annotations

import numbers

import numpy as np
import tensorflow as tf
from scipy import ndimage

from fetalhc.explain.method import Method, check_option_choice, check_option_positive_int
from fetalhc.explain.registry import register

RULES = ("riemann_left", "riemann_right", "riemann_middle", "trapezoid", "gauss_legendre")
BASELINES = ("zeros", "blur", "noise")
DEFAULT_RULE = "riemann_middle"
DEFAULT_STEPS = 8
DEFAULT_TOLERANCE = 0.01
DEFAULT_MAX_STEPS = 512
ROUNDOFF = 1e-6


def quadrature(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights on [0, 1] (float32) of ``rule`` with ``steps`` points."""
    nodes, weights = _quadrature64(rule, steps)
    return nodes.astype(np.float32), weights.astype(np.float32)


def _quadrature64(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    if rule not in RULES:
        raise ValueError(f"unknown quadrature rule {rule!r}; choose one of: {', '.join(RULES)}")
    if steps < 1 or (rule == "trapezoid" and steps < 2):
        raise ValueError(f"quadrature {rule!r} needs steps >= {2 if rule == 'trapezoid' else 1}")
    k = np.arange(steps, dtype=np.float64)
    if rule == "riemann_left":
        return k / steps, np.full(steps, 1.0 / steps)
    if rule == "riemann_right":
        return (k + 1) / steps, np.full(steps, 1.0 / steps)
    if rule == "riemann_middle":
        return (k + 0.5) / steps, np.full(steps, 1.0 / steps)
    if rule == "trapezoid":
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[[0, -1]] *= 0.5
        return k / (steps - 1), weights
    points, gauss_weights = np.polynomial.legendre.leggauss(steps)
    return (points + 1.0) / 2.0, gauss_weights / 2.0


def refinement_factor(rule: str) -> int:
    """How many times the points a refinement uses: 3 for the midpoint rule (3n midpoints
    contain the n old ones), 2 otherwise (n + 1 -> 2n + 1 trapezoid points are nested)."""
    return 3 if rule == "riemann_middle" else 2


def refinement_levels(rule: str, steps: int, max_steps: int, tolerance) -> list[dict]:
    """The rules an image may go through: ``steps``, then ``factor`` times more while at
    most ``max_steps`` (only ``steps`` when ``tolerance`` is None).

    Each level: ``points`` (the rule's number of points), ``nodes`` / ``weights`` (float64,
    only the nodes not evaluated before) and ``keep`` (what the earlier weighted sum is
    multiplied by: the ratio of new to old weights on a nested rule, 0 when not nested).
    """
    counts = [steps]
    if tolerance is not None:
        factor = refinement_factor(rule)
        if rule == "trapezoid":  # n + 1 points -> 2n + 1 points
            while 2 * counts[-1] - 1 <= max_steps:
                counts.append(2 * counts[-1] - 1)
        else:
            while counts[-1] * factor <= max_steps:
                counts.append(counts[-1] * factor)
    levels, previous = [], None
    for points in counts:
        nodes, weights = _quadrature64(rule, points)
        keep, new = 0.0, np.ones(points, bool)
        if previous is not None:
            old_nodes, old_weights = previous
            match = np.abs(nodes[:, None] - old_nodes[None, :]) < 1e-9
            ratios = [weights[i] / old_weights[j] for i, j in zip(*np.nonzero(match), strict=True)]
            if match.any(axis=0).all() and np.ptp(ratios) < 1e-9:  # nested with one ratio
                keep, new = float(ratios[0]), ~match.any(axis=1)
        levels.append({"points": points, "nodes": nodes[new], "weights": weights[new], "keep": keep})
        previous = (nodes, weights)
    return levels


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of ``(N, H, W, C)`` images over H and W (SD ``sigma`` px), edges mirrored.

    The kernel is cut at ``round(3 sigma)`` px (at least 1) and edges are mirrored without
    repeating the edge pixel (scipy's ``"mirror"``; ``"nearest"`` on an axis not longer than
    the radius): the blur of the previous hand-written filter, to float round-off.
    """
    if sigma <= 0:
        return images.copy()
    radius = max(1, int(round(3 * sigma)))
    modes = ["nearest"] + [
        "mirror" if images.shape[axis] > radius else "nearest" for axis in (1, 2)
    ] + ["nearest"]
    blurred = ndimage.gaussian_filter(images.astype(np.float64), sigma=(0, sigma, sigma, 0),
                                      mode=modes, radius=radius)
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
    fixed_cost = {"tolerance": None}  # the plain rule of ``steps`` points, no refinement

    def validate(self):
        check_option_positive_int(self.options, "steps", self.name, 2 if self.options["rule"] == "trapezoid" else 1)
        check_option_choice(self.options, "rule", self.name, RULES)
        baseline = self.options["baseline"]
        if isinstance(baseline, str):
            check_option_choice(self.options, "baseline", self.name, BASELINES)
        tolerance = self.options["tolerance"]
        if tolerance is not None and (
            isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or not tolerance > 0
        ):
            raise ValueError(f"integrated_gradients: tolerance must be None or a number > 0; got {tolerance!r}")
        check_option_positive_int(self.options, "max_steps", self.name)
        for name in ("blur_sigma", "noise_sd"):
            value = self.options[name]
            if not isinstance(value, numbers.Real) or not value >= 0:
                raise ValueError(f"integrated_gradients: {name} must be a number >= 0; got {value!r}")

    def cache_key(self):
        # the baseline is a traced input, so its kind does not change the graph
        return tuple((key, self.options[key]) for key in ("steps", "rule", "tolerance", "max_steps"))

    def levels(self) -> list[dict]:
        options = self.options
        return refinement_levels(options["rule"], int(options["steps"]), int(options["max_steps"]),
                                 options["tolerance"])

    def prepare(self, context, images):
        options = self.options
        baseline = make_baseline(images, options["baseline"], float(options["blur_sigma"]),
                                 float(options["noise_sd"]), int(options["seed"]))
        return {"baseline": baseline}

    def metadata(self, context):
        info = super().metadata(context)
        info["baseline"] = info["baseline"] if isinstance(self.options["baseline"], str | numbers.Real) else "array"
        info["refinement_points"] = [level["points"] for level in self.levels()]
        return info

    def attribute(self, context, images, pixel_size, reference, baseline):
        levels = self.levels()
        tolerance = self.options["tolerance"]
        tolerance = float("inf") if tolerance is None else float(tolerance)
        # the new nodes of every level in one table; level l is rows offsets[l]:offsets[l + 1]
        all_nodes = tf.constant(np.concatenate([level["nodes"] for level in levels]), tf.float32)
        all_weights = tf.constant(np.concatenate([level["weights"] for level in levels]), tf.float32)
        counts = tf.constant([len(level["nodes"]) for level in levels], tf.int32)
        offsets = tf.constant(np.cumsum([0] + [len(level["nodes"]) for level in levels])[:-1], tf.int32)
        keeps = tf.constant([level["keep"] for level in levels], tf.float32)
        points = tf.constant([level["points"] for level in levels], tf.float32)
        chunk = context.chunk_size

        delta = images - baseline
        both = context.points_value(tf.stack([images, baseline]), pixel_size, reference)
        difference = both[0] - both[1]
        floor = tf.maximum(tolerance * tf.abs(difference),
                           ROUNDOFF * (tf.abs(both[0]) + tf.abs(both[1])))
        n_images = tf.shape(images)[0]

        def level_sum(pending, level):
            """sum_k w_k grad f(b + a_k (x - b)) over the level's new nodes, pending images."""
            n_nodes, start = counts[level], offsets[level]
            nodes = all_nodes[start:start + n_nodes]
            weights = all_weights[start:start + n_nodes]
            n_pending = tf.shape(pending)[0]
            n_pairs = n_pending * n_nodes

            def body(first, total):
                pair = tf.range(first, tf.minimum(first + chunk, n_pairs))
                position, node = pair // n_nodes, pair % n_nodes
                image = tf.gather(pending, position)
                alpha = tf.gather(nodes, node)[:, None, None, None]
                path = tf.gather(baseline, image) + alpha * tf.gather(delta, image)
                _, gradient = context.points_value_and_gradient(
                    path[None], tf.gather(pixel_size, image), tf.gather(reference, image))
                weighted = tf.gather(weights, node)[:, None, None, None] * gradient[0]
                return first + chunk, total + tf.math.unsorted_segment_sum(weighted, position, n_pending)

            initial = tf.zeros(tf.concat([[n_pending], tf.shape(images)[1:]], 0), images.dtype)
            _, total = tf.while_loop(lambda first, total: first < n_pairs, body,
                                     (tf.constant(0), initial))
            return total

        def body(level, average, used, gap, active):
            pending = tf.cast(tf.where(active)[:, 0], tf.int32)
            index = pending[:, None]
            new = keeps[level] * tf.gather(average, pending) + level_sum(pending, level)
            average = tf.tensor_scatter_nd_update(average, index, new)
            used = tf.tensor_scatter_nd_update(used, index, tf.fill(tf.shape(pending), points[level]))
            total = tf.reduce_sum(tf.gather(delta, pending) * new, axis=[1, 2, 3])
            new_gap = tf.abs(total - tf.gather(difference, pending))
            gap = tf.tensor_scatter_nd_update(gap, index, new_gap)
            active = tf.tensor_scatter_nd_update(active, index, new_gap > tf.gather(floor, pending))
            return level + 1, average, used, gap, active

        def more(level, average, used, gap, active):
            return (level < len(levels)) & tf.reduce_any(active)

        _, average, used, gap, _ = tf.while_loop(
            more, body,
            (tf.constant(0), tf.zeros_like(images), tf.zeros([n_images]), tf.zeros([n_images]),
             tf.ones([n_images], tf.bool)),
        )
        return {
            "map": delta * average,
            "completeness_gap": gap,
            "completeness_gap_relative": gap / tf.maximum(tf.abs(difference), 1e-12),
            "baseline_target": both[1],
            "steps": used,
        }

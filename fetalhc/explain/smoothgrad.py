"""SmoothGrad (Smilkov et al. 2017): the gradient averaged over noisy copies of the input.

Noise is Gaussian with SD ``noise_level * (max(x) - min(x))`` per image (relative to the
input's range); ``n`` samples, evaluated ``points_per_pass`` at a time. Noise comes from a
stateless generator seeded by ``seed``, so the same call gives the same map. Signed map
(``squared=True`` averages squared gradients instead, unsigned).
"""

from __future__ import annotations

import numbers

import tensorflow as tf

from fetalhc.explain.method import Method, check_option_positive_int
from fetalhc.explain.registry import register


@register()
class SmoothGrad(Method):
    name = "smoothgrad"
    description = "gradient averaged over Gaussian-noised copies of the input"
    defaults = {"n": 25, "noise_level": 0.15, "seed": 0, "squared": False}
    map_units = "{target} per input unit"

    def validate(self):
        check_option_positive_int(self.options, "n", self.name)
        level = self.options["noise_level"]
        if not isinstance(level, numbers.Real) or not level >= 0:
            raise ValueError(f"smoothgrad: noise_level must be a number >= 0; got {level!r}")
        if not isinstance(self.options["seed"], int):
            raise ValueError(f"smoothgrad: seed must be an integer; got {self.options['seed']!r}")

    def attribute(self, context, images, pixel_size, reference):
        n = int(self.options["n"])
        seed = int(self.options["seed"])
        squared = bool(self.options["squared"])
        value_range = tf.reduce_max(images, axis=[1, 2, 3]) - tf.reduce_min(images, axis=[1, 2, 3])
        sigma = float(self.options["noise_level"]) * value_range  # (B,)

        def step(start, stop):
            shape = tf.concat([[stop - start], tf.shape(images)], axis=0)
            noise = tf.random.stateless_normal(shape, seed=tf.stack([seed, start]))
            points = images[None] + noise * sigma[None, :, None, None, None]
            _, gradient = context.points_value_and_gradient(points, pixel_size, reference)
            if squared:
                gradient = tf.square(gradient)
            return tf.reduce_sum(gradient, axis=0)

        total = context.accumulate(n, step, tf.zeros_like(images))
        return {"map": total / n}

"""Occlusion (Zeiler & Fergus 2014) in target units.

A square patch (``patch`` px) slides with ``stride`` px (the last row / column of patches
is aligned to the border so every pixel is covered); each patch is replaced by ``fill``
(0 = the image mean after z-scoring). For every patch position
``delta = f(x) - f(x with the patch occluded)``; a pixel's map value is the mean ``delta``
of the patches covering it. Sign convention: positive where the region raises the target
(occluding it lowers HC). For a linear model with stride = patch the map of a pixel is
``sum over its patch of w * x`` (times mm per px for ``hc_mm``), i.e. minus the change.
"""

from __future__ import annotations

import numbers

import numpy as np
import tensorflow as tf

from fetalhc.explain.method import Method, check_option_positive_int
from fetalhc.explain.registry import register


def patch_starts(size: int, patch: int, stride: int) -> list[int]:
    """Top-left offsets along one axis; the last patch ends on the border."""
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


@register()
class Occlusion(Method):
    name = "occlusion"
    description = "change of the target when a sliding patch is replaced by a fill value"
    defaults = {"patch": 16, "stride": 8, "fill": 0.0}

    def validate(self):
        check_option_positive_int(self.options, "patch", self.name)
        check_option_positive_int(self.options, "stride", self.name)
        if not isinstance(self.options["fill"], numbers.Real):
            raise ValueError(f"occlusion: fill must be a number; got {self.options['fill']!r}")

    def setup(self, context):
        height, width = context.input_shape[:2]
        patch = int(self.options["patch"])
        if patch > min(height, width):
            raise ValueError(f"occlusion: patch {patch} px is larger than the input {height}x{width}")

    def attribute(self, context, images, pixel_size, reference):
        height, width = context.input_shape[:2]
        patch, stride = int(self.options["patch"]), int(self.options["stride"])
        fill = float(self.options["fill"])
        rows, cols = patch_starts(height, patch, stride), patch_starts(width, patch, stride)
        positions = np.array([(r, c) for r in rows for c in cols], np.int32)
        coverage = np.zeros((height, width), np.float32)
        for r, c in positions:
            coverage[r:r + patch, c:c + patch] += 1
        positions_tensor = tf.constant(positions)
        row_index, col_index = tf.range(height), tf.range(width)
        value = context.target_value(images, pixel_size, reference)

        def step(start, stop):
            offsets = positions_tensor[start:stop]
            in_rows = (row_index[None] >= offsets[:, :1]) & (row_index[None] < offsets[:, :1] + patch)
            in_cols = (col_index[None] >= offsets[:, 1:]) & (col_index[None] < offsets[:, 1:] + patch)
            mask = tf.cast(in_rows[:, :, None] & in_cols[:, None, :], tf.float32)  # (K, H, W)
            mask5 = mask[:, None, :, :, None]
            points = images[None] * (1.0 - mask5) + fill * mask5
            occluded = context.points_value(points, pixel_size, reference)  # (K, B)
            return tf.einsum("kb,khw->bhw", value[None] - occluded, mask)

        initial = tf.zeros(tf.shape(images)[:3], tf.float32)
        total = context.accumulate(len(positions), step, initial)
        return {"map": total / tf.constant(coverage)[None]}

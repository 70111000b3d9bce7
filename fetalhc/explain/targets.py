"""The scalar per image an explanation differentiates: :class:`Target` and the named targets.

A target is a function of the model's HC output (``prediction_px``, in input pixels):
``hc_mm`` (the predicted HC in mm), ``hc_px_input`` (the raw HC output) and
``abs_error_mm`` (the absolute error in mm against a reference HC).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import tensorflow as tf


@dataclass(frozen=True)
class Target:
    """A scalar per image computed from the HC output (``prediction_px``, input pixels).

    ``function(prediction_px, pixel_size_mm, reference_mm)`` works element-wise with
    broadcasting, so it serves a batch ``(B,)`` and a batch of points ``(K, B)`` alike.
    """

    name: str
    units: str
    needs_pixel_size: bool
    needs_reference: bool
    function: Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]
    description: str = ""

    def __call__(self, prediction_px, pixel_size_mm, reference_mm):
        return self.function(prediction_px, pixel_size_mm, reference_mm)


TARGETS: dict[str, Target] = {
    "hc_mm": Target(
        "hc_mm", "mm", True, False,
        lambda prediction, pixel_size, reference: prediction * pixel_size,
        "predicted HC in mm (HC output in input px times mm per input px)",
    ),
    "hc_px_input": Target(
        "hc_px_input", "px", False, False,
        lambda prediction, pixel_size, reference: prediction,
        "predicted HC in pixels of the network input (the raw HC output)",
    ),
    "abs_error_mm": Target(
        "abs_error_mm", "mm", True, True,
        lambda prediction, pixel_size, reference: tf.abs(prediction * pixel_size - reference),
        "absolute error of the predicted HC in mm, |prediction_mm - reference_mm|",
    ),
}


def get_target(target: str | Target) -> Target:
    """The :class:`Target` named ``target`` (a Target passes through)."""
    if isinstance(target, Target):
        return target
    if isinstance(target, str) and target in TARGETS:
        return TARGETS[target]
    raise ValueError(f"unknown target {target!r}; known targets: {', '.join(TARGETS)}")

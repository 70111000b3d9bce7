"""The scalar per image an explanation differentiates: :class:`Target` and the named targets.

A target is a function of the model's HC output (``prediction_px``, in input pixels; a model
whose output is in mm has its own table, :data:`TARGETS_OF_MM_OUTPUT`):
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


# The same targets of a model whose HC output is already in mm (``output_units="mm"``): the
# pixel size converts the other way, and hc_mm / abs_error_mm no longer need it.
TARGETS_OF_MM_OUTPUT: dict[str, Target] = {
    "hc_mm": Target(
        "hc_mm", "mm", False, False,
        lambda prediction, pixel_size, reference: prediction,
        "predicted HC in mm (the HC output, in mm)",
    ),
    "hc_px_input": Target(
        "hc_px_input", "px", True, False,
        lambda prediction, pixel_size, reference: prediction / pixel_size,
        "predicted HC in pixels of the network input (HC output in mm / mm per input px)",
    ),
    "abs_error_mm": Target(
        "abs_error_mm", "mm", False, True,
        lambda prediction, pixel_size, reference: tf.abs(prediction - reference),
        "absolute error of the predicted HC in mm, |prediction_mm - reference_mm|",
    ),
}


def get_target(target: str | Target, output_units: str = "px") -> Target:
    """The :class:`Target` named ``target`` for a model whose HC output is in
    ``output_units`` (``"px"``, fetalhc's, or ``"mm"``); a Target passes through."""
    if isinstance(target, Target):
        return target
    table = TARGETS_OF_MM_OUTPUT if output_units == "mm" else TARGETS
    if isinstance(target, str) and target in table:
        return table[target]
    raise ValueError(f"unknown target {target!r}; known targets: {', '.join(TARGETS)}")


def resolve_output_units(model, target: str | Target, output=None,
                         output_units: str | None = None) -> str:
    """The unit of ``model``'s HC output for explaining ``target``
    (:func:`fetalhc.models.graph.hc_output_units`): a fetalhc output is in px; another model's
    is what ``output_units`` declares. Undeclared, it is an error for a target in mm (the
    model's output would be multiplied by the pixel size on a guess); ``hc_px_input`` then
    takes the raw output."""
    from fetalhc.models.graph import hc_output_units, require_output_units

    units = hc_output_units(model, output, output_units)
    if units is not None:
        return units
    name = target.name if isinstance(target, Target) else target
    if name == "hc_px_input":
        return "px"
    return require_output_units(model, output, output_units)  # the one-line error

"""The contract of an explanation method: :class:`Method` and the :class:`ExplainContext` it sees.

- :class:`Method`: base class of the methods. A method implements :meth:`Method.attribute`,
  which runs inside a ``tf.function`` on one batch of images and returns
  ``{"map": (B, H, W[, C]) tensor, <other per-image tensors (B,)>}``; the extra tensors land
  in ``Explanation.metadata`` (e.g. ``completeness_gap`` for Integrated Gradients,
  ``conservation_gap`` for relevance methods).
- :class:`ExplainContext`: what a method sees of the model (HC view, target, input shape,
  batch and chunk sizes) and helpers (target values, gradients, batched points).
- :func:`check_option_positive_int`, :func:`check_option_choice`: one-line checks of a
  method's options.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import keras
import numpy as np
import tensorflow as tf

from fetalhc.explain.targets import Target


@dataclass
class ExplainContext:
    """What a method sees: the original model, its HC view, the target and the sizes."""

    model: keras.Model
    hc_model: keras.Model
    target: Target
    input_shape: tuple[int, int, int]
    batch_size: int
    chunk_size: int
    output: str | int | None = None
    output_units: str = "px"  # of the HC output: "px" (fetalhc's) or "mm" (declared)

    @property
    def points_per_pass(self) -> int:
        """Perturbed copies per image evaluated in one pass (samples, path points, patches)."""
        return max(1, self.chunk_size // self.batch_size)

    def predict_px(self, images: tf.Tensor) -> tf.Tensor:
        """The HC output (in input pixels, or in mm for ``output_units="mm"``), shape
        ``(B,)``; ``training=False``. The target converts it."""
        prediction = self.hc_model(images, training=False)
        return tf.reshape(tf.cast(prediction, tf.float32), [-1])

    def target_value(self, images, pixel_size, reference) -> tf.Tensor:
        return self.target(self.predict_px(images), pixel_size, reference)

    def value_and_gradient(self, images, pixel_size, reference):
        """(target ``(B,)``, d target / d images ``(B, H, W, C)``)."""
        with tf.GradientTape() as tape:
            tape.watch(images)
            value = self.target_value(images, pixel_size, reference)
        return value, tape.gradient(value, images)

    def points_value_and_gradient(self, points, pixel_size, reference):
        """Batched points ``(K, B, H, W, C)`` -> (target ``(K, B)``, gradients like points)."""
        shape = tf.shape(points)
        flat = tf.reshape(points, tf.concat([[-1], shape[2:]], axis=0))
        with tf.GradientTape() as tape:
            tape.watch(flat)
            prediction = tf.reshape(self.predict_px(flat), shape[:2])
            value = self.target(prediction, pixel_size[None, :], reference[None, :])
        gradient = tape.gradient(value, flat)
        return value, tf.reshape(gradient, shape)

    def points_value(self, points, pixel_size, reference):
        """Batched points ``(K, B, H, W, C)`` -> target ``(K, B)`` (forward only)."""
        shape = tf.shape(points)
        flat = tf.reshape(points, tf.concat([[-1], shape[2:]], axis=0))
        prediction = tf.reshape(self.predict_px(flat), shape[:2])
        return self.target(prediction, pixel_size[None, :], reference[None, :])

    def accumulate(self, n_points: int, step: Callable, initial):
        """``sum(step(start, stop))`` over chunks of ``points_per_pass`` of ``n_points`` points.

        ``step(start, stop)`` gets scalar int32 tensors and returns a structure like
        ``initial``; runs as one ``tf.while_loop`` so the model appears once in the graph.
        """
        per_pass = self.points_per_pass
        n_chunks = math.ceil(n_points / per_pass)

        def body(index, total):
            start = index * per_pass
            stop = tf.minimum(start + per_pass, n_points)
            increment = step(start, stop)
            return index + 1, tf.nest.map_structure(tf.add, total, increment)

        _, total = tf.while_loop(
            lambda index, total: index < n_chunks, body, (tf.constant(0), initial)
        )
        return total


class Method:
    """Base class of explanation methods; subclasses register with ``@register()``.

    Class attributes:
      ``name``: registry name; ``description``: one line;
      ``defaults``: option name -> default (unknown options raise ValueError);
      ``map_units``: units of the map, ``{target}`` stands for the target's units;
      ``fixed_cost``: the options that give the method a fixed cost per image where it
      otherwise adapts its work to each image (e.g. Integrated Gradients' refinement to a
      completeness tolerance); used where that adaptation is not what is measured.

    :meth:`attribute` always runs inside a cached ``tf.function`` (see
    :mod:`fetalhc.explain.api`). A method is built from its options only
    (``get_method(name)(**options)``); the classes bound to a model
    (``fetalhc.explain.IntegratedGradients(model, ...)``) are :mod:`fetalhc.explain.objects`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    map_units: ClassVar[str] = "{target}"
    fixed_cost: ClassVar[dict[str, Any]] = {}

    def __init__(self, *arguments, **options):
        if arguments:  # e.g. get_method(name)(model): the object API is what was meant
            raise TypeError(
                f"{type(self).__name__} (method {self.name!r}) takes its options only, as "
                f"keywords; to explain a model use fetalhc.explain.explainer({self.name!r}, "
                "model, **options) or fetalhc.explain.explain_batch(model, images, "
                f"method={self.name!r}, **options)"
            )
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            allowed = ", ".join(sorted(self.defaults)) or "none"
            raise ValueError(
                f"unknown option(s) {', '.join(unknown)} for method {self.name!r}; "
                f"its options: {allowed}"
            )
        self.options: dict[str, Any] = {**self.defaults, **options}
        for key, default in self.defaults.items():  # a switch is a switch (no "false" string)
            value = self.options[key]
            if isinstance(default, bool) and not isinstance(value, bool | np.bool_):
                raise ValueError(f"{self.name}: {key} must be true or false; got {value!r}")
        self.validate()

    # --- hooks for subclasses
    def validate(self) -> None:
        """Check ``self.options``; raise a one-line ValueError on bad values."""

    def setup(self, context: ExplainContext) -> None:
        """Check the model is supported (ValueError otherwise) and resolve model-dependent
        options (e.g. the Grad-CAM layer). Called before every run; must be cheap."""

    def prepare(self, context: ExplainContext, images: np.ndarray) -> dict[str, np.ndarray]:
        """Extra per-image inputs of :meth:`attribute` computed outside the trace (leading
        axis N), e.g. IG baselines. Default: none."""
        return {}

    def attribute(self, context: ExplainContext, images, pixel_size, reference, **extras):
        """One batch -> ``{"map": (B, H, W[, C]), other per-image tensors (B,)}``."""
        raise NotImplementedError

    def metadata(self, context: ExplainContext) -> dict[str, Any]:
        """Run-level metadata (e.g. the resolved layer, quadrature); default: the options."""
        return {key: _describe(value) for key, value in self.options.items()}

    def cache_key(self) -> tuple:
        """Hashable description of the options that change the traced graph."""
        return tuple(sorted((key, _describe(value)) for key, value in self.options.items()))

    def units(self, target: Target) -> str:
        return self.map_units.format(target=target.units)


def _describe(value):
    if isinstance(value, np.ndarray | tf.Tensor):
        return f"array{tuple(value.shape)}"
    if isinstance(value, list | tuple):
        return tuple(_describe(item) for item in value)
    return value


def check_option_positive_int(options: Mapping[str, Any], name: str, method: str, minimum: int = 1):
    """A one-line ValueError unless option ``name`` is an integer >= ``minimum``."""
    value = options[name]
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{method}: {name} must be an integer >= {minimum}; got {value!r}")


def check_option_choice(options: Mapping[str, Any], name: str, method: str, choices) -> None:
    """A one-line ValueError unless option ``name`` is one of ``choices``."""
    if options[name] not in choices:
        raise ValueError(
            f"{method}: unknown {name} {options[name]!r}; choose one of: {', '.join(choices)}"
        )

"""Guided Backpropagation (Springenberg et al. 2015) for HC regression.

The target's gradient with every ReLU's backward pass replaced by
``grad_in = grad_out * [x > 0] * [grad_out > 0]``: only positive signals pass back through
a ReLU, and only where it was active. The model's functional graph is replayed layer by
layer (:mod:`fetalhc.explain.relevance_graph`) with the ReLUs swapped — ReLU activations of
Conv/Dense layers, ``ReLU`` layers and ``Activation("relu")`` — so the user's model is never
modified. Units: target units per input unit (like the gradient). Signed map, channels
summed.
"""

from __future__ import annotations

import tensorflow as tf

from fetalhc.explain.base import Method
from fetalhc.explain.registry import register
from fetalhc.explain.relevance_graph import get_plan, output_per_image, run_forward


@tf.custom_gradient
def guided_relu(x):
    """ReLU forward; backward passes positive gradients where the input was positive."""

    def backward(upstream):
        return upstream * tf.cast(x > 0, upstream.dtype) * tf.cast(upstream > 0, upstream.dtype)

    return tf.nn.relu(x), backward


def modified_gradient(plan, images, target, relu) -> tf.Tensor:
    """d target / d images with every ReLU of ``plan`` replaced by ``relu`` in the replay.

    ``target`` maps the output per image ``(N,)`` to the explained value ``(N,)``.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(images)
        values = run_forward(plan, images, relu=relu)
        output = output_per_image(tf.cast(values[plan.output_key], tf.float32))
        value = target(output)
    gradient = tape.gradient(value, images)
    return tf.zeros_like(images) if gradient is None else gradient


class ModifiedGradientMethod(Method):
    """Base of Guided Backprop and DeConvNet: the target's gradient with swapped ReLUs."""

    map_units = "{target} per input unit"
    relu = None

    def setup(self, context) -> None:
        self.plan = get_plan(context.hc_model)
        self.plan.check_swappable_relus(self.name)

    def attribute(self, context, images, pixel_size, reference):
        def target(output):
            return context.target(output, pixel_size, reference)

        return {"map": modified_gradient(self.plan, images, target, type(self).relu)}


@register()
class GuidedBackprop(ModifiedGradientMethod):
    name = "guided_backprop"
    description = "gradient with ReLU backward passing only positive signals of active units"
    relu = staticmethod(guided_relu)

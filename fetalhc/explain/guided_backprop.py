"""Guided Backpropagation (Springenberg et al. 2015) for HC regression.

The target's gradient with every rectifier's backward pass replaced by
``grad_in = grad_out * f'(x) * [grad_out > 0]``: only positive signals pass back, and only
through the local slope of the unit. For ReLU that is ``grad_out * [x > 0] * [grad_out > 0]``;
for ReLU6 ``grad_out * [0 < x < 6] * [grad_out > 0]``; for swish/SiLU (EfficientNet, which has
no ReLU) ``grad_out * silu'(x) * [grad_out > 0]``. Other activations (the sigmoid of a
squeeze-and-excitation gate) keep their ordinary gradient. The model's functional graph is
replayed layer by layer (:mod:`fetalhc.explain.relevance_graph`) with the rectifiers swapped
— activations of Conv/DepthwiseConv/SeparableConv/Dense layers, ``ReLU`` layers (also with
``max_value``) and ``Activation`` layers — so the user's model is never modified. Units:
target units per input unit (like the gradient). Signed map, channels summed.
"""

from __future__ import annotations

import tensorflow as tf

from fetalhc.explain.method import Method
from fetalhc.explain.registry import register
from fetalhc.explain.relevance_graph import get_plan, output_per_image, run_forward


def guided_rule(upstream, local_derivative):
    """Guided Backprop: positive backward signals, through the unit's local slope."""
    return upstream * local_derivative * tf.cast(upstream > 0, upstream.dtype)


def modified_gradient(plan, images, target, backward_rule) -> tf.Tensor:
    """d target / d images with every rectifier's backward pass replaced by ``backward_rule``.

    ``target`` maps the output per image ``(N,)`` to the explained value ``(N,)``;
    ``backward_rule(upstream, local_derivative)`` (see
    :func:`fetalhc.explain.relevance_graph.run_forward`).
    """
    images = tf.convert_to_tensor(images, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(images)
        values = run_forward(plan, images, backward_rule=backward_rule)
        output = output_per_image(tf.cast(values[plan.output_key], tf.float32))
        value = target(output)
    gradient = tape.gradient(value, images)
    return tf.zeros_like(images) if gradient is None else gradient


class ModifiedGradientMethod(Method):
    """Base of Guided Backprop and DeConvNet: the target's gradient with swapped rectifiers."""

    map_units = "{target} per input unit"
    backward_rule = None

    def setup(self, context) -> None:
        self.plan = get_plan(context.hc_model)
        self.plan.check_swappable_relus(self.name, context.model.name)

    def attribute(self, context, images, pixel_size, reference):
        def target(output):
            return context.target(output, pixel_size, reference)

        return {"map": modified_gradient(self.plan, images, target, type(self).backward_rule)}


@register()
class GuidedBackprop(ModifiedGradientMethod):
    name = "guided_backprop"
    description = "gradient with rectifier backward passing only positive signals of active units"
    backward_rule = staticmethod(guided_rule)

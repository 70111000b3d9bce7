"""DeConvNet (Zeiler and Fergus 2014) for HC regression.

The target's gradient with every ReLU's backward pass replaced by
``grad_in = relu(grad_out)``: the backward signal is rectified as in the forward pass and
ignores whether the unit was active. Replays the functional graph with the ReLUs swapped
(:mod:`fetalhc.explain.guided_backprop`); the user's model is never modified. Units: target
units per input unit. Signed map, channels summed.
"""

from __future__ import annotations

import tensorflow as tf

from fetalhc.explain.guided_backprop import ModifiedGradientMethod
from fetalhc.explain.registry import register


@tf.custom_gradient
def deconvnet_relu(x):
    """ReLU forward; backward rectifies the incoming gradient, whatever the input was."""

    def backward(upstream):
        return tf.nn.relu(upstream)

    return tf.nn.relu(x), backward


@register()
class DeconvNet(ModifiedGradientMethod):
    name = "deconvnet"
    description = "gradient with ReLU backward rectifying the backward signal (Zeiler-Fergus)"
    relu = staticmethod(deconvnet_relu)

"""DeConvNet (Zeiler and Fergus 2014) for HC regression.

The target's gradient with every rectifier's backward pass replaced by
``grad_in = relu(grad_out)``: the backward signal is rectified as in the forward pass and
ignores whether (and how steeply) the unit was active. The same for ReLU, ReLU6 and
swish/SiLU; other activations (a squeeze-and-excitation sigmoid gate) keep their ordinary
gradient. Replays the functional graph with the rectifiers swapped
(:mod:`fetalhc.explain.guided_backprop`); the user's model is never modified. Units: target
units per input unit. Signed map, channels summed.
"""

from __future__ import annotations

import tensorflow as tf

from fetalhc.explain.guided_backprop import ModifiedGradientMethod
from fetalhc.explain.registry import register


def deconvnet_rule(upstream, local_derivative):
    """DeConvNet: rectify the backward signal, whatever the unit's input was."""
    del local_derivative
    return tf.nn.relu(upstream)


@register()
class DeconvNet(ModifiedGradientMethod):
    name = "deconvnet"
    description = "gradient with rectifier backward rectifying the backward signal (Zeiler-Fergus)"
    backward_rule = staticmethod(deconvnet_rule)

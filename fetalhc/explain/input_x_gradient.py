"""Input x Gradient (Shrikumar et al. 2016): x * d target / dx, channels summed.

For a linear model it sums to the prediction minus the bias; units are the target's (mm).
"""

from __future__ import annotations

from fetalhc.explain.method import Method
from fetalhc.explain.registry import register


@register()
class InputXGradient(Method):
    name = "input_x_gradient"
    description = "input times the gradient of the target"

    def attribute(self, context, images, pixel_size, reference):
        _, gradient = context.value_and_gradient(images, pixel_size, reference)
        return {"map": images * gradient}

"""Vanilla gradient: d target / d input (Simonyan et al. 2014), signed, channels summed.

Units: target units per input unit (mm per z-score unit for ``hc_mm``).
"""

from __future__ import annotations

from fetalhc.explain.method import Method
from fetalhc.explain.registry import register


@register()
class Gradient(Method):
    name = "gradient"
    description = "gradient of the target with respect to the input"
    map_units = "{target} per input unit"

    def attribute(self, context, images, pixel_size, reference):
        _, gradient = context.value_and_gradient(images, pixel_size, reference)
        return {"map": gradient}

"""Deep Taylor decomposition (Montavon et al. 2017) for HC regression.

The z+ rule on every Conv, Dense and pooling layer above the input (biases ignored; the
root point of each ReLU neuron is chosen on the positive-contribution segment), the bounded
z^B rule at the first Conv/Dense layer with the input domain ``low <= x <= high``. fetalhc
images are z-scored per image, so the default bounds are each image's own min and max
(options ``low``/``high``: a number or one value per image). Residual sums use the z rule
and elementwise affine layers (the output de-standardisation, a BatchNorm that is not
folded) the z rule, as in :mod:`fetalhc.explain.lrp`.

Relevance starts at ``output * d target / d output`` and keeps its sign. Every z+ and z^B
share (``w (x - low)`` for ``w > 0``, ``w (x - high)`` for ``w < 0``) is non-negative, so on a
chain network the map has the sign of the relevance entering it (with fetalhc's
``OutputAffine``: of the prediction's deviation from the training mean HC); residual sums
(z rule) can mix signs. Metadata: ``relevance_start``, ``relevance_sum``, ``conservation_gap`` (target
units).
"""

from __future__ import annotations

from fetalhc.explain.lrp import RelevanceMethod
from fetalhc.explain.registry import register
from fetalhc.explain.relevance_rules import deep_taylor_rules


@register()
class DeepTaylor(RelevanceMethod):
    name = "deep_taylor"
    description = "Deep Taylor decomposition: z+ rule, bounded z^B rule at the input layer"
    defaults = {"low": None, "high": None}
    uses_bounds = True

    def rules(self):
        return deep_taylor_rules()

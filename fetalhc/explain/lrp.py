"""Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019) for HC regression.

Registered methods (rules per layer type: docs/relevance.md, engine:
:mod:`fetalhc.explain.relevance_rules`):

- ``lrp_z``: z rule everywhere; on a bias-free ReLU network it equals Input x Gradient.
- ``lrp_epsilon``: epsilon rule everywhere (option ``epsilon``, default 0.01).
- ``lrp_alpha2_beta1``, ``lrp_alpha1_beta0``: alpha-beta on Conv and Dense (biases in the
  denominators), z+ on average pooling, z on residual sums and elementwise affine layers.
- ``lrp_zplus``: z+ on Conv, Dense and pooling (biases ignored).
- ``lrp_composite``: z^B at the input layer (bounds ``low``/``high``, default each image's
  min / max), alpha1-beta0 (option ``conv_rule``) on the other convolutions, epsilon on
  dense, pooling, sums and affine layers.

Relevance starts at ``output * d target / d output`` (the predicted HC in mm for the default
target ``hc_mm``) and keeps its sign; maps are in the target's units and sum, per image, to
the starting relevance minus what biases absorb. Each image's metadata carries
``relevance_start``, ``relevance_sum`` and ``conservation_gap`` (= sum - start, target units).
"""

from __future__ import annotations

import numbers
from typing import Any, ClassVar

import numpy as np

from fetalhc.explain.method import Method
from fetalhc.explain.registry import register
from fetalhc.explain.relevance_graph import get_plan
from fetalhc.explain.relevance_rules import (
    RuleSet,
    lrp_alpha_beta_rules,
    lrp_composite_rules,
    lrp_epsilon_rules,
    lrp_z_rules,
    lrp_zplus_rules,
    propagate_relevance,
)

CONV_RULES = ("alpha1_beta0", "alpha2_beta1", "zplus")


def _check_epsilon(options, method):
    value = options["epsilon"]
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
        raise ValueError(f"{method}: epsilon must be a number >= 0; got {value!r}")


def _check_bound(options, name, method):
    value = options[name]
    if value is None:
        return
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.number) or not np.all(np.isfinite(array)):
        raise ValueError(f"{method}: {name} must be None, a finite number or one per image")


class RelevanceMethod(Method):
    """Base of the relevance methods: runs :func:`propagate_relevance` with :meth:`rules`.

    Methods whose rules use the bounded z^B input rule take options ``low`` and ``high``
    (None: each image's own min / max; a number; or one value per image).
    """

    map_units: ClassVar[str] = "{target}"
    uses_bounds: ClassVar[bool] = False

    def rules(self) -> RuleSet:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def validate(self) -> None:
        if "epsilon" in self.options:
            _check_epsilon(self.options, self.name)
        for name in ("low", "high"):
            if name in self.options:
                _check_bound(self.options, name, self.name)
        self.rules()  # raises on bad rule options

    def setup(self, context) -> None:
        self.plan = get_plan(context.hc_model)
        self.plan.check_relevance_support(self.name, context.model.name)

    def prepare(self, context, images: np.ndarray) -> dict[str, np.ndarray]:
        if not self.uses_bounds:
            return {}
        n = len(images)
        flat = images.reshape(n, -1)
        bounds = {}
        for name, default in (("low", flat.min(axis=1)), ("high", flat.max(axis=1))):
            value = self.options.get(name)
            if value is None:
                bounds[name] = default.astype(np.float32)
                continue
            array = np.asarray(value, np.float32).reshape(-1)
            if array.size == 1:
                array = np.full(n, array[0], np.float32)
            if array.size != n:
                raise ValueError(f"{self.name}: {name} needs one value or one per image ({n})")
            bounds[name] = array
        if np.any(bounds["low"] > flat.min(axis=1) + 1e-6) or np.any(
            bounds["high"] < flat.max(axis=1) - 1e-6
        ):
            raise ValueError(
                f"{self.name}: the input bounds must hold every pixel "
                "(low <= image min and high >= image max)"
            )
        return bounds

    def attribute(self, context, images, pixel_size, reference, low=None, high=None):
        result = propagate_relevance(
            self.plan,
            images,
            lambda output: context.target(output, pixel_size, reference),
            self.rules(),
            low=low,
            high=high,
        )
        return {
            "map": result["relevance"],
            "relevance_start": result["start"],
            "relevance_sum": result["input_sum"],
            "conservation_gap": result["conservation_gap"],
        }

    def metadata(self, context) -> dict[str, Any]:
        info = super().metadata(context)
        info["rules"] = self.rules().table()
        return info


@register()
class LRPZ(RelevanceMethod):
    name = "lrp_z"
    description = "LRP, z rule on every layer (equals Input x Gradient without biases)"

    def rules(self):
        return lrp_z_rules()


@register()
class LRPEpsilon(RelevanceMethod):
    name = "lrp_epsilon"
    description = "LRP, epsilon rule on every layer"
    defaults = {"epsilon": 0.01}

    def rules(self):
        return lrp_epsilon_rules(self.options["epsilon"])


@register()
class LRPAlpha2Beta1(RelevanceMethod):
    name = "lrp_alpha2_beta1"
    description = "LRP, alpha=2 beta=1 rule on conv and dense layers"

    def rules(self):
        return lrp_alpha_beta_rules(2, 1, name=self.name)


@register()
class LRPAlpha1Beta0(RelevanceMethod):
    name = "lrp_alpha1_beta0"
    description = "LRP, alpha=1 beta=0 rule on conv and dense layers"

    def rules(self):
        return lrp_alpha_beta_rules(1, 0, name=self.name)


@register()
class LRPZPlus(RelevanceMethod):
    name = "lrp_zplus"
    description = "LRP, z+ rule on conv, dense and pooling layers (biases ignored)"

    def rules(self):
        return lrp_zplus_rules()


@register()
class LRPComposite(RelevanceMethod):
    name = "lrp_composite"
    description = "LRP composite: z^B at the input, alpha-beta on conv, epsilon on dense"
    defaults = {"epsilon": 0.01, "conv_rule": "alpha1_beta0", "low": None, "high": None}
    uses_bounds = True

    def validate(self) -> None:
        if self.options["conv_rule"] not in CONV_RULES:
            raise ValueError(
                f"{self.name}: unknown conv_rule {self.options['conv_rule']!r}; choose one of: "
                f"{', '.join(CONV_RULES)}"
            )
        super().validate()

    def rules(self):
        return lrp_composite_rules(self.options["epsilon"], self.options["conv_rule"])


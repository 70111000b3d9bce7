"""Signed saliency maps for the HC regression output, one registry of methods.

```python
maps = fetalhc.explain.explain(model, images, method="integrated_gradients",
                               target="hc_mm", pixel_size=mm_per_px)   # float32 (N, H, W)
result = fetalhc.explain.explain_batch(...)   # Explanation: maps + per-image metadata
fetalhc.explain.check_methods(model, ["gradcam"], options={"gradcam": {...}})  # no map run
fetalhc.explain.available_methods(); fetalhc.explain.get_method(name)
fetalhc.explain.hc_output_model(model, output=None)
ig = fetalhc.explain.IntegratedGradients(model, steps=64)   # the object API: one class per
result = ig.explain(images, pixel_size=mm_per_px)           # method, the same Explanation
fetalhc.explain.explainer("occlusion", model, patch=8)      # by registry name
```

Every module of this package that is not infrastructure (``_INFRASTRUCTURE`` below) registers
its method(s) on import; this package imports all of them, so new method modules are picked up
automatically, and each registered method gets its explainer class
(:mod:`fetalhc.explain.objects`) in this namespace.
"""

from __future__ import annotations

import importlib
import pkgutil

from fetalhc.explain.api import Explanation, check_methods, explain, explain_batch
from fetalhc.explain.inputs import normalise_inputs
from fetalhc.explain.method import ExplainContext, Method
from fetalhc.explain.objects import Explainer, explainer, explainer_class, explainer_classes
from fetalhc.explain.registry import available_methods, get_method, register
from fetalhc.explain.targets import TARGETS, Target, get_target, resolve_output_units
from fetalhc.explain.views import (
    clear_cache,
    conv_layer_candidates,
    default_conv_layer_name,
    hc_output_model,
    tracing_counts,
)

# Modules of this package that register no method: the core (targets, views, the method
# contract, inputs, the entry points, the registry, the object API) and the relevance
# engine. Every other module is a method module and is imported below.
_INFRASTRUCTURE = frozenset({
    "api",
    "inputs",
    "method",
    "objects",
    "registry",
    "targets",
    "views",
    "relevance_graph",
    "relevance_ops",
    "relevance_rules",
    "relevance_steps",
})


def _import_method_modules() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name.startswith("_") or module.name in _INFRASTRUCTURE:
            continue
        importlib.import_module(f"{__name__}.{module.name}")


_import_method_modules()


def _export_explainers() -> list[str]:
    """Bind every registered method's explainer class here (IntegratedGradients, ...)."""
    classes = explainer_classes()
    taken = sorted(name for name in classes if name in globals())
    if taken:
        raise ValueError(f"explainer class name(s) {', '.join(taken)} would hide names of "
                         "fetalhc.explain; rename the method(s)")
    globals().update(classes)
    return sorted(classes)


_EXPLAINERS = _export_explainers()

__all__ = [
    "TARGETS",
    "ExplainContext",
    "Explainer",
    "Explanation",
    "Method",
    "Target",
    "available_methods",
    "check_methods",
    "clear_cache",
    "conv_layer_candidates",
    "default_conv_layer_name",
    "explain",
    "explain_batch",
    "explainer",
    "explainer_class",
    "explainer_classes",
    "get_method",
    "get_target",
    "hc_output_model",
    "normalise_inputs",
    "register",
    "resolve_output_units",
    "tracing_counts",
    *_EXPLAINERS,
]

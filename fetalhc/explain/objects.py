"""The object API: one explainer class per registered method, bound to a model and its options.

```python
ig = fetalhc.explain.IntegratedGradients(model, steps=64, target="hc_mm")  # checked here
result = ig.explain(images, pixel_size=mm_per_px)   # the Explanation of explain_batch
fetalhc.explain.explainer("occlusion", model, patch=8)   # the same, by registry name
```

The classes are generated from the registry (:func:`explainer_classes`), so a new method
module gets its class without editing a list: the class name is the registry name in
CamelCase (:func:`class_name`: ``integrated_gradients`` -> ``IntegratedGradients``,
``gradcam_pp`` -> ``GradCAMPlusPlus``, ``lrp_epsilon`` -> ``LRPEpsilon``) and the class
attribute ``method`` is the registry name back. An explainer checks everything
:func:`~fetalhc.explain.api.check_methods` checks when it is built (options, target, sizes,
HC output and, on a model with a fixed input size, the method against the model), with the
same one-line ValueErrors; :meth:`Explainer.explain` is :func:`explain_batch` with the
stored arguments, so its maps are those of the functional API exactly.

The registry itself is unchanged: :func:`~fetalhc.explain.registry.get_method` returns the
:class:`~fetalhc.explain.method.Method` class (options only, no model), which the
evaluation, the callbacks and the command line use.
"""

from __future__ import annotations

import inspect
from types import MappingProxyType
from typing import Any, ClassVar

from fetalhc.explain.api import Explanation, _resolve_sizes, check_methods, explain_batch
from fetalhc.explain.registry import available_methods, get_method
from fetalhc.explain.targets import get_target, resolve_output_units
from fetalhc.explain.views import hc_output_model, model_input_shape

# words of registry names spelled otherwise than word.capitalize() in a class name
_WORDS = {
    "deconvnet": "DeconvNet",
    "gradcam": "GradCAM",
    "lrp": "LRP",
    "pp": "PlusPlus",
    "smoothgrad": "SmoothGrad",
    "zplus": "ZPlus",
}
# the arguments of Explainer.explain, refused by the constructor with a pointer to it
_EXPLAIN_ARGUMENTS = ("images", "pixel_size", "reference")


def class_name(method: str) -> str:
    """The explainer class name of a registry name: its words in CamelCase
    (``integrated_gradients`` -> ``IntegratedGradients``, ``lrp_z`` -> ``LRPZ``)."""
    return "".join(_WORDS.get(word, word.capitalize()) for word in method.split("_") if word)


class Explainer:
    """One registered method bound to a model, a target and the method's options.

    ``Explainer`` is the base class; build a subclass, e.g.
    ``fetalhc.explain.IntegratedGradients(model, steps=64)``, or
    ``fetalhc.explain.explainer("integrated_gradients", model, steps=64)``.

    ``target``: ``"hc_mm"`` (default), ``"hc_px_input"`` or ``"abs_error_mm"``; ``output``:
    the HC output (name or index; default: the output named ``hc_px_input``, else the only
    one); ``batch_size`` / ``chunk_size``: images per traced call / model inputs per pass
    (default 8 / 8); ``output_units``: ``"mm"`` or ``"px"`` for a model whose HC output does
    not say its unit (see :func:`explain_batch`). Every other keyword is an option of the method (``defaults``).
    """

    method: ClassVar[str] = ""  # the registry name
    description: ClassVar[str] = ""
    defaults: ClassVar[MappingProxyType] = MappingProxyType({})

    def __init__(self, model, *, target: str = "hc_mm", output: str | int | None = None,
                 batch_size: int | None = None, chunk_size: int | None = None,
                 output_units: str | None = None, **options):
        if not self.method:
            raise TypeError("Explainer is the base class; build a method's class, e.g. "
                            "fetalhc.explain.IntegratedGradients(model), or "
                            "fetalhc.explain.explainer(name, model)")
        misplaced = [name for name in _EXPLAIN_ARGUMENTS if name in options]
        if misplaced:
            raise ValueError(
                f"{self.method}: pass {', '.join(misplaced)} to .explain(images, "
                f"pixel_size=..., reference=...), not to {type(self).__name__}(...)")
        self.output_units = output_units
        self.options: dict[str, Any] = self._check(model, target, output, batch_size,
                                                   chunk_size, options)
        self.model = model
        self.target = target
        self.output = output
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self._given = tuple(options)

    def _check(self, model, target, output, batch_size, chunk_size, options) -> dict[str, Any]:
        """Everything checkable before the images, in the order of :func:`explain_batch`:
        options, target, sizes, HC output, and (when the model's input size is fixed) the
        method against the model, as :func:`check_methods` does. Returns the method's
        options with its defaults filled in."""
        method = get_method(self.method)(**options)
        get_target(target)
        resolve_output_units(model, target, output, self.output_units)
        _resolve_sizes(batch_size, chunk_size)
        shape = model_input_shape(hc_output_model(model, output))
        if shape is not None and len(shape) == 3 and all(d is not None for d in shape):
            check_methods(model, [self.method], target, {self.method: options}, output=output,
                          batch_size=batch_size, chunk_size=chunk_size, input_shape=shape,
                          output_units=self.output_units)
        # else no fixed input size: the method meets the model when the images come
        return dict(method.options)

    def explain(self, images, *, pixel_size=None, reference=None) -> Explanation:
        """Explain ``images`` (array, tensor or ``tf.data.Dataset``): the
        :class:`~fetalhc.explain.api.Explanation` of :func:`explain_batch` with this
        explainer's model, method, target, output, sizes and options.

        ``pixel_size``: mm per input pixel (one number or one per image; needed by the
        ``hc_mm`` and ``abs_error_mm`` targets unless a dataset carries ``pixel_size_mm``);
        ``reference``: reference HC in mm (``abs_error_mm`` only)."""
        return explain_batch(
            self.model, images, method=self.method, target=self.target,
            pixel_size=pixel_size, reference=reference, output=self.output,
            batch_size=self.batch_size, chunk_size=self.chunk_size,
            output_units=self.output_units, **self.options,
        )

    def __repr__(self) -> str:
        model = getattr(self.model, "name", type(self.model).__name__)
        settings = [f"model={model!r}", f"target={self.target!r}"]
        settings += [f"{name}={getattr(self, name)!r}"
                     for name in ("output", "batch_size", "chunk_size", "output_units")
                     if getattr(self, name) is not None]
        settings += [f"{name}={_short(self.options[name])}" for name in self._given]
        return f"{type(self).__name__}({', '.join(settings)})"


def _short(value) -> str:
    shape = getattr(value, "shape", None)
    return f"<array {tuple(shape)}>" if shape is not None and len(shape) else repr(value)


# registry name -> (the Method class it was made from, its explainer class)
_CLASSES: dict[str, tuple[type, type[Explainer]]] = {}


def _signature(method_class) -> inspect.Signature:
    keyword = inspect.Parameter.KEYWORD_ONLY
    parameters = [
        inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("target", keyword, default="hc_mm"),
        inspect.Parameter("output", keyword, default=None),
        inspect.Parameter("batch_size", keyword, default=None),
        inspect.Parameter("chunk_size", keyword, default=None),
    ]
    parameters += [inspect.Parameter(name, keyword, default=default)
                   for name, default in method_class.defaults.items()]
    return inspect.Signature(parameters)


def _make_class(method: str) -> type[Explainer]:
    method_class = get_method(method)
    name = class_name(method)
    options = ", ".join(f"``{option}`` {_short(default)}"
                        for option, default in method_class.defaults.items()) or "none"
    doc = (f"{method_class.description or method}\n\n"
           f"``{name}(model, **options).explain(images, pixel_size=...)`` returns the "
           f"Explanation of ``explain_batch(model, images, method={method!r}, ...)``.\n"
           f"Options (defaults): {options}. Common arguments: see "
           ":class:`fetalhc.explain.objects.Explainer`.")
    cls = type(name, (Explainer,), {
        "method": method,
        "description": method_class.description,
        "defaults": MappingProxyType(dict(method_class.defaults)),
        "__doc__": doc,
        "__module__": "fetalhc.explain",
        "__qualname__": name,
    })
    cls.__signature__ = _signature(method_class)
    return cls


def explainer_class(method: str) -> type[Explainer]:
    """The explainer class of the registered method ``method`` (made on first use, so a
    method registered later has one too); unknown names: the registry's one-line ValueError."""
    method_class = get_method(method)
    made = _CLASSES.get(method)
    if made is None or made[0] is not method_class:  # new, or registered again (reload)
        made = _CLASSES[method] = (method_class, _make_class(method))
    return made[1]


def explainer_classes() -> dict[str, type[Explainer]]:
    """Class name -> explainer class, for every registered method; two registry names with
    one class name raise a ValueError naming both."""
    classes: dict[str, type[Explainer]] = {}
    for method in available_methods():
        cls = explainer_class(method)
        other = classes.get(cls.__name__)
        if other is not None:
            raise ValueError(f"the methods {other.method!r} and {method!r} would share the "
                             f"explainer class name {cls.__name__}; rename one")
        classes[cls.__name__] = cls
    return classes


def explainer(method: str, model, **arguments) -> Explainer:
    """``explainer_class(method)(model, **arguments)``: an explainer by registry name, e.g.
    ``explainer("integrated_gradients", model, steps=64).explain(images, pixel_size=0.1)``."""
    return explainer_class(method)(model, **arguments)

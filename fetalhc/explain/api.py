"""The entry points: :func:`explain_batch` / :func:`explain` and their :class:`Explanation`;
:func:`check_methods` checks a request against a model without running it.

They normalise the inputs, look the method up in the registry, run its traced function batch
by batch, and assemble an :class:`Explanation`. Traced functions are cached per model (in
:func:`fetalhc.explain.views.model_cache`) and per (method, options, target, output, input
shape, batch and chunk sizes); the batch axis is left unknown in the signature, so a function
is traced once and reused for every batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from fetalhc.explain.inputs import normalise_inputs
from fetalhc.explain.method import ExplainContext, Method
from fetalhc.explain.registry import get_method
from fetalhc.explain.targets import get_target, resolve_output_units
from fetalhc.explain.views import hc_output_model, model_cache, model_input_shape

DEFAULT_BATCH_SIZE = 8
DEFAULT_CHUNK_SIZE = 8  # measured: 8 inputs per pass beat 64 by 1.4x on CPU (docs/explain.md)


@dataclass
class Explanation:
    """Maps and per-image metadata of one method on N images.

    ``maps``: float32 ``(N, H, W)``, signed (positive raises the target), in ``units``.
    ``metadata``: per-image arrays of length N: ``prediction_px_input``, ``prediction_mm``
    (NaN without a pixel size), ``target_value`` (in ``target_units``), ``pixel_size_mm``,
    ``reference_mm`` (NaN where unknown), plus what the method reports, e.g.
    ``completeness_gap`` (IG, in ``target_units``) or ``conservation_gap`` (relevance methods).
    ``info``: run-level facts (method options, resolved layer, quadrature, baseline, ...).
    """

    maps: np.ndarray
    method: str
    target: str
    units: str
    target_units: str
    metadata: dict[str, np.ndarray]
    info: dict[str, Any]

    def __len__(self) -> int:
        return len(self.maps)


def _resolve_sizes(batch_size, chunk_size) -> tuple[int, int]:
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    chunk_size = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
    for name, value in (("batch_size", batch_size), ("chunk_size", chunk_size)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
    return int(batch_size), int(chunk_size)


def _traced(context: ExplainContext, method: Method, extras: Mapping[str, np.ndarray]):
    """The cached function running ``method.attribute`` on one batch (traced once)."""
    cache = model_cache(context.model)
    extra_names = tuple(sorted(extras))
    key = (
        method.name, method.cache_key(), context.target.name, context.output_units,
        context.output,
        tuple(context.input_shape), context.batch_size, context.chunk_size,
        tuple((name, tuple(extras[name].shape[1:])) for name in extra_names),
    )
    function = cache.functions.get(key)
    if function is not None:
        return function

    def run(images, pixel_size, reference, *extra_values):
        return method.attribute(
            context, images, pixel_size, reference, **dict(zip(extra_names, extra_values, strict=True))
        )

    signature = [
        tf.TensorSpec((None, *context.input_shape), tf.float32),
        tf.TensorSpec((None,), tf.float32),
        tf.TensorSpec((None,), tf.float32),
    ] + [
        tf.TensorSpec((None, *extras[name].shape[1:]), tf.float32) for name in extra_names
    ]
    function = tf.function(run, input_signature=signature, autograph=False)
    cache.functions[key] = function
    return function


def _forward(context: ExplainContext):
    cache = model_cache(context.model)
    key = ("__forward__", context.output, tuple(context.input_shape))  # the raw HC output
    if key not in cache.functions:
        cache.functions[key] = tf.function(
            context.predict_px,
            input_signature=[tf.TensorSpec((None, *context.input_shape), tf.float32)],
            autograph=False,
        )
    return cache.functions[key]


@contextlib.contextmanager
def _named_errors(method: str):
    """Prefix a method's ValueError / NotImplementedError with the method name (one line)."""
    try:
        yield
    except (ValueError, NotImplementedError) as error:
        message = " ".join(str(error).split())
        if message.startswith(f"{method}:") or message.startswith(f"{method} "):
            raise
        raise type(error)(f"{method}: {message}") from error


def _run(context, method, images, pixel_size, reference, extras):
    """Run ``method``'s traced function over ``images`` in batches -> (maps, reports)."""
    function = _traced(context, method, extras)
    extra_names = sorted(extras)
    batch_size = context.batch_size
    maps, reports = [], {}
    for start in range(0, len(images), batch_size):
        stop = min(start + batch_size, len(images))
        with _named_errors(method.name):
            result = function(
                tf.constant(images[start:stop]),
                tf.constant(pixel_size[start:stop]),
                tf.constant(reference[start:stop]),
                *[tf.constant(extras[name][start:stop]) for name in extra_names],
            )
        result = dict(result)
        attribution = result.pop("map")
        if attribution.shape.rank == 4:
            attribution = tf.reduce_sum(attribution, axis=-1)
        maps.append(np.asarray(attribution, np.float32))
        for name, value in result.items():
            reports.setdefault(name, []).append(np.asarray(value, np.float32).reshape(stop - start))
    return (np.concatenate(maps).astype(np.float32),
            {name: np.concatenate(values) for name, values in reports.items()})


def _check_target_inputs(target, inputs) -> None:
    """One-line ValueErrors for a target without the pixel sizes / references it needs."""
    if target.needs_pixel_size and inputs.pixel_size is None:
        raise ValueError(
            f"target {target.name!r} needs pixel_size (mm per input pixel); pass "
            "pixel_size= or a dataset with 'pixel_size_mm', or use target='hc_px_input'"
        )
    if inputs.pixel_size is not None and not np.all(np.isfinite(inputs.pixel_size) & (inputs.pixel_size > 0)):
        if target.needs_pixel_size:
            raise ValueError("pixel_size must be finite and > 0 for every image")
    if target.needs_reference:
        if inputs.reference is None:
            raise ValueError(f"target {target.name!r} needs reference= (reference HC in mm)")
        if not np.all(np.isfinite(inputs.reference)):
            raise ValueError(f"target {target.name!r} needs a finite reference HC for every image")


def check_methods(model, methods, target: str = "hc_mm", options: Mapping[str, Mapping] | None = None,
                  *, images=None, pixel_size=None, reference=None, input_shape=None,
                  output: str | int | None = None, batch_size: int | None = None,
                  chunk_size: int | None = None,
                  output_units: str | None = None) -> dict[str, Method]:
    """Everything :func:`explain_batch` would refuse about ``methods`` on ``model``, checked
    without computing a map, so a caller can refuse a request before it writes anything.

    ``options``: method name -> its options (a name not in ``methods`` is refused). Checks
    each method's options, the target, the sizes, the model's HC output and input, and
    each method against the model (:meth:`Method.setup`: e.g. Grad-CAM's ``layer_name``
    must name a 4-D layer, an occlusion patch must fit the input, relevance methods need
    layers they cover). Given ``images`` (and the ``pixel_size`` / ``reference`` the target
    needs) also the per-image preparation (:meth:`Method.prepare`: e.g. LRP input bounds
    holding every pixel) and the target's inputs; else the input shape is ``input_shape``
    ``(H, W, C)`` or the model's declared one. Raises one-line ValueErrors prefixed with
    the method's name; returns the set-up methods by name. Cheap: views and relevance plans
    are cached per model and reused by the runs that follow."""
    options = dict(options or {})
    methods = list(methods)
    stray = sorted(set(options) - set(methods))
    if stray:
        raise ValueError(f"options given for {', '.join(map(repr, stray))}, which is not among "
                         f"the methods ({', '.join(methods) or 'none'})")
    instances = {name: get_method(name)(**dict(options.get(name, {}))) for name in methods}
    units = resolve_output_units(model, target, output, output_units)
    target_object = get_target(target, units)
    batch_size, chunk_size = _resolve_sizes(batch_size, chunk_size)
    hc_model = hc_output_model(model, output)
    declared = model_input_shape(hc_model)
    inputs = None
    if images is not None:
        inputs = normalise_inputs(images, pixel_size, reference, declared)
        _check_target_inputs(target_object, inputs)
        shape = tuple(int(d) for d in inputs.images.shape[1:])
    else:
        shape = tuple(input_shape) if input_shape is not None else tuple(declared or ())
        if len(shape) != 3 or any(d is None for d in shape):
            raise ValueError(f"the model {model.name!r} has no fixed input size; pass "
                             "input_shape=(H, W, C) or images=")
        if declared is not None and any(expected is not None and expected != got
                                        for expected, got in zip(declared, shape, strict=True)):
            raise ValueError(f"images of shape {shape} do not fit the model input {declared}")
        shape = tuple(int(d) for d in shape)
    context = ExplainContext(model=model, hc_model=hc_model, target=target_object,
                             input_shape=shape, batch_size=batch_size, chunk_size=chunk_size,
                             output=output, output_units=units)
    for name, method in instances.items():
        with _named_errors(name):
            method.setup(context)
            if inputs is not None:
                method.prepare(context, inputs.images)
    return instances


def explain_batch(
    model,
    images,
    method: str = "integrated_gradients",
    target: str = "hc_mm",
    pixel_size=None,
    reference=None,
    output: str | int | None = None,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    output_units: str | None = None,
    **options,
) -> Explanation:
    """Explain the HC prediction of ``model`` on ``images`` with a registered method.

    ``batch_size``: images per traced call; ``chunk_size``: model inputs per forward /
    backward pass (images x samples, path points or patches). ``output_units``: ``"mm"``
    or ``"px"``, the unit of a model's HC output that does not say it (a fetalhc output is
    in px; an undeclared unit is an error for a target in mm). Other keyword arguments are
    the method's options (see ``get_method(name).defaults``).
    """
    method_class = get_method(method)
    method_instance = method_class(**options)
    units = resolve_output_units(model, target, output, output_units)
    target_object = get_target(target, units)
    batch_size, chunk_size = _resolve_sizes(batch_size, chunk_size)
    hc_model = hc_output_model(model, output)
    declared_shape = model_input_shape(hc_model)
    inputs = normalise_inputs(images, pixel_size, reference, declared_shape)
    n = len(inputs.images)
    _check_target_inputs(target_object, inputs)
    context = ExplainContext(
        model=model, hc_model=hc_model, target=target_object,
        input_shape=tuple(int(d) for d in inputs.images.shape[1:]),
        batch_size=batch_size, chunk_size=chunk_size, output=output, output_units=units,
    )
    with _named_errors(method_instance.name):
        method_instance.setup(context)
    pixel_size_array = inputs.pixel_size if inputs.pixel_size is not None else np.full(n, np.nan, np.float32)
    reference_array = inputs.reference if inputs.reference is not None else np.full(n, np.nan, np.float32)
    extras = {
        name: np.asarray(value, np.float32)
        for name, value in method_instance.prepare(context, inputs.images).items()
    }
    for name, value in extras.items():
        if len(value) != n:
            raise ValueError(f"{method}: prepared input {name!r} has {len(value)} rows for {n} images")
    maps, reports = _run(context, method_instance, inputs.images, pixel_size_array,
                         reference_array, extras)
    forward = _forward(context)
    predictions = [
        np.asarray(forward(tf.constant(inputs.images[start:start + batch_size])), np.float32)
        for start in range(0, n, batch_size)
    ]
    raw_output = np.concatenate(predictions)
    if units == "mm":
        prediction_mm, prediction_px = raw_output, raw_output / pixel_size_array
    else:
        prediction_mm, prediction_px = raw_output * pixel_size_array, raw_output
    target_value = np.asarray(
        target_object(tf.constant(raw_output), tf.constant(pixel_size_array), tf.constant(reference_array)),
        np.float32,
    )
    metadata = {
        "prediction_px_input": prediction_px,
        "prediction_mm": prediction_mm.astype(np.float32),
        "target_value": target_value,
        "pixel_size_mm": pixel_size_array,
        "reference_mm": reference_array,
        **reports,
    }
    if "filename" in inputs.extra:
        metadata["filename"] = inputs.extra["filename"]
    info = {
        "method": method_instance.name,
        "target": target_object.name,
        "target_units": target_object.units,
        "output_units": units,
        "units": method_instance.units(target_object),
        "batch_size": batch_size,
        "chunk_size": chunk_size,
        **method_instance.metadata(context),
    }
    if not np.all(np.isfinite(maps)):
        raise ValueError(f"{method}: the map has non-finite values (check the model and the inputs)")
    return Explanation(
        maps=maps,
        method=method_instance.name,
        target=target_object.name,
        units=info["units"],
        target_units=target_object.units,
        metadata=metadata,
        info=info,
    )


def explain(
    model,
    images,
    method: str = "integrated_gradients",
    target: str = "hc_mm",
    pixel_size=None,
    reference=None,
    output: str | int | None = None,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    output_units: str | None = None,
    **options,
) -> np.ndarray:
    """Signed saliency maps, float32 ``(N, H, W)``; see :func:`explain_batch`."""
    return explain_batch(
        model, images, method=method, target=target, pixel_size=pixel_size,
        reference=reference, output=output, batch_size=batch_size, chunk_size=chunk_size,
        output_units=output_units, **options,
    ).maps

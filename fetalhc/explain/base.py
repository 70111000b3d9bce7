"""Shared machinery of every explanation method.

- :class:`Target`: the scalar per image that a method differentiates (``hc_mm``,
  ``hc_px_input``, ``abs_error_mm``), a function of the model's HC output.
- :func:`hc_output_model`: a single-output view on the HC output of any Keras model.
- :class:`Method`: base class of the methods. A method implements
  :meth:`Method.attribute`, which runs inside a ``tf.function`` on one batch of images and
  returns ``{"map": (B, H, W[, C]) tensor, <other per-image tensors (B,)>}``; the extra
  tensors land in :attr:`Explanation.metadata` (e.g. ``completeness_gap`` for Integrated
  Gradients, ``conservation_gap`` for relevance methods).
- :class:`ExplainContext`: what a method sees of the model (HC view, target, input shape,
  batch and chunk sizes) and helpers (target values, gradients, batched points).
- :func:`explain_batch` / :func:`explain`: normalise the inputs, look the method up in the
  registry, run its traced function batch by batch, and assemble an :class:`Explanation`.

Traced functions are cached per model (weakly, so a deleted model frees its cache) and per
(method, options, target, output, input shape, batch and chunk sizes); the batch axis is
left unknown in the signature, so a function is traced once and reused for every batch.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import keras
import numpy as np
import tensorflow as tf

from fetalhc.explain.registry import get_method

HC_OUTPUT_NAME = "hc_px_input"
DEFAULT_BATCH_SIZE = 8
DEFAULT_CHUNK_SIZE = 8  # measured: 8 inputs per pass beat 64 by 1.4x on CPU (docs/explain.md)


# --------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Target:
    """A scalar per image computed from the HC output (``prediction_px``, input pixels).

    ``function(prediction_px, pixel_size_mm, reference_mm)`` works element-wise with
    broadcasting, so it serves a batch ``(B,)`` and a batch of points ``(K, B)`` alike.
    """

    name: str
    units: str
    needs_pixel_size: bool
    needs_reference: bool
    function: Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]
    description: str = ""

    def __call__(self, prediction_px, pixel_size_mm, reference_mm):
        return self.function(prediction_px, pixel_size_mm, reference_mm)


TARGETS: dict[str, Target] = {
    "hc_mm": Target(
        "hc_mm", "mm", True, False,
        lambda prediction, pixel_size, reference: prediction * pixel_size,
        "predicted HC in mm (HC output in input px times mm per input px)",
    ),
    "hc_px_input": Target(
        "hc_px_input", "px", False, False,
        lambda prediction, pixel_size, reference: prediction,
        "predicted HC in pixels of the network input (the raw HC output)",
    ),
    "abs_error_mm": Target(
        "abs_error_mm", "mm", True, True,
        lambda prediction, pixel_size, reference: tf.abs(prediction * pixel_size - reference),
        "absolute error of the predicted HC in mm, |prediction_mm - reference_mm|",
    ),
}


def get_target(target: str | Target) -> Target:
    """The :class:`Target` named ``target`` (a Target passes through)."""
    if isinstance(target, Target):
        return target
    if isinstance(target, str) and target in TARGETS:
        return TARGETS[target]
    raise ValueError(f"unknown target {target!r}; known targets: {', '.join(TARGETS)}")


# --------------------------------------------------------------------------- model views
class _ModelCache:
    """Per-model cache: HC views, layer views and traced functions."""

    def __init__(self):
        self.views: dict[Any, keras.Model] = {}
        self.functions: dict[Any, Any] = {}
        self.float32_copy: keras.Model | None = None  # of a mixed-precision model


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _model_cache(model) -> _ModelCache:
    cache = _CACHE.get(model)
    if cache is None:
        cache = _ModelCache()
        _CACHE[model] = cache
    return cache


def clear_cache(model=None) -> None:
    """Forget traced functions and views (of one model, or of all models)."""
    if model is None:
        _CACHE.clear()
    else:
        _CACHE.pop(model, None)


def tracing_counts(model) -> dict[Any, int]:
    """How often each cached function of ``model`` was traced (1 each when nothing retraced)."""
    cache = _CACHE.get(model)
    if cache is None:
        return {}
    counts = {}
    for key, function in cache.functions.items():
        if isinstance(function, tf.types.experimental.PolymorphicFunction):
            counts[key] = function.experimental_get_tracing_count()
    return counts


def _output_names(model) -> list[str]:
    outputs = list(getattr(model, "outputs", None) or [])
    functional_names = list(getattr(model, "output_names", None) or [])
    if len(functional_names) == len(outputs):
        return [str(name) for name in functional_names]
    names = []
    for index, tensor in enumerate(outputs):
        history = getattr(tensor, "_keras_history", None)
        operation = getattr(history, "operation", None) if history is not None else None
        names.append(getattr(operation, "name", None) or f"output_{index}")
    return names


def model_input_shape(model) -> tuple[int | None, ...] | None:
    """(H, W, C) of the model's single image input, ``None`` entries where unknown."""
    inputs = getattr(model, "inputs", None)
    if not inputs:
        return None
    if len(inputs) != 1:
        raise ValueError(f"explanations need a model with one image input; this one has {len(inputs)}")
    shape = tuple(inputs[0].shape)
    if len(shape) != 4:
        raise ValueError(f"the model input must be 4-D (batch, H, W, C); got shape {shape}")
    return tuple(shape[1:])


def hc_output_model(model, output: str | int | None = None) -> keras.Model:
    """A single-output view of ``model`` on its HC output (cached per model and output).

    The HC output is ``output`` (a name or an index) when given, else the output named
    ``hc_px_input``, else the only output. The view shares the layers and weights of
    ``model``.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"expected a keras.Model, got {type(model).__name__}")
    cache = _model_cache(model)
    if output in cache.views:
        view = cache.views[output]
        if cache.float32_copy is not None and tf.executing_eagerly():
            cache.float32_copy.set_weights(model.get_weights())  # follow a model in training
        return view
    if cache.float32_copy is None and _is_mixed_precision(model):
        cache.float32_copy = float32_copy(model)
    source = cache.float32_copy if cache.float32_copy is not None else model
    view = _hc_view(source, output)
    cache.views[output] = view
    return view


def _is_mixed_precision(model) -> bool:
    return any(
        getattr(getattr(layer, "dtype_policy", None), "compute_dtype", "float32") != "float32"
        for layer in getattr(model, "layers", [])
    )


def float32_copy(model: keras.Model) -> keras.Model:
    """A float32 copy of a mixed-precision ``model`` (same weights; layers compute in float32).

    Explanations of a model trained with ``mixed_bfloat16`` or ``mixed_float16`` are computed
    in float32: bf16 gradients keep ~3 significant digits, too few for IG's completeness
    check or LRP's conservation. The weights are float32 variables in either case, so the
    copy predicts what the model would in float32.
    """

    try:
        return clone_with_dtype(model, "float32")
    except Exception as error:  # noqa: BLE001 - custom layers without a usable config
        raise ValueError(
            f"cannot explain the mixed-precision model {model.name!r} in float32: {error}"
        ) from None


def clone_with_dtype(model: keras.Model, dtype: str, keep=frozenset()) -> keras.Model:
    """A copy of ``model`` with the same weights whose layers, except those named in
    ``keep``, compute under the dtype policy ``dtype``."""

    def clone_layer(layer):
        config = layer.get_config()
        if layer.name not in keep and "dtype" in config:
            config["dtype"] = dtype
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone_layer)
    copy.set_weights(model.get_weights())
    return copy


def _hc_view(model, output) -> keras.Model:
    outputs = list(getattr(model, "outputs", None) or [])
    if not outputs:  # subclassed model: trust it has one output
        if output not in (None, 0):
            raise ValueError("cannot select an output of a model without symbolic outputs")
        view = model
    else:
        names = _output_names(model)
        if output is None:
            if HC_OUTPUT_NAME in names:
                index = names.index(HC_OUTPUT_NAME)
            elif len(outputs) == 1:
                index = 0
            else:
                raise ValueError(
                    f"model has {len(outputs)} outputs and none is named {HC_OUTPUT_NAME!r}; "
                    f"choose one with output=<name>: {', '.join(names)}"
                )
        elif isinstance(output, int | np.integer) and not isinstance(output, bool):
            if not 0 <= int(output) < len(outputs):
                raise ValueError(f"output index {output} out of range; outputs: {', '.join(names)}")
            index = int(output)
        elif isinstance(output, str) and output in names:
            index = names.index(output)
        else:
            raise ValueError(f"unknown output {output!r}; outputs: {', '.join(names)}")
        tensor = outputs[index]
        units = int(np.prod([dim for dim in tensor.shape[1:] if dim is not None] or [1]))
        if any(dim is None for dim in tensor.shape[1:]) or units != 1:
            raise ValueError(
                f"the HC output {names[index]!r} must have one unit per image; "
                f"its shape is {tuple(tensor.shape)}"
            )
        view = keras.Model(model_inputs(model), tensor, name=f"{model.name}_hc_view")
    return view


def model_inputs(model):
    """The model's input tensor (or list when it has several): a view built on the bare
    tensor takes a bare tensor, as fetalhc models do, without Keras' structure warning."""
    return model.inputs[0] if len(model.inputs) == 1 else model.inputs


def layer_view(model, layer_name: str, output=None) -> keras.Model:
    """A view returning ``[activation of layer_name, HC output]`` (cached per model/layer)."""
    hc_model = hc_output_model(model, output)
    cache = _model_cache(model)
    key = ("layer", output, layer_name)
    if key not in cache.views:
        layer = conv_layer(hc_model, layer_name)
        cache.views[key] = keras.Model(model_inputs(hc_model),
                                       [layer.output, hc_model.outputs[0]])
    return cache.views[key]


def _layer_output_rank(layer) -> int | None:
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError, TypeError):
        return None


def conv_layer_candidates(model) -> list[str]:
    """Names of the layers of ``model`` (not inputs) whose output is 4-D, in graph order."""
    return [
        layer.name
        for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer) and _layer_output_rank(layer) == 4
    ]


def conv_layer(model, layer_name: str):
    """The layer named ``layer_name`` of ``model`` if its output is 4-D, else a ValueError."""
    candidates = conv_layer_candidates(model)
    if layer_name not in candidates:
        names = {layer.name for layer in model.layers}
        problem = "is not 4-D" if layer_name in names else "does not exist"
        shown = candidates[-12:]
        more = f" (last {len(shown)} of {len(candidates)})" if len(candidates) > len(shown) else ""
        raise ValueError(
            f"layer {layer_name!r} {problem} in model {model.name!r}; 4-D layers{more}: "
            f"{', '.join(shown) or 'none'}"
        )
    return model.get_layer(layer_name)


def default_conv_layer_name(model, hc_model=None) -> str:
    """The backbone's recorded Grad-CAM layer (``fetalhc.models``) else the last 4-D layer."""
    hc_model = hc_model if hc_model is not None else hc_output_model(model)
    candidates = conv_layer_candidates(hc_model)
    recorded = None
    try:
        from fetalhc.models import gradcam_layer_name  # optional: explain works on any model
    except ImportError:
        gradcam_layer_name = None
    if gradcam_layer_name is not None:
        try:
            recorded = gradcam_layer_name(model)
        except (ValueError, KeyError, AttributeError, TypeError):
            recorded = None
    if recorded in candidates:
        return recorded
    if not candidates:
        raise ValueError(f"model {model.name!r} has no 4-D layer for Grad-CAM")
    return candidates[-1]


# --------------------------------------------------------------------------- context
@dataclass
class ExplainContext:
    """What a method sees: the original model, its HC view, the target and the sizes."""

    model: keras.Model
    hc_model: keras.Model
    target: Target
    input_shape: tuple[int, int, int]
    batch_size: int
    chunk_size: int
    output: str | int | None = None

    @property
    def points_per_pass(self) -> int:
        """Perturbed copies per image evaluated in one pass (samples, path points, patches)."""
        return max(1, self.chunk_size // self.batch_size)

    def predict_px(self, images: tf.Tensor) -> tf.Tensor:
        """HC output in input pixels, shape ``(B,)``; ``training=False``."""
        prediction = self.hc_model(images, training=False)
        return tf.reshape(tf.cast(prediction, tf.float32), [-1])

    def target_value(self, images, pixel_size, reference) -> tf.Tensor:
        return self.target(self.predict_px(images), pixel_size, reference)

    def value_and_gradient(self, images, pixel_size, reference):
        """(target ``(B,)``, d target / d images ``(B, H, W, C)``)."""
        with tf.GradientTape() as tape:
            tape.watch(images)
            value = self.target_value(images, pixel_size, reference)
        return value, tape.gradient(value, images)

    def points_value_and_gradient(self, points, pixel_size, reference):
        """Batched points ``(K, B, H, W, C)`` -> (target ``(K, B)``, gradients like points)."""
        shape = tf.shape(points)
        flat = tf.reshape(points, tf.concat([[-1], shape[2:]], axis=0))
        with tf.GradientTape() as tape:
            tape.watch(flat)
            prediction = tf.reshape(self.predict_px(flat), shape[:2])
            value = self.target(prediction, pixel_size[None, :], reference[None, :])
        gradient = tape.gradient(value, flat)
        return value, tf.reshape(gradient, shape)

    def points_value(self, points, pixel_size, reference):
        """Batched points ``(K, B, H, W, C)`` -> target ``(K, B)`` (forward only)."""
        shape = tf.shape(points)
        flat = tf.reshape(points, tf.concat([[-1], shape[2:]], axis=0))
        prediction = tf.reshape(self.predict_px(flat), shape[:2])
        return self.target(prediction, pixel_size[None, :], reference[None, :])

    def accumulate(self, n_points: int, step: Callable, initial):
        """``sum(step(start, stop))`` over chunks of ``points_per_pass`` of ``n_points`` points.

        ``step(start, stop)`` gets scalar int32 tensors and returns a structure like
        ``initial``; runs as one ``tf.while_loop`` so the model appears once in the graph.
        """
        per_pass = self.points_per_pass
        n_chunks = math.ceil(n_points / per_pass)

        def body(index, total):
            start = index * per_pass
            stop = tf.minimum(start + per_pass, n_points)
            increment = step(start, stop)
            return index + 1, tf.nest.map_structure(tf.add, total, increment)

        _, total = tf.while_loop(
            lambda index, total: index < n_chunks, body, (tf.constant(0), initial)
        )
        return total


# --------------------------------------------------------------------------- methods
class Method:
    """Base class of explanation methods; subclasses register with ``@register()``.

    Class attributes:
      ``name``: registry name; ``description``: one line;
      ``defaults``: option name -> default (unknown options raise ValueError);
      ``map_units``: units of the map, ``{target}`` stands for the target's units;
      ``traced``: run :meth:`attribute` inside a cached ``tf.function`` (else eagerly).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    map_units: ClassVar[str] = "{target}"
    traced: ClassVar[bool] = True

    def __init__(self, **options):
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            allowed = ", ".join(sorted(self.defaults)) or "none"
            raise ValueError(
                f"unknown option(s) {', '.join(unknown)} for method {self.name!r}; "
                f"its options: {allowed}"
            )
        self.options: dict[str, Any] = {**self.defaults, **options}
        self.validate()

    # --- hooks for subclasses
    def validate(self) -> None:
        """Check ``self.options``; raise a one-line ValueError on bad values."""

    def setup(self, context: ExplainContext) -> None:
        """Check the model is supported (ValueError otherwise) and resolve model-dependent
        options (e.g. the Grad-CAM layer). Called before every run; must be cheap."""

    def prepare(self, context: ExplainContext, images: np.ndarray) -> dict[str, np.ndarray]:
        """Extra per-image inputs of :meth:`attribute` computed outside the trace (leading
        axis N), e.g. IG baselines. Default: none."""
        return {}

    def attribute(self, context: ExplainContext, images, pixel_size, reference, **extras):
        """One batch -> ``{"map": (B, H, W[, C]), other per-image tensors (B,)}``."""
        raise NotImplementedError

    def refine_indices(self, reports: Mapping[str, np.ndarray]) -> np.ndarray | None:
        """Indices (into this run's images) whose result should be recomputed with
        :meth:`refined`; default none. ``reports`` are the per-image arrays of the run."""
        return None

    def refined(self) -> Method | None:
        """A more accurate (costlier) variant of this method, or None when at its limit."""
        return None

    def metadata(self, context: ExplainContext) -> dict[str, Any]:
        """Run-level metadata (e.g. the resolved layer, quadrature); default: the options."""
        return {key: _describe(value) for key, value in self.options.items()}

    def cache_key(self) -> tuple:
        """Hashable description of the options that change the traced graph."""
        return tuple(sorted((key, _describe(value)) for key, value in self.options.items()))

    def units(self, target: Target) -> str:
        return self.map_units.format(target=target.units)


def _describe(value):
    if isinstance(value, np.ndarray | tf.Tensor):
        return f"array{tuple(value.shape)}"
    if isinstance(value, list | tuple):
        return tuple(_describe(item) for item in value)
    return value


def check_positive_int(options: Mapping[str, Any], name: str, method: str, minimum: int = 1):
    value = options[name]
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{method}: {name} must be an integer >= {minimum}; got {value!r}")


def check_choice(options: Mapping[str, Any], name: str, method: str, choices) -> None:
    if options[name] not in choices:
        raise ValueError(
            f"{method}: unknown {name} {options[name]!r}; choose one of: {', '.join(choices)}"
        )


# --------------------------------------------------------------------------- inputs
@dataclass
class Inputs:
    images: np.ndarray  # float32 (N, H, W, C)
    pixel_size: np.ndarray | None  # float32 (N,)
    reference: np.ndarray | None  # float32 (N,)
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # filename, annotation


def _per_image(value, n: int, name: str) -> np.ndarray | None:
    if value is None:
        return None
    array = np.asarray(value.numpy() if isinstance(value, tf.Tensor) else value)
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} must be numeric; got dtype {array.dtype}")
    array = array.astype(np.float32).reshape(-1)
    if array.size == 1:
        array = np.full(n, array[0], np.float32)
    if array.size != n:
        raise ValueError(f"{name} needs one value per image ({n}); got {array.size}")
    return array


def _from_dataset(dataset: tf.data.Dataset):
    images, pixel_sizes, references, extra = [], [], [], {}
    for element in dataset.as_numpy_iterator():
        if not isinstance(element, Mapping) or "image" not in element:
            raise ValueError(
                "a tf.data.Dataset for explain must yield dicts with an 'image' key "
                "(as fetalhc.data.make_dataset does)"
            )
        image = np.asarray(element["image"])
        batched = image.ndim == 4
        if not batched:
            image = image[None]
        images.append(image)
        n = len(image)
        pixel_sizes.append(element.get("pixel_size_mm"))
        references.append(element.get("hc_mm"))
        for key in ("filename", "annotation"):
            if key in element:
                value = np.asarray(element[key])
                extra.setdefault(key, []).append(value if batched else value[None])
        if element.get("pixel_size_mm") is not None:
            pixel_sizes[-1] = np.asarray(element["pixel_size_mm"], np.float32).reshape(n)
        if element.get("hc_mm") is not None:
            references[-1] = np.asarray(element["hc_mm"], np.float32).reshape(n)
    if not images:
        raise ValueError("the dataset yielded no images")
    pixel_size = None if any(p is None for p in pixel_sizes) else np.concatenate(pixel_sizes)
    reference = None if any(r is None for r in references) else np.concatenate(references)
    extra = {
        key: np.concatenate(values) for key, values in extra.items() if len(values) == len(images)
    }
    return np.concatenate(images), pixel_size, reference, extra


def normalise_inputs(images, pixel_size=None, reference=None, input_shape=None) -> Inputs:
    """Images (numpy, tensor or dataset of dicts) -> :class:`Inputs`, validated.

    Explicit ``pixel_size`` / ``reference`` override values taken from a dataset.
    """
    extra: dict[str, np.ndarray] = {}
    if isinstance(images, tf.data.Dataset):
        array, data_pixel_size, data_reference, extra = _from_dataset(images)
        pixel_size = data_pixel_size if pixel_size is None else pixel_size
        reference = data_reference if reference is None else reference
    elif isinstance(images, tf.Tensor | tf.Variable):
        if not images.dtype.is_floating:
            raise ValueError(f"images must be floating point (z-scored); got dtype {images.dtype.name}")
        array = images.numpy()
    elif isinstance(images, np.ndarray):
        array = images
    else:
        raise ValueError(
            "images must be a numpy array, a tensor (N, H, W, C) or a tf.data.Dataset of "
            f"dicts; got {type(images).__name__}"
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"images must be floating point (z-scored); got dtype {array.dtype}")
    if array.ndim != 4:
        raise ValueError(f"images must be 4-D (N, H, W, C); got shape {tuple(array.shape)}")
    if array.shape[0] == 0:
        raise ValueError("no images to explain")
    if input_shape is not None and any(
        expected is not None and expected != got
        for expected, got in zip(input_shape, array.shape[1:], strict=True)
    ):
        raise ValueError(
            f"images of shape {tuple(array.shape[1:])} do not fit the model input "
            f"{tuple(input_shape)}"
        )
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.all(np.isfinite(array)):
        raise ValueError("images contain NaN or infinite values")
    n = len(array)
    return Inputs(
        images=array,
        pixel_size=_per_image(pixel_size, n, "pixel_size"),
        reference=_per_image(reference, n, "reference"),
        extra=extra,
    )


# --------------------------------------------------------------------------- results
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
    cache = _model_cache(context.model)
    extra_names = tuple(sorted(extras))
    key = (
        method.name, method.cache_key(), context.target.name, context.output,
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

    if not method.traced:
        cache.functions[key] = run
        return run
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
    cache = _model_cache(context.model)
    key = ("__forward__", context.output, tuple(context.input_shape))
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
    **options,
) -> Explanation:
    """Explain the HC prediction of ``model`` on ``images`` with a registered method.

    ``batch_size``: images per traced call; ``chunk_size``: model inputs per forward /
    backward pass (images x samples, path points or patches). Other keyword arguments are
    the method's options (see ``get_method(name).defaults``).
    """
    method_class = get_method(method)
    method_instance = method_class(**options)
    target_object = get_target(target)
    batch_size, chunk_size = _resolve_sizes(batch_size, chunk_size)
    hc_model = hc_output_model(model, output)
    declared_shape = model_input_shape(hc_model)
    inputs = normalise_inputs(images, pixel_size, reference, declared_shape)
    n = len(inputs.images)
    if target_object.needs_pixel_size and inputs.pixel_size is None:
        raise ValueError(
            f"target {target_object.name!r} needs pixel_size (mm per input pixel); pass "
            "pixel_size= or a dataset with 'pixel_size_mm', or use target='hc_px_input'"
        )
    if inputs.pixel_size is not None and not np.all(np.isfinite(inputs.pixel_size) & (inputs.pixel_size > 0)):
        if target_object.needs_pixel_size:
            raise ValueError("pixel_size must be finite and > 0 for every image")
    if target_object.needs_reference:
        if inputs.reference is None:
            raise ValueError(f"target {target_object.name!r} needs reference= (reference HC in mm)")
        if not np.all(np.isfinite(inputs.reference)):
            raise ValueError(f"target {target_object.name!r} needs a finite reference HC for every image")
    context = ExplainContext(
        model=model, hc_model=hc_model, target=target_object,
        input_shape=tuple(int(d) for d in inputs.images.shape[1:]),
        batch_size=batch_size, chunk_size=chunk_size, output=output,
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
    # methods may refine the images they are not satisfied with (e.g. IG: more points)
    pending = method_instance.refine_indices(reports)
    refining = method_instance
    while pending is not None and len(pending):
        refining = refining.refined()
        if refining is None:
            break
        with _named_errors(method_instance.name):
            refining.setup(context)
        sub_extras = {name: value[pending] for name, value in extras.items()}
        sub_maps, sub_reports = _run(context, refining, inputs.images[pending],
                                     pixel_size_array[pending], reference_array[pending], sub_extras)
        maps[pending] = sub_maps
        for name, values in sub_reports.items():
            reports[name][pending] = values
        still = refining.refine_indices(sub_reports)
        pending = pending[still] if still is not None else None
    forward = _forward(context)
    predictions = [
        np.asarray(forward(tf.constant(inputs.images[start:start + batch_size])), np.float32)
        for start in range(0, n, batch_size)
    ]
    prediction_px = np.concatenate(predictions)
    prediction_mm = prediction_px * pixel_size_array
    target_value = np.asarray(
        target_object(tf.constant(prediction_px), tf.constant(pixel_size_array), tf.constant(reference_array)),
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
        "units": method_instance.units(target_object),
        "batch_size": batch_size,
        "chunk_size": chunk_size,
        **method_instance.metadata(context),
    }
    maps_array = maps
    if not np.all(np.isfinite(maps_array)):
        raise ValueError(f"{method}: the map has non-finite values (check the model and the inputs)")
    return Explanation(
        maps=maps_array,
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
    **options,
) -> np.ndarray:
    """Signed saliency maps, float32 ``(N, H, W)``; see :func:`explain_batch`."""
    return explain_batch(
        model, images, method=method, target=target, pixel_size=pixel_size,
        reference=reference, output=output, batch_size=batch_size, chunk_size=chunk_size,
        **options,
    ).maps

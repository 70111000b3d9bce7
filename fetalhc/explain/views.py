"""What explain sees of a model: cached views on its HC output and its 4-D layers.

- :func:`hc_output_model`: a single-output view on the HC output of any Keras model (the
  HC output rule and the view itself come from :mod:`fetalhc.models.graph`); a
  mixed-precision model is viewed through a float32 copy that follows its weights.
- :func:`layer_view`, :func:`conv_layer_candidates`, :func:`conv_layer`,
  :func:`check_conv_layer`, :func:`default_conv_layer_name`: the 4-D layers Grad-CAM can
  use.
- :func:`model_cache`: the per-model cache of those views and of the traced functions
  (weak, so a deleted model frees its cache); :func:`clear_cache`, :func:`tracing_counts`.
"""

from __future__ import annotations

import weakref
from typing import Any

import keras
import tensorflow as tf

from fetalhc.models import gradcam_layer_name
from fetalhc.models.graph import (
    clone_with_dtype,
    hc_output_view,
    is_mixed_precision,
    layer_output_in,
    model_inputs,
)


class ModelCache:
    """Per-model cache: HC views, layer views and traced functions."""

    def __init__(self):
        self.views: dict[Any, keras.Model] = {}
        self.functions: dict[Any, Any] = {}
        self.float32_copy: keras.Model | None = None  # of a mixed-precision model


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def model_cache(model) -> ModelCache:
    """The cache of ``model`` (created on first use)."""
    cache = _CACHE.get(model)
    if cache is None:
        cache = ModelCache()
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


# --------------------------------------------------------------------------- HC output view
def hc_output_model(model, output: str | int | None = None) -> keras.Model:
    """A single-output view of ``model`` on its HC output (cached per model and output).

    The HC output is ``output`` (a name or an index) when given, else the output named
    ``hc_px_input``, else the only output. The view shares the layers and weights of
    ``model``.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"expected a keras.Model, got {type(model).__name__}")
    cache = model_cache(model)
    if output in cache.views:
        view = cache.views[output]
        if cache.float32_copy is not None and tf.executing_eagerly():
            cache.float32_copy.set_weights(model.get_weights())  # follow a model in training
        return view
    if cache.float32_copy is None and is_mixed_precision(model):
        cache.float32_copy = float32_copy(model)
    source = cache.float32_copy if cache.float32_copy is not None else model
    view = hc_output_view(source, output)
    cache.views[output] = view
    return view


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


# --------------------------------------------------------------------------- 4-D layers
def layer_view(model, layer_name: str, output=None) -> keras.Model:
    """A view returning ``[activation of layer_name, HC output]`` (cached per model/layer)."""
    hc_model = hc_output_model(model, output)
    cache = model_cache(model)
    key = ("layer", output, layer_name)
    if key not in cache.views:
        conv_layer(hc_model, layer_name)  # a one-line error unless 4-D
        cache.views[key] = keras.Model(model_inputs(hc_model),
                                       [layer_output_in(hc_model, layer_name),
                                        hc_model.outputs[0]])
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


SHOWN_LAYERS = 12  # 4-D layers an error lists (the last ones: Grad-CAM's usual choices)


def check_conv_layer(model, layer_name, what: str = "layer", model_name: str | None = None) -> None:
    """A one-line ValueError unless ``model`` has a layer ``layer_name`` with a 4-D output;
    the message says ``what`` was wrong (e.g. ``"layer_name"``, the option), names the model
    as ``model_name`` (default ``model.name``; the user's model rather than its HC view)
    and lists the 4-D layers to choose from."""
    candidates = conv_layer_candidates(model)
    if layer_name in candidates:
        return
    names = {layer.name for layer in model.layers}
    problem = "is not 4-D" if layer_name in names else "does not exist"
    shown = candidates[-SHOWN_LAYERS:]
    more = f" (the last {len(shown)} of {len(candidates)})" if len(candidates) > len(shown) else ""
    raise ValueError(
        f"{what} {layer_name!r} {problem} in model {model_name or model.name!r}; choose one "
        f"of its 4-D layers{more}: {', '.join(shown) or 'none'}"
    )


def conv_layer(model, layer_name: str):
    """The layer named ``layer_name`` of ``model`` if its output is 4-D, else a ValueError."""
    check_conv_layer(model, layer_name)
    return model.get_layer(layer_name)


def default_conv_layer_name(model, hc_model=None) -> str:
    """The backbone's recorded Grad-CAM layer (``fetalhc.models``) else the last 4-D layer."""
    hc_model = hc_model if hc_model is not None else hc_output_model(model)
    candidates = conv_layer_candidates(hc_model)
    try:
        recorded = gradcam_layer_name(model)
    except (ValueError, KeyError, AttributeError, TypeError):
        recorded = None
    if recorded in candidates:
        return recorded
    if not candidates:
        raise ValueError(f"model {model.name!r} has no 4-D layer for Grad-CAM")
    return candidates[-1]

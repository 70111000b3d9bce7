"""The one place that reads a Keras model's graph: its outputs, the HC output, its nodes.

Everything in fetalhc that needs "the HC output of this model", the names of a model's
outputs, the layer that produced a tensor, the nodes of a functional graph in order, every
nested layer, or a copy of a model computing in another dtype asks this module. It is also
the only module that touches Keras' private graph attributes (``_keras_history``,
``_nodes_by_depth``, ``_flatten_layers``): Keras 3 exposes no public API for them, so when
Keras changes them, this file is the one to mend (``tests/test_architecture.py`` checks that
no other module reads them).

The HC output rule (docs/architecture.md): ``output`` when given (a name or an index), else
the output named ``hc_px_input``, else the one named ``hc_px_raw`` (an exported model's,
:mod:`fetalhc.models.export`), else the only output; anything else is a ``ValueError`` that
lists the outputs. The HC output's view takes the one image input it depends on (an
exported model's pixel-size input is left out: the explained targets multiply by the pixel
size themselves).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

HC_OUTPUT = "hc_px_input"  # the HC output layer of every fetalhc model (HC in input px)
# the HC output of an exported end-to-end model (fetalhc.models.export): in pixels of its
# raw image input, the pixel size being its other input
RAW_HC_OUTPUT = "hc_px_raw"
OUTPUT_UNITS = ("px", "mm")  # what a model's HC output may be in (declared for other models)


# ----------------------------------------------------------------------------- tensors
def producing_layer(tensor) -> Any | None:
    """The layer (operation) whose output ``tensor`` is; ``None`` for a non-Keras tensor."""
    history = getattr(tensor, "_keras_history", None)
    return getattr(history, "operation", None) if history is not None else None


def output_names(model) -> list[str]:
    """Names of a model's outputs: Keras' ``output_names`` when it has one per output, else
    the names of the layers that produce them (``output_<i>`` where there is none)."""
    outputs = model_outputs(model)
    names = list(getattr(model, "output_names", None) or [])
    if len(names) == len(outputs):
        return [str(name) for name in names]
    result = []
    for index, tensor in enumerate(outputs):
        layer = producing_layer(tensor)
        result.append(getattr(layer, "name", None) or f"output_{index}")
    return result


def output_layer_names(model) -> set[str]:
    """Names of the layers that produce the model's outputs."""
    return {
        layer.name for layer in (producing_layer(t) for t in model_outputs(model)) if layer
    }


def model_outputs(model) -> list:
    """The model's symbolic outputs as a list (empty for a subclassed model)."""
    outputs = getattr(model, "outputs", None) or []
    return list(outputs) if isinstance(outputs, list | tuple) else [outputs]


def model_inputs(model):
    """The model's input tensor (or list when it has several): a view built on the bare
    tensor takes a bare tensor, as fetalhc models do, without Keras' structure warning."""
    return model.inputs[0] if len(model.inputs) == 1 else model.inputs


# ----------------------------------------------------------------------------- HC output
def hc_output_index(model, output: str | int | None = None) -> int:
    """Index of the HC output among the model's outputs (the rule in the module docstring)."""
    names = output_names(model)
    if not names:
        raise ValueError(f"model {getattr(model, 'name', '?')!r} has no symbolic outputs")
    if output is None:
        for name in (HC_OUTPUT, RAW_HC_OUTPUT):
            if name in names:
                return names.index(name)
        if len(names) == 1:
            return 0
        raise ValueError(
            f"model has {len(names)} outputs and none is named {HC_OUTPUT!r}; "
            f"choose one with output=<name>: {', '.join(names)}"
        )
    if isinstance(output, int | np.integer) and not isinstance(output, bool):
        if not 0 <= int(output) < len(names):
            raise ValueError(f"output index {output} out of range; outputs: {', '.join(names)}")
        return int(output)
    if isinstance(output, str) and output in names:
        return names.index(output)
    raise ValueError(f"unknown output {output!r}; outputs: {', '.join(names)}")


def check_output_units(units: str | None) -> str | None:
    """``units`` if it is ``None`` or one of :data:`OUTPUT_UNITS`, else a one-line
    ValueError."""
    if units is not None and units not in OUTPUT_UNITS:
        raise ValueError(f"output units must be one of {', '.join(OUTPUT_UNITS)}; got {units!r}")
    return units


def hc_in_units(values, pixel_size_mm, units: str, to: str):
    """HC values of an output in ``units`` (``"px"``: pixels of the input, or ``"mm"``) read
    in ``to``: times (px → mm) or divided by (mm → px) the mm per input pixel
    ``pixel_size_mm`` ``(N,)``, broadcast over the trailing axes of ``values`` ``(N, ...)``;
    the same values when the units agree, ``None`` for ``None``. The one place an HC output
    changes unit with the pixel size (numpy; the explain targets do it in the graph)."""
    if values is None or units == to:
        return values
    values = np.asarray(values)
    size = np.asarray(pixel_size_mm)
    size = size.reshape(size.shape + (1,) * (values.ndim - size.ndim))
    return values * size if to == "mm" else values / size


def hc_output_units(model, output: str | int | None = None,
                    units: str | None = None) -> str | None:
    """The unit of the model's HC output: ``"px"`` (HC in pixels of the model's input; times
    mm per input pixel gives mm) or ``"mm"``. A fetalhc output (``hc_px_input``, or an
    exported model's ``hc_px_raw``) is in px; any other is what ``units`` declares, ``None``
    when nothing does (the caller refuses to guess where the unit matters). Declaring ``mm``
    for a px output is a one-line ValueError."""
    check_output_units(units)
    name = output_names(model)[hc_output_index(model, output)] if model_outputs(model) else None
    if name in (HC_OUTPUT, RAW_HC_OUTPUT):
        if units == "mm":
            raise ValueError(f"the HC output {name!r} of model {model.name!r} is in pixels "
                             "(a fetalhc output); it cannot be declared in mm")
        return "px"
    return units


def require_output_units(model, output: str | int | None = None,
                         units: str | None = None) -> str:
    """:func:`hc_output_units`, never ``None``: a model whose HC output does not say its unit
    and is not declared is a one-line ValueError (its output would be read in mm or in px on
    a guess)."""
    resolved = hc_output_units(model, output, units)
    if resolved is None:
        raise ValueError(
            f"the HC output of model {getattr(model, 'name', '?')!r} does not say its unit: "
            "declare output_units='mm' (it predicts HC in mm) or 'px' (HC in pixels of its "
            "input, times the pixel size = mm); on the command line --output-units")
    return resolved


def hc_output_tensor(model, output: str | int | None = None):
    """The model's symbolic HC output tensor."""
    return model_outputs(model)[hc_output_index(model, output)]


def hc_output_value(outputs, model, name: str | None = None):
    """Pick the output ``name`` (default: the HC output, by the rule of
    :func:`hc_output_index`) from what calling ``model`` returned (a dict, a list in the order
    of the model's outputs, or a single tensor)."""
    if name is None:
        if not isinstance(outputs, dict | list | tuple):
            return outputs
        name = output_names(model)[hc_output_index(model)]
    if isinstance(outputs, dict):
        return outputs[name]
    if isinstance(outputs, list | tuple):
        return outputs[output_names(model).index(name)]
    return outputs


def hc_output_view(model, output: str | int | None = None) -> keras.Model:
    """A single-output functional view of ``model`` on its HC output (not cached; sharing the
    layers and weights of ``model``). A subclassed model without symbolic outputs is
    returned as it is when ``output`` is ``None`` or 0."""
    if not isinstance(model, keras.Model):
        raise ValueError(f"expected a keras.Model, got {type(model).__name__}")
    if not model_outputs(model):
        if output not in (None, 0):
            raise ValueError("cannot select an output of a model without symbolic outputs")
        return model
    index = hc_output_index(model, output)
    tensor = model_outputs(model)[index]
    shape = tuple(tensor.shape[1:])
    if any(dim is None for dim in shape) or int(np.prod(shape or (1,))) != 1:
        raise ValueError(
            f"the HC output {output_names(model)[index]!r} must have one unit per image; "
            f"its shape is {tuple(tensor.shape)}"
        )
    name = f"{model.name}_hc_view"
    if len(model.inputs) > 1:  # e.g. an exported model: the HC in px needs the image only
        for candidate in model.inputs:
            try:
                return keras.Model(candidate, tensor, name=name)
            except ValueError:  # the output needs other inputs too
                continue
    return keras.Model(model_inputs(model), tensor, name=name)


# ----------------------------------------------------------------------------- graph walk
def nodes_in_order(model) -> list:
    """The operation nodes of a functional ``model`` from its inputs to its outputs (input
    nodes left out); a ``ValueError`` for a model without a functional graph."""
    nodes_by_depth = getattr(model, "_nodes_by_depth", None)
    if nodes_by_depth is None:
        raise ValueError(
            f"model {model.name!r} ({type(model).__name__}) is not a functional model; "
            "modified backward passes need a functional graph"
        )
    ordered = []
    for depth in sorted(nodes_by_depth, reverse=True):
        for node in nodes_by_depth[depth]:
            if node.operation is None or node.is_input:
                continue
            ordered.append(node)
    return ordered


def replay_nodes(model, values: dict, skip=()) -> dict:
    """Apply the nodes of a functional ``model``, in order, to new tensors: ``values`` maps
    ``id(symbolic tensor)`` of ``model``'s graph to the tensor that stands for it; every node
    whose inputs all have one (and whose layer is not in ``skip``) is called on them, and
    its outputs are added. Returns ``values``."""
    import keras.tree

    for node in nodes_in_order(model):
        if node.operation in skip or not all(
                id(tensor) in values for tensor in node.arguments.keras_tensors):
            continue
        args, kwargs = node.arguments.fill_in(values)
        outputs = keras.tree.flatten(node.operation(*args, **kwargs))
        for symbolic, value in zip(node.outputs, outputs, strict=True):
            values[id(symbolic)] = value
    return values


def replay_on(model, tensor):
    """Apply the layers of a single-input functional ``model`` to ``tensor`` one node at a
    time and return what its (first) output becomes: a flat graph that shares ``model``'s
    layers, where calling ``model`` would nest it as one layer."""
    values = replay_nodes(model, {id(model.inputs[0]): tensor})
    return values[id(model_outputs(model)[0])]


def grayscale_input_view(model):
    """``model`` itself when it takes one grayscale ``(H, W, 1)`` image; for a single-input,
    single-output model of ``C > 1`` channels (an ImageNet-style RGB model of your own), a
    flat view that takes the grayscale image and repeats it into the ``C`` channels
    (``GrayscaleAdapter``, scale 1, offset 0) before the model's own layers (shared, with
    their weights). A gradient with respect to the gray image is then the sum over the
    channels, as the explainers sum a multi-channel map. Anything else is returned as it is
    (the callers' input check names it)."""
    from fetalhc.models.layers import GrayscaleAdapter

    shape = tuple(model.inputs[0].shape) if len(getattr(model, "inputs", []) or []) == 1 else ()
    if len(shape) != 4 or shape[-1] in (None, 1) or len(model_outputs(model)) != 1:
        return model
    gray = keras.Input((*shape[1:3], 1), name="gray_image")
    adapted = GrayscaleAdapter(channels=int(shape[-1]), name=f"gray_to_{shape[-1]}_channels")(gray)
    return keras.Model(gray, replay_on(model, adapted), name=model.name)


def layer_output_in(model, layer_name: str):
    """The output tensor of the layer ``layer_name`` in ``model``'s own graph (a layer shared
    with another model, as an exported model shares its network's, has a node in each; its
    ``output`` attribute is the first model's)."""
    layer = model.get_layer(layer_name)
    for node in reversed(nodes_in_order(model)):
        if node.operation is layer and len(node.outputs) == 1:
            return node.outputs[0]
    return layer.output


def all_layers(model) -> list:
    """Every layer of ``model``, nested ones included (the model itself left out)."""
    return list(model._flatten_layers(include_self=False, recursive=True))


# ----------------------------------------------------------------------------- dtypes
def is_mixed_precision(model) -> bool:
    """True when any layer of ``model`` computes in a dtype other than float32."""
    return any(
        getattr(getattr(layer, "dtype_policy", None), "compute_dtype", "float32") != "float32"
        for layer in getattr(model, "layers", [])
    )


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

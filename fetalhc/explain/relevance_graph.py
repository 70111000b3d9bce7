"""A replayable plan of a Keras functional graph for modified backward passes.

:func:`build_plan` walks a functional model's nodes once, from its single input to one
output, and turns every layer call into one or more steps
(:mod:`fetalhc.explain.relevance_steps` says which layer becomes which steps) that the
relevance engine (:mod:`fetalhc.explain.relevance_rules`) and the modified-gradient methods
(Guided Backprop, DeConvNet) execute themselves, tensor by tensor (:func:`run_forward`).
The walk keeps only the nodes the output depends on and folds a BatchNormalization into the
linear conv / dense whose sole use it is.

The user's model is never modified: the plan only reads its variables, so weight updates
after the plan was built are seen by every later replay. Layers the plan cannot express get
kind ``"opaque"``; modified-gradient methods still call them as they are, while the
relevance engine refuses them with a ``ValueError`` naming the layer and its class. The
model's graph is read through :mod:`fetalhc.models.graph` only.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import tensorflow as tf

from fetalhc.explain.relevance_ops import (
    ACTIVATION,
    OPAQUE,
    RELU,
    SWAPPABLE_ACTIVATIONS,
    Step,
    activation_name,
    bn_axis_is_last,
    clipped_relu,
    clipped_relu_derivative,
    silu_derivative,
    swapped,
)
from fetalhc.explain.relevance_steps import WEIGHTED_CLASSES, StepKeys, steps_for_node
from fetalhc.models.graph import hc_output_tensor, nodes_in_order


@dataclass
class Plan:
    """Steps in topological order from ``input_key`` to ``output_key``."""

    model_name: str
    input_key: object
    output_key: object
    input_shape: tuple
    steps: list[Step]
    consumers: dict = field(default_factory=dict)
    _keep_alive: list = field(default_factory=list, repr=False)

    def unsupported(self) -> list[Step]:
        return [step for step in self.steps if step.kind == OPAQUE]

    def check_swappable_relus(self, method: str, model_name: str | None = None) -> None:
        """Raise a ``ValueError`` when a layer applies a ReLU the plan cannot replace
        (``model_name``: the model to name, e.g. the user's model rather than its HC view)."""
        for step in self.steps:
            if step.hidden_relu:
                raise ValueError(
                    f"{method}: layer {step.name!r} ({step.layer_class}) applies a ReLU "
                    f"that cannot be replaced ({step.note or 'unsupported layer'}) "
                    f"in model {model_name or self.model_name!r}"
                )

    def check_relevance_support(self, method: str = "relevance propagation",
                                model_name: str | None = None) -> None:
        """Raise a one-line ``ValueError`` naming the first layer no relevance rule covers
        (``model_name`` as in :meth:`check_swappable_relus`)."""
        for step in self.steps:
            if step.kind == OPAQUE:
                raise ValueError(
                    f"{method}: no relevance rule for layer {step.name!r} ({step.layer_class})"
                    + (f": {step.note}" if step.note else "")
                    + f" in model {model_name or self.model_name!r}"
                )


def _needed_nodes(nodes: list, producer: dict, output_tensor) -> list:
    """The nodes ``output_tensor`` depends on, in the order of ``nodes``."""
    needed = set()
    stack = [id(output_tensor)]
    seen = set()
    while stack:
        key = stack.pop()
        if key in seen:
            continue
        seen.add(key)
        node = producer.get(key)
        if node is None:
            continue
        needed.add(id(node))
        stack.extend(id(tensor) for tensor in node.input_tensors)
    return [node for node in nodes if id(node) in needed]


def _batch_norm_folds(nodes: list, producer: dict, output_tensor) -> tuple[dict, set]:
    """BatchNormalizations to fold: a BN whose input is the sole use of a linear conv / dense
    output. Returns ``{id(conv node): (BN layer, key of the BN's output)}`` and the ids of the
    BN nodes folded away."""
    consumers: dict = {}
    for node in nodes:
        for tensor in node.input_tensors:
            consumers.setdefault(id(tensor), []).append(node)
    folds: dict = {}
    folded = set()
    for node in nodes:
        layer = node.operation
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        source = producer.get(id(node.input_tensors[0]))
        if source is None or id(node.input_tensors[0]) == id(output_tensor):
            continue
        source_layer = source.operation
        if not isinstance(source_layer, WEIGHTED_CLASSES):
            continue
        if activation_name(source_layer.activation) != "linear":
            continue
        if len(consumers.get(id(node.input_tensors[0]), [])) != 1:
            continue
        rank = len(node.input_tensors[0].shape)
        if not bn_axis_is_last(layer, rank):
            continue
        if not isinstance(source_layer, keras.layers.Dense) and (
                source_layer.data_format != "channels_last"):
            continue
        folds[id(source)] = (layer, id(node.outputs[0]))
        folded.add(id(node))
    return folds, folded


def build_plan(model: keras.Model, output: str | int | None = None) -> Plan:
    """Build the replay plan of ``model`` from its single input to one output.

    ``output`` names (or indexes) the output; by default the one named ``hc_px_input``, else
    the only output (the HC output rule of :mod:`fetalhc.models.graph`). Only the nodes the
    output depends on are kept.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"expected a keras.Model, got {type(model).__name__}")
    nodes = nodes_in_order(model)  # first: a subclassed model has no graph (nor inputs)
    if len(model.inputs) != 1:
        raise ValueError(f"model {model.name!r} must have exactly one input, has "
                         f"{len(model.inputs)}")
    input_tensor = model.inputs[0]
    output_tensor = hc_output_tensor(model, output)
    producer = {id(tensor): node for node in nodes for tensor in node.outputs}
    nodes = _needed_nodes(nodes, producer, output_tensor)
    folds, folded = _batch_norm_folds(nodes, producer, output_tensor)

    keys = StepKeys()
    steps: list[Step] = []
    for node in nodes:
        if id(node) not in folded:
            steps.extend(steps_for_node(node, keys, folds))

    step_consumers: dict = {}
    for step in steps:
        for key in step.inputs:
            step_consumers.setdefault(key, []).append(step)

    return Plan(
        model_name=model.name,
        input_key=id(input_tensor),
        output_key=id(output_tensor),
        input_shape=tuple(input_tensor.shape),
        steps=steps,
        consumers=step_consumers,
        _keep_alive=[model, input_tensor, output_tensor, nodes],
    )


_PLAN_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def get_plan(model: keras.Model, output: str | int | None = None) -> Plan:
    """:func:`build_plan`, cached per (model, output) while the model is alive."""
    try:
        per_model = _PLAN_CACHE.setdefault(model, {})
    except TypeError:  # pragma: no cover - unhashable model
        return build_plan(model, output)
    if output not in per_model:
        plan = build_plan(model, output)
        plan._keep_alive = plan._keep_alive[1:]  # no strong reference to the cache key
        per_model[output] = plan
    return per_model[output]


def run_forward(plan: Plan, images: tf.Tensor, backward_rule: Callable | None = None) -> dict:
    """Replay the plan on ``images``; returns every tensor by key.

    ``backward_rule(upstream, local_derivative)``, if given, replaces the backward pass of
    every rectifier: ReLU, ReLU6 (local derivative ``[0 < x < max]``) and swish/SiLU
    (``sigma(x) (1 + x (1 - sigma(x)))``). Other steps keep their ordinary gradient.
    """
    values = {plan.input_key: images}
    for step in plan.steps:
        inputs = [values[key] for key in step.inputs]
        if backward_rule is not None and step.kind == RELU:
            function = swapped(lambda x, m=step.max_value: clipped_relu(x, m),
                               lambda x, m=step.max_value: clipped_relu_derivative(x, m),
                               backward_rule)
            values[step.output] = function(inputs[0])
        elif (backward_rule is not None and step.kind == ACTIVATION
              and step.activation in SWAPPABLE_ACTIVATIONS):
            function = swapped(lambda x: x * tf.sigmoid(x), silu_derivative, backward_rule)
            values[step.output] = function(inputs[0])
        else:
            values[step.output] = step.forward(inputs)
    return values


def output_per_image(output: tf.Tensor) -> tf.Tensor:
    """The model output as one value per image, shape (N,)."""
    shape = output.shape
    if len(shape) == 1:
        return output
    if len(shape) == 2 and shape[-1] == 1:
        return output[:, 0]
    raise ValueError(f"the explained output must hold one value per image, has shape {shape}")

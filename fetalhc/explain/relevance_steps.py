"""Which Keras layer becomes which replay steps: the layer-rule table :data:`LAYER_RULES`.

:func:`steps_for_node` turns one layer call of a functional graph into one or more
:class:`~fetalhc.explain.relevance_ops.Step` objects, by the first entry of
:data:`LAYER_RULES` whose layer classes the layer is an instance of:

- ``Conv1D/2D/3D``, ``DepthwiseConv1D/2D`` and ``Dense`` become a ``linear`` step (the
  affine part, computed from the layer's own variables) followed by an activation step;
  ``SeparableConv1D/2D`` becomes two linear steps (the bias-free depthwise part, then the
  1x1 pointwise part with the bias);
- activations: ReLU and ReLU6 (``ReLU(max_value=...)``, ``"relu6"``) are ``relu`` steps
  (identity for relevance, swapped in Guided Backprop / DeConvNet); swish/SiLU and sigmoid
  are ``activation`` steps (identity for relevance, an approximation; see docs/relevance.md);
- a ``BatchNormalization`` whose input is the sole use of a linear Conv / DepthwiseConv /
  SeparableConv / Dense output is folded into it (kernel and bias rescaled per output
  channel; the fold is found by :mod:`fetalhc.explain.relevance_graph`); any other
  ``BatchNormalization`` is an elementwise ``affine`` step;
- ``GrayscaleAdapter`` is an ``affine`` step and a channel-repeat ``structural`` step;
  ``OutputAffine``, ``Rescaling`` and ``Normalization`` are ``affine`` steps;
- ``Multiply`` of a tensor by a broadcast gate (squeeze-and-excitation) is an ``affine``
  step whose scale is the gate, held constant: relevance flows to the gated tensor only;
- pooling, ``Add``, reshaping, padding and dropout layers get their own kinds;
- an exported model's ``RawImagePreprocessing`` (resize, z-score, pad of the raw image) is a
  ``resample`` step: relevance goes back by its ``relevance_to_raw`` (padding dropped,
  z-score passed, the resize transposed); its ``InputToRawPixels`` an ``affine`` step.

A layer no entry covers (or covers only in part) becomes one ``opaque`` step: called as it
is by the modified-gradient methods, refused by the relevance engine.

One job past 400 lines: the table and the builders it names. The builders share the
:class:`LayerCall` helpers and the class tuples; splitting them would separate each rule from
its entry in the table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf

from fetalhc.explain.relevance_ops import (
    ACTIVATION,
    ADD,
    AFFINE,
    CONV,
    DENSE,
    IDENTITY,
    LINEAR,
    MAXPOOL,
    OPAQUE,
    PASS_THROUGH_ACTIVATIONS,
    POOL,
    RELU,
    RESAMPLE,
    STRUCTURAL,
    LinearOp,
    Step,
    activation_name,
    affine_linear,
    batch_norm_affine,
    bn_axis_is_last,
    clipped_relu,
    conv_or_dense_linear,
    depthwise_linear,
    linear_forward,
    pointwise_linear,
    weight_part,
)
from fetalhc.models.export_layers import InputToRawPixels, RawImagePreprocessing
from fetalhc.models.graph import producing_layer
from fetalhc.models.layers import GrayscaleAdapter, OutputAffine

STRUCTURAL_CLASSES = (
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.Permute,
    keras.layers.RepeatVector,
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.ZeroPadding3D,
    keras.layers.Cropping1D,
    keras.layers.Cropping2D,
    keras.layers.Cropping3D,
    keras.layers.Concatenate,
)
IDENTITY_CLASSES = (
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization,
    keras.layers.Identity,
)
MAXPOOL_CLASSES = (
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalMaxPooling3D,
)
AVGPOOL_CLASSES = (
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D,
)
CONV_CLASSES = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
DEPTHWISE_CLASSES = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
SEPARABLE_CLASSES = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
WEIGHTED_CLASSES = CONV_CLASSES + DEPTHWISE_CLASSES + SEPARABLE_CLASSES + (keras.layers.Dense,)
COVERED_ACTIVATIONS = "covered: relu, relu6, silu, sigmoid, linear"


class StepKeys:
    """Hands out keys for the tensors a split layer creates (e.g. a conv's pre-activation),
    distinct from the ``id`` keys of the graph's own tensors."""

    def __init__(self):
        self.counter = 0

    def new_key(self, base: str):
        self.counter += 1
        return ("synthetic", base, self.counter)


def _layer_call_forward(layer, node):
    """Forward that re-calls the layer with the node's own arguments (inference mode)."""

    arguments = node.arguments
    keys = [id(tensor) for tensor in node.input_tensors]

    def forward(values):
        table = dict(zip(keys, values, strict=True))
        args, kwargs = arguments.fill_in(table)
        if "training" in kwargs:
            kwargs["training"] = False
        return layer(*args, **kwargs)

    return forward


@dataclass
class LayerCall:
    """One call of a layer in the graph, as a step builder sees it.

    ``folds`` maps ``id(node)`` of a linear conv / dense call to ``(BatchNormalization layer,
    key of the BN's output)`` when that BN is folded into it.
    """

    layer: Any
    node: Any
    in_keys: tuple
    out_key: object
    keys: StepKeys
    folds: dict

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def layer_class(self) -> str:
        return type(self.layer).__name__

    def call_forward(self):
        return _layer_call_forward(self.layer, self.node)

    def step(self, kind: str, forward, **fields) -> list[Step]:
        """The call as one step of ``kind`` from its inputs to its output."""
        return [Step(self.name, self.layer_class, kind, self.in_keys, self.out_key, forward,
                     **fields)]

    def linear(self, op: LinearOp) -> list[Step]:
        return self.step(LINEAR, linear_forward(op), linear=op)

    def opaque(self, note: str = "") -> list[Step]:
        """The call as is, one ``opaque`` step (``hidden_relu`` when it rectifies)."""
        function = getattr(self.layer, "activation", None)
        hidden = isinstance(self.layer, keras.layers.ReLU) or (
            callable(function) and activation_name(function) in ("relu", "relu6"))
        return self.step(OPAQUE, self.call_forward(), note=note, hidden_relu=hidden)


# --------------------------------------------------------------------------------------
# activations


def _relu_step(name, cls, in_keys, out_key, max_value=None) -> Step:
    max_value = None if max_value is None else float(max_value)
    return Step(name, cls, RELU, in_keys, out_key,
                lambda values: clipped_relu(values[0], max_value), max_value=max_value)


def _activation_steps(act: str, function, name, cls, in_keys, out_key) -> list[Step] | None:
    """Steps of an elementwise activation, or None when no rule covers it."""
    if act == "linear":
        return [Step(name, cls, IDENTITY, in_keys, out_key, lambda values: values[0])]
    if act == "relu":
        return [_relu_step(name, cls, in_keys, out_key)]
    if act == "relu6":
        return [_relu_step(name, cls, in_keys, out_key, 6.0)]
    if act in PASS_THROUGH_ACTIVATIONS:
        return [Step(name, cls, ACTIVATION, in_keys, out_key,
                     lambda values, f=function: f(values[0]), activation=act)]
    return None


def _relu_layer_steps(call: LayerCall) -> list[Step]:
    layer = call.layer
    if float(layer.negative_slope) != 0.0 or float(layer.threshold) != 0.0:
        return call.opaque("ReLU with negative_slope or threshold")
    return [_relu_step(call.name, call.layer_class, call.in_keys, call.out_key, layer.max_value)]


def _activation_layer_steps(call: LayerCall) -> list[Step]:
    act = activation_name(call.layer.activation)
    steps = _activation_steps(act, call.layer.activation, call.name, call.layer_class,
                              call.in_keys, call.out_key)
    if steps is None:
        return call.opaque(f"activation {act!r} ({COVERED_ACTIVATIONS})")
    return steps


# --------------------------------------------------------------------------------------
# weighted and affine layers


def _weighted_steps(call: LayerCall) -> list[Step]:
    """Conv / DepthwiseConv / SeparableConv / Dense: linear step(s), then the activation."""
    layer, name, cls = call.layer, call.name, call.layer_class
    if len(call.in_keys) != 1:
        return call.opaque("called on several tensors")
    dense = isinstance(layer, keras.layers.Dense)
    if not dense and layer.data_format != "channels_last":
        return call.opaque("channels_first convolution")
    bn, out_key = call.folds.get(id(call.node), (None, call.out_key))
    act = activation_name(layer.activation)
    if bn is not None and act != "linear":  # pragma: no cover - guarded by fold finder
        bn, out_key = None, call.out_key
    label = name if bn is None else f"{name}+{bn.name}"
    pre = out_key if act == "linear" else call.keys.new_key(name)
    if isinstance(layer, SEPARABLE_CLASSES):
        depthwise = depthwise_linear(layer, "depthwise_kernel", with_bias=False)
        pointwise = pointwise_linear(layer, bn=bn)
        mid = call.keys.new_key(name)
        steps = [
            Step(f"{name}.depthwise", cls, LINEAR, call.in_keys, mid, linear_forward(depthwise),
                 linear=depthwise),
            Step(f"{label}.pointwise", cls, LINEAR, (mid,), pre,
                 linear_forward(pointwise), linear=pointwise),
        ]
    else:
        if isinstance(layer, DEPTHWISE_CLASSES):
            op = depthwise_linear(layer, "kernel", bn=bn)
        else:
            op = conv_or_dense_linear(layer, DENSE if dense else CONV, bn=bn)
        steps = [Step(label, cls, LINEAR, call.in_keys, pre, linear_forward(op), linear=op)]
    if act == "linear":
        return steps
    more = _activation_steps(act, layer.activation, f"{name}.activation", cls, (pre,), out_key)
    if more is None:
        function = layer.activation
        more = [Step(f"{name}.activation", cls, OPAQUE, (pre,), out_key,
                     lambda values, f=function: f(values[0]),
                     note=f"activation {act!r} ({COVERED_ACTIVATIONS})")]
    return steps + more


def _batch_norm_steps(call: LayerCall) -> list[Step]:
    """A BatchNormalization not folded into a conv / dense: an elementwise affine step."""
    rank = len(call.node.input_tensors[0].shape)
    if not bn_axis_is_last(call.layer, rank):
        return call.opaque("BatchNormalization over a non-last axis")
    scale, offset = batch_norm_affine(call.layer)
    return call.linear(affine_linear(scale, offset))


def _output_affine_steps(call: LayerCall) -> list[Step]:
    layer = call.layer
    return call.linear(affine_linear(lambda: tf.constant(layer.std, tf.float32),
                                     lambda: tf.constant(layer.mean, tf.float32)))


def _grayscale_adapter_steps(call: LayerCall) -> list[Step]:
    layer, name, cls = call.layer, call.name, call.layer_class
    op = affine_linear(lambda: tf.constant(layer.scale, tf.float32),
                       lambda: tf.constant(layer.offset, tf.float32))
    if layer.channels == 1:
        return call.linear(op)
    mid = call.keys.new_key(name)
    channels = layer.channels
    return [
        Step(f"{name}.affine", cls, LINEAR, call.in_keys, mid, linear_forward(op), linear=op),
        Step(f"{name}.repeat", cls, STRUCTURAL, (mid,), call.out_key,
             lambda values: keras.ops.repeat(values[0], channels, axis=-1)),
    ]


def _rescaling_steps(call: LayerCall) -> list[Step]:
    layer = call.layer
    return call.linear(affine_linear(lambda: tf.constant(layer.scale, tf.float32),
                                     lambda: tf.constant(layer.offset, tf.float32)))


def _normalization_steps(call: LayerCall) -> list[Step]:
    layer = call.layer
    mean = tf.cast(layer.mean, tf.float32)
    sd = tf.maximum(tf.sqrt(tf.cast(layer.variance, tf.float32)), keras.backend.epsilon())
    if layer.invert:
        return call.linear(affine_linear(lambda: sd, lambda: mean))
    return call.linear(affine_linear(lambda: 1.0 / sd, lambda: -mean / sd))


def _multiply_steps(call: LayerCall) -> list[Step]:
    """A tensor times a gate, the gate held constant (relevance to the gated tensor only)."""
    gate = _gate_operand(call.node)
    if gate is None:
        return call.opaque("Multiply is covered only as a tensor times a gate (a sigmoid output "
                           "or a broadcast operand)")
    keys = (call.in_keys[1 - gate], call.in_keys[gate])  # gated tensor first, gate second

    def apply(inputs, part):
        return inputs[0] * weight_part(inputs[1], part)

    op = LinearOp(family=AFFINE, apply=apply, bias=lambda: None, relevant_inputs=1)
    return [Step(call.name, call.layer_class, LINEAR, keys, call.out_key,
                 lambda values: values[0] * values[1], linear=op, note="gate held constant")]


def _is_sigmoid_output(tensor) -> bool:
    layer = producing_layer(tensor)
    if isinstance(layer, keras.layers.Reshape):  # a gate reshaped to (1, 1, C)
        return _is_sigmoid_output(layer.input)
    function = getattr(layer, "activation", None)
    return callable(function) and activation_name(function) in ("sigmoid", "hard_sigmoid")


def _gate_operand(node) -> int | None:
    """Index of the gate of ``Multiply([x, gate])``: the operand that comes out of a sigmoid
    (squeeze-and-excitation), else the one operand that is broadcast against the other."""
    if len(node.input_tensors) != 2:
        return None
    sigmoid = [_is_sigmoid_output(tensor) for tensor in node.input_tensors]
    if sigmoid[0] != sigmoid[1]:
        return sigmoid.index(True)
    shapes = [tuple(tensor.shape[1:]) for tensor in node.input_tensors]
    if len(shapes[0]) != len(shapes[1]) or shapes[0] == shapes[1]:
        return None
    for gate in (0, 1):
        small, big = shapes[gate], shapes[1 - gate]
        if all(s == 1 or s == b for s, b in zip(small, big, strict=True)) and any(
                s == 1 and b != 1 for s, b in zip(small, big, strict=True)):
            return gate
    return None


# --------------------------------------------------------------------------------------
# pooling, sums, rearranging layers


def _identity_steps(call: LayerCall) -> list[Step]:
    return [Step(call.name, call.layer_class, IDENTITY, call.in_keys[:1], call.out_key,
                 lambda values: values[0])]


def _maxpool_steps(call: LayerCall) -> list[Step]:
    return call.step(MAXPOOL, call.call_forward())


def _unit_weight_steps(call: LayerCall, family: str) -> list[Step]:
    """A layer that is linear with non-negative weights (average pooling, Add, Average):
    re-called as is; its negative part is zero."""
    forward = call.call_forward()

    def apply(inputs, part):
        return None if part == "neg" else forward(list(inputs))

    return call.step(LINEAR, forward,
                     linear=LinearOp(family=family, apply=apply, bias=lambda: None))


def _average_pool_steps(call: LayerCall) -> list[Step]:
    return _unit_weight_steps(call, POOL)


def _sum_steps(call: LayerCall) -> list[Step]:
    return _unit_weight_steps(call, ADD)


def _upsampling_2d_steps(call: LayerCall) -> list[Step]:
    if call.layer.interpolation != "nearest":
        return call.opaque()
    return _structural_steps(call)


def _structural_steps(call: LayerCall) -> list[Step]:
    return call.step(STRUCTURAL, call.call_forward())


def _raw_preprocessing_steps(call: LayerCall) -> list[Step]:
    layer = call.layer
    return call.step(RESAMPLE, call.call_forward(),
                     backward=lambda xs, relevance: [layer.relevance_to_raw(xs[0], relevance)])


def _raw_pixels_steps(call: LayerCall) -> list[Step]:
    """HC in network px times ``max(H, W) / S``: an affine step, the images held constant."""
    layer = call.layer

    def apply(inputs, part):
        return inputs[0] * weight_part(layer.factor(inputs[1]), part)

    op = LinearOp(family=AFFINE, apply=apply, bias=lambda: None, relevant_inputs=1)
    return [Step(call.name, call.layer_class, LINEAR, call.in_keys, call.out_key,
                 lambda values: values[0] * layer.factor(values[1]), linear=op,
                 note="the images' size held constant")]


def _nested_model_steps(call: LayerCall) -> list[Step]:
    return call.opaque("nested model; build the model flat")


# --------------------------------------------------------------------------------------
# the table

StepBuilder = Callable[[LayerCall], list[Step]]

# The first entry whose classes the layer is an instance of builds its steps (a nested model
# is a layer too, so it comes first); a layer no entry matches is one opaque step.
LAYER_RULES: tuple[tuple[tuple[type, ...], StepBuilder], ...] = (
    ((keras.Model,), _nested_model_steps),
    (WEIGHTED_CLASSES, _weighted_steps),
    ((keras.layers.BatchNormalization,), _batch_norm_steps),
    ((OutputAffine,), _output_affine_steps),
    ((GrayscaleAdapter,), _grayscale_adapter_steps),
    ((RawImagePreprocessing,), _raw_preprocessing_steps),
    ((InputToRawPixels,), _raw_pixels_steps),
    ((keras.layers.Rescaling,), _rescaling_steps),
    ((keras.layers.ReLU,), _relu_layer_steps),
    ((keras.layers.Activation,), _activation_layer_steps),
    ((keras.layers.Normalization,), _normalization_steps),
    ((keras.layers.Multiply,), _multiply_steps),
    (IDENTITY_CLASSES, _identity_steps),
    (MAXPOOL_CLASSES, _maxpool_steps),
    (AVGPOOL_CLASSES, _average_pool_steps),
    ((keras.layers.Add, keras.layers.Average), _sum_steps),
    ((keras.layers.UpSampling2D,), _upsampling_2d_steps),
    ((keras.layers.UpSampling1D, keras.layers.UpSampling3D), _structural_steps),
    (STRUCTURAL_CLASSES, _structural_steps),
)


def steps_for_node(node, keys: StepKeys, folds: dict) -> list[Step]:
    """Translate one node of the graph into steps (see :data:`LAYER_RULES`).

    ``folds``: ``id(node)`` of a linear conv / dense call -> ``(BatchNormalization layer, key
    of its output)`` for a BN folded into that call.
    """
    layer = node.operation
    in_keys = tuple(id(tensor) for tensor in node.input_tensors)
    outputs = node.outputs
    if len(outputs) != 1:
        return [Step(layer.name, type(layer).__name__, OPAQUE, in_keys,
                     id(outputs[0]) if outputs else None, _layer_call_forward(layer, node),
                     note="more than one output")]
    call = LayerCall(layer, node, in_keys, id(outputs[0]), keys, folds)
    if not isinstance(layer, keras.layers.Layer):
        return call.opaque("a keras.ops call in the graph; use layers")
    for classes, build in LAYER_RULES:
        if isinstance(layer, classes):
            return build(call)
    return call.opaque()

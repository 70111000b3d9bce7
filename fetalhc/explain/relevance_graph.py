"""A replayable plan of a Keras functional graph for modified backward passes.

:func:`build_plan` walks a functional model's nodes once, from its single input to one
output, and turns every layer call into one or more :class:`Step` objects that the
relevance engine (:mod:`fetalhc.explain.relevance_rules`) and the modified-gradient
methods (Guided Backprop, DeConvNet) execute themselves, tensor by tensor:

- ``Conv1D/2D/3D``, ``DepthwiseConv1D/2D`` and ``Dense`` become a ``linear`` step (the
  affine part, computed from the layer's own variables) followed by an activation step;
  ``SeparableConv1D/2D`` becomes two linear steps (the bias-free depthwise part, then the
  1x1 pointwise part with the bias);
- activations: ReLU and ReLU6 (``ReLU(max_value=...)``, ``"relu6"``) are ``relu`` steps
  (identity for relevance, swapped in Guided Backprop / DeConvNet); swish/SiLU and sigmoid
  are ``activation`` steps (identity for relevance, an approximation; see docs/relevance.md);
- a ``BatchNormalization`` whose input is the sole use of a linear Conv / DepthwiseConv /
  SeparableConv / Dense output is folded into it (kernel and bias rescaled per output
  channel); any other ``BatchNormalization`` is an elementwise ``affine`` step;
- ``GrayscaleAdapter`` is an ``affine`` step and a channel-repeat ``structural`` step;
  ``OutputAffine``, ``Rescaling`` and ``Normalization`` are ``affine`` steps;
- ``Multiply`` of a tensor by a broadcast gate (squeeze-and-excitation) is an ``affine``
  step whose scale is the gate, held constant: relevance flows to the gated tensor only;
- pooling, ``Add``, reshaping, padding and dropout layers get their own kinds.

The user's model is never modified: the plan only reads its variables, so weight updates
after the plan was built are seen by every later replay. Layers the plan cannot express get
kind ``"opaque"``; modified-gradient methods still call them as they are, while the
relevance engine refuses them with a ``ValueError`` naming the layer and its class.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import keras
import tensorflow as tf

# Step kinds.
LINEAR = "linear"  # affine map, relevance rules apply (conv, dense, pooling, add, affine)
RELU = "relu"  # ReLU / ReLU6: identity for relevance, swapped in Guided Backprop / DeConvNet
ACTIVATION = "activation"  # other elementwise activation (swish, sigmoid): identity for LRP
MAXPOOL = "maxpool"  # max pooling: winner takes all
STRUCTURAL = "structural"  # copies / selects / rearranges values: relevance by the transpose
IDENTITY = "identity"  # dropout and friends at inference
OPAQUE = "opaque"  # anything else: called as is, refused by the relevance engine

# Linear step families (the rule tables select rules by family).
CONV = "conv"
DENSE = "dense"
POOL = "pool"  # average pooling (implicit non-negative weights)
ADD = "add"  # residual sums (unit weights)
AFFINE = "affine"  # elementwise scale and offset (BatchNormalization, OutputAffine, ...)

WeightPart = str  # "full", "pos" or "neg"


@dataclass
class LinearOp:
    """An affine map ``z = apply(inputs, "full") + bias``.

    ``apply(inputs, part)`` evaluates the map without bias using the full weights, their
    positive part (``"pos"``) or their negative part (``"neg"``); it returns ``None`` when that
    part is identically zero (e.g. the negative part of a pooling or a sum).
    """

    family: str
    apply: Callable[[Sequence[tf.Tensor], WeightPart], tf.Tensor | None]
    bias: Callable[[], tf.Tensor | None]
    # Only the first ``relevant_inputs`` inputs carry relevance (None: all). The others are
    # held constant by the rules (e.g. the gate of a squeeze-and-excitation ``Multiply``).
    relevant_inputs: int | None = None


@dataclass
class Step:
    """One executable operation of the plan."""

    name: str
    layer_class: str
    kind: str
    inputs: tuple
    output: object
    forward: Callable[[list], tf.Tensor]
    linear: LinearOp | None = None
    note: str = ""
    hidden_relu: bool = False  # opaque step that applies a ReLU we cannot swap
    max_value: float | None = None  # relu steps: upper clip (6.0 for ReLU6)
    activation: str = ""  # activation steps: Keras activation name ("silu", "sigmoid")


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

    def check_swappable_relus(self, method: str) -> None:
        """Raise a ``ValueError`` when a layer applies a ReLU the plan cannot replace."""
        for step in self.steps:
            if step.hidden_relu:
                raise ValueError(
                    f"{method}: layer {step.name!r} ({step.layer_class}) applies a ReLU "
                    f"that cannot be replaced ({step.note or 'unsupported layer'}) "
                    f"in model {self.model_name!r}"
                )

    def check_relevance_support(self, method: str = "relevance propagation") -> None:
        """Raise a one-line ``ValueError`` naming the first layer no relevance rule covers."""
        for step in self.steps:
            if step.kind == OPAQUE:
                raise ValueError(
                    f"{method}: no relevance rule for layer {step.name!r} ({step.layer_class})"
                    + (f": {step.note}" if step.note else "")
                    + f" in model {self.model_name!r}"
                )


# --------------------------------------------------------------------------------------
# activations


def activation_name(function) -> str:
    """'relu', 'linear' or another Keras activation name ('' when unknown)."""
    if function is None:
        return "linear"
    try:
        name = keras.activations.serialize(function)
    except (ValueError, TypeError):
        name = getattr(function, "__name__", "")
    if isinstance(name, dict):
        name = name.get("config", {}).get("name", "") or name.get("class_name", "")
    return str(name)


def _relu_layer_is_plain(layer: keras.layers.ReLU) -> bool:
    """ReLU, possibly clipped at ``max_value`` (ReLU6), without slope or threshold."""
    return float(layer.negative_slope) == 0.0 and float(layer.threshold) == 0.0


# Rectifiers Guided Backprop / DeConvNet swap: forward and local derivative.
def _clipped_relu(x, max_value):
    return tf.nn.relu(x) if max_value is None else tf.clip_by_value(
        x, 0.0, tf.cast(max_value, x.dtype))


def _clipped_relu_derivative(x, max_value):
    active = x > 0
    if max_value is not None:
        active = tf.logical_and(active, x < tf.cast(max_value, x.dtype))
    return tf.cast(active, x.dtype)


def _silu_derivative(x):
    s = tf.sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


SWAPPABLE_ACTIVATIONS = ("silu",)  # smooth rectifiers the modified backward passes swap
PASS_THROUGH_ACTIVATIONS = ("silu", "sigmoid")  # identity rule for relevance (approximation)


def swapped(forward, derivative, backward_rule):
    """``forward`` with the backward pass ``backward_rule(upstream, derivative(x))``."""

    @tf.custom_gradient
    def function(x):
        def backward(upstream):
            return backward_rule(upstream, derivative(x))

        return forward(x), backward

    return function


# --------------------------------------------------------------------------------------
# weight helpers


def _part(tensor: tf.Tensor, part: WeightPart) -> tf.Tensor:
    if part == "full":
        return tensor
    if part == "pos":
        return tf.maximum(tensor, 0.0)
    if part == "neg":
        return tf.minimum(tensor, 0.0)
    raise ValueError(f"unknown weight part {part!r}")


def _batch_norm_affine(layer: keras.layers.BatchNormalization):
    """Return callables (scale, offset) with ``BN(x) = x * scale + offset`` at inference."""

    def scale():
        inv = tf.math.rsqrt(tf.cast(layer.moving_variance, tf.float32) + layer.epsilon)
        if layer.scale:
            inv = inv * tf.cast(layer.gamma, tf.float32)
        return inv

    def offset():
        value = -tf.cast(layer.moving_mean, tf.float32) * scale()
        if layer.center:
            value = value + tf.cast(layer.beta, tf.float32)
        return value

    return scale, offset


def _bn_axis_is_last(layer, rank: int) -> bool:
    axis = layer.axis
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            return False
        axis = axis[0]
    return axis in (-1, rank - 1)


# --------------------------------------------------------------------------------------
# step builders


class _Builder:
    """Makes keys for the tensors a split layer creates (e.g. a conv's pre-activation)."""

    def __init__(self):
        self.counter = 0

    def new_key(self, base: str):
        self.counter += 1
        return ("synthetic", base, self.counter)


def _layer_call_forward(layer, node):
    """Forward that re-calls the layer with the node's own arguments (inference mode)."""

    arguments = node.arguments
    keys = [id(kt) for kt in node.input_tensors]

    def forward(values):
        table = dict(zip(keys, values, strict=True))
        args, kwargs = arguments.fill_in(table)
        if "training" in kwargs:
            kwargs["training"] = False
        return layer(*args, **kwargs)

    return forward


def _fold(kernel_fn, bias_fn, bn, kernel_scale_shape=None):
    """Fold an inference BatchNormalization into a kernel and bias (per output channel)."""
    if bn is None:
        return kernel_fn, bias_fn
    bn_scale, bn_offset = _batch_norm_affine(bn)

    def kernel():
        scale = bn_scale()
        if kernel_scale_shape is not None:
            scale = tf.reshape(scale, kernel_scale_shape)
        return kernel_fn() * scale

    def bias():
        value = bias_fn()
        return bn_offset() if value is None else value * bn_scale() + bn_offset()

    return kernel, bias


def _layer_bias(layer):
    def bias():
        return tf.cast(layer.bias, tf.float32) if layer.use_bias else None

    return bias


def _conv_or_dense_linear(layer, family: str, bn=None) -> LinearOp:
    if family == CONV:
        if layer.data_format != "channels_last":
            raise ValueError("channels_first convolutions are not supported")

        def raw(x, kernel):
            return layer.convolution_op(x, kernel)

    else:

        def raw(x, kernel):
            return keras.ops.matmul(x, kernel)

    kernel, bias = _fold(lambda: tf.cast(layer.kernel, tf.float32), _layer_bias(layer), bn)

    def apply(inputs, part):
        return raw(inputs[0], _part(kernel(), part))

    return LinearOp(family=family, apply=apply, bias=bias)


def _depthwise_linear(layer, kernel_attr: str, bn=None, with_bias: bool = True) -> LinearOp:
    """Depthwise convolution (each input channel with its own ``depth_multiplier`` filters)."""
    raw_kernel = getattr(layer, kernel_attr)
    channels, multiplier = int(raw_kernel.shape[-2]), int(raw_kernel.shape[-1])
    bias_fn = _layer_bias(layer) if with_bias else (lambda: None)
    kernel, bias = _fold(lambda: tf.cast(getattr(layer, kernel_attr), tf.float32), bias_fn, bn,
                         kernel_scale_shape=(channels, multiplier))

    def apply(inputs, part):
        return keras.ops.depthwise_conv(
            inputs[0], _part(kernel(), part), strides=layer.strides, padding=layer.padding,
            data_format=layer.data_format, dilation_rate=layer.dilation_rate)

    return LinearOp(family=CONV, apply=apply, bias=bias)


def _pointwise_linear(layer, bn=None) -> LinearOp:
    """The 1x1 pointwise part of a separable convolution, with the layer's bias."""
    kernel, bias = _fold(lambda: tf.cast(layer.pointwise_kernel, tf.float32),
                         _layer_bias(layer), bn)

    def apply(inputs, part):
        return keras.ops.conv(inputs[0], _part(kernel(), part), strides=1, padding="valid",
                              data_format=layer.data_format)

    return LinearOp(family=CONV, apply=apply, bias=bias)


def _affine_linear(scale_fn, offset_fn) -> LinearOp:
    """Elementwise ``x * scale + offset`` (scale, offset broadcast on the last axis)."""

    def apply(inputs, part):
        scale = _part(tf.cast(scale_fn(), tf.float32), part)
        return inputs[0] * scale

    def bias():
        offset = offset_fn()
        return None if offset is None else tf.cast(offset, tf.float32)

    return LinearOp(family=AFFINE, apply=apply, bias=bias)


def _linear_forward(op: LinearOp):
    def forward(values):
        z = op.apply(values, "full")
        b = op.bias()
        return z if b is None else z + b

    return forward


def _relu_step(name, cls, in_keys, out_key, max_value=None) -> Step:
    max_value = None if max_value is None else float(max_value)
    return Step(name, cls, RELU, in_keys, out_key,
                lambda values: _clipped_relu(values[0], max_value), max_value=max_value)


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


def _fetalhc_layer_classes():
    try:
        from fetalhc.models.layers import GrayscaleAdapter, OutputAffine
    except ImportError:  # pragma: no cover - models package not available
        return None, None
    return GrayscaleAdapter, OutputAffine


def _steps_for_node(node, builder: _Builder, bn_fold: dict) -> list[Step]:
    """Translate one node into steps. ``bn_fold`` maps a conv/dense node id to its BN layer."""
    layer = node.operation
    cls = type(layer).__name__
    name = layer.name
    in_keys = tuple(id(kt) for kt in node.input_tensors)
    outputs = node.outputs
    if len(outputs) != 1:
        return [Step(name, cls, OPAQUE, in_keys, id(outputs[0]) if outputs else None,
                     _layer_call_forward(layer, node), note="more than one output")]
    out_key = id(outputs[0])
    grayscale_adapter, output_affine = _fetalhc_layer_classes()

    def opaque(note=""):
        act = getattr(layer, "activation", None)
        hidden = isinstance(layer, keras.layers.ReLU) or (
            callable(act) and activation_name(act) in ("relu", "relu6"))
        return [Step(name, cls, OPAQUE, in_keys, out_key, _layer_call_forward(layer, node),
                     note=note, hidden_relu=hidden)]

    if not isinstance(layer, keras.layers.Layer):
        return opaque("a keras.ops call in the graph; use layers")
    if isinstance(layer, keras.Model):
        return opaque("nested model; build the model flat")

    if isinstance(layer, WEIGHTED_CLASSES):
        if len(in_keys) != 1:
            return opaque("called on several tensors")
        dense = isinstance(layer, keras.layers.Dense)
        if not dense and layer.data_format != "channels_last":
            return opaque("channels_first convolution")
        bn = bn_fold.get(id(node))
        act = activation_name(layer.activation)
        if bn is not None and act != "linear":  # pragma: no cover - guarded by fold finder
            bn = None
        label = name if bn is None else f"{name}+{bn.name}"
        if bn is not None:
            out_key = bn_fold[("output", id(node))]
        pre = out_key if act == "linear" else builder.new_key(name)
        if isinstance(layer, SEPARABLE_CLASSES):
            depthwise = _depthwise_linear(layer, "depthwise_kernel", with_bias=False)
            pointwise = _pointwise_linear(layer, bn=bn)
            mid = builder.new_key(name)
            steps = [
                Step(f"{name}.depthwise", cls, LINEAR, in_keys, mid, _linear_forward(depthwise),
                     linear=depthwise),
                Step(f"{label}.pointwise", cls, LINEAR, (mid,), pre,
                     _linear_forward(pointwise), linear=pointwise),
            ]
        else:
            if isinstance(layer, DEPTHWISE_CLASSES):
                op = _depthwise_linear(layer, "kernel", bn=bn)
            else:
                op = _conv_or_dense_linear(layer, DENSE if dense else CONV, bn=bn)
            steps = [Step(label, cls, LINEAR, in_keys, pre, _linear_forward(op), linear=op)]
        if act == "linear":
            return steps
        more = _activation_steps(act, layer.activation, f"{name}.activation", cls, (pre,),
                                 out_key)
        if more is None:
            function = layer.activation
            more = [Step(f"{name}.activation", cls, OPAQUE, (pre,), out_key,
                         lambda values, f=function: f(values[0]),
                         note=f"activation {act!r} (covered: relu, relu6, silu, sigmoid, "
                              "linear)")]
        return steps + more

    if isinstance(layer, keras.layers.BatchNormalization):
        rank = len(node.input_tensors[0].shape)
        if not _bn_axis_is_last(layer, rank):
            return opaque("BatchNormalization over a non-last axis")
        scale, offset = _batch_norm_affine(layer)
        op = _affine_linear(scale, offset)
        return [Step(name, cls, LINEAR, in_keys, out_key, _linear_forward(op), linear=op)]

    if output_affine is not None and isinstance(layer, output_affine):
        op = _affine_linear(lambda: tf.constant(layer.std, tf.float32),
                            lambda: tf.constant(layer.mean, tf.float32))
        return [Step(name, cls, LINEAR, in_keys, out_key, _linear_forward(op), linear=op)]

    if grayscale_adapter is not None and isinstance(layer, grayscale_adapter):
        op = _affine_linear(lambda: tf.constant(layer.scale, tf.float32),
                            lambda: tf.constant(layer.offset, tf.float32))
        if layer.channels == 1:
            return [Step(name, cls, LINEAR, in_keys, out_key, _linear_forward(op), linear=op)]
        mid = builder.new_key(name)
        channels = layer.channels
        return [
            Step(f"{name}.affine", cls, LINEAR, in_keys, mid, _linear_forward(op), linear=op),
            Step(f"{name}.repeat", cls, STRUCTURAL, (mid,), out_key,
                 lambda values: keras.ops.repeat(values[0], channels, axis=-1)),
        ]

    if isinstance(layer, keras.layers.Rescaling):
        op = _affine_linear(lambda: tf.constant(layer.scale, tf.float32),
                            lambda: tf.constant(layer.offset, tf.float32))
        return [Step(name, cls, LINEAR, in_keys, out_key, _linear_forward(op), linear=op)]

    if isinstance(layer, keras.layers.ReLU):
        if not _relu_layer_is_plain(layer):
            return opaque("ReLU with negative_slope or threshold")
        return [_relu_step(name, cls, in_keys, out_key, layer.max_value)]

    if isinstance(layer, keras.layers.Activation):
        act = activation_name(layer.activation)
        steps = _activation_steps(act, layer.activation, name, cls, in_keys, out_key)
        if steps is None:
            return opaque(f"activation {act!r} (covered: relu, relu6, silu, sigmoid, linear)")
        return steps

    if isinstance(layer, keras.layers.Normalization):
        mean = tf.cast(layer.mean, tf.float32)
        sd = tf.maximum(tf.sqrt(tf.cast(layer.variance, tf.float32)), keras.backend.epsilon())
        if layer.invert:
            op = _affine_linear(lambda: sd, lambda: mean)
        else:
            op = _affine_linear(lambda: 1.0 / sd, lambda: -mean / sd)
        return [Step(name, cls, LINEAR, in_keys, out_key, _linear_forward(op), linear=op)]

    if isinstance(layer, keras.layers.Multiply):
        gate = _gate_operand(node)
        if gate is None:
            return opaque("Multiply is covered only as a tensor times a gate (a sigmoid output "
                          "or a broadcast operand)")
        keys = (in_keys[1 - gate], in_keys[gate])  # gated tensor first, gate second

        def apply(inputs, part):
            return inputs[0] * _part(inputs[1], part)

        op = LinearOp(family=AFFINE, apply=apply, bias=lambda: None, relevant_inputs=1)
        return [Step(name, cls, LINEAR, keys, out_key, lambda values: values[0] * values[1],
                     linear=op, note="gate held constant")]

    if isinstance(layer, IDENTITY_CLASSES):
        return [Step(name, cls, IDENTITY, in_keys[:1], out_key, lambda values: values[0])]

    if isinstance(layer, MAXPOOL_CLASSES):
        return [Step(name, cls, MAXPOOL, in_keys, out_key, _layer_call_forward(layer, node))]

    if isinstance(layer, AVGPOOL_CLASSES):
        call = _layer_call_forward(layer, node)

        def apply(inputs, part, call=call):
            return None if part == "neg" else call(list(inputs))

        op = LinearOp(family=POOL, apply=apply, bias=lambda: None)
        return [Step(name, cls, LINEAR, in_keys, out_key, call, linear=op)]

    if isinstance(layer, (keras.layers.Add, keras.layers.Average)):
        call = _layer_call_forward(layer, node)

        def apply(inputs, part, call=call):
            return None if part == "neg" else call(list(inputs))

        op = LinearOp(family=ADD, apply=apply, bias=lambda: None)
        return [Step(name, cls, LINEAR, in_keys, out_key, call, linear=op)]

    if isinstance(layer, keras.layers.UpSampling2D) and layer.interpolation == "nearest":
        return [Step(name, cls, STRUCTURAL, in_keys, out_key, _layer_call_forward(layer, node))]
    if isinstance(layer, (keras.layers.UpSampling1D, keras.layers.UpSampling3D)):
        return [Step(name, cls, STRUCTURAL, in_keys, out_key, _layer_call_forward(layer, node))]

    if isinstance(layer, STRUCTURAL_CLASSES):
        return [Step(name, cls, STRUCTURAL, in_keys, out_key, _layer_call_forward(layer, node))]

    return opaque()


def _is_sigmoid_output(tensor) -> bool:
    history = getattr(tensor, "_keras_history", None)
    layer = getattr(history, "operation", None)
    if isinstance(layer, keras.layers.Reshape):  # a gate reshaped to (1, 1, C)
        return _is_sigmoid_output(layer.input)
    function = getattr(layer, "activation", None)
    return callable(function) and activation_name(function) in ("sigmoid", "hard_sigmoid")


def _gate_operand(node) -> int | None:
    """Index of the gate of ``Multiply([x, gate])``: the operand that comes out of a sigmoid
    (squeeze-and-excitation), else the one operand that is broadcast against the other."""
    if len(node.input_tensors) != 2:
        return None
    sigmoid = [_is_sigmoid_output(t) for t in node.input_tensors]
    if sigmoid[0] != sigmoid[1]:
        return sigmoid.index(True)
    shapes = [tuple(t.shape[1:]) for t in node.input_tensors]
    if len(shapes[0]) != len(shapes[1]) or shapes[0] == shapes[1]:
        return None
    for gate in (0, 1):
        small, big = shapes[gate], shapes[1 - gate]
        if all(s == 1 or s == b for s, b in zip(small, big, strict=True)) and any(
                s == 1 and b != 1 for s, b in zip(small, big, strict=True)):
            return gate
    return None


# --------------------------------------------------------------------------------------
# plan


def _select_output(model: keras.Model, output: str | None):
    outputs = list(model.outputs)
    if output is not None:
        for tensor in outputs:
            if tensor._keras_history.operation.name == output:
                return tensor
        names = [t._keras_history.operation.name for t in outputs]
        raise ValueError(f"model {model.name!r} has no output {output!r}; outputs: {names}")
    if len(outputs) == 1:
        return outputs[0]
    for tensor in outputs:
        if tensor._keras_history.operation.name == "hc_px_input":
            return tensor
    names = [t._keras_history.operation.name for t in outputs]
    raise ValueError(
        f"model {model.name!r} has several outputs {names} and none named 'hc_px_input'; "
        "pass output=NAME"
    )


def _ordered_nodes(model: keras.Model) -> list:
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


def build_plan(model: keras.Model, output: str | None = None) -> Plan:
    """Build the replay plan of ``model`` from its single input to one output.

    ``output`` names the output layer; by default the only output, or the one named
    ``hc_px_input``. Only the nodes the output depends on are kept.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"expected a keras.Model, got {type(model).__name__}")
    if len(model.inputs) != 1:
        raise ValueError(f"model {model.name!r} must have exactly one input, has "
                         f"{len(model.inputs)}")
    input_tensor = model.inputs[0]
    output_tensor = _select_output(model, output)
    nodes = _ordered_nodes(model)

    # Keep only nodes the output depends on.
    producer = {}
    for node in nodes:
        for kt in node.outputs:
            producer[id(kt)] = node
    needed_nodes = set()
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
        needed_nodes.add(id(node))
        stack.extend(id(kt) for kt in node.input_tensors)
    nodes = [node for node in nodes if id(node) in needed_nodes]

    consumers: dict = {}
    for node in nodes:
        for kt in node.input_tensors:
            consumers.setdefault(id(kt), []).append(node)

    # BatchNormalization folding: BN whose input is the sole use of a linear conv/dense output.
    bn_fold: dict = {}
    skip_nodes = set()
    for node in nodes:
        layer = node.operation
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        source = producer.get(id(node.input_tensors[0]))
        if source is None or id(node.input_tensors[0]) == id(output_tensor):
            continue
        src_layer = source.operation
        if not isinstance(src_layer, WEIGHTED_CLASSES):
            continue
        if activation_name(src_layer.activation) != "linear":
            continue
        if len(consumers.get(id(node.input_tensors[0]), [])) != 1:
            continue
        rank = len(node.input_tensors[0].shape)
        if not _bn_axis_is_last(layer, rank):
            continue
        if not isinstance(src_layer, keras.layers.Dense) and (
                src_layer.data_format != "channels_last"):
            continue
        bn_fold[id(source)] = layer
        bn_fold[("output", id(source))] = id(node.outputs[0])
        skip_nodes.add(id(node))

    builder = _Builder()
    steps: list[Step] = []
    for node in nodes:
        if id(node) in skip_nodes:
            continue
        steps.extend(_steps_for_node(node, builder, bn_fold))

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


def get_plan(model: keras.Model, output: str | None = None) -> Plan:
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
            function = swapped(lambda x, m=step.max_value: _clipped_relu(x, m),
                               lambda x, m=step.max_value: _clipped_relu_derivative(x, m),
                               backward_rule)
            values[step.output] = function(inputs[0])
        elif (backward_rule is not None and step.kind == ACTIVATION
              and step.activation in SWAPPABLE_ACTIVATIONS):
            function = swapped(lambda x: x * tf.sigmoid(x), _silu_derivative, backward_rule)
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

"""A replayable plan of a Keras functional graph for modified backward passes.

:func:`build_plan` walks a functional model's nodes once, from its single input to one
output, and turns every layer call into one or more :class:`Step` objects that the
relevance engine (:mod:`fetalhc.explain.relevance_rules`) and the modified-gradient
methods (Guided Backprop, DeConvNet) execute themselves, tensor by tensor:

- ``Conv1D/2D/3D`` and ``Dense`` become a ``linear`` step (the affine part, computed from the
  layer's own variables) followed by a ``relu`` step when their activation is ReLU;
- a ``BatchNormalization`` whose input is the sole use of a linear ``Conv``/``Dense`` output
  is folded into it (kernel and bias rescaled per output channel); any other
  ``BatchNormalization`` is an elementwise ``affine`` step;
- ``GrayscaleAdapter`` is an ``affine`` step and a channel-repeat ``structural`` step;
  ``OutputAffine`` and ``Rescaling`` are ``affine`` steps;
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
RELU = "relu"  # ReLU: identity for relevance, swapped in Guided Backprop / DeConvNet
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
    return (
        layer.max_value is None
        and float(layer.negative_slope) == 0.0
        and float(layer.threshold) == 0.0
    )


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


def _conv_or_dense_linear(layer, family: str, bn=None) -> LinearOp:
    if family == CONV:
        if layer.data_format != "channels_last":
            raise ValueError("channels_first convolutions are not supported")

        def raw(x, kernel):
            return layer.convolution_op(x, kernel)

    else:

        def raw(x, kernel):
            return keras.ops.matmul(x, kernel)

    bn_scale, bn_offset = _batch_norm_affine(bn) if bn is not None else (None, None)

    def kernel():
        value = tf.cast(layer.kernel, tf.float32)
        if bn_scale is not None:
            value = value * bn_scale()  # per output channel (last kernel axis)
        return value

    def bias():
        value = tf.cast(layer.bias, tf.float32) if layer.use_bias else None
        if bn_scale is not None:
            value = bn_offset() if value is None else value * bn_scale() + bn_offset()
        return value

    def apply(inputs, part):
        return raw(inputs[0], _part(kernel(), part))

    return LinearOp(family=family, apply=apply, bias=bias)


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


def _relu_forward(values, relu=None):
    return (relu or tf.nn.relu)(values[0])


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
            callable(act) and activation_name(act) == "relu")
        return [Step(name, cls, OPAQUE, in_keys, out_key, _layer_call_forward(layer, node),
                     note=note, hidden_relu=hidden)]

    if not isinstance(layer, keras.layers.Layer):
        return opaque("a keras.ops call in the graph; use layers")
    if isinstance(layer, keras.Model):
        return opaque("nested model; build the model flat")

    if isinstance(layer, CONV_CLASSES) or isinstance(layer, keras.layers.Dense):
        if len(in_keys) != 1:
            return opaque("called on several tensors")
        family = CONV if isinstance(layer, CONV_CLASSES) else DENSE
        if family == CONV and layer.data_format != "channels_last":
            return opaque("channels_first convolution")
        bn = bn_fold.get(id(node))
        act = activation_name(layer.activation)
        if bn is not None and act != "linear":  # pragma: no cover - guarded by fold finder
            bn = None
        op = _conv_or_dense_linear(layer, family, bn=bn)
        label = name if bn is None else f"{name}+{bn.name}"
        if bn is not None:
            out_key = bn_fold[("output", id(node))]
        if act == "linear":
            return [Step(label, cls, LINEAR, in_keys, out_key, _linear_forward(op), linear=op)]
        pre = builder.new_key(name)
        steps = [Step(label, cls, LINEAR, in_keys, pre, _linear_forward(op), linear=op)]
        if act == "relu":
            steps.append(Step(f"{name}.activation", cls, RELU, (pre,), out_key, _relu_forward))
        else:
            function = layer.activation
            steps.append(Step(f"{name}.activation", cls, OPAQUE, (pre,), out_key,
                              lambda values, f=function: f(values[0]),
                              note=f"activation {act!r} (only ReLU and linear are covered)"))
        return steps

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
            return opaque("ReLU with max_value, negative_slope or threshold")
        return [Step(name, cls, RELU, in_keys, out_key, _relu_forward)]

    if isinstance(layer, keras.layers.Activation):
        act = activation_name(layer.activation)
        if act == "relu":
            return [Step(name, cls, RELU, in_keys, out_key, _relu_forward)]
        if act == "linear":
            return [Step(name, cls, IDENTITY, in_keys, out_key, lambda values: values[0])]
        return opaque(f"activation {act!r} (only ReLU and linear are covered)")

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
        if not (isinstance(src_layer, CONV_CLASSES) or isinstance(src_layer, keras.layers.Dense)):
            continue
        if activation_name(src_layer.activation) != "linear":
            continue
        if len(consumers.get(id(node.input_tensors[0]), [])) != 1:
            continue
        rank = len(node.input_tensors[0].shape)
        if not _bn_axis_is_last(layer, rank):
            continue
        if isinstance(src_layer, CONV_CLASSES) and src_layer.data_format != "channels_last":
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


def run_forward(plan: Plan, images: tf.Tensor, relu: Callable | None = None) -> dict:
    """Replay the plan on ``images``; returns every tensor by key (``relu`` swaps ReLUs)."""
    values = {plan.input_key: images}
    for step in plan.steps:
        inputs = [values[key] for key in step.inputs]
        if step.kind == RELU:
            values[step.output] = _relu_forward(inputs, relu)
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

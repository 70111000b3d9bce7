"""What one step of a replay plan is and computes: step kinds, :class:`Step`, :class:`LinearOp`.

- step kinds (``linear``, ``relu``, ``activation``, ``maxpool``, ``structural``,
  ``identity``, ``resample``, ``opaque``) and the families of linear steps (``conv``, ``dense``, ``pool``,
  ``add``, ``affine``) the relevance rules select by;
- the rectifiers the modified backward passes swap (ReLU, ReLU6, swish/SiLU): their forward,
  local derivative and :func:`swapped`;
- the affine maps of weighted layers computed from the layer's own variables (conv, dense,
  depthwise, separable pointwise, elementwise affine), with an inference BatchNormalization
  folded in and the full / positive / negative part of the weights.

Which Keras layer becomes which steps is :mod:`fetalhc.explain.relevance_steps`; the plan that
orders and replays them is :mod:`fetalhc.explain.relevance_graph`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
# an exported model's raw-image pre-processing (resize, z-score, pad): relevance goes back by
# the step's own `backward` (fetalhc.models.export_layers.RawImagePreprocessing)
RESAMPLE = "resample"

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
    # resample steps: (inputs, relevance of the output) -> relevance of each input
    backward: Callable[[list, tf.Tensor], list] | None = None


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


# Rectifiers Guided Backprop / DeConvNet swap: forward and local derivative.
def clipped_relu(x, max_value):
    return tf.nn.relu(x) if max_value is None else tf.clip_by_value(
        x, 0.0, tf.cast(max_value, x.dtype))


def clipped_relu_derivative(x, max_value):
    active = x > 0
    if max_value is not None:
        active = tf.logical_and(active, x < tf.cast(max_value, x.dtype))
    return tf.cast(active, x.dtype)


def silu_derivative(x):
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


def weight_part(tensor: tf.Tensor, part: WeightPart) -> tf.Tensor:
    """``tensor`` (``"full"``), its positive part (``"pos"``) or its negative part (``"neg"``)."""
    if part == "full":
        return tensor
    if part == "pos":
        return tf.maximum(tensor, 0.0)
    if part == "neg":
        return tf.minimum(tensor, 0.0)
    raise ValueError(f"unknown weight part {part!r}")


def batch_norm_affine(layer: keras.layers.BatchNormalization):
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


def bn_axis_is_last(layer, rank: int) -> bool:
    """True when the BatchNormalization ``layer`` normalises the last axis of a rank-``rank`` input."""
    axis = layer.axis
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            return False
        axis = axis[0]
    return axis in (-1, rank - 1)


# --------------------------------------------------------------------------------------
# affine maps of weighted layers


def _fold(kernel_fn, bias_fn, bn, kernel_scale_shape=None):
    """Fold an inference BatchNormalization into a kernel and bias (per output channel)."""
    if bn is None:
        return kernel_fn, bias_fn
    bn_scale, bn_offset = batch_norm_affine(bn)

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


def conv_or_dense_linear(layer, family: str, bn=None) -> LinearOp:
    """The affine part of a ``Conv1D/2D/3D`` (``family`` ``conv``) or ``Dense`` layer."""
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
        return raw(inputs[0], weight_part(kernel(), part))

    return LinearOp(family=family, apply=apply, bias=bias)


def depthwise_linear(layer, kernel_attr: str, bn=None, with_bias: bool = True) -> LinearOp:
    """Depthwise convolution (each input channel with its own ``depth_multiplier`` filters)."""
    raw_kernel = getattr(layer, kernel_attr)
    channels, multiplier = int(raw_kernel.shape[-2]), int(raw_kernel.shape[-1])
    bias_fn = _layer_bias(layer) if with_bias else (lambda: None)
    kernel, bias = _fold(lambda: tf.cast(getattr(layer, kernel_attr), tf.float32), bias_fn, bn,
                         kernel_scale_shape=(channels, multiplier))

    def apply(inputs, part):
        return keras.ops.depthwise_conv(
            inputs[0], weight_part(kernel(), part), strides=layer.strides, padding=layer.padding,
            data_format=layer.data_format, dilation_rate=layer.dilation_rate)

    return LinearOp(family=CONV, apply=apply, bias=bias)


def pointwise_linear(layer, bn=None) -> LinearOp:
    """The 1x1 pointwise part of a separable convolution, with the layer's bias."""
    kernel, bias = _fold(lambda: tf.cast(layer.pointwise_kernel, tf.float32),
                         _layer_bias(layer), bn)

    def apply(inputs, part):
        return keras.ops.conv(inputs[0], weight_part(kernel(), part), strides=1, padding="valid",
                              data_format=layer.data_format)

    return LinearOp(family=CONV, apply=apply, bias=bias)


def affine_linear(scale_fn, offset_fn) -> LinearOp:
    """Elementwise ``x * scale + offset`` (scale, offset broadcast on the last axis)."""

    def apply(inputs, part):
        scale = weight_part(tf.cast(scale_fn(), tf.float32), part)
        return inputs[0] * scale

    def bias():
        offset = offset_fn()
        return None if offset is None else tf.cast(offset, tf.float32)

    return LinearOp(family=AFFINE, apply=apply, bias=bias)


def linear_forward(op: LinearOp):
    """The forward of a linear step: ``op`` with the full weights plus its bias."""
    def forward(values):
        z = op.apply(values, "full")
        b = op.bias()
        return z if b is None else z + b

    return forward


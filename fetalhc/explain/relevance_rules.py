"""Layer-wise relevance propagation over a replay plan (:mod:`fetalhc.explain.relevance_graph`).

Relevance starts at the explained output as ``R = output * d target / d output`` (one value
per image; for ``hc_mm`` that is the predicted HC in mm, and LRP-z then equals Input x
Gradient of the target itself) and keeps its sign. It then flows backwards step by step:

- ``linear`` steps (conv, dense, pooling, add, elementwise affine) use the rule the
  :class:`RuleSet` picks for their family, computed with the gradient trick
  ``R_in = x * J^T (R / z)``;
- ``relu`` (ReLU, ReLU6), ``activation`` (swish/SiLU, sigmoid: an approximation, see
  docs/relevance.md) and ``identity`` steps pass relevance unchanged;
- a linear step whose ``relevant_inputs`` is set holds its other inputs constant (the gate of
  a squeeze-and-excitation ``Multiply``): they receive no relevance;
- ``maxpool`` steps give each window's relevance to its winner; ``structural`` steps
  (flatten, reshape, padding, cropping, concatenation, channel repeat) move relevance with
  the transpose of their map (copies add up, cropped or padded positions drop out).

Rules (``z_j = sum_i x_i w_ij + b_j``):

- ``z``: ``R_i = sum_j x_i w_ij / z_j R_j`` (0 where ``z_j = 0``);
- ``epsilon``: denominator ``z_j + epsilon * sign(z_j)``;
- ``alpha_beta``: positive and negative contributions ``(x_i w_ij)^+`` and ``(x_i w_ij)^-``
  (both signs of ``x`` handled) normalised separately, weighted ``alpha`` and ``-beta``;
  ``use_bias`` adds ``b^+`` / ``b^-`` to the denominators. ``alpha=1, beta=0`` without bias
  is the z+ rule;
- ``zb`` (bounded input layer, ``low <= x <= high``):
  ``R_i = sum_j (x_i w_ij - low_i w_ij^+ - high_i w_ij^-) / z^B_j R_j``;
- ``pass``: elementwise affine maps between the image and the first weighted layer (the
  pre-processing: ``GrayscaleAdapter``, ``Rescaling``, ``Normalization``) pass relevance on
  unchanged under every rule set: their offsets are a change of the input's origin, not
  evidence (and a z rule there would divide by ``scale * x + offset``, which vanishes inside
  the image's range for the ImageNet pre-processing modes). Under z^B their bounds are
  mapped with them.

A step without a rule raises ``ValueError`` naming the layer and its class.

One job past 400 lines: relevance propagation over a plan. The rules, the rule sets of the
registered methods and the backward pass that applies them belong together: each rule kernel
is read against the rule it computes and the engine that calls it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import tensorflow as tf

from fetalhc.explain.relevance_graph import Plan, output_per_image
from fetalhc.explain.relevance_ops import (
    ACTIVATION,
    ADD,
    AFFINE,
    CONV,
    DENSE,
    IDENTITY,
    LINEAR,
    MAXPOOL,
    POOL,
    RELU,
    RESAMPLE,
    STRUCTURAL,
    LinearOp,
)


@dataclass(frozen=True)
class Rule:
    """One propagation rule for linear steps (see the module docstring)."""

    name: str  # "z", "epsilon", "alpha_beta", "zb" or "pass"
    epsilon: float = 0.0
    alpha: float = 1.0
    beta: float = 0.0
    use_bias: bool = True

    def label(self) -> str:
        if self.name == "epsilon":
            return f"epsilon ({self.epsilon:g})"
        if self.name == "alpha_beta":
            if self.alpha == 1 and self.beta == 0 and not self.use_bias:
                return "z+"
            bias = "" if self.use_bias else ", no bias"
            return f"alpha{self.alpha:g}-beta{self.beta:g}{bias}"
        return {"z": "z", "zb": "z^B", "pass": "pass-through"}.get(self.name, self.name)


Z = Rule("z")
ZPLUS = Rule("alpha_beta", alpha=1.0, beta=0.0, use_bias=False)
ZB = Rule("zb")
PASS = Rule("pass")


def epsilon_rule(epsilon: float) -> Rule:
    if not float(epsilon) >= 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    return Rule("epsilon", epsilon=float(epsilon))


def alpha_beta_rule(alpha: float, beta: float, use_bias: bool = True) -> Rule:
    alpha, beta = float(alpha), float(beta)
    if beta < 0 or abs(alpha - beta - 1.0) > 1e-9:
        raise ValueError(f"alpha-beta needs alpha - beta = 1 and beta >= 0, got {alpha}, {beta}")
    return Rule("alpha_beta", alpha=alpha, beta=beta, use_bias=bool(use_bias))


@dataclass(frozen=True)
class RuleSet:
    """Which rule each linear family gets; ``input`` (if set) is the rule of the first weighted
    layer, the one whose input is the (bounded) image."""

    name: str
    conv: Rule
    dense: Rule
    pool: Rule
    add: Rule
    affine: Rule
    input: Rule | None = None

    def rule_for(self, family: str, bounded: bool) -> Rule:
        if bounded and self.input is not None and family != ADD:
            return PASS if family == AFFINE else self.input
        return {CONV: self.conv, DENSE: self.dense, POOL: self.pool, ADD: self.add,
                AFFINE: self.affine}[family]

    def table(self) -> dict[str, str]:
        """Human-readable rule per layer type (for docs and metadata)."""
        table = {
            "Conv (+ folded BatchNorm)": self.conv.label(),
            "Dense (+ folded BatchNorm)": self.dense.label(),
            "AveragePooling / GlobalAveragePooling": self.pool.label(),
            "Add (residual)": self.add.label(),
            "elementwise affine (BatchNorm alone, OutputAffine, GrayscaleAdapter, Rescaling)":
                self.affine.label(),
            "squeeze-and-excitation Multiply (gate held constant)": self.affine.label(),
            "MaxPooling": "winner takes all",
            "ReLU, ReLU6, Dropout": "identity",
            "swish/SiLU, sigmoid (approximation)": "identity",
            "Flatten, Reshape, ZeroPadding, Cropping, Concatenate, channel repeat":
                "transpose (moves relevance)",
        }
        if self.input is not None:
            table["first Conv/Dense (input layer)"] = self.input.label()
        return table


def lrp_z_rules() -> RuleSet:
    return RuleSet("lrp_z", conv=Z, dense=Z, pool=Z, add=Z, affine=Z)


def lrp_epsilon_rules(epsilon: float = 0.01) -> RuleSet:
    rule = epsilon_rule(epsilon)
    return RuleSet("lrp_epsilon", conv=rule, dense=rule, pool=rule, add=rule, affine=rule)


def lrp_alpha_beta_rules(alpha: float, beta: float, name: str | None = None) -> RuleSet:
    rule = alpha_beta_rule(alpha, beta, use_bias=True)
    return RuleSet(name or f"lrp_alpha{alpha:g}_beta{beta:g}", conv=rule, dense=rule,
                   pool=ZPLUS, add=Z, affine=Z)


def lrp_zplus_rules() -> RuleSet:
    return RuleSet("lrp_zplus", conv=ZPLUS, dense=ZPLUS, pool=ZPLUS, add=Z, affine=Z)


def lrp_composite_rules(epsilon: float = 0.01, conv_rule: str = "alpha1_beta0") -> RuleSet:
    conv = {
        "alpha1_beta0": alpha_beta_rule(1, 0),
        "alpha2_beta1": alpha_beta_rule(2, 1),
        "zplus": ZPLUS,
    }.get(conv_rule)
    if conv is None:
        raise ValueError(
            f"unknown conv_rule {conv_rule!r}; use 'alpha1_beta0', 'alpha2_beta1' or 'zplus'"
        )
    eps = epsilon_rule(epsilon)
    return RuleSet("lrp_composite", conv=conv, dense=eps, pool=eps, add=eps, affine=eps,
                   input=ZB)


def deep_taylor_rules() -> RuleSet:
    return RuleSet("deep_taylor", conv=ZPLUS, dense=ZPLUS, pool=ZPLUS, add=Z, affine=Z,
                   input=ZB)


# --------------------------------------------------------------------------------------
# rule kernels


def _zeros_if_none(grads, like):
    return [tf.zeros_like(x) if g is None else g for g, x in zip(grads, like, strict=True)]


def _sign_stabilise(z: tf.Tensor, epsilon: float) -> tf.Tensor:
    return z + epsilon * tf.where(z >= 0, tf.ones_like(z), -tf.ones_like(z))


def _z_or_epsilon(op, xs, z, relevance, epsilon):
    s = tf.math.divide_no_nan(relevance, z) if epsilon == 0 else relevance / _sign_stabilise(
        z, epsilon)
    with tf.GradientTape() as tape:
        tape.watch(xs)
        out = op.apply(xs, "full")
    grads = _zeros_if_none(tape.gradient(out, xs, output_gradients=s), xs)
    return [x * g for x, g in zip(xs, grads, strict=True)]


def _alpha_beta(op, xs, relevance, rule: Rule, nonneg: Sequence[bool]):
    xs_pos = [x if known else tf.maximum(x, 0.0) for x, known in zip(xs, nonneg, strict=True)]
    any_negative = not all(nonneg)
    xs_neg = [tf.zeros_like(x) if known else tf.minimum(x, 0.0) for x, known in zip(xs, nonneg, strict=True)]
    sources = xs_pos + (xs_neg if any_negative else [])
    bias = op.bias() if rule.use_bias else None

    targets, cotangent_of = [], []
    with tf.GradientTape(persistent=False) as tape:
        tape.watch(sources)
        pos_parts = [op.apply(xs_pos, "pos")]
        neg_parts = [op.apply(xs_pos, "neg")] if rule.beta != 0 else []
        if any_negative:
            pos_parts.append(op.apply(xs_neg, "neg"))
            if rule.beta != 0:
                neg_parts.append(op.apply(xs_neg, "pos"))
    pos_parts = [p for p in pos_parts if p is not None]
    neg_parts = [p for p in neg_parts if p is not None]

    if pos_parts:
        z_pos = tf.add_n(pos_parts)
        if bias is not None:
            z_pos = z_pos + tf.maximum(bias, 0.0)
        s_pos = rule.alpha * tf.math.divide_no_nan(relevance, z_pos)
        targets += pos_parts
        cotangent_of += [s_pos] * len(pos_parts)
    if neg_parts and rule.beta != 0:
        z_neg = tf.add_n(neg_parts)
        if bias is not None:
            z_neg = z_neg + tf.minimum(bias, 0.0)
        s_neg = -rule.beta * tf.math.divide_no_nan(relevance, z_neg)
        targets += neg_parts
        cotangent_of += [s_neg] * len(neg_parts)
    if not targets:
        return [tf.zeros_like(x) for x in xs]
    grads = _zeros_if_none(tape.gradient(targets, sources, output_gradients=cotangent_of),
                           sources)
    result = [xp * g for xp, g in zip(xs_pos, grads[: len(xs)], strict=True)]
    if any_negative:
        result = [r + xn * g for r, xn, g in zip(result, xs_neg, grads[len(xs):], strict=True)]
    return result


def _z_bounded(op, xs, relevance, low, high):
    if len(xs) != 1:
        raise ValueError("the z^B rule needs a single-input layer")
    x = xs[0]
    with tf.GradientTape() as tape:
        tape.watch([x, low, high])
        z_x = op.apply([x], "full")
        z_low = op.apply([low], "pos")
        z_high = op.apply([high], "neg")
        z = z_x
        if z_low is not None:
            z = z - z_low
        if z_high is not None:
            z = z - z_high
    s = tf.math.divide_no_nan(relevance, z)
    gx, gl, gh = _zeros_if_none(tape.gradient(z, [x, low, high], output_gradients=s),
                                [x, low, high])
    return [x * gx + low * gl + high * gh]


def _hold_constant(op: LinearOp, constants) -> LinearOp:
    """``op`` as a map of its relevant inputs only, the others fixed at their values."""
    constants = [tf.stop_gradient(c) for c in constants]

    def apply(inputs, part):
        return op.apply(list(inputs) + constants, part)

    return LinearOp(family=op.family, apply=apply, bias=op.bias)


def _transpose(step, xs, relevance):
    with tf.GradientTape() as tape:
        tape.watch(xs)
        out = step.forward(list(xs))
    return _zeros_if_none(tape.gradient(out, xs, output_gradients=relevance), xs)


# --------------------------------------------------------------------------------------
# engine


def _affine_bounds(op, low, high):
    scale = op.apply([tf.ones_like(low)], "full")
    a, b = low * scale, high * scale
    bias = op.bias()
    lo, hi = tf.minimum(a, b), tf.maximum(a, b)
    if bias is not None:
        lo, hi = lo + bias, hi + bias
    return lo, hi


def _image_range(values):
    """Per-image (min, max) of ``values``, broadcast to its shape."""
    axes = list(range(1, len(values.shape)))
    ones = tf.ones_like(values)
    return (tf.reduce_min(values, axis=axes, keepdims=True) * ones,
            tf.reduce_max(values, axis=axes, keepdims=True) * ones)


def _preprocessing_steps(plan: Plan) -> set:
    """Indices of the elementwise affine steps between the image and the first weighted layer
    (only structural, identity and other such affine steps on the way)."""
    region, indices = {plan.input_key}, set()
    for index, step in enumerate(plan.steps):
        if not all(key in region for key in step.inputs):
            continue
        if step.kind in (STRUCTURAL, IDENTITY, RESAMPLE):
            region.add(step.output)
        elif (step.kind == LINEAR and step.linear.family == AFFINE
              and step.linear.relevant_inputs is None):
            region.add(step.output)
            indices.add(index)
    return indices


def _nonnegative_keys(plan: Plan) -> set:
    nonneg = set()
    for step in plan.steps:
        inputs_nonneg = all(key in nonneg for key in step.inputs)
        if step.kind == RELU:
            nonneg.add(step.output)
        elif step.kind in (MAXPOOL, STRUCTURAL, IDENTITY) and inputs_nonneg:
            nonneg.add(step.output)
        elif step.kind == LINEAR and step.linear.family in (POOL, ADD) and inputs_nonneg:
            nonneg.add(step.output)
    return nonneg


def propagate_relevance(
    plan: Plan,
    images: tf.Tensor,
    output_gradient,
    rules: RuleSet,
    low: tf.Tensor | None = None,
    high: tf.Tensor | None = None,
    collect_layer_sums: bool = False,
) -> dict:
    """Run LRP with ``rules`` on a batch.

    Args:
        plan: from :func:`~fetalhc.explain.relevance_graph.build_plan`.
        images: ``(N, ...)`` float32 batch in the model's input layout.
        output_gradient: ``(N,)`` derivative of the explained target w.r.t. the output,
            or a callable ``output (N,) -> target (N,)`` differentiated here; the starting
            relevance is ``output * d target / d output``.
        rules: the :class:`RuleSet`.
        low, high: ``(N,)`` per-image input bounds, needed when ``rules.input`` is set.
        collect_layer_sums: also return per-step relevance sums (for conservation checks).

    Returns a dict: ``relevance`` (input-shaped), ``output`` (N,), ``start`` (N,),
    ``input_sum`` (N,), ``conservation_gap`` = ``input_sum - start`` (N,), and with
    ``collect_layer_sums`` ``layer_sums``: a list of ``(step name, sum R_out (N,),
    sum R_in (N,))``.
    """
    plan.check_relevance_support(rules.name)
    images = tf.convert_to_tensor(images, tf.float32)
    batch_axes = list(range(1, len(images.shape)))

    def per_image_sum(tensor):
        return tf.reduce_sum(tensor, axis=list(range(1, len(tensor.shape))))

    # Forward replay, keeping every tensor, plus bounds along the input region.
    values = {plan.input_key: images}
    bounds = {}
    if rules.input is not None:
        if low is None or high is None:
            raise ValueError(f"{rules.name} needs per-image input bounds low and high")
        shape = [-1] + [1] * len(batch_axes)
        low_t = tf.reshape(tf.cast(low, tf.float32), shape) * tf.ones_like(images)
        high_t = tf.reshape(tf.cast(high, tf.float32), shape) * tf.ones_like(images)
        bounds[plan.input_key] = (low_t, high_t)
    bounded_linear = set()
    preprocessing = _preprocessing_steps(plan)
    for index, step in enumerate(plan.steps):
        inputs = [values[key] for key in step.inputs]
        values[step.output] = step.forward(inputs)
        if bounds and all(key in bounds for key in step.inputs):
            lows = [bounds[key][0] for key in step.inputs]
            highs = [bounds[key][1] for key in step.inputs]
            if step.kind in (STRUCTURAL, IDENTITY, MAXPOOL, RELU):
                bounds[step.output] = (step.forward(lows), step.forward(highs))
            elif step.kind == RESAMPLE:  # bounds of what it made: each image's min and max
                bounds[step.output] = _image_range(values[step.output])
            elif step.kind == LINEAR:
                bounded_linear.add(index)
                if step.linear.family == AFFINE:
                    bounds[step.output] = _affine_bounds(step.linear, lows[0], highs[0])

    output = output_per_image(tf.cast(values[plan.output_key], tf.float32))
    if callable(output_gradient):
        with tf.GradientTape() as tape:
            tape.watch(output)
            target = output_gradient(output)
        output_gradient = tape.gradient(target, output)
        if output_gradient is None:
            output_gradient = tf.zeros_like(output)
    output_gradient = tf.reshape(tf.cast(output_gradient, tf.float32), [-1])
    start = output * output_gradient
    top = values[plan.output_key]
    relevance = {plan.output_key: tf.reshape(start, [-1] + [1] * (len(top.shape) - 1))
                 * tf.ones_like(top)}
    nonneg = _nonnegative_keys(plan)
    layer_sums = []

    for index in range(len(plan.steps) - 1, -1, -1):
        step = plan.steps[index]
        r_out = relevance.pop(step.output, None)
        if r_out is None:
            continue
        keys = step.inputs
        xs = [values[key] for key in keys]
        if step.kind in (RELU, ACTIVATION, IDENTITY):
            r_in = [r_out]
        elif step.kind in (MAXPOOL, STRUCTURAL):
            r_in = _transpose(step, xs, r_out)
        elif step.kind == RESAMPLE:
            r_in = step.backward(xs, r_out)
        elif step.kind == LINEAR:
            op = step.linear
            if op.relevant_inputs is not None and op.relevant_inputs < len(xs):
                op = _hold_constant(op, xs[op.relevant_inputs:])
                keys, xs = keys[: step.linear.relevant_inputs], xs[: step.linear.relevant_inputs]
            rule = PASS if index in preprocessing else rules.rule_for(
                op.family, index in bounded_linear)
            if rule.name == "pass":
                r_in = [r_out]
            elif rule.name in ("z", "epsilon"):
                r_in = _z_or_epsilon(op, xs, values[step.output], r_out, rule.epsilon)
            elif rule.name == "alpha_beta":
                r_in = _alpha_beta(op, xs, r_out, rule, [key in nonneg for key in keys])
            elif rule.name == "zb":
                low_x, high_x = bounds[keys[0]]
                r_in = _z_bounded(op, xs, r_out, low_x, high_x)
            else:  # pragma: no cover - RuleSet only builds the names above
                raise ValueError(f"unknown rule {rule.name!r}")
        else:  # pragma: no cover - check_relevance_support refuses opaque steps
            raise ValueError(f"no relevance rule for step {step.name!r} ({step.layer_class})")
        if collect_layer_sums:
            layer_sums.append((step.name, per_image_sum(r_out),
                               tf.add_n([per_image_sum(r) for r in r_in])))
        for key, r in zip(keys, r_in, strict=True):
            relevance[key] = relevance[key] + r if key in relevance else r

    input_relevance = relevance.get(plan.input_key)
    if input_relevance is None:
        input_relevance = tf.zeros_like(images)
    input_sum = per_image_sum(input_relevance)
    result = {
        "relevance": input_relevance,
        "output": output,
        "start": start,
        "input_sum": input_sum,
        "conservation_gap": input_sum - start,
    }
    if collect_layer_sums:
        result["layer_sums"] = layer_sums
    return result


def with_epsilon(rules: RuleSet, epsilon: float) -> RuleSet:
    """A copy of ``rules`` whose epsilon rules use ``epsilon``."""
    def fix(rule):
        return epsilon_rule(epsilon) if rule is not None and rule.name == "epsilon" else rule

    return replace(rules, conv=fix(rules.conv), dense=fix(rules.dense), pool=fix(rules.pool),
                   add=fix(rules.add), affine=fix(rules.affine))

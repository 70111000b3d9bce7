"""What an evaluation is asked to do, checked before any work: :class:`EvaluationSettings`
(every evaluation default lives here), the metric names, and the one list of choices and
the one range of every setting.

This module imports neither TensorFlow nor numpy, so the command line builds its options
(``click.Choice`` from the choice lists, ranges from :data:`RANGES`, defaults from the
dataclass) and checks them without the start-up cost of the evaluators. The evaluator
modules (:mod:`.regions`, :mod:`.perturbation`, :mod:`.deletion`, ...) import their choices
from here.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, field

# ----------------------------------------------------------------------------- choices
METRICS = ("aopc", "deletion", "insertion", "localisation", "randomisation")
PROTOCOLS = ("paper",)
# region replacement, deletion baseline (speckle: the image's own pixels, shuffled)
PERTURBATIONS = ("noise", "mean", "zeros", "blur", "speckle")
AGGREGATIONS = ("mean", "abs")  # region / pixel ranking: signed mean or absolute
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")  # forward passes
ORDERS = ("morf", "lerf", "random")  # region removal orders
DELETION_UNITS = ("pixels", "regions")
RELEVANCE_MODES = ("positive", "abs")  # localisation: which relevance counts
SIMILARITIES = ("spearman", "spearman_abs", "ssim")  # randomisation
# The names of fetalhc.explain.TARGETS (that module imports TensorFlow; a test checks
# that the two agree).
EXPLAIN_TARGETS = ("hc_mm", "hc_px_input", "abs_error_mm")

# The settings of the seed paper (Zhang et al., iMIMIC 2020).
PAPER_PROTOCOL = {
    "image_size": 128,
    "grid": 4,
    "aggregation": "mean",
    "perturbation": "noise",
    "noise_sd": 0.3,
    "steps": 15,
    "regions_per_step": 1,
    "recompute": None,
}
# the region-perturbation settings the paper protocol fixes (see EvaluationSettings.paper)
PAPER_FIXED = ("grid", "steps", "regions_per_step", "perturbation", "noise_sd", "aggregation",
               "recompute")

# EvaluationSettings field -> its choices
CHOICES: dict[str, tuple[str, ...]] = {
    "perturbation": PERTURBATIONS,
    "aggregation": AGGREGATIONS,
    "deletion_unit": DELETION_UNITS,
    "baseline": PERTURBATIONS,
    "relevance": RELEVANCE_MODES,
    "similarity": SIMILARITIES,
    "precision": PRECISIONS,
    "protocol": PROTOCOLS,
    "explain_target": EXPLAIN_TARGETS,
}
# how a choice is named in messages
CHOICE_NAMES = {"baseline": "deletion baseline", "deletion_unit": "deletion unit",
                "explain_target": "explanation target"}


@dataclass(frozen=True)
class Range:
    """The values a numeric setting may take: ``low`` / ``high`` (``None``: unbounded),
    excluded when ``low_open`` / ``high_open``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def __contains__(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if not math.isfinite(value) or (self.integer and int(value) != value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and
                    (value >= self.high if self.high_open else value > self.high))

    def describe(self) -> str:
        """``"an integer >= 1"``, ``"a number in (0, 100]"``, ..."""
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            return (f"{kind} in {'(' if self.low_open else '['}{_number(self.low)}, "
                    f"{_number(self.high)}{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {_number(self.low)}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '<='} {_number(self.high)}"
        return f"a finite {kind[2:] if self.integer else 'number'}"


def _as_number(value):
    """A 0-d array (numpy scalar array) as its number; anything else as it is."""
    return value.item() if getattr(value, "ndim", None) == 0 else value


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


POSITIVE_INT = Range(1, integer=True)
# EvaluationSettings field -> the values it may take (``steps`` may also be None: R - 1)
RANGES: dict[str, Range] = {
    "grid": POSITIVE_INT,
    "steps": POSITIVE_INT,
    "regions_per_step": POSITIVE_INT,
    "noise_sd": Range(0.0),
    "blur_sigma": Range(0.0, low_open=True),
    "deletion_steps": POSITIVE_INT,
    "band_mm": Range(0.0, low_open=True),
    "top_percent": Range(0.0, 100.0, low_open=True),
    "similarity_threshold": Range(-1.0, 1.0),
    "randomisation_images": POSITIVE_INT,
    "randomisation_stages": Range(0, integer=True),
    "confidence": Range(0.0, 1.0, low_open=True, high_open=True),
    "n_boot": POSITIVE_INT,
    "seed": Range(0, integer=True),
    "batch_size": POSITIVE_INT,
}


def require_choice(value: str, choices, what: str) -> str:
    """``value`` if it is one of ``choices``; else a ``ValueError`` naming ``what``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")
    return value


def require_range(value, allowed: Range, what: str):
    """``value`` if ``allowed`` contains it; else a one-line ``ValueError`` naming ``what``."""
    if value not in allowed:
        raise ValueError(f"{what} must be {allowed.describe()}; got {value!r}")
    return value


def split_list(text: str | Iterable[str] | None) -> list[str]:
    """``"a, b,,c"`` (or a list) → ``["a", "b", "c"]``: stripped, empty items dropped."""
    items = text.split(",") if isinstance(text, str) else list(text or [])
    return [str(item).strip() for item in items if str(item).strip()]


def parse_metrics(metrics) -> tuple[str, ...]:
    """``"aopc,deletion"`` or a list → a tuple of known metric names (ValueError otherwise)."""
    names = tuple(dict.fromkeys(split_list(metrics)))
    if not names:
        raise ValueError(f"no metric given; choose from: {', '.join(METRICS)}")
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from: "
                         f"{', '.join(METRICS)}")
    return names


def parse_numbers(text, what: str) -> list[float] | None:
    """``"2, 5.5"`` (or a list of numbers) → ``[2.0, 5.5]``; nothing → ``None``; anything
    else is a one-line ``ValueError`` naming ``what``."""
    if text is None:
        return None
    items = split_list(text) if isinstance(text, str) else list(text)
    if not items:
        return None
    try:
        return [float(item) for item in items]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be comma-separated numbers; got {text!r}") from None


def check_error_split(threshold_mm=None, quantiles=None) -> None:
    """The error split of the summaries: at most one of ``threshold_mm`` (errors in mm,
    finite and >= 0) and ``quantiles`` (strictly between 0 and 1); one-line ``ValueError``."""
    if threshold_mm is not None and quantiles is not None:
        raise ValueError("give either --error-threshold-mm or --error-quantiles, not both")
    for values, allowed, what, must in (
            (threshold_mm, Range(0.0), "error thresholds", "be a number of mm >= 0"),
            (quantiles, Range(0.0, 1.0, True, True), "error quantiles",
             "lie strictly between 0 and 1")):
        if values is None:
            continue
        try:
            values = list(values)
        except TypeError:  # one number
            values = [values]
        if not values:
            raise ValueError(f"no {what} given")
        bad = [value for value in values if _as_number(value) not in allowed]
        if bad:
            raise ValueError(f"{what} must each {must}; got {', '.join(map(str, bad))}")


# ----------------------------------------------------------------------------- shapes
def check_paper_input(images) -> None:
    """The paper protocol needs 128 x 128 inputs; say so otherwise.

    ``images`` is the image array or its shape ``(N, H, W[, C])``.
    """
    shape = tuple(images) if isinstance(images, tuple | list) else tuple(images.shape)
    size = PAPER_PROTOCOL["image_size"]
    if len(shape) < 3 or tuple(shape[1:3]) != (size, size):
        raise ValueError(
            f"the paper protocol uses {size} x {size} inputs; got images of "
            f"{shape[1]} x {shape[2]} px (load the data with image_size={size})"
        )


def _divisors(size: int) -> list[int]:
    return [d for d in range(2, size + 1) if size % d == 0 and size // d >= 2]


def grid_shape(image_shape, grid) -> tuple[int, int]:
    """``(rows, cols)`` of ``grid`` regions per side (a number, or ``(rows, cols)``) on
    images of ``(H, W)``; a one-line ``ValueError`` when it is not positive or does not
    divide the image exactly (listing grids that do)."""
    height, width = int(image_shape[0]), int(image_shape[1])
    rows, cols = grid if isinstance(grid, tuple | list) else (grid, grid)
    try:
        rows, cols = int(rows), int(cols)
    except (TypeError, ValueError):
        raise ValueError(f"grid must be a positive integer; got {grid!r}") from None
    if rows < 1 or cols < 1:
        raise ValueError(f"grid must be positive; got {grid}")
    for size, count, axis in ((height, rows, "height"), (width, cols, "width")):
        if count > size:
            raise ValueError(f"a grid of {count} regions per side needs at least {count} px; "
                             f"the image {axis} is {size} px")
        if size % count:
            options = ", ".join(str(size // d) for d in _divisors(size)[:8])
            raise ValueError(
                f"a grid of {count} regions does not divide the image {axis} {size} px; "
                f"regions per side that do: {options}"
            )
    return rows, cols


def region_sizes(image_shape, region_size) -> tuple[int, int]:
    """``(height, width)`` of regions of ``region_size`` px (a number or a pair) on images
    of ``(H, W)``; a one-line ``ValueError`` when they do not tile the image exactly."""
    height, width = int(image_shape[0]), int(image_shape[1])
    rh, rw = region_size if isinstance(region_size, tuple | list) else (region_size,
                                                                        region_size)
    rh, rw = int(rh), int(rw)
    if rh < 1 or rw < 1:
        raise ValueError(f"region_size must be positive; got {region_size}")
    for size, count, axis in ((height, rh, "height"), (width, rw, "width")):
        if size % count:
            options = ", ".join(str(d) for d in _divisors(size)[:8])
            raise ValueError(
                f"regions of {count} px do not divide the image {axis} {size} px; "
                f"region sizes that do: {options}"
            )
    return rh, rw


# ----------------------------------------------------------------------------- settings
@dataclass
class EvaluationSettings:
    """Every knob of the evaluation; ``paper()`` gives the seed paper's protocol.

    :meth:`check` checks every value against its choices and range (:data:`CHOICES`,
    :data:`RANGES`); :meth:`validate` also against the images' shape and the metrics."""

    # region perturbation / AOPC
    grid: int = 4
    steps: int | None = None
    regions_per_step: int = 1
    orders: tuple[str, ...] = ORDERS
    perturbation: str = "noise"
    noise_sd: float = 0.3
    blur_sigma: float = 4.0
    aggregation: str = "mean"
    recompute: bool = False
    # deletion / insertion
    deletion_unit: str = "pixels"
    deletion_steps: int = 20
    baseline: str = "zeros"
    # localisation
    band_mm: float = 3.0
    relevance: str = "positive"
    top_percent: float = 5.0
    # randomisation
    similarity: str = "spearman_abs"
    similarity_threshold: float = 0.5
    randomisation_images: int = 8
    randomisation_stages: int = 0  # cascade checkpoints explained (0: every weighted layer)
    randomisation_fixed_cost: bool = False  # maps at the methods' fixed-cost rules
    # statistics and compute
    confidence: float = 0.95
    n_boot: int = 2000
    seed: int = 0
    batch_size: int = 256
    precision: str = "float32"
    protocol: str | None = None
    explain_target: str = "hc_mm"
    explain_options: dict = field(default_factory=dict)

    @classmethod
    def paper(cls, **overrides) -> EvaluationSettings:
        """Zhang et al. 2020: 128 px input, 4 x 4 regions ranked by mean signed relevance,
        N(0, 0.3) replacement, 15 steps of one region, maps computed once."""
        values = {key: PAPER_PROTOCOL[key] for key in
                  ("grid", "aggregation", "perturbation", "noise_sd", "steps",
                   "regions_per_step")}
        values.update(recompute=False, protocol="paper")
        values.update(overrides)
        return cls(**values)

    @classmethod
    def with_protocol(cls, protocol: str | None = None, **values) -> EvaluationSettings:
        """Settings from option values under ``protocol``: ``None`` takes every value;
        ``"paper"`` ignores the ones the paper fixes (:data:`PAPER_FIXED`) and applies the
        others (deletion, localisation, ...). Any other protocol is a ``ValueError``."""
        if protocol == "paper":
            return cls.paper(**{k: v for k, v in values.items() if k not in PAPER_FIXED})
        if protocol is not None:
            raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
        return cls(**values)

    def as_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["orders"] = list(self.orders)
        return values

    def check(self) -> None:
        """Every value against its choices and range; a one-line ``ValueError`` naming the
        first bad one. Needs no image (see :meth:`validate` for the shape checks)."""
        for name, choices in CHOICES.items():
            value = getattr(self, name)
            if not (name == "protocol" and value is None):
                require_choice(value, choices, CHOICE_NAMES.get(name, name.replace("_", " ")))
        for name, allowed in RANGES.items():
            value = getattr(self, name)
            if not (name == "steps" and value is None):
                require_range(value, allowed, name)
        orders = (self.orders,) if isinstance(self.orders, str) else tuple(self.orders)
        if not orders:
            raise ValueError(f"no orders given; choose from: {', '.join(ORDERS)}")
        for order in orders:
            require_choice(order, ORDERS, "order")
        for name in ("recompute", "randomisation_fixed_cost"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False; got {getattr(self, name)!r}")
        if not isinstance(self.explain_options, dict):
            raise ValueError("explain_options must be a dict of explain method options; got "
                             f"{type(self.explain_options).__name__}")

    def validate(self, image_shape, metrics=METRICS) -> None:
        """Check the settings (:meth:`check`) and them against the images' shape
        ``(N, H, W[, C])`` and the ``metrics``; one-line ``ValueError``."""
        metrics = parse_metrics(metrics)
        self.check()
        if self.protocol == "paper":
            check_paper_input(image_shape)
        height, width = int(image_shape[1]), int(image_shape[2])
        curves = "deletion" in metrics or "insertion" in metrics
        if "aopc" in metrics or (curves and self.deletion_unit == "regions"):
            rows, cols = grid_shape((height, width), self.grid)
            n_regions = rows * cols
            steps = self.steps if self.steps is not None else \
                max(1, (n_regions - 1) // self.regions_per_step)
            if "aopc" in metrics and (steps < 1 or steps * self.regions_per_step > n_regions):
                raise ValueError(
                    f"{steps} steps of {self.regions_per_step} region(s) need "
                    f"{steps * self.regions_per_step} regions but the {self.grid} x {self.grid}"
                    f" grid has only {n_regions}; use at most "
                    f"{n_regions // self.regions_per_step} steps"
                )
        total = height * width if self.deletion_unit == "pixels" else self.grid ** 2
        if curves and not 1 <= self.deletion_steps <= total:
            raise ValueError(f"deletion steps must lie between 1 and the number of "
                             f"{self.deletion_unit} ({total}); got {self.deletion_steps}")


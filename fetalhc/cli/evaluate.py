"""``fetalhc evaluate``: score explanation methods on a split — AOPC (mm), deletion /
insertion, localisation against the skull contour, model randomisation.

This module parses the options, resolves the model and the split (a run folder through
``fetalhc.training``) and calls :func:`fetalhc.report.evaluation.write_evaluation`, which
writes the output folder (its docstring lists the files). A re-run into the same folder with
the same model file contents, images, split and options resumes (finished methods are
reused, new methods are added); anything else is refused naming the first differing field,
unless ``--overwrite`` recomputes the folder.

The options that set an ``fetalhc.evaluate.EvaluationSettings`` field are generated from
:data:`SETTINGS_OPTIONS`: the default from the dataclass, the choices and ranges from
:mod:`fetalhc.evaluate.settings` (``CHOICES``, ``RANGES``), so each lives in one place.
Every option is checked before the model or an image is loaded (the library's
``check_evaluation_request``), and everything that depends on the images (the grid against
the input size, maps from ``--maps``, the output folder) before anything is written.

Only click, the standard library and TensorFlow-free modules are imported here; the work
is imported inside the command.
"""

from __future__ import annotations

from pathlib import Path

import click

from fetalhc.cli.options import Command, own_model_options, progress_option, show_progress
from fetalhc.evaluate.settings import (
    CHOICES,
    METRICS,
    RANGES,
    EvaluationSettings,
    Range,
    check_error_split,
    parse_metrics,
    parse_numbers,
    split_list,
)
from fetalhc.training.config import DATA_SPLITS

DEFAULT_METHODS = "gradient,input_x_gradient,integrated_gradients"
DEFAULT_METRICS = "aopc,deletion,insertion"

# option flags -> (EvaluationSettings field, value type, help); the default comes from the
# field, the choices / range from fetalhc.evaluate.settings (see _click_type)
SETTINGS_OPTIONS: tuple[tuple[str, str, type | None, str], ...] = (
    ("--protocol", "protocol", str,
     "Fix the region-perturbation settings to a published protocol. 'paper': 128 px "
     "inputs, 4 x 4 grid, mean signed relevance, N(0, 0.3) noise, 15 steps of one region, "
     "maps once (--grid, --steps, --regions-per-step, --perturbation, --noise-sd, "
     "--aggregation and --recompute are then ignored)."),
    ("--grid", "grid", int, "Regions per side of the perturbation grid; must divide the "
                            "input size."),
    ("--steps", "steps", int, "Perturbation steps (default: the number of regions - 1)."),
    ("--regions-per-step", "regions_per_step", int, "Regions replaced per perturbation step."),
    ("--perturbation", "perturbation", str, "What replaces a removed region."),
    ("--noise-sd", "noise_sd", float,
     "SD of the 'noise' replacement (z-scored intensity units)."),
    ("--blur-sigma", "blur_sigma", float, "Gaussian SD of the 'blur' replacement (pixels)."),
    ("--aggregation", "aggregation", str,
     "Ranking of regions and pixels: mean signed relevance (mean) or mean |relevance| (abs)."),
    ("--recompute/--once", "recompute", None,
     "Recompute maps on the perturbed image before every step."),
    ("--deletion-unit", "deletion_unit", str,
     "Deletion / insertion removes single pixels or grid regions."),
    ("--deletion-steps", "deletion_steps", int,
     "Steps of the deletion / insertion curves (at most the number of pixels or regions)."),
    ("--baseline", "baseline", str,
     "What deleted pixels become (and insertion starts from)."),
    ("--band-mm", "band_mm", float, "Localisation: half-width of the contour band (mm)."),
    ("--relevance", "relevance", str,
     "Localisation: count positive relevance only, or |relevance|."),
    ("--top-percent", "top_percent", float,
     "Localisation: the share of most relevant pixels scored (percent)."),
    ("--similarity", "similarity", str,
     "Randomisation: similarity of the maps before and after randomising the weights."),
    ("--similarity-threshold", "similarity_threshold", float,
     "Randomisation: a method whose maps stay more similar than this at the last stage is "
     "flagged."),
    ("--randomisation-images", "randomisation_images", int,
     "Randomisation: the first N images of the split."),
    ("--randomisation-stages", "randomisation_stages", int,
     "Randomisation: explain at this many checkpoints of the cascade, evenly spaced over "
     "the weighted layers, the last one the fully random model (0: after every layer)."),
    ("--randomisation-fixed-cost/--randomisation-as-configured", "randomisation_fixed_cost",
     None,
     "Randomisation: explain trained and randomised models alike at each method's "
     "fixed-cost rule (Integrated Gradients without refinement to its completeness "
     "tolerance); completeness is not what this check measures."),
    ("--target", "explain_target", str,
     "Explanation target (what the maps explain); abs_error_mm needs reference HC."),
    ("--n-boot", "n_boot", int, "Bootstrap resamples of the confidence intervals."),
    ("--seed", "seed", int, "Seed of the noise, the random orders and the bootstrap."),
    ("--batch-size", "batch_size", int, "Images per forward pass (memory bound)."),
    ("--precision", "precision", str, "Precision of the forward passes."),
)


def _click_type(name: str, kind: type | None):
    """The click type of the settings field ``name``: its choices, its range, or ``kind``."""
    if name in CHOICES:
        return click.Choice(CHOICES[name])
    allowed: Range | None = RANGES.get(name)
    if allowed is None or kind is None:
        return kind
    bounds = dict(min=allowed.low, max=allowed.high)
    if kind is int:
        return click.IntRange(min_open=allowed.low_open, max_open=allowed.high_open, **bounds)
    return click.FloatRange(min_open=allowed.low_open, max_open=allowed.high_open, **bounds)


def settings_options(first: str, last: str | None = None):
    """A decorator adding the rows of :data:`SETTINGS_OPTIONS` from field ``first`` to field
    ``last`` (default: ``first`` alone) as click options, defaults read from
    ``EvaluationSettings()``; the command gets them as keyword arguments named by field."""
    names = [row[1] for row in SETTINGS_OPTIONS]
    rows = SETTINGS_OPTIONS[names.index(first):names.index(last or first) + 1]
    defaults = EvaluationSettings()

    def decorate(function):
        for flags, name, kind, help_text in reversed(rows):
            kind = _click_type(name, kind)
            extra = {} if kind is None else {"type": kind}
            function = click.option(flags, name, default=getattr(defaults, name),
                                    show_default=True, help=help_text, **extra)(function)
        return function

    return decorate


def settings_from_options(values: dict) -> EvaluationSettings:
    """``EvaluationSettings`` from the values of the :data:`SETTINGS_OPTIONS` (by field);
    fields without an option keep their defaults."""
    return EvaluationSettings.with_protocol(**values)


# ----------------------------------------------------------------------------- types
class CommaChoice(click.ParamType):
    """A comma-separated list of some of ``choices``, checked by ``parse`` (the library's
    parser, whose one-line message becomes click's usage error); the value is a tuple."""

    name = "list"

    def __init__(self, choices, parse):
        self.choices = tuple(choices)
        self.parse = parse

    def get_metavar(self, param, ctx=None) -> str:
        return f"[{'|'.join(self.choices)}],..."

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return tuple(self.parse(value))
        except ValueError as error:
            self.fail(str(error), param, ctx)


class NumberList(click.ParamType):
    """Comma-separated numbers, each checked by ``check(values)`` (one-line ValueError)."""

    name = "numbers"

    def __init__(self, what: str, check):
        self.what = what
        self.check = check

    def get_metavar(self, param, ctx=None) -> str:
        return "X[,X...]"

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        try:
            values = parse_numbers(value, self.what)
            if values is None:
                raise ValueError(f"{self.what}: no number given")
            self.check(values)
            return values
        except ValueError as error:
            self.fail(str(error), param, ctx)


# ----------------------------------------------------------------------------- inputs
def _resolve_inputs(model_path: Path, data_dir: Path, split: str | None,
                    image_size: int | None, output_units: str | None = None,
                    intensity: str = "zscore"):
    """Model file, the model, input size, index rows and split name
    (:func:`fetalhc.training.resolve_model_split`, ``all`` allowed;
    :func:`fetalhc.training.load_command_model`: an exported model's network, another
    model's declared ``output_units``)."""
    from fetalhc.training import load_command_model, resolve_model_split

    resolved = resolve_model_split(model_path, data_dir, split)
    loaded = load_command_model(resolved.model_file, output_units, image_size,
                                resolved.image_size, intensity)
    return (resolved.model_file, loaded.model, loaded.image_size, resolved.index,
            resolved.split)


@click.command("evaluate", cls=Command)
@click.option("--model", "model_path", required=True,
              type=click.Path(exists=True, path_type=Path),
              help="Run folder (or the model.keras inside one), or a bare .keras file.")
@click.option("--data", "data_dir", required=True,
              type=click.Path(exists=True, path_type=Path),
              help="Data: an HC18-layout folder, or a plain folder of images with a CSV "
                   "filename,pixel_size_mm[,hc_mm] (or that CSV).")
@click.option("--methods", default=DEFAULT_METHODS, show_default=True,
              help="Comma-separated registered explain methods (`fetalhc explain --list`); "
                   "methods whose maps are in --maps may have other names.")
@click.option("--metrics", type=CommaChoice(METRICS, parse_metrics), default=DEFAULT_METRICS,
              show_default=True, help=f"Comma-separated, any of: {', '.join(METRICS)}.")
@settings_options("protocol")
@click.option("--split", type=click.Choice(DATA_SPLITS), default=None,
              help="Which images: a split of the run (default test, when --data holds it), "
                   "challenge (HC18 test_set/), or all (every image of --data; "
                   "the default for a bare .keras file or another folder).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Evaluate the first N images of the split only.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Output folder (created; a re-run resumes it).")
@click.option("--image-size", type=click.IntRange(min=1), default=None,
              help="Input size S (default: the run's, the model's input, or an exported "
                   "model's pre-processing).")
@own_model_options
@settings_options("grid", "explain_target")
@click.option("--error-threshold-mm", type=NumberList(
    "--error-threshold-mm", lambda values: check_error_split(threshold_mm=values)),
    default=None, help="Split the summaries by prediction error at these mm (e.g. 2,5).")
@click.option("--error-quantiles", type=NumberList(
    "--error-quantiles", lambda values: check_error_split(quantiles=values)), default=None,
    help="Split the summaries at these quantiles of the error, each in (0, 1) (default "
         "0.5).")
@settings_options("n_boot", "precision")
@click.option("--maps", "maps_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None,
              help="Precomputed maps: a `fetalhc explain` output folder (its model, target, "
                   "split and image size must be these; it must hold maps of at least the "
                   "evaluated images, which are its first ones; unfinished or sharded folders "
                   "are refused), or a folder of <method>.npy, float (N, S, S) in the order "
                   "of the evaluated images, with the provenance.json of the explain folder "
                   "they come from (fetalhc.report.explanations.stack_maps writes both). "
                   "Methods without maps there go through fetalhc.explain.")
@click.option("--shard", default=None, metavar="I/N",
              help="Evaluate only shard I of N (1-based, round robin over the split's order); "
                   "combine the shard folders with `fetalhc merge`.")
@click.option("--overwrite", is_flag=True, default=False,
              help="Delete an earlier evaluate folder at --out and recompute it (needed when "
                   "it was made with another model, data, split or option).")
@click.option("--figures/--no-figures", default=True, show_default=True,
              help="Draw the figures (figures/*.png).")
@progress_option
def command(model_path, data_dir, methods, metrics, out, split, limit, image_size,
            output_units, intensity, error_threshold_mm, error_quantiles, maps_dir, shard, overwrite, figures, progress,
            **settings_values):
    """Evaluate explanation methods of a model on a data split (see docs/evaluate.md).

    Every option is checked before the model or an image is loaded, and everything that
    depends on the images (the grid against the input size, --maps, --out) before anything
    is written."""
    from fetalhc.report.evaluation import check_evaluation_request, write_evaluation

    methods = split_list(methods)
    settings = settings_from_options(settings_values)
    metrics, _ = check_evaluation_request(methods, metrics, settings, maps_dir,
                                          error_threshold_mm, error_quantiles, limit=limit,
                                          shard=shard)
    model_file, model, size, index, split = _resolve_inputs(model_path, data_dir, split,
                                                            image_size, output_units,
                                                            intensity)
    result = write_evaluation(
        model, index, methods, metrics, settings, out,
        image_size=size, split=split, source={"model": str(model_path), "data": str(data_dir)},
        limit=limit, maps_dir=maps_dir, shard=shard, error_threshold_mm=error_threshold_mm,
        error_quantiles=error_quantiles, figures=figures, progress=show_progress(progress),
        model_file=model_file, overwrite=overwrite, output_units=output_units,
        intensity=intensity)
    for name, path in result["written"].items():
        click.echo(f"{name}: {path}")

"""``fetalhc evaluate``: score explanation methods on a split — AOPC (mm), deletion /
insertion, localisation against the skull contour, model randomisation.

This module parses the options, resolves the model and the split (a run folder through
``fetalhc.training``) and calls :func:`fetalhc.report.evaluation.write_evaluation`, which
writes the output folder (its docstring lists the files). A re-run into the same folder with
the same model file contents, images, split and options resumes (finished methods are
reused, new methods are added); anything else is refused naming the first differing field,
unless ``--overwrite`` recomputes the folder. The options that set an
``fetalhc.evaluate.EvaluationSettings`` field are generated from :data:`SETTINGS_OPTIONS`
with the dataclass's defaults, so every default lives in one place.
"""

from __future__ import annotations

from pathlib import Path

import click

from fetalhc.evaluate import EvaluationSettings

# option flags -> (EvaluationSettings field, click type, help); defaults come from the field
SETTINGS_OPTIONS: tuple[tuple[str, str, type | None, str | None], ...] = (
    ("--protocol", "protocol", str,
     "'paper': 128 px, 4 x 4 grid, mean signed relevance, N(0, 0.3), 15 steps."),
    ("--grid", "grid", int, "Regions per side."),
    ("--steps", "steps", int, "Perturbation steps (default R - 1)."),
    ("--regions-per-step", "regions_per_step", int, None),
    ("--perturbation", "perturbation", str, "noise, mean, zeros or blur."),
    ("--noise-sd", "noise_sd", float, None),
    ("--blur-sigma", "blur_sigma", float, "Pixels."),
    ("--aggregation", "aggregation", str, "Region ranking: mean (signed) or abs."),
    ("--recompute/--once", "recompute", None,
     "Recompute maps on the perturbed image before every step."),
    ("--deletion-unit", "deletion_unit", str, "pixels or regions."),
    ("--deletion-steps", "deletion_steps", int, None),
    ("--baseline", "baseline", str,
     "Deletion / insertion baseline: zeros, mean, blur or noise."),
    ("--band-mm", "band_mm", float, "Half-width of the contour band (mm)."),
    ("--relevance", "relevance", str, "positive or abs."),
    ("--top-percent", "top_percent", float, None),
    ("--similarity", "similarity", str,
     "Randomisation flag: spearman, spearman_abs or ssim."),
    ("--similarity-threshold", "similarity_threshold", float, None),
    ("--randomisation-images", "randomisation_images", int, None),
    ("--target", "explain_target", str, "Explanation target."),
    ("--n-boot", "n_boot", int, None),
    ("--seed", "seed", int, None),
    ("--batch-size", "batch_size", int, "Images per forward pass (memory bound)."),
    ("--precision", "precision", str,
     "float32, mixed_float16 or mixed_bfloat16 forward passes."),
)


def settings_options(first: str, last: str | None = None):
    """A decorator adding the rows of :data:`SETTINGS_OPTIONS` from field ``first`` to field
    ``last`` (default: ``first`` alone) as click options, defaults read from
    ``EvaluationSettings()``; the command gets them as keyword arguments named by field."""
    names = [row[1] for row in SETTINGS_OPTIONS]
    rows = SETTINGS_OPTIONS[names.index(first):names.index(last or first) + 1]
    defaults = EvaluationSettings()

    def decorate(function):
        for flags, name, kind, help_text in reversed(rows):
            extra = {} if kind is None else {"type": kind}
            function = click.option(flags, name, default=getattr(defaults, name),
                                    show_default=True, help=help_text, **extra)(function)
        return function

    return decorate


def settings_from_options(values: dict) -> EvaluationSettings:
    """``EvaluationSettings`` from the values of the :data:`SETTINGS_OPTIONS` (by field);
    fields without an option keep their defaults."""
    return EvaluationSettings.with_protocol(**values)


# ----------------------------------------------------------------------------- parsing
def _split_list(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def _float_list(text: str | None, what: str) -> list[float] | None:
    items = _split_list(text)
    if not items:
        return None
    try:
        return [float(item) for item in items]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated numbers; got {text!r}") from None


# ----------------------------------------------------------------------------- inputs
def _resolve_inputs(model_path: Path, data_dir: Path, split: str | None,
                    image_size: int | None):
    """Model file, input size, index rows and split name, loading the model only if the
    input size is not known from a run folder (so bad options fail fast)."""
    import fetalhc
    from fetalhc.data import load_index
    from fetalhc.training import load_run, run_split_index

    model_path = Path(model_path)
    run, model = None, None
    if model_path.is_dir():
        run = load_run(model_path)
        model_file = run.model_path
    else:
        model_file = model_path
        if (model_path.parent / "config.toml").is_file():
            run = load_run(model_path.parent)
    if image_size is None:
        if run is not None:
            image_size = run.image_size
        else:
            model = fetalhc.load_model(model_file)
            side = model.inputs[0].shape[1]
            if side is None:
                raise ValueError(f"{model_file} takes any input size; give --image-size")
            image_size = int(side)
    if run is not None:
        split = split or "test"
        index = load_index(data_dir, "training", validate=False) if split == "all" else \
            run_split_index(run.config, data_dir, split)
    else:
        split = split or "all"
        if split not in ("all", "challenge"):
            raise ValueError(
                f"{model_file} has no run folder (config.toml beside it), so only --split all "
                "(the whole training part of --data) or --split challenge is possible"
            )
        index = load_index(data_dir, "challenge" if split == "challenge" else "training",
                           validate=False)
    return model_file, model, int(image_size), index.reset_index(drop=True), split


@click.command("evaluate")
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path),
              help="Run folder (or the model.keras inside one), or a bare .keras file.")
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path),
              help="HC18-layout data folder (real or phantom).")
@click.option("--methods", default="gradient,input_x_gradient,integrated_gradients",
              show_default=True, help="Comma-separated explain methods.")
@click.option("--metrics", default="aopc,deletion,insertion", show_default=True,
              help="Comma-separated: aopc, deletion, insertion, localisation, randomisation.")
@settings_options("protocol")
@click.option("--split", default=None,
              help="train/val/test/challenge of the run (default test), or all.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="First N images.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--image-size", type=int, default=None, help="Override the input size S.")
@settings_options("grid", "explain_target")
@click.option("--error-threshold-mm", default=None, help="Error split at these mm (a,b,...).")
@click.option("--error-quantiles", default=None, help="Error split at quantiles (default 0.5).")
@settings_options("n_boot", "precision")
@click.option("--maps", "maps_dir", type=click.Path(path_type=Path), default=None,
              help="Folder of precomputed maps <method>.npy, float (N, S, S), in the order "
                   "of the evaluated images, with the provenance.json of the explain folder "
                   "they come from (fetalhc.report.explanations.stack_maps writes both); "
                   "other methods go through fetalhc.explain.")
@click.option("--shard", default=None, metavar="I/N",
              help="Evaluate only shard I of N (1-based, round robin over the split's order); "
                   "combine the shard folders with `fetalhc merge`.")
@click.option("--overwrite", is_flag=True, default=False,
              help="Delete an earlier evaluate folder at --out and recompute it (needed when "
                   "it was made with another model, data, split or option).")
@click.option("--figures/--no-figures", default=True, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
def command(model_path, data_dir, methods, metrics, out, split, limit, image_size,
            error_threshold_mm, error_quantiles, maps_dir, shard, overwrite, figures, progress,
            **settings_values):
    """Evaluate explanation methods of a model on a data split (see docs/evaluate.md)."""
    from fetalhc.report.evaluation import check_evaluation_request, write_evaluation

    methods = _split_list(methods)
    error_threshold_mm = _float_list(error_threshold_mm, "--error-threshold-mm")
    error_quantiles = _float_list(error_quantiles, "--error-quantiles")
    settings = settings_from_options(settings_values)
    metrics, _ = check_evaluation_request(methods, metrics, settings, maps_dir,
                                          error_threshold_mm, error_quantiles)
    model_file, model, size, index, split = _resolve_inputs(model_path, data_dir, split,
                                                            image_size)
    result = write_evaluation(
        model if model is not None else model_file, index, methods, metrics, settings, out,
        image_size=size, split=split, source={"model": str(model_path), "data": str(data_dir)},
        limit=limit, maps_dir=maps_dir, shard=shard, error_threshold_mm=error_threshold_mm,
        error_quantiles=error_quantiles, figures=figures, progress=progress,
        model_file=model_file, overwrite=overwrite)
    for name, path in result["written"].items():
        click.echo(f"{name}: {path}")

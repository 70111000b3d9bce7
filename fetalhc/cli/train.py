"""``fetalhc train``: train a regression CNN from a TOML config into a run folder.

Every option is checked before the run folder is created: the config (a path, or a shipped
config's name: ``fetalhc.training.config_file``) with its overrides
(``fetalhc.training.resolve_config``), ``--out``, the data folder and every image of the
split (``fetalhc.training.check_training_request``), the ``--explain-methods`` (the explain
registry) and the model the config describes (built by ``train`` before it creates the
folder). Only click, the standard library and TensorFlow-free modules are imported here.
"""

from __future__ import annotations

from pathlib import Path

import click

from fetalhc.cli.options import Command, progress_option, show_progress
from fetalhc.training.config import STRATEGIES, shipped_configs


def fit_verbosity(quiet: bool, progress: bool | None) -> int:
    """Keras' ``fit`` verbosity: 0 with ``--quiet``, a progress bar (1) when progress is
    shown (``--progress``, or stderr is a terminal), else one line per epoch (2)."""
    if quiet:
        return 0
    return 1 if show_progress(progress) else 2


def train_with_saliency(config_path, data_dir, out_dir, overrides=None, explain_every: int = 0,
                        explain_methods=("gradient",), explain_images: int = 8,
                        resume: bool = False, overwrite: bool = False, verbose: int = 2):
    """``fetalhc.training.train`` plus, when ``explain_every > 0``, a
    :class:`fetalhc.callbacks.SaliencyCallback` on the first ``explain_images`` images of the
    run's validation split, logging to ``<out>/logs/saliency``. The CLI builds the callback
    and hands it over: ``fetalhc.training`` never imports ``fetalhc.callbacks``.

    The config, ``out_dir``, the data and the explain methods are checked before any image
    is loaded for the callback, and ``train`` checks the model before it creates the run
    folder: a mistake leaves nothing behind."""
    from fetalhc.explain import get_method
    from fetalhc.training import check_training_request, resolve_split, train

    config = check_training_request(config_path, data_dir, out_dir, resume=resume,
                                    overwrite=overwrite, overrides=overrides)
    methods = list(explain_methods)
    if not methods:
        raise ValueError("--explain-methods is empty")
    for name in methods:
        get_method(name)  # a one-line ValueError listing the known methods
    extra_callbacks = []
    if explain_every:
        from fetalhc.callbacks import SaliencyCallback
        from fetalhc.data import load_arrays, load_index

        names = resolve_split(config, data_dir)["val"][:explain_images]
        if not names:
            raise ValueError("--explain-every needs a validation split; set data.val_fraction > 0")
        index = load_index(data_dir, "training", validate=False)
        subset = index[index["filename"].isin(names)]
        arrays = load_arrays(subset, image_size=config["data"]["image_size"],
                             with_annotation=True)
        extra_callbacks.append(SaliencyCallback(
            arrays, methods=methods, every_n_epochs=explain_every,
            output_dir=Path(out_dir) / "logs" / "saliency", max_images=explain_images,
        ))
    return train(config_path, data_dir, out_dir, callbacks=extra_callbacks, resume=resume,
                 overwrite=overwrite, overrides=overrides, verbose=verbose)


@click.command("train", cls=Command)
@click.option("--config", "config_path", metavar="NAME|PATH", default=None,
              help="A shipped config by name (" + ", ".join(shipped_configs()) + ") or the "
                   "path of a TOML file; defaults apply to missing keys.")
@click.option("--data", "data_dir", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="HC18-layout data folder (training_set/ and its CSV).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Run folder to write (config.toml, model.keras, history.csv, ...).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Override [train] epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Override [train] batch_size.")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Override [train] seed.")
@click.option("--fold", type=click.IntRange(min=0), default=None,
              help="Override [data] fold (0-based, with [data] k >= 2).")
@click.option("--set", "settings", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override any config key, e.g. --set train.loss=mse (repeatable).")
@click.option("--strategy", type=click.Choice(STRATEGIES),
              default=None, help="Override [train] strategy: default (one device), mirrored "
                                 "(all GPUs / logical CPUs of this machine) or multiworker "
                                 "(TF_CONFIG); see docs/scaling.md.")
@click.option("--scale-lr/--no-scale-lr", "scale_lr", default=None,
              help="Override [train] scale_learning_rate (learning rate x replicas).")
@click.option("--resume", is_flag=True, help="Continue the run in --out after a kill.")
@click.option("--overwrite", is_flag=True, help="Replace the run in --out.")
@click.option("--quiet", is_flag=True, help="No progress output at all.")
@progress_option
@click.option("--explain-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Log saliency maps and explanation scores to TensorBoard every N epochs "
                   "(0 = off), on a fixed subset of the validation split.")
@click.option("--explain-methods", default="gradient,integrated_gradients", show_default=True,
              help="Comma-separated registered methods for --explain-every "
                   "(`fetalhc explain --list`).")
@click.option("--explain-images", type=click.IntRange(min=1), default=8, show_default=True,
              help="Validation images in the --explain-every subset.")
def command(config_path, data_dir, out_dir, epochs, batch_size, seed, fold, settings, strategy,
            scale_lr, resume, overwrite, quiet, progress, explain_every, explain_methods,
            explain_images):
    """Train a model; writes the run folder --out.

    Progress: a bar per epoch on a terminal (--progress), one line per epoch otherwise
    (--no-progress), nothing with --quiet. Every option, the config, the data and the model
    it describes are checked before the run folder is created."""
    from fetalhc.training import parse_set_option

    overrides = dict(parse_set_option(text) for text in settings)
    for key, value in (("train.epochs", epochs), ("train.batch_size", batch_size),
                       ("train.seed", seed), ("data.fold", fold),
                       ("train.strategy", strategy), ("train.scale_learning_rate", scale_lr)):
        if value is not None:
            overrides[key] = value
    methods = [name.strip() for name in explain_methods.split(",") if name.strip()]
    result = train_with_saliency(config_path, data_dir, out_dir, overrides=overrides,
                                 explain_every=explain_every, explain_methods=methods,
                                 explain_images=explain_images, resume=resume,
                                 overwrite=overwrite, verbose=fit_verbosity(quiet, progress))
    click.echo(f"run folder: {result.run_dir}")
    for split in ("val", "test"):
        scores = result.metrics.get(split)
        if scores:
            click.echo(
                f"{split}: MAE {scores['mae_mm']:.2f} mm, RMSE {scores['rmse_mm']:.2f} mm, "
                f"DF {scores['df_mm']:+.2f} mm, PMAE {scores['pmae_percent']:.2f} % "
                f"(n = {scores['n']})"
            )

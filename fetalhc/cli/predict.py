"""``fetalhc predict``: HC (mm) for a split, in the HC18 challenge format, with per-image
reliability flags.

Pre-processing and the default split come from the model's run folder (the folder holding
``model.keras`` and ``config.toml``; ``--model`` is that folder or the file), resolved through ``fetalhc.training`` helpers;
:func:`fetalhc.report.predictions.predict_to_files` writes ``--out`` (2 columns) and beside
it ``<stem>_per_image.csv`` (predictions, the errors with references, and the reliability
flags of :mod:`fetalhc.models.reliability`), ``<stem>_metrics.json``, with references
``<stem>_bland_altman.png`` and ``<stem>_scatter.png``, and ``<stem>_provenance.json`` (what
produced them). The training HC range of the outside-range flag comes from the run folder
(:func:`fetalhc.training.resolve_model_split`); a bare model file leaves that
flag unknown. The reference HC is never used to compute a prediction or a flag.
"""

from __future__ import annotations

from pathlib import Path

import click

from fetalhc.cli.options import Command, own_model_options, progress_option, show_progress
from fetalhc.training.config import DATA_SPLITS  # TensorFlow-free, for --help

# = fetalhc.models.reliability.DEFAULT_FLIP_THRESHOLD_MM, which imports TensorFlow (so not
# importable for --help); tests/test_reliability.py checks that the two agree
FLIP_THRESHOLD_MM = 5.0


def predict_command(model_path: Path, data_dir: Path, split: str | None, out: Path,
                    tta: bool = False, batch_size: int = 32,
                    image_size: int | None = None, progress: bool = False,
                    flip_threshold_mm: float = FLIP_THRESHOLD_MM,
                    output_units: str | None = None, intensity: str = "zscore") -> dict:
    """``fetalhc predict`` without click: check the request, load the split and the model,
    predict, write; returns what it wrote. ``model_path``: a run folder or a ``.keras``
    file. Every check (``out``, split, sizes, ``flip_threshold_mm``, the model's input size,
    the image files) runs before anything is written. The training HC range comes from the
    run folder (its ``[run]`` record, else its train split in ``data_dir``); none for a bare
    model file. An exported model runs its network with its own pre-processing
    (:func:`fetalhc.training.load_command_model`); ``output_units`` declares the unit of a
    model that is not fetalhc's, ``intensity`` what its images' intensities become."""
    from fetalhc.models import check_input_size
    from fetalhc.report.predictions import check_prediction_request, predict_to_files
    from fetalhc.training import load_command_model, resolve_model_split
    from fetalhc.training.setup import crop_margin_of, localiser_file, prediction_index

    check_prediction_request(out, split, batch_size=batch_size, image_size=image_size,
                             flip_threshold_mm=flip_threshold_mm)
    resolved = resolve_model_split(model_path, data_dir, split, crop_runs=True)
    model_path, index, split = resolved.model_file, resolved.index, resolved.split
    loaded = load_command_model(model_path, output_units, image_size, resolved.image_size,
                                intensity)
    model, image_size = loaded.model, loaded.image_size
    check_input_size(model, image_size)
    preprocessing, localiser = None, None
    if resolved.run is not None and crop_margin_of(resolved.run.config) > 0:
        localiser = localiser_file(resolved.run.config, resolved.run.run_dir)
        index = prediction_index(resolved.run.config, index, batch_size=batch_size,
                                 run_dir=resolved.run.run_dir)
        preprocessing = resolved.run.config.get("preprocessing")
    return predict_to_files(model, index, image_size, out, split=split, tta=tta,
                            batch_size=batch_size, model_file=model_path,
                            info={"model": str(model_path), "data": str(data_dir)},
                            progress=progress,
                            hc_range_mm=resolved.hc_range_mm or loaded.hc_range_mm,
                            preprocessing=preprocessing, localiser_file=localiser,
                            flip_threshold_mm=flip_threshold_mm, output_units=output_units,
                            intensity=intensity)


@click.command("predict", cls=Command)
@click.option("--model", "model_path", required=True,
              type=click.Path(exists=True, path_type=Path),
              help="A fetalhc model.keras, or the run folder holding it (its config.toml "
                   "gives the pre-processing and the splits), an exported model "
                   "(`fetalhc export`), or your own .keras model (with --output-units).")
@click.option("--data", "data_dir", required=True,
              type=click.Path(exists=True, path_type=Path),
              help="Data: an HC18-layout folder, or a plain folder of images with a CSV "
                   "filename,pixel_size_mm[,hc_mm] (or that CSV).")
@click.option("--split", type=click.Choice(DATA_SPLITS), default=None,
              help="Which images: a split of the run (default test, when --data holds it), "
                   "challenge (HC18 test_set/), or all (every image of --data; "
                   "the default for a bare .keras file or another folder).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Prediction CSV (filename,head circumference (mm)); tables, plots and "
                   "provenance go beside it.")
@click.option("--tta", is_flag=True,
              help="Test-time augmentation: average the prediction of the image and of its "
                   "horizontal flip (not vertical flips: training augmentation never shows them).")
@click.option("--flip-threshold-mm", type=float, default=FLIP_THRESHOLD_MM, show_default=True,
              help="Flag an image when its prediction and that of its horizontal flip differ "
                   "by more than this (mm, > 0).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images per forward pass.")
@click.option("--image-size", type=click.IntRange(min=1), default=None,
              help="Input size in px (default: from the run folder, the model, or an exported "
                   "model's pre-processing).")
@own_model_options
@progress_option
def command(model_path, data_dir, split, out, tta, flip_threshold_mm, batch_size, image_size,
            output_units, intensity, progress):
    """Predict HC (mm) with a trained model, with per-image reliability flags."""
    written = predict_command(model_path, data_dir, split, out, tta=tta, batch_size=batch_size,
                              image_size=image_size, progress=show_progress(progress),
                              flip_threshold_mm=flip_threshold_mm, output_units=output_units,
                              intensity=intensity)
    click.echo(f"wrote {written['n']} predictions to {written['predictions']}")
    summary = written.get("summary")
    if summary:
        click.echo(
            f"{summary['split']}: MAE {summary['mae_mm']:.2f} mm, RMSE {summary['rmse_mm']:.2f} "
            f"mm, DF {summary['df_mm']:+.2f} mm, PMAE {summary['pmae_percent']:.2f} % "
            f"(n = {summary['n']}); tables and plots beside it"
        )
    flags = written.get("reliability")
    if flags:
        click.echo(
            f"{flags['n_flagged']} of {flags['n']} images flagged (outside training range "
            f"{flags['n_outside_training_range']}, ellipse at border "
            f"{flags['n_ellipse_at_border']}, flip disagreement {flags['n_flip_disagreement']}; "
            f"unknown: range {flags['n_outside_training_range_unknown']}, border "
            f"{flags['n_ellipse_at_border_unknown']}); see {written['per_image']}"
        )

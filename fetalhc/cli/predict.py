"""``fetalhc predict``: HC (mm) for a split, in the HC18 challenge format.

Pre-processing and the default split come from the model's run folder (the folder holding
``model.keras`` and ``config.toml``; ``--model`` is that folder or the file), resolved through ``fetalhc.training`` helpers;
:func:`fetalhc.report.predictions.predict_to_files` writes ``--out`` and, with references
(train/val/test splits), beside it ``<stem>_per_image.csv``, ``<stem>_metrics.json``,
``<stem>_bland_altman.png`` and ``<stem>_scatter.png``, and always
``<stem>_provenance.json`` (what produced them). The reference HC is never used to compute a
prediction.
"""

from __future__ import annotations

from pathlib import Path

import click

from fetalhc.cli.options import Command, progress_option, show_progress
from fetalhc.training.config import SPLITS  # TensorFlow-free, for --help


def predict_command(model_path: Path, data_dir: Path, split: str | None, out: Path,
                    tta: bool = False, batch_size: int = 32,
                    image_size: int | None = None, progress: bool = False) -> dict:
    """``fetalhc predict`` without click: check the request, load the split and the model,
    predict, write; returns what it wrote. ``model_path``: a run folder or a ``.keras``
    file. Every check (``out``, split, sizes, the model's input size, the image files) runs
    before anything is written."""
    import fetalhc
    from fetalhc.models import check_input_size
    from fetalhc.report.predictions import check_prediction_request, predict_to_files
    from fetalhc.training import model_input_size, resolve_model_split

    check_prediction_request(out, split, batch_size=batch_size, image_size=image_size)
    resolved = resolve_model_split(model_path, data_dir, split)
    model_path, index, split = resolved.model_file, resolved.index, resolved.split
    model = fetalhc.load_model(model_path)
    image_size = image_size or resolved.image_size or model_input_size(model, model_path)
    check_input_size(model, image_size)
    return predict_to_files(model, index, image_size, out, split=split, tta=tta,
                            batch_size=batch_size, model_file=model_path,
                            info={"model": str(model_path), "data": str(data_dir)},
                            progress=progress)


@click.command("predict", cls=Command)
@click.option("--model", "model_path", required=True,
              type=click.Path(exists=True, path_type=Path),
              help="A fetalhc model.keras, or the run folder holding it (its config.toml "
                   "gives the pre-processing and the splits).")
@click.option("--data", "data_dir", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="HC18-layout data folder.")
@click.option("--split", type=click.Choice(SPLITS), default=None,
              help="Which images (default: the run's test split; a model without its run "
                   "folder: challenge only).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Prediction CSV (filename,head circumference (mm)); tables, plots and "
                   "provenance go beside it.")
@click.option("--tta", is_flag=True,
              help="Test-time augmentation: average over horizontal/vertical flips.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images per forward pass.")
@click.option("--image-size", type=click.IntRange(min=1), default=None,
              help="Input size in px (default: from the run folder or the model).")
@progress_option
def command(model_path, data_dir, split, out, tta, batch_size, image_size, progress):
    """Predict HC (mm) with a trained model."""
    written = predict_command(model_path, data_dir, split, out, tta=tta, batch_size=batch_size,
                              image_size=image_size, progress=show_progress(progress))
    click.echo(f"wrote {written['n']} predictions to {written['predictions']}")
    summary = written.get("summary")
    if summary:
        click.echo(
            f"{summary['split']}: MAE {summary['mae_mm']:.2f} mm, RMSE {summary['rmse_mm']:.2f} "
            f"mm, DF {summary['df_mm']:+.2f} mm, PMAE {summary['pmae_percent']:.2f} % "
            f"(n = {summary['n']}); tables and plots beside it"
        )

"""``fetalhc predict``: HC (mm) for a split, in the HC18 challenge format.

Pre-processing and the default split come from the model's run folder (the folder holding
``model.keras`` and ``config.toml``), resolved through ``fetalhc.training`` helpers;
:func:`fetalhc.report.predictions.predict_to_files` writes ``--out`` and, with references
(train/val/test splits), beside it ``<stem>_per_image.csv``, ``<stem>_metrics.json``,
``<stem>_bland_altman.png`` and ``<stem>_scatter.png``, and always
``<stem>_provenance.json`` (what produced them). The reference HC is never used to compute a
prediction.
"""

from __future__ import annotations

from pathlib import Path

import click


def predict_command(model_path: Path, data_dir: Path, split: str | None, out: Path,
                    tta: bool = False, batch_size: int = 32,
                    image_size: int | None = None) -> dict:
    """``fetalhc predict`` without click: load the model and the split, predict, write;
    returns what it wrote."""
    import fetalhc
    from fetalhc.models import check_input_size
    from fetalhc.report.predictions import predict_to_files, prediction_paths
    from fetalhc.training import load_run, run_split_index

    prediction_paths(out)  # a bad --out fails before the model loads
    model = fetalhc.load_model(model_path)
    run = None
    if (Path(model_path).parent / "config.toml").is_file():
        run = load_run(Path(model_path).parent)
    if image_size is None:
        if run is None:
            shape = model.inputs[0].shape
            image_size = int(shape[1]) if shape[1] is not None else 0
        else:
            image_size = run.image_size
    check_input_size(model, image_size)
    split = split or "test"
    if run is None:
        if split != "challenge":
            raise ValueError(
                f"{model_path} has no run folder (config.toml beside it), so only "
                "--split challenge is possible"
            )
        index = run_split_index({}, data_dir, "challenge")
    else:
        index = run_split_index(run.config, data_dir, split)
    return predict_to_files(model, index, image_size, out, split=split, tta=tta,
                            batch_size=batch_size, model_file=Path(model_path),
                            info={"model": str(model_path), "data": str(data_dir)})


@click.command("predict")
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path),
              help="A fetalhc model.keras.")
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path),
              help="HC18-layout data folder.")
@click.option("--split", type=click.Choice(["challenge", "test", "val", "train"]), default=None,
              help="Which images (default: the run's test split).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Prediction CSV (filename,head circumference (mm)).")
@click.option("--tta", is_flag=True,
              help="Test-time augmentation: average over horizontal/vertical flips.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--image-size", type=int, default=None,
              help="Input size (default: from the run folder or the model).")
def command(model_path, data_dir, split, out, tta, batch_size, image_size):
    """Predict HC (mm) with a trained model."""
    written = predict_command(model_path, data_dir, split, out, tta=tta, batch_size=batch_size,
                              image_size=image_size)
    click.echo(f"wrote {written['n']} predictions to {written['predictions']}")
    summary = written.get("summary")
    if summary:
        click.echo(
            f"{summary['split']}: MAE {summary['mae_mm']:.2f} mm, RMSE {summary['rmse_mm']:.2f} "
            f"mm, DF {summary['df_mm']:+.2f} mm, PMAE {summary['pmae_percent']:.2f} % "
            f"(n = {summary['n']}); tables and plots beside it"
        )

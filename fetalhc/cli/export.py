"""``fetalhc export``: a run folder's model as one end-to-end ``.keras`` file.

The file takes the raw grayscale image (any size, uint8 or float) and its pixel size in mm
and returns the HC in mm, with the pre-processing and the model card inside
(:func:`fetalhc.training.export.export_run`); any Keras project loads it with
``keras.models.load_model`` after ``import fetalhc``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from fetalhc.cli.options import Command


@click.command("export", cls=Command)
@click.option("--model", "model_path", required=True,
              type=click.Path(exists=True, path_type=Path),
              help="A run folder (or the model.keras inside one) of a whole-image model.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The end-to-end model file to write (.keras).")
@click.option("--overwrite", is_flag=True, default=False,
              help="Replace an existing --out.")
def command(model_path, out, overwrite):
    """Export a model end to end: raw image + pixel size (mm) in, HC (mm) out."""
    from fetalhc.training.export import export_run

    written = export_run(model_path, out, overwrite=overwrite)
    card = written["card"]
    click.echo(f"wrote {written['out']}: inputs image (B, H, W, 1) and pixel_size_mm (B, 1), "
               "outputs hc_mm and hc_px_raw")
    for split, scores in card["accuracy"].items():
        interval = scores.get("mae_ci95_mm")
        ci = f" (95 % CI {interval[0]:.2f}–{interval[1]:.2f})" if interval else ""
        click.echo(f"  {split}: MAE {scores['mae_mm']:.2f} mm{ci}, n = {scores['n']}")
    click.echo("model card: " + json.dumps({"intended_use": card["intended_use"]}))

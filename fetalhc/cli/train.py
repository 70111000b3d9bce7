"""``fetalhc train``: train a regression CNN from a TOML config into a run folder."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("train")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="TOML config (see configs/); defaults apply to missing keys.")
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path),
              help="HC18-layout data folder (training_set/ and its CSV).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Run folder to write (config.toml, model.keras, history.csv, ...).")
@click.option("--epochs", type=int, default=None, help="Override [train] epochs.")
@click.option("--batch-size", type=int, default=None, help="Override [train] batch_size.")
@click.option("--seed", type=int, default=None, help="Override [train] seed.")
@click.option("--fold", type=int, default=None, help="Override [data] fold (with [data] k).")
@click.option("--set", "settings", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override any config key, e.g. --set train.loss=mse (repeatable).")
@click.option("--resume", is_flag=True, help="Continue the run in --out after a kill.")
@click.option("--overwrite", is_flag=True, help="Replace the run in --out.")
@click.option("--quiet", is_flag=True, help="No per-epoch progress lines.")
def command(config_path, data_dir, out_dir, epochs, batch_size, seed, fold, settings, resume,
            overwrite, quiet):
    """Train a model; writes the run folder --out."""
    from fetalhc.training import parse_set_option, train

    overrides = dict(parse_set_option(text) for text in settings)
    for key, value in (("train.epochs", epochs), ("train.batch_size", batch_size),
                       ("train.seed", seed), ("data.fold", fold)):
        if value is not None:
            overrides[key] = value
    result = train(config_path, data_dir, out_dir, resume=resume, overwrite=overwrite,
                   overrides=overrides, verbose=0 if quiet else 2)
    click.echo(f"run folder: {result.run_dir}")
    for split in ("val", "test"):
        scores = result.metrics.get(split)
        if scores:
            click.echo(
                f"{split}: MAE {scores['mae_mm']:.2f} mm, RMSE {scores['rmse_mm']:.2f} mm, "
                f"DF {scores['df_mm']:+.2f} mm, PMAE {scores['pmae_percent']:.2f} % "
                f"(n = {scores['n']})"
            )

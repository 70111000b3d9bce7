"""``fetalhc data``: check an HC18-layout folder, or write a phantom dataset.

Neither command needs TensorFlow (``needs_tensorflow=False``); both check their options
before they read or write anything (``synth`` writes into a temporary folder it moves into
place at the end, so an error leaves no partial output).
"""

from __future__ import annotations

from pathlib import Path

import click

from fetalhc.cli.options import Command, progress_option, show_progress

MAX_LISTED_PROBLEMS = 20


def _progress(progress: bool | None):
    """A ``progress(iterable, total=, desc=, unit=)`` wrapper drawing tqdm bars, or
    ``None`` when no bars are shown (``--no-progress``, or stderr is not a terminal)."""
    if not show_progress(progress):
        return None
    from tqdm.auto import tqdm

    def progress_bar(iterable, total=None, desc=None, unit="it"):
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False)

    return progress_bar


@click.group("data")
def command():
    """Check the HC18 folder, or synthesise phantoms in the HC18 layout."""


@command.command("check", cls=Command, needs_tensorflow=False)
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--refit/--no-refit", default=True, show_default=True,
              help="Refit every annotation and compare its HC with the CSV.")
@click.option("--tolerance-mm", type=click.FloatRange(min=0.0), default=0.05,
              show_default=True, help="Largest allowed |refit HC - CSV HC| in mm.")
@progress_option
def check(root: Path, refit: bool, tolerance_mm: float, progress: bool | None):
    """Validate ROOT (training_set/ + CSV, optional test_set/) and print a summary.

    Every image and annotation is opened and decoded in full (about 4 ms per image), so
    a missing, truncated or undecodable file is reported as a problem naming it. Exits
    with status 1 when any problem is found. Writes nothing.
    """
    from fetalhc.data.check import check_dataset

    report = check_dataset(root, refit=refit, tolerance_mm=tolerance_mm,
                           progress=_progress(progress))
    for line in report.summary_lines():
        click.echo(line)
    if report.ok:
        click.echo("OK: no problems found")
        return
    for message in report.problems[:MAX_LISTED_PROBLEMS]:
        click.echo(f"problem: {message}", err=True)
    if len(report.problems) > MAX_LISTED_PROBLEMS:
        click.echo(f"... and {len(report.problems) - MAX_LISTED_PROBLEMS} more problems",
                   err=True)
    # the last line names a file too: the first problem
    raise click.ClickException(
        f"{len(report.problems)} problem(s) found in {root}; first: {report.problems[0]}")


@command.command("synth", cls=Command, needs_tensorflow=False)
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--n", "n", type=click.IntRange(min=1), default=200, show_default=True,
              help="Number of training images.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the phantoms (the same seed writes the same files).")
@click.option("--challenge", type=click.IntRange(min=0), default=0, show_default=True,
              help="Number of test_set/ images without HC.")
@click.option("--width", type=click.IntRange(min=32), default=320, show_default=True,
              help="Image width (px).")
@click.option("--height", type=click.IntRange(min=32), default=216, show_default=True,
              help="Image height (px).")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it is not empty.")
@progress_option
def synth(out_dir: Path, n: int, seed: int, challenge: int, width: int, height: int,
          overwrite: bool, progress: bool | None):
    """Write N phantom images with known HC to OUT_DIR in the HC18 layout."""
    from fetalhc.data.phantom import write_phantom_dataset

    write_phantom_dataset(out_dir, n=n, seed=seed, challenge=challenge, width=width,
                          height=height, overwrite=overwrite, progress=_progress(progress))
    click.echo(f"wrote {n} training and {challenge} challenge phantoms to {out_dir}")

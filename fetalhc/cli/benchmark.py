"""``fetalhc benchmark``: the ground-truth faithfulness benchmark on shortcut phantoms.

Per variant (``contour``, ``marker``, ``mixed``; :mod:`fetalhc.data.shortcut`): write the
training phantoms (``fetalhc.data.shortcut.ensure_shortcut_dataset``: a folder named by its
settings, reused only when byte-identical to a fresh copy), train a small CNN on them (``fetalhc.train`` with
``fetalhc.report.groundtruth.training_config`` through ``fetalhc.training.fit.train_or_reuse``:
a finished run with the same config, data and split is reused, a killed one resumed,
another one refused unless ``--overwrite``), then score it on
fresh phantoms (``fetalhc.report.groundtruth.score_variant``) and write
``<out>/benchmark.md`` (``write_benchmark_page``). A re-run resumes.

Only click, the standard library and TensorFlow-free modules are imported here.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from fetalhc.cli.options import Command, progress_option, show_progress

VARIANTS = ("contour", "marker", "mixed")


@click.command("benchmark", cls=Command)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: benchmark.md, <variant>/ results, data/ and runs/ (a "
                   "re-run resumes it).")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the training phantoms (data/) and the models (runs/) go "
                   "[default: --out]; keep them out of a docs folder.")
@click.option("--variants", default=",".join(VARIANTS), show_default=True,
              help="Comma-separated shortcut-phantom variants: contour, marker, mixed.")
@click.option("--train-images", type=click.IntRange(min=8), default=320, show_default=True,
              help="Training phantoms per variant.")
@click.option("--test-images", type=click.IntRange(min=2), default=32, show_default=True,
              help="Fresh phantoms per variant the methods are scored on.")
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--image-size", type=click.IntRange(min=16), default=64, show_default=True,
              help="Network input size (px).")
@click.option("--width", type=click.IntRange(min=32), default=160, show_default=True,
              help="Phantom width (px); the height is 3/4 of it.")
@click.option("--methods", default="all", show_default=True,
              help="Comma-separated registered methods (`fetalhc explain --list`), or all.")
@click.option("--n-boot", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Bootstrap resamples of the confidence intervals.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True,
              help="Retrain and rescore instead of refusing results of other settings.")
@progress_option
def command(out, work, variants, train_images, test_images, epochs, image_size, width, methods,
            n_boot, seed, overwrite, progress):
    """Train models on phantoms whose HC evidence is planted (a marker, the contour, both),
    check by intervention what each uses, and score where every saliency method puts its
    relevance: <out>/benchmark.md."""
    from fetalhc.evaluate.settings import split_list

    chosen = split_list(variants)
    unknown = sorted(set(chosen) - set(VARIANTS))
    if unknown or not chosen:
        raise ValueError(f"--variants: unknown {', '.join(unknown) or '(none given)'}; choose "
                         f"from {', '.join(VARIANTS)}")
    method_list = None if methods.strip() == "all" else split_list(methods)

    import fetalhc
    from fetalhc.data.shortcut import ensure_shortcut_dataset
    from fetalhc.explain import get_method
    from fetalhc.report.groundtruth import score_variant, training_config, write_benchmark_page
    from fetalhc.training.fit import train_or_reuse

    for name in method_list or []:
        get_method(name)  # an unknown method: one line before any training
    height = (int(width) * 3) // 4
    config = training_config(image_size, epochs, seed)
    shown = show_progress(progress)
    work = out if work is None else work
    for number, variant in enumerate(chosen, start=1):
        data_dir = work / "data" / f"{variant}-n{train_images}-seed{seed}-{width}x{height}"
        click.echo(f"[{number}/{len(chosen)}] {variant}: {train_images} phantoms")
        ensure_shortcut_dataset(data_dir, variant, n=train_images, seed=seed, width=width,
                                height=height, overwrite=overwrite)
        click.echo(f"[{number}/{len(chosen)}] {variant}: training ({epochs} epochs)")
        model_file = train_or_reuse(config, data_dir, work / "runs" / variant, overwrite)
        click.echo(f"[{number}/{len(chosen)}] {variant}: scoring on {test_images} fresh "
                   "phantoms")
        score_variant(fetalhc.load_model(model_file), model_file, variant, out / variant,
                      n_images=test_images, seed=seed, width=width, height=height,
                      methods=method_list, n_boot=n_boot, overwrite=overwrite,
                      progress=(lambda name: click.echo(f"    {name}")) if shown else None)
    page = write_benchmark_page(out, command="fetalhc " + shlex.join(sys.argv[1:]),
                                variants=chosen)
    click.echo(f"wrote {page}")

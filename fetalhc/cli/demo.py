"""``fetalhc demo``: the main job end to end, in minutes on a CPU.

synthesise phantoms (or use ``--data`` HC18) → train the small CNN (saliency logged to
TensorBoard while it trains) → predict and score the held-out split → explain a handful of
test images with every registered method → evaluate the explanations (AOPC MoRF / LeRF /
random, localisation against the skull contour) → ``report.md`` with the numbers, the
figures and the commands that reproduce each step.

Every step is one of the other commands, invoked as a user types it, so the demo is also
their integration test; :func:`fetalhc.report.demo.write_demo_report` writes the page.
Steps whose output already exists are skipped (re-running resumes).
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import click

from fetalhc.cli.options import Command, progress_option, show_progress

# the shipped config the demo trains (package data: fetalhc/configs/quick_cpu.toml)
DEMO_CONFIG = "quick_cpu"


def _step(number: int, total: int, text: str) -> None:
    click.secho(f"[{number}/{total}] {text}", bold=True)


def run_demo(ctx: click.Context, out: Path, data_dir: Path | None = None, n: int = 160,
             epochs: int = 15, image_size: int = 64, explain_images: int = 6,
             evaluate_images: int = 24, methods: list[str] | None = None,
             seed: int = 0, progress: bool | None = None) -> Path:
    """Run the demo into ``out``; returns the path of ``report.md``.

    Each step invokes the corresponding ``fetalhc`` command with ``ctx.invoke``, so the
    demo runs exactly what a user would type (the commands' own defaults included).
    The request is checked (:func:`fetalhc.report.demo.check_demo_request`) before ``out``
    is created; ``progress`` goes to the steps that draw progress bars."""
    from fetalhc.cli import evaluate, explain, predict, train
    from fetalhc.data import write_phantom_dataset
    from fetalhc.report.demo import check_demo_request, write_demo_report

    out = Path(out)
    methods = check_demo_request(out, data_dir, methods)
    out.mkdir(parents=True, exist_ok=True)
    total = 5 if data_dir is None else 4
    step = 0
    timings: dict[str, float] = {}
    commands: list[str] = []

    def begin(text):
        nonlocal step
        step += 1
        _step(step, total, text)
        return time.perf_counter()

    if data_dir is None:
        data_dir = out / "data"
        start = begin(f"synthesising {n} phantoms with known HC in {data_dir}")
        if not (data_dir / "training_set_pixel_size_and_HC.csv").is_file():
            write_phantom_dataset(data_dir, n=n, seed=seed, challenge=8)
        commands.append(f"fetalhc data synth {shlex.quote(str(data_dir))} --n {n} "
                        f"--seed {seed} --challenge 8")
        timings["data"] = time.perf_counter() - start
    data_dir = Path(data_dir)

    run_dir = out / "run"
    start = begin(f"training the small CNN ({epochs} epochs at {image_size} px) into {run_dir}")
    explain_every = max(1, epochs // 3)
    if not (run_dir / "model.keras").is_file() or not (run_dir / "metrics.json").is_file():
        ctx.invoke(train.command, config_path=DEMO_CONFIG, data_dir=data_dir, out_dir=run_dir,
                   epochs=epochs, seed=seed, settings=(f"data.image_size={image_size}",),
                   resume=(run_dir / "config.toml").is_file(), explain_every=explain_every,
                   explain_methods="gradient,integrated_gradients")
    commands.append(
        f"fetalhc train --config {DEMO_CONFIG} --data {shlex.quote(str(data_dir))} "
        f"--out {shlex.quote(str(run_dir))} --epochs {epochs} --set data.image_size={image_size} "
        f"--seed {seed} --explain-every {explain_every} "
        "--explain-methods gradient,integrated_gradients"
    )
    timings["train"] = time.perf_counter() - start

    model_path = run_dir / "model.keras"
    predictions = out / "predict" / "predictions.csv"
    start = begin("predicting HC (mm) on the run's held-out test split")
    predictions.parent.mkdir(parents=True, exist_ok=True)
    ctx.invoke(predict.command, model_path=model_path, data_dir=data_dir, split="test",
               out=predictions)
    commands.append(f"fetalhc predict --model {model_path} --data {data_dir} --split test "
                    f"--out {predictions}")
    timings["predict"] = time.perf_counter() - start

    explain_dir = out / "explain"
    start = begin(f"explaining {explain_images} test images with {len(methods)} methods")
    _invoke_or_recompute(ctx, explain.command, model_path=model_path, data_dir=data_dir,
                         methods=",".join(methods), out=explain_dir, limit=explain_images,
                         split="test", **_progress(explain.command, progress))
    commands.append(f"fetalhc explain --model {model_path} --data {data_dir} "
                    f"--methods {','.join(methods)} --out {explain_dir} "
                    f"--limit {explain_images} --split test")
    timings["explain"] = time.perf_counter() - start

    evaluate_dir = out / "evaluate"
    start = begin(f"evaluating the explanations on {evaluate_images} test images "
                  "(AOPC MoRF/LeRF/random, localisation)")
    _invoke_or_recompute(ctx, evaluate.command, model_path=model_path, data_dir=data_dir,
                         methods=",".join(methods), metrics="aopc,localisation",
                         out=evaluate_dir, split="test", limit=evaluate_images,
                         **_progress(evaluate.command, progress))
    commands.append(f"fetalhc evaluate --model {model_path} --data {data_dir} "
                    f"--methods {','.join(methods)} --metrics aopc,localisation "
                    f"--split test --limit {evaluate_images} --out {evaluate_dir}")
    timings["evaluate"] = time.perf_counter() - start

    return write_demo_report(out, run_dir, predictions, explain_dir, evaluate_dir, commands,
                             timings, synthetic=(data_dir == out / "data"))


def _progress(command: click.Command, progress: bool | None) -> dict:
    """``{"progress": ...}`` for a step whose command has ``--progress/--no-progress``
    (the demo's choice, or bars only on a terminal), else nothing."""
    if any(param.name == "progress" for param in command.params):
        return {"progress": show_progress(progress)}
    return {}


def _invoke_or_recompute(ctx, command, **options) -> None:
    """Run a step, resuming its folder; when the folder holds results of something else
    (e.g. the model was retrained with other options since the last demo), say so and
    recompute it: the demo's folders are its own."""
    from fetalhc.report.provenance import ProvenanceError

    try:
        ctx.invoke(command, **options)
    except ProvenanceError as error:
        click.echo(f"{error}: the demo recomputes {options['out']}", err=True)
        ctx.invoke(command, overwrite=True, **options)


@click.command("demo", cls=Command)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs/demo"), show_default=True,
              help="Report folder (data, run, maps, tables, report.md); a re-run resumes.")
@click.option("--data", "data_dir", default=None,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Use this HC18-layout folder instead of synthetic phantoms.")
@click.option("--n", type=click.IntRange(min=20), default=160, show_default=True,
              help="Number of phantoms to synthesise (without --data).")
@click.option("--epochs", type=click.IntRange(min=1), default=15, show_default=True,
              help="Training epochs of the small CNN.")
@click.option("--image-size", type=click.IntRange(min=32), default=64, show_default=True,
              help="Network input size in px.")
@click.option("--explain-images", type=click.IntRange(min=1), default=6, show_default=True,
              help="Test images explained with every method (maps and the grid).")
@click.option("--evaluate-images", type=click.IntRange(min=2), default=24, show_default=True,
              help="Test images the explanations are evaluated on (AOPC, localisation).")
@click.option("--methods", default=None,
              help="Comma-separated methods (default: all; see `fetalhc explain --list`).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the phantoms and of training.")
@progress_option
@click.pass_context
def command(ctx, out, data_dir, n, epochs, image_size, explain_images, evaluate_images, methods,
            seed, progress):
    """Phantoms → train → predict → explain → evaluate → report.md, in minutes on a CPU."""
    names = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    report = run_demo(ctx, out, data_dir, n=n, epochs=epochs, image_size=image_size,
                      explain_images=explain_images, evaluate_images=evaluate_images,
                      methods=names, seed=seed, progress=progress)
    click.echo(f"report: {report}")
    click.echo(f"open it with any Markdown viewer; TensorBoard: tensorboard --logdir {Path(out) / 'run' / 'logs'}")

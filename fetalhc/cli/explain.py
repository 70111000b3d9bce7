"""``fetalhc explain``: signed saliency maps for a split of a trained run.

Parses the options, resolves the model and the split through ``fetalhc.training`` helpers
and calls :func:`fetalhc.report.explanations.write_explanations`, which writes the folder
(per-image ``.npz`` maps and ``.png`` overlays per method, ``grid.png``, ``index.csv``,
``provenance.json``, ``shard.json`` with ``--shard``). A re-run into the same folder with
the same model file, data, split, target, options and pre-processing resumes (finished
batches are reused); anything else is refused naming the first differing field, unless
``--overwrite`` recomputes the folder.
"""

from __future__ import annotations

from pathlib import Path

import click

from fetalhc.cli.options import Command, own_model_options, progress_option, show_progress

# TensorFlow-free names for --help: the run's splits, and the explain targets' names
# (tests/test_cli_options_evaluate.py checks EXPLAIN_TARGETS against fetalhc.explain.TARGETS)
from fetalhc.evaluate.settings import EXPLAIN_TARGETS as TARGETS
from fetalhc.training.config import DATA_SPLITS

DEFAULT_METHODS = "gradient,input_x_gradient,integrated_gradients,gradcam"


def _load_model_and_split(model_path: Path, data_dir: Path, split: str | None,
                          output_units: str | None = None, image_size: int | None = None,
                          intensity: str = "zscore"):
    """(model, its file, image size, index of the split, the split's name, the training HC
    range in mm or None) from a run folder, a bare .keras file or an exported model
    (:func:`fetalhc.training.resolve_model_split`, :func:`~fetalhc.training.load_command_model`)."""
    from fetalhc.training import load_command_model, resolve_model_split

    resolved = resolve_model_split(model_path, data_dir, split)
    loaded = load_command_model(resolved.model_file, output_units, image_size,
                                resolved.image_size, intensity)
    return (loaded.model, resolved.model_file, loaded.image_size, resolved.index,
            resolved.split, resolved.hc_range_mm or loaded.hc_range_mm)


def parse_options(texts, methods: list[str]) -> dict[str, dict]:
    """``["integrated_gradients.steps=32", ...]`` -> ``{"integrated_gradients": {"steps": 32}}``.

    Values are read as int, float, true/false, none, else kept as text."""
    options: dict[str, dict] = {}
    for text in texts:
        key, equals, raw = text.partition("=")
        method, dot, name = key.partition(".")
        if not equals or not dot or not name:
            raise ValueError(f"--option must look like METHOD.NAME=VALUE; got {text!r}")
        if method not in methods:
            raise ValueError(f"--option {text!r} names method {method!r}, which is not in --methods")
        lowered = raw.strip().lower()
        if lowered in ("none", "null"):
            value = None
        elif lowered in ("true", "false"):
            value = lowered == "true"
        else:
            try:
                value = int(raw)
            except ValueError:
                try:
                    value = float(raw)
                except ValueError:
                    value = raw
        options.setdefault(method, {})[name] = value
    return options


def explain_command(model_path: Path, data_dir: Path, methods: list[str], out: Path,
                    limit: int | None = None, split: str | None = None, target: str = "hc_mm",
                    batch_size: int = 8, progress: bool = True, shard: str | None = None,
                    options: dict[str, dict] | None = None, overwrite: bool = False,
                    output_units: str | None = None, image_size: int | None = None,
                    intensity: str = "zscore") -> dict:
    """``fetalhc explain`` without click: check the request (before the model loads), load
    the model and the split, write the folder (``overwrite``: recompute it from scratch);
    returns what it wrote and skipped. Every check, including those against the model
    (e.g. a Grad-CAM layer name), runs before anything is created at ``out``."""
    from fetalhc.report.explanations import check_request, write_explanations

    check_request(methods, target, options, limit, batch_size=batch_size, shard=shard)
    model, model_file, image_size, index, split_name, hc_range = _load_model_and_split(
        model_path, data_dir, split, output_units, image_size, intensity)
    return write_explanations(
        model, index, image_size, methods, out, limit=limit, target=target,
        batch_size=batch_size, progress=progress, shard=shard, options=options,
        source={"model": str(model_path), "data": str(data_dir), "split": split},
        split=split_name, model_file=model_file, overwrite=overwrite, hc_range_mm=hc_range,
        output_units=output_units, intensity=intensity)


def list_methods_text() -> str:
    """``fetalhc explain --list``: one line per registered method, with its options."""
    import fetalhc.explain as fe

    lines = []
    for name in fe.available_methods():
        method = fe.get_method(name)
        options = ", ".join(f"{key}={value!r}" for key, value in method.defaults.items())
        lines.append(f"{name}: {method.description}" + (f" (options: {options})" if options else ""))
    return "\n".join(lines)


@click.command("explain", cls=Command)
@click.option("--model", "model_path", default=None,
              type=click.Path(exists=True, path_type=Path),
              help="Run folder, or the model.keras inside one, or a bare .keras file. "
                   "Required unless --list.")
@click.option("--data", "data_dir", default=None,
              type=click.Path(exists=True, path_type=Path),
              help="Data: an HC18-layout folder, or a plain folder of images with a CSV "
                   "filename,pixel_size_mm[,hc_mm] (or that CSV).")
@click.option("--methods", default=DEFAULT_METHODS, show_default=True,
              help="Comma-separated registered methods (see `fetalhc explain --list`).")
@click.option("--out", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (maps, overlays, grid.png, index.csv). Required unless "
                   "--list.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Explain only the first N images of the split.")
@click.option("--split", type=click.Choice(DATA_SPLITS), default=None,
              help="Which images: a split of the run (default test, when --data holds it), "
                   "challenge (HC18 test_set/), or all (every image of --data; "
                   "the default for a bare .keras file or another folder).")
@click.option("--target", type=click.Choice(TARGETS), default="hc_mm", show_default=True,
              help="What is explained: hc_mm (predicted HC in mm), hc_px_input (in input "
                   "pixels) or abs_error_mm (the error, needs reference HCs).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1),
              help="Images per batch.")
@click.option("--shard", default=None, metavar="I/N",
              help="Explain only shard I of N (1-based, round robin over the split's order); "
                   "combine the shard folders with `fetalhc merge`.")
@click.option("--option", "option_texts", multiple=True, metavar="METHOD.NAME=VALUE",
              help="A method option, e.g. integrated_gradients.baseline=blur or "
                   "gradcam.layer_name=conv2 (repeatable; see --list).")
@click.option("--overwrite", is_flag=True,
              help="Delete an earlier explain folder at --out and recompute it (a re-run "
                   "with other settings is refused without it; with the same, it resumes).")
@own_model_options
@click.option("--image-size", type=click.IntRange(min=1), default=None,
              help="Input size in px of your own model when it takes any size (default: "
                   "from the run folder, the model's input, or an exported model's "
                   "pre-processing).")
@progress_option
@click.option("--list", "list_methods", is_flag=True,
              help="List the registered methods and their options, and exit.")
def command(model_path, data_dir, methods, out, limit, split, target, batch_size, shard,
            option_texts, overwrite, output_units, intensity, image_size, progress,
            list_methods):
    """Signed saliency maps (red raises HC, blue lowers it) for a split of a trained run."""
    if list_methods:
        click.echo(list_methods_text())
        return
    missing = [flag for flag, value in (("--model", model_path), ("--data", data_dir),
                                        ("--out", out)) if value is None]
    if missing:
        raise click.UsageError(f"Missing option(s) {', '.join(missing)} (needed unless --list).")
    names = [name.strip() for name in methods.split(",") if name.strip()]
    options = parse_options(option_texts, names)
    summary = explain_command(model_path, data_dir, names, out, limit=limit, split=split,
                              target=target, batch_size=batch_size, shard=shard, options=options,
                              overwrite=overwrite, progress=show_progress(progress),
                              output_units=output_units, image_size=image_size,
                              intensity=intensity)
    click.echo(
        f"{summary['images']} images x {len(names)} methods: wrote {summary['written']}, "
        f"skipped {summary['skipped']} already done; index {summary['index']}, grid {summary['grid']}"
    )

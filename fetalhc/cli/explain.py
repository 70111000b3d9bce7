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

DEFAULT_METHODS = "gradient,input_x_gradient,integrated_gradients,gradcam"


def _load_model_and_split(model_path: Path, data_dir: Path, split: str | None):
    """(model, its file, image size, index of the split, the split's name) from a run
    folder or a bare .keras file."""
    import fetalhc
    from fetalhc.training import load_run, run_split_index

    model_path = Path(model_path)
    run_dir = model_path if model_path.is_dir() else model_path.parent
    if model_path.is_dir():
        model_path = model_path / "model.keras"
    model = fetalhc.load_model(model_path)
    if (run_dir / "config.toml").is_file():
        run = load_run(run_dir)
        split = split or "test"
        return (model, model_path, run.image_size, run_split_index(run.config, data_dir, split),
                split)
    if (split or "challenge") != "challenge":
        raise ValueError(
            f"{model_path} has no run folder (config.toml beside it), so only "
            "--split challenge is possible"
        )
    shape = model.inputs[0].shape
    if shape[1] is None:
        raise ValueError(f"{model_path} has no fixed input size; explain needs a run folder")
    return model, model_path, int(shape[1]), run_split_index({}, data_dir, "challenge"), "challenge"


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
                    options: dict[str, dict] | None = None, overwrite: bool = False) -> dict:
    """``fetalhc explain`` without click: check the request, load the model and the split,
    write the folder (``overwrite``: recompute it from scratch); returns what it wrote and
    skipped."""
    from fetalhc.report.explanations import check_request, write_explanations

    check_request(methods, target, options, limit)
    model, model_file, image_size, index, split_name = _load_model_and_split(
        model_path, data_dir, split)
    return write_explanations(
        model, index, image_size, methods, out, limit=limit, target=target,
        batch_size=batch_size, progress=progress, shard=shard, options=options,
        source={"model": str(model_path), "data": str(data_dir), "split": split},
        split=split_name, model_file=model_file, overwrite=overwrite)


@click.command("explain")
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path),
              help="Run folder, or the model.keras inside one.")
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path),
              help="HC18-layout data folder the run was trained on.")
@click.option("--methods", default=DEFAULT_METHODS, show_default=True,
              help="Comma-separated registered methods (see `fetalhc explain --list`).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--limit", type=int, default=None, help="Explain only the first N images.")
@click.option("--split", default=None, help="train, val, test (default) or challenge.")
@click.option("--target", default="hc_mm", show_default=True,
              help="hc_mm, hc_px_input or abs_error_mm (needs references).")
@click.option("--batch-size", default=8, show_default=True, type=int, help="Images per batch.")
@click.option("--shard", default=None, metavar="I/N",
              help="Explain only shard I of N (1-based, round robin over the split's order); "
                   "combine the shard folders with `fetalhc merge`.")
@click.option("--option", "option_texts", multiple=True, metavar="METHOD.NAME=VALUE",
              help="A method option, e.g. integrated_gradients.baseline=blur (repeatable).")
@click.option("--overwrite", is_flag=True,
              help="Delete an earlier explain folder at --out and recompute it (a re-run "
                   "with other settings is refused without it; with the same, it resumes).")
@click.option("--list", "list_methods", is_flag=True, help="List the registered methods and exit.")
def command(model_path, data_dir, methods, out, limit, split, target, batch_size, shard,
            option_texts, overwrite, list_methods):
    """Signed saliency maps (red raises HC, blue lowers it) for a split of a trained run."""
    if list_methods:
        import fetalhc.explain as fe

        for name in fe.available_methods():
            click.echo(f"{name}: {fe.get_method(name).description}")
        return
    names = [name.strip() for name in methods.split(",") if name.strip()]
    if not names:
        raise ValueError("--methods is empty")
    options = parse_options(option_texts, names)
    summary = explain_command(model_path, data_dir, names, out, limit=limit, split=split,
                              target=target, batch_size=batch_size, shard=shard, options=options,
                              overwrite=overwrite)
    click.echo(
        f"{summary['images']} images x {len(names)} methods: wrote {summary['written']}, "
        f"skipped {summary['skipped']} already done; index {summary['index']}, grid {summary['grid']}"
    )

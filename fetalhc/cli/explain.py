"""``fetalhc explain``: signed saliency maps for a split of a trained run.

For every image and method it writes ``<out>/<method>/<image stem>.npz`` (the map, the
input image, the annotation outline when known, and the metadata: method, target, units,
baseline, prediction, reference, pixel size, per-image reports such as IG's completeness
gap) and ``<out>/<method>/<image stem>.png`` (overlay: red raises HC, blue lowers it, the
annotated skull outline as a thin line). Then ``<out>/grid.png`` (methods x the first
images) and ``<out>/index.csv`` (one row per image and method), rebuilt from all ``.npz``.
Re-running skips image/method pairs whose ``.npz`` and ``.png`` exist; every file is written
to a temporary name and moved into place, so an interrupted run leaves no partial files.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from fetalhc.cli._files import write_csv, write_npz, write_text

DEFAULT_METHODS = "gradient,input_x_gradient,integrated_gradients,gradcam"
GRID_IMAGES = 6
INDEX_COLUMNS = (
    "filename", "method", "target", "units", "prediction (mm)", "reference (mm)",
    "pixel size (mm)", "target value", "target units", "completeness gap", "conservation gap",
    "map sum", "map path", "overlay path",
)


def _load_model_and_split(model_path: Path, data_dir: Path, split: str | None):
    """(model, image size, index of the split) from a run folder or a bare .keras file."""
    import fetalhc
    from fetalhc.training import load_run, run_split_index

    model_path = Path(model_path)
    run_dir = model_path if model_path.is_dir() else model_path.parent
    if model_path.is_dir():
        model_path = model_path / "model.keras"
    model = fetalhc.load_model(model_path)
    if (run_dir / "config.toml").is_file():
        run = load_run(run_dir)
        return model, run.image_size, run_split_index(run.config, data_dir, split or "test")
    if (split or "challenge") != "challenge":
        raise ValueError(
            f"{model_path} has no run folder (config.toml beside it), so only "
            "--split challenge is possible"
        )
    shape = model.inputs[0].shape
    if shape[1] is None:
        raise ValueError(f"{model_path} has no fixed input size; explain needs a run folder")
    return model, int(shape[1]), run_split_index({}, data_dir, "challenge")


def _scalar(value):
    value = np.asarray(value)
    return value.item() if value.size == 1 else value


def _render(npz_path: Path, png_path: Path) -> None:
    from fetalhc.viz.overlay import overlay_figure, save_figure

    with np.load(npz_path) as stored:
        contour = stored["annotation"] if "annotation" in stored else None
        title = (f"{stored['method']} · {stored['filename']}\n"
                 f"pred {float(stored['prediction_mm']):.1f} mm, ref {float(stored['reference_mm']):.1f} mm")
        figure = overlay_figure(stored["image"], stored["map"], contour, title=title,
                                units=str(stored["units"]))
    save_figure(figure, png_path)


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
                    options: dict[str, dict] | None = None) -> dict:
    """Library side of ``fetalhc explain``; returns what it wrote and skipped.

    ``shard="i/n"`` (1-based, see ``fetalhc.data.shards``) explains only every n-th image of
    the split (after ``limit``) and writes ``shard.json``; ``fetalhc merge`` combines the
    shard folders into what one run writes."""
    from tqdm import tqdm

    import fetalhc.explain as fe
    from fetalhc.data import load_arrays

    known = fe.available_methods()
    options = options or {}
    for method in methods:
        fe.get_method(method)(**options.get(method, {}))  # one-line ValueErrors: name, options
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1; got {limit}")
    fe.get_target(target)
    model, image_size, index = _load_model_and_split(model_path, data_dir, split)
    if limit is not None:
        index = index.iloc[:limit].reset_index(drop=True)
    total = len(index)
    if shard is not None:
        from fetalhc.data.shards import select_shard

        index, positions = select_shard(index, shard)
    with_annotation = bool(index["annotation_path"].notna().all()) if "annotation_path" in index else False
    arrays = load_arrays(index, image_size=image_size, with_annotation=with_annotation)
    filenames = [str(name) for name in arrays["filename"]]
    stems = [Path(name).stem for name in filenames]
    out = Path(out)
    written, skipped = 0, 0
    todo = {}
    for method in methods:
        folder = out / method
        folder.mkdir(parents=True, exist_ok=True)
        todo[method] = [i for i, stem in enumerate(stems)
                        if not ((folder / f"{stem}.npz").is_file() and (folder / f"{stem}.png").is_file())]
        skipped += len(stems) - len(todo[method])
    bar = tqdm(total=sum(len(rows) for rows in todo.values()), desc="explain", unit="map",
               disable=not progress)
    for method in methods:
        rows = todo[method]
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            result = fe.explain_batch(
                model, arrays["image"][chunk], method=method, target=target,
                pixel_size=arrays["pixel_size_mm"][chunk], reference=arrays["hc_mm"][chunk],
                batch_size=batch_size, **options.get(method, {}),
            )
            for position, row in enumerate(chunk):
                record = {
                    "map": result.maps[position],
                    "image": arrays["image"][row][..., 0],
                    "filename": filenames[row],
                    "method": method,
                    "target": result.target,
                    "units": result.units,
                    "target_units": result.target_units,
                    "baseline": str(result.info.get("baseline", "")),
                    "info": json.dumps(result.info, default=str),
                    **{key: value[position] for key, value in result.metadata.items()
                       if key != "filename"},
                }
                if with_annotation:
                    record["annotation"] = arrays["annotation"][row][..., 0]
                npz_path = out / method / f"{stems[row]}.npz"
                write_npz(npz_path, **record)
                _render(npz_path, npz_path.with_suffix(".png"))
                written += 1
                bar.update(1)
    bar.close()

    # index and grid from everything on disk for these images (earlier runs included)
    grid_rows = list(range(min(GRID_IMAGES, len(stems))))
    frame, grid_maps, units = _index_frame(out, methods, stems, grid_rows)
    write_csv(frame, out / "index.csv")
    from fetalhc.viz.overlay import grid_figure, save_figure

    contours = [arrays["annotation"][i][..., 0] for i in grid_rows] if with_annotation else None
    grid = grid_figure([arrays["image"][i][..., 0] for i in grid_rows], grid_maps, contours,
                       column_titles=[stems[i] for i in grid_rows], units=units)
    save_figure(grid, out / "grid.png")
    if shard is not None:
        from fetalhc.data.shards import format_shard, parse_shard

        _write_shard_file(out, {
            "kind": "explain", "shard": format_shard(parse_shard(shard)), "total": total,
            "positions": [int(p) for p in positions], "filenames": filenames,
            "methods": list(methods), "model": str(model_path), "data": str(data_dir),
            "split": split, "limit": limit, "target": target,
            "options": json.loads(json.dumps(options or {}, default=str))})
    return {"written": written, "skipped": skipped, "index": out / "index.csv",
            "grid": out / "grid.png", "methods": methods, "images": len(stems), "known": known}


def _write_shard_file(out: Path, content: dict) -> None:
    write_text(out / "shard.json", json.dumps(content, indent=2) + "\n")


def _index_frame(out: Path, methods: list[str], stems: list[str], grid_rows: list[int]):
    """``index.csv`` (one row per method and image, from the ``.npz`` on disk) and the maps
    and units of the grid images; shared with ``fetalhc merge``."""
    import pandas as pd

    records, grid_maps, units = [], {}, {}
    for method in methods:
        for i, stem in enumerate(stems):
            npz_path = out / method / f"{stem}.npz"
            with np.load(npz_path) as stored:
                get = {key: _scalar(stored[key]) for key in stored.files if key not in ("map", "image", "annotation")}
                records.append({
                    "filename": get["filename"], "method": method, "target": get["target"],
                    "units": get["units"], "prediction (mm)": get.get("prediction_mm"),
                    "reference (mm)": get.get("reference_mm"),
                    "pixel size (mm)": get.get("pixel_size_mm"),
                    "target value": get.get("target_value"), "target units": get.get("target_units"),
                    "completeness gap": get.get("completeness_gap", np.nan),
                    "conservation gap": get.get("conservation_gap", np.nan),
                    "map sum": float(stored["map"].sum()),
                    "map path": str(npz_path.relative_to(out)),
                    "overlay path": str(npz_path.with_suffix(".png").relative_to(out)),
                })
                if i in grid_rows:
                    grid_maps.setdefault(method, []).append(stored["map"])
                    units[method] = str(get["units"])
    return pd.DataFrame(records, columns=list(INDEX_COLUMNS)), grid_maps, units


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
@click.option("--list", "list_methods", is_flag=True, help="List the registered methods and exit.")
def command(model_path, data_dir, methods, out, limit, split, target, batch_size, shard,
            option_texts, list_methods):
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
                              target=target, batch_size=batch_size, shard=shard, options=options)
    click.echo(
        f"{summary['images']} images x {len(names)} methods: wrote {summary['written']}, "
        f"skipped {summary['skipped']} already done; index {summary['index']}, grid {summary['grid']}"
    )

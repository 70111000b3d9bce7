"""The ``explain`` output folder: signed saliency maps of a split, written and indexed.

For every image and method :func:`write_explanations` writes ``<out>/<method>/<stem>.npz``
(the map, the input image, the annotation outline when known, and the metadata: method,
target, units, baseline, prediction, reference, pixel size, per-image reports such as IG's
completeness gap) and ``<out>/<method>/<stem>.png`` (overlay: red raises HC, blue lowers it,
the annotated skull outline as a thin line). Then :func:`write_index_and_grid` writes
``<out>/grid.png`` (methods x the first images) and ``<out>/index.csv`` (one row per image
and method), rebuilt from all ``.npz`` on disk; ``fetalhc merge`` calls it on the merged
shards. Image/method pairs whose ``.npz`` and ``.png`` exist are skipped; every file goes
through :mod:`fetalhc.files`, so an interrupted run leaves no partial files.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fetalhc.files import write_csv, write_json, write_npz

GRID_IMAGES = 6
INDEX_COLUMNS = (
    "filename", "method", "target", "units", "prediction (mm)", "reference (mm)",
    "pixel size (mm)", "target value", "target units", "completeness gap", "conservation gap",
    "map sum", "map path", "overlay path",
)


def check_request(methods: Sequence[str], target: str = "hc_mm",
                  options: dict[str, dict] | None = None, limit: int | None = None) -> None:
    """Raise a one-line ``ValueError`` for an unknown method, method option or target, or a
    ``limit`` below 1; cheap, so callers check before loading a model."""
    import fetalhc.explain as fe

    options = options or {}
    for method in methods:
        fe.get_method(method)(**options.get(method, {}))  # one-line ValueErrors: name, options
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1; got {limit}")
    fe.get_target(target)


def write_explanations(model, index, image_size: int, methods: Sequence[str], out: Path, *,
                       limit: int | None = None, target: str = "hc_mm", batch_size: int = 8,
                       progress: bool = True, shard: str | None = None,
                       options: dict[str, dict] | None = None,
                       source: dict | None = None) -> dict:
    """Explain the images of ``index`` (a ``fetalhc.data`` index) into the folder ``out``;
    returns what it wrote and skipped.

    ``limit`` keeps the first images only; ``shard="i/n"`` (1-based, see
    ``fetalhc.data.shards``) then keeps every n-th of them and writes ``shard.json``, which
    also records ``source`` (where the model and data came from, e.g. ``{"model": ...,
    "data": ..., "split": ...}``); ``fetalhc merge`` combines the shard folders into what
    one run writes."""
    from tqdm import tqdm

    import fetalhc.explain as fe
    from fetalhc.data import load_arrays

    methods = list(methods)
    options = options or {}
    check_request(methods, target, options, limit)
    known = fe.available_methods()
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
                render_overlay(npz_path, npz_path.with_suffix(".png"))
                written += 1
                bar.update(1)
    bar.close()

    # index and grid from everything on disk for these images (earlier runs included)
    grid_rows = range(min(GRID_IMAGES, len(stems)))
    contours = [arrays["annotation"][i][..., 0] for i in grid_rows] if with_annotation else None
    index_path, grid_path = write_index_and_grid(
        out, methods, stems, images=[arrays["image"][i][..., 0] for i in grid_rows],
        contours=contours)
    if shard is not None:
        from fetalhc.data.shards import format_shard, parse_shard

        write_json(out / "shard.json", {
            "kind": "explain", "shard": format_shard(parse_shard(shard)), "total": total,
            "positions": [int(p) for p in positions], "filenames": filenames,
            "methods": methods, **(source or {}), "limit": limit, "target": target,
            "options": json.loads(json.dumps(options, default=str))})
    return {"written": written, "skipped": skipped, "index": index_path, "grid": grid_path,
            "methods": methods, "images": len(stems), "known": known}


def render_overlay(npz_path: Path, png_path: Path) -> Path:
    """The overlay ``.png`` of one stored ``.npz`` map (title: method, file, pred, ref)."""
    from fetalhc.viz.overlay import overlay_figure, save_figure

    with np.load(npz_path) as stored:
        contour = stored["annotation"] if "annotation" in stored else None
        title = (f"{stored['method']} · {stored['filename']}\n"
                 f"pred {float(stored['prediction_mm']):.1f} mm, ref {float(stored['reference_mm']):.1f} mm")
        figure = overlay_figure(stored["image"], stored["map"], contour, title=title,
                                units=str(stored["units"]))
    return save_figure(figure, png_path)


def write_index_and_grid(out: Path, methods: Sequence[str], stems: Sequence[str],
                         images=None, contours=None) -> tuple[Path, Path]:
    """``<out>/index.csv`` and ``<out>/grid.png`` from the ``.npz`` of ``methods`` x
    ``stems`` on disk; returns their paths.

    The grid shows the first :data:`GRID_IMAGES` stems; their ``images`` and ``contours``
    (lists of 2-D arrays) default to those stored in the first method's ``.npz`` (contours
    only when every one of them has an annotation)."""
    from fetalhc.viz.overlay import grid_figure, save_figure

    out = Path(out)
    methods, stems = list(methods), list(stems)
    grid_rows = list(range(min(GRID_IMAGES, len(stems))))
    frame, grid_maps, units = index_frame(out, methods, stems, grid_rows)
    index_path = write_csv(frame, out / "index.csv")
    if images is None:
        images, stored_contours = [], []
        for i in grid_rows:
            with np.load(out / methods[0] / f"{stems[i]}.npz") as stored:
                images.append(stored["image"])
                stored_contours.append(stored["annotation"] if "annotation" in stored else None)
        if contours is None and all(c is not None for c in stored_contours):
            contours = stored_contours
    grid = grid_figure(list(images), grid_maps, contours,
                       column_titles=[stems[i] for i in grid_rows], units=units)
    return index_path, save_figure(grid, out / "grid.png")


def _scalar(value):
    value = np.asarray(value)
    return value.item() if value.size == 1 else value


def index_frame(out: Path, methods: Sequence[str], stems: Sequence[str],
                grid_rows: Sequence[int]):
    """(``index.csv`` as a DataFrame: one row per method and image, from the ``.npz`` on
    disk; the maps of the ``grid_rows`` images per method; the units per method)."""
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

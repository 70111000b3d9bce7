"""``fetalhc merge``: combine the folders of ``fetalhc explain --shard`` or ``fetalhc evaluate
--shard`` runs into exactly what one unsharded run writes.

Every shard folder holds ``shard.json`` (kind, ``i/n``, the split size and the positions of
its images in the split). The merge checks that the shards are of one kind and one run and
cover every image exactly once, then

- ``explain``: copies the per-image ``.npz`` / ``.png`` files and rebuilds ``index.csv`` and
  ``grid.png`` in the split's order;
- ``evaluate``: restores the split's order of the exact per-image numbers the shards kept
  (``methods/<m>/shard_*.npz``), writes the per-method tables, recomputes the curve means
  and CIs, the bootstrap summaries (same seed) and the error split from the merged per-image
  table, and redraws the figures.

The CSV tables are byte-identical to an unsharded run's; figures are redrawn, not compared.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click

KINDS = ("explain", "evaluate")


def _read_shards(shard_dirs, kind: str | None):
    if not shard_dirs:
        raise ValueError("give at least one shard folder")
    infos = []
    for folder in map(Path, shard_dirs):
        path = folder / "shard.json"
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not a shard folder (no shard.json); run "
                                    "explain / evaluate with --shard i/n")
        infos.append((folder, json.loads(path.read_text())))
    kinds = {info["kind"] for _, info in infos}
    if len(kinds) > 1:
        raise ValueError(f"the shard folders mix kinds ({', '.join(sorted(kinds))})")
    found = kinds.pop()
    if kind is not None and kind != found:
        raise ValueError(f"--kind {kind} but the shard folders hold {found} results")
    totals = {info["total"] for _, info in infos}
    counts = {info["shard"].split("/")[1] for _, info in infos}
    methods = {tuple(info["methods"]) for _, info in infos}
    if len(totals) > 1 or len(counts) > 1 or len(methods) > 1:
        raise ValueError("the shard folders come from different runs (split size, shard count "
                         "or methods differ)")
    run_keys = ("model", "data", "split", "limit", "target", "options")
    runs = {json.dumps({k: info.get(k) for k in run_keys}, sort_keys=True) for _, info in infos}
    if len(runs) > 1:
        raise ValueError("the shard folders come from different runs (model, data, split, "
                         "limit, target or method options differ)")
    names = [info["shard"] for _, info in infos]
    if len(set(names)) != len(names):
        raise ValueError(f"a shard is given twice: {', '.join(names)}")
    from fetalhc.data.shards import check_complete

    order = check_complete({info["shard"]: info["positions"] for _, info in infos},
                           totals.pop())
    return found, infos, order, list(methods.pop())


def _copy(source: Path, target: Path) -> None:
    temporary = target.with_name(f".{target.name}.merge")
    shutil.copyfile(source, temporary)
    temporary.replace(target)


def merge_explain(infos, order, methods, out: Path) -> dict:
    import numpy as np

    from fetalhc.cli._files import write_csv
    from fetalhc.cli.explain import GRID_IMAGES, _index_frame
    from fetalhc.viz.overlay import grid_figure, save_figure

    filenames = [name for _, info in infos for name in info["filenames"]]
    stems = [Path(filenames[i]).stem for i in order]
    copied = 0
    for folder, info in infos:
        for method in methods:
            (out / method).mkdir(parents=True, exist_ok=True)
            for name in info["filenames"]:
                for suffix in (".npz", ".png"):
                    source = folder / method / f"{Path(name).stem}{suffix}"
                    if not source.is_file():
                        raise FileNotFoundError(f"{source} is missing: did shard "
                                                f"{info['shard']} finish?")
                    _copy(source, out / method / source.name)
                    copied += 1
    grid_rows = list(range(min(GRID_IMAGES, len(stems))))
    frame, grid_maps, units = _index_frame(out, methods, stems, grid_rows)
    write_csv(frame, out / "index.csv")
    images, contours = [], []
    for i in grid_rows:
        with np.load(out / methods[0] / f"{stems[i]}.npz") as stored:
            images.append(stored["image"])
            contours.append(stored["annotation"] if "annotation" in stored else None)
    grid = grid_figure(images, grid_maps, contours if all(c is not None for c in contours)
                       else None, column_titles=[stems[i] for i in grid_rows], units=units)
    save_figure(grid, out / "grid.png")
    return {"images": len(stems), "files": copied, "index": out / "index.csv",
            "grid": out / "grid.png"}


def merge_evaluate(infos, order, methods, out: Path) -> dict:
    import types

    import numpy as np
    import pandas as pd

    from fetalhc.cli._files import write_csv, write_text
    from fetalhc.cli.evaluate import _write_summaries
    from fetalhc.data.shards import load_table
    from fetalhc.evaluate.suite import _mean_curves

    first_folder, first = infos[0]
    settings_file = json.loads((first_folder / "settings.json").read_text())
    keys = ("error_threshold_mm", "error_quantiles", "figures")
    for folder, info in infos[1:]:
        other = json.loads((folder / "settings.json").read_text())
        same = {k: v for k, v in other.items() if k != "filenames"} == \
            {k: v for k, v in settings_file.items() if k != "filenames"}
        if not same or any(info[k] != first[k] for k in keys):
            raise ValueError(f"{folder} was evaluated with other settings than {first_folder}; "
                             "merge only shards of one run")
    per_image, curves = [], []
    filenames = None
    for method in methods:
        folders = [folder / "methods" / method for folder, _ in infos]
        for folder in folders:
            if not (folder / "shard_per_image.npz").is_file():
                raise FileNotFoundError(f"{folder / 'shard_per_image.npz'} is missing: did "
                                        "that shard finish?")
        table = pd.concat([load_table(f / "shard_per_image.npz") for f in folders],
                          ignore_index=True).iloc[order].reset_index(drop=True)
        filenames = [str(name) for name in table["filename"]]
        stored = [np.load(f / "shard_curves.npz", allow_pickle=False) for f in folders]
        rows = []
        for number, label_text in enumerate(stored[0]["labels"]):
            label = json.loads(str(label_text))
            quantity = label.pop("quantity")
            values = np.concatenate([s[f"values{number}"] for s in stored], axis=0)[order]
            rows += _mean_curves(values, stored[0][f"x{number}"], label, quantity)
        for item in stored:
            item.close()
        curve_frame = pd.DataFrame(rows)
        target = out / "methods" / method
        target.mkdir(parents=True, exist_ok=True)
        write_csv(table, target / "per_image.csv")
        write_csv(curve_frame, target / "curves.csv")
        if all((f / "shard_steps.npz").is_file() for f in folders):
            steps = pd.concat([load_table(f / "shard_steps.npz") for f in folders],
                              ignore_index=True)
            steps = steps.sort_values("image", kind="stable").reset_index(drop=True)
            write_csv(steps, target / "perturbation_steps.csv")
        run_settings = {k: v for k, v in settings_file.items() if k != "methods"}
        run_settings["filenames"] = filenames
        write_text(target / "done.json", json.dumps(run_settings, indent=2) + "\n")
        per_image.append(table.assign(method=method))
        curves.append(curve_frame.assign(method=method))
    write_text(out / "settings.json", json.dumps(
        {**{k: v for k, v in settings_file.items() if k != "methods"}, "filenames": filenames,
         "methods": settings_file["methods"]}, indent=2) + "\n")
    settings = types.SimpleNamespace(confidence=settings_file["confidence"],
                                     n_boot=settings_file["n_boot"], seed=settings_file["seed"])
    written, _, _ = _write_summaries(
        out, per_image, curves, [], methods, settings_file["split"], settings,
        first["error_threshold_mm"], first["error_quantiles"], first["figures"])
    return {"images": len(order), "written": written}


def merge_command(shard_dirs, out, kind: str | None = None) -> dict:
    """Library side of ``fetalhc merge``; returns what it wrote."""
    found, infos, order, methods = _read_shards(shard_dirs, kind)
    out = Path(out)
    if any(out.resolve() == Path(folder).resolve() for folder, _ in infos):
        raise ValueError("--out must be a new folder, not one of the shard folders")
    out.mkdir(parents=True, exist_ok=True)
    if found == "explain":
        result = merge_explain(infos, order, methods, out)
    else:
        result = merge_evaluate(infos, order, methods, out)
    return {"kind": found, "shards": len(infos), **result}


@click.command("merge")
@click.argument("shard_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder for the merged results (as one unsharded run writes them).")
@click.option("--kind", type=click.Choice(KINDS), default=None,
              help="explain or evaluate (default: read from the shards' shard.json).")
def command(shard_dirs, out, kind):
    """Merge the shard folders of `fetalhc explain/evaluate --shard i/n` into one."""
    result = merge_command(shard_dirs, out, kind=kind)
    click.echo(f"merged {result['shards']} {result['kind']} shards ({result['images']} "
               f"images) into {out}")

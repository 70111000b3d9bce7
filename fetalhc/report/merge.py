"""Merge the folders of sharded ``explain`` or ``evaluate`` runs into exactly what one
unsharded run writes (``fetalhc merge``).

Every shard folder holds ``shard.json`` (kind, ``i/n``, the split size and the positions of
its images in the split). :func:`merge_shards` checks that the shards are of one kind and
one run and cover every image exactly once, then

- ``explain`` (:func:`merge_explain`): copies the per-image ``.npz`` / ``.png`` files and
  rebuilds ``index.csv`` and ``grid.png`` in the split's order
  (``fetalhc.report.explanations.write_index_and_grid``);
- ``evaluate`` (:func:`merge_evaluate`): restores the split's order of the exact per-image
  numbers the shards kept (``methods/<m>/shard_*.npz``), writes the per-method tables,
  recomputes the curve means and CIs, the bootstrap summaries (same seed) and the error
  split from the merged per-image table, and redraws the figures
  (``fetalhc.report.evaluation.write_summaries``).

The CSV tables are byte-identical to an unsharded run's; figures are redrawn, not compared.
Every file goes through :mod:`fetalhc.files` (atomic writes).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from fetalhc.files import atomic_path, write_json

KINDS = ("explain", "evaluate")


def read_shards(shard_dirs: Sequence, kind: str | None = None):
    """(kind, [(folder, shard.json content)], the order that restores the split from the
    shards' concatenated images, the methods) of shard folders of one run; a one-line
    ``ValueError`` / ``FileNotFoundError`` for anything that does not merge."""
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


def copy_file(source: Path, target: Path) -> Path:
    """Copy ``source`` to ``target`` atomically."""
    with atomic_path(target) as temporary:
        shutil.copyfile(source, temporary)
    return Path(target)


def merge_explain(infos, order, methods: Sequence[str], out: Path) -> dict:
    """Merge ``explain`` shards (as :func:`read_shards` returns them) into ``out``."""
    from fetalhc.report.explanations import write_index_and_grid

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
                    copy_file(source, out / method / source.name)
                    copied += 1
    index_path, grid_path = write_index_and_grid(out, methods, stems)
    return {"images": len(stems), "files": copied, "index": index_path, "grid": grid_path}


def merge_evaluate(infos, order, methods: Sequence[str], out: Path) -> dict:
    """Merge ``evaluate`` shards (as :func:`read_shards` returns them) into ``out``."""
    import numpy as np
    import pandas as pd

    from fetalhc.data.shards import load_table
    from fetalhc.evaluate import mean_curves
    from fetalhc.report.evaluation import (
        SHARD_CURVES,
        SHARD_PER_IMAGE,
        SHARD_STEPS,
        write_method_folder,
        write_summaries,
    )

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
            if not (folder / SHARD_PER_IMAGE).is_file():
                raise FileNotFoundError(f"{folder / SHARD_PER_IMAGE} is missing: did "
                                        "that shard finish?")
        table = pd.concat([load_table(f / SHARD_PER_IMAGE) for f in folders],
                          ignore_index=True).iloc[order].reset_index(drop=True)
        filenames = [str(name) for name in table["filename"]]
        stored = [np.load(f / SHARD_CURVES, allow_pickle=False) for f in folders]
        rows = []
        for number, label_text in enumerate(stored[0]["labels"]):
            label = json.loads(str(label_text))
            quantity = label.pop("quantity")
            values = np.concatenate([s[f"values{number}"] for s in stored], axis=0)[order]
            rows += mean_curves(values, stored[0][f"x{number}"], label, quantity)
        for item in stored:
            item.close()
        curve_frame = pd.DataFrame(rows)
        target = out / "methods" / method
        target.mkdir(parents=True, exist_ok=True)
        steps = None
        if all((f / SHARD_STEPS).is_file() for f in folders):
            steps = pd.concat([load_table(f / SHARD_STEPS) for f in folders],
                              ignore_index=True)
            steps = steps.sort_values("image", kind="stable").reset_index(drop=True)
        run_settings = {k: v for k, v in settings_file.items() if k != "methods"}
        run_settings["filenames"] = filenames
        write_method_folder(target, {"per_image.csv": table, "curves.csv": curve_frame},
                            run_settings, steps)
        per_image.append(table.assign(method=method))
        curves.append(curve_frame.assign(method=method))
    write_json(out / "settings.json", {
        **{k: v for k, v in settings_file.items() if k != "methods"}, "filenames": filenames,
        "methods": settings_file["methods"]})
    written, _, _ = write_summaries(
        out, per_image, curves, methods, settings_file["split"],
        confidence=settings_file["confidence"], n_boot=settings_file["n_boot"],
        seed=settings_file["seed"], error_threshold_mm=first["error_threshold_mm"],
        error_quantiles=first["error_quantiles"], figures=first["figures"])
    return {"images": len(order), "written": written}


def merge_shards(shard_dirs: Sequence, out, kind: str | None = None) -> dict:
    """Merge the shard folders ``shard_dirs`` of one ``explain`` or ``evaluate`` run into
    the new folder ``out``; returns the kind, the number of shards and what it wrote."""
    found, infos, order, methods = read_shards(shard_dirs, kind)
    out = Path(out)
    if any(out.resolve() == Path(folder).resolve() for folder, _ in infos):
        raise ValueError("--out must be a new folder, not one of the shard folders")
    out.mkdir(parents=True, exist_ok=True)
    if found == "explain":
        result = merge_explain(infos, order, methods, out)
    else:
        result = merge_evaluate(infos, order, methods, out)
    return {"kind": found, "shards": len(infos), **result}


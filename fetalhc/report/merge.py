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
  (``fetalhc.report.evaluation_summary.write_summaries``).

The CSV tables are byte-identical to an unsharded run's; figures are redrawn, not compared.
Every file goes through :mod:`fetalhc.files` (atomic writes).

Provenance (:mod:`fetalhc.report.provenance`): every shard folder must hold
``provenance.json`` (whatever command wrote it) and the shards' ``result`` records must be
equal but for their ``shard`` field (for ``evaluate`` shards also each method folder's
record, but for the folder record inside it); otherwise a one-line error names the first
differing field and the two folders. The merged folder gets the shards' record with
``shard`` set to ``None``, the record of an unsharded run (and its method folders theirs). The output folder is checked like every output
folder before anything is written: a non-empty folder made by something else is refused
unless ``overwrite`` (which deletes an earlier fetalhc output folder there first).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from fetalhc.files import atomic_path, write_json
from fetalhc.report.provenance import (
    SHARD_FIELD,
    ProvenanceError,
    check_folder,
    first_difference,
    make_provenance,
    read_provenance,
    short_value,
    without_shard,
    write_provenance,
)

KINDS = ("explain", "evaluate")
# files that make a folder a merged explain / evaluate folder (besides provenance.json)
MARKERS = {"explain": ("index.csv", "grid.png"),
           "evaluate": ("settings.json", "summary.csv", "per_image.csv")}
# result fields that follow from the settings: named only when no setting differs
DERIVED_FIELDS = ("index", "image_keys")


def check_provenance(infos) -> dict:
    """The provenance record the shard folders (``[(folder, shard.json content)]``) share
    but for their ``shard`` field; a one-line :class:`ProvenanceError` naming the first
    differing field and two folders otherwise, or the first folder without a record."""
    records = []
    for folder, _ in infos:
        record = read_provenance(folder)
        if record is None:
            raise ProvenanceError(
                f"{folder} has no provenance.json (made by an older fetalhc?), so nothing "
                f"says it is a shard of the same run as the others; run that shard again")
        records.append((folder, record))
    first_folder, first = records[0]
    for folder, record in records[1:]:
        if record.get("kind") != first.get("kind"):
            raise ProvenanceError(f"{folder} holds {record.get('kind')!r} results but "
                                  f"{first_folder} {first.get('kind')!r} results")
        old, new = without_shard(first.get("result", {})), without_shard(record.get("result", {}))
        found = first_difference(
            {k: v for k, v in old.items() if k not in DERIVED_FIELDS},
            {k: v for k, v in new.items() if k not in DERIVED_FIELDS}) \
            or first_difference(old, new)
        if found is not None:
            field, before, now = found
            raise ProvenanceError(
                f"{first_folder} and {folder} are not shards of one run: their {field} "
                f"differs ({short_value(before, 50)} vs {short_value(now, 50)}); merge only the shards of one run")
    return first


def check_method_provenance(infos, methods: Sequence[str]) -> dict[str, dict]:
    """``evaluate`` shards: each method folder's ``provenance.json`` (what its numbers depend
    on besides the folder's record, e.g. the digest of maps from ``--maps``) must agree
    across the shards; returns per method the shared ``result`` without its ``evaluation``
    (the shard's folder record, compared by :func:`check_provenance`)."""
    shared = {}
    for method in methods:
        first_folder, first = None, None
        for folder, _ in infos:
            where = Path(folder) / "methods" / method
            record = read_provenance(where)
            if record is None:
                raise FileNotFoundError(f"{where / 'provenance.json'} is missing: did that "
                                        "shard finish?")
            result = {k: v for k, v in record.get("result", {}).items() if k != "evaluation"}
            if first is None:
                first_folder, first = where, result
                continue
            found = first_difference(first, result)
            if found is not None:
                field, before, now = found
                raise ProvenanceError(
                    f"{first_folder} and {where} are not shards of one run: their {field} "
                    f"differs ({short_value(before, 50)} vs {short_value(now, 50)}); merge only the shards of "
                    "one run")
        shared[method] = first
    return shared


def merged_provenance(first: dict, infos) -> dict:
    """The record of the merged folder: the shards' ``result`` with ``shard`` = ``None``
    (as an unsharded run records it); ``info`` names the shard folders."""
    result = {**first.get("result", {}), SHARD_FIELD: None}
    return make_provenance(first.get("kind", ""), result, {
        "merged_from": [str(folder) for folder, _ in infos],
        "shards": [info.get("shard") for _, info in infos],
    })


# what every shard.json holds, and what each kind adds
SHARD_KEYS = ("kind", "shard", "total", "positions", "methods")
KIND_KEYS = {"explain": ("filenames",),
             "evaluate": ("error_threshold_mm", "error_quantiles", "figures")}


def read_shard_info(folder) -> dict:
    """The ``shard.json`` of ``folder``; a one-line ``FileNotFoundError`` when there is none,
    ``ValueError`` when it is unreadable or lacks what a merge needs."""
    path = Path(folder) / "shard.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a shard folder (no shard.json); run "
                                "explain / evaluate with --shard i/n")
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is unreadable ({error}); run that shard again") from None
    if not isinstance(info, dict):
        raise ValueError(f"{path} is not a fetalhc shard record; run that shard again")
    if info.get("kind") not in KINDS:
        raise ValueError(f"{path} records kind {info.get('kind')!r}, not one of "
                         f"{', '.join(KINDS)}; run that shard again")
    lacking = [key for key in (*SHARD_KEYS, *KIND_KEYS[info["kind"]]) if key not in info]
    if lacking:
        raise ValueError(f"{path} lacks {', '.join(lacking)} (an older or damaged shard "
                         "record); run that shard again")
    return info


def read_shards(shard_dirs: Sequence, kind: str | None = None):
    """(kind, [(folder, shard.json content)], the order that restores the split from the
    shards' concatenated images, the methods) of shard folders of one run; a one-line
    ``ValueError`` / ``FileNotFoundError`` for anything that does not merge."""
    if not shard_dirs:
        raise ValueError("give at least one shard folder")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown --kind {kind!r}; choose one of: {', '.join(KINDS)}")
    folders = [Path(folder) for folder in shard_dirs]
    missing = [str(folder) for folder in folders if not folder.exists()]
    if missing:
        raise FileNotFoundError(f"no such folder: {', '.join(missing)}")
    for folder in folders:
        if not folder.is_dir():
            raise NotADirectoryError(f"{folder} is not a folder (give the shard folders)")
    infos = [(folder, read_shard_info(folder)) for folder in folders]
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


def merge_evaluate(infos, order, methods: Sequence[str], out: Path,
                   record: dict | None = None, method_results: dict | None = None) -> dict:
    """Merge ``evaluate`` shards (as :func:`read_shards` returns them) into ``out``; with
    the merged folder's ``record`` and the shards' shared per-method results
    (:func:`check_method_provenance`) each method folder gets the provenance an unsharded
    run gives it, so an ``evaluate`` re-run into the merged folder reuses it."""
    import numpy as np
    import pandas as pd

    from fetalhc.data.shards import load_table
    from fetalhc.evaluate import mean_curves
    from fetalhc.report.evaluation import (
        SHARD_CURVES,
        SHARD_PER_IMAGE,
        SHARD_STEPS,
        write_method_folder,
    )
    from fetalhc.report.evaluation_provenance import method_record
    from fetalhc.report.evaluation_summary import write_summaries

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
        provenance = None
        if record is not None and method_results is not None:
            shared = method_results[method]
            provenance = method_record(record, shared.get("method", method), shared.get("maps"),
                                       info={"merged_from": [str(f) for f, _ in infos]})
        write_method_folder(target, {"per_image.csv": table, "curves.csv": curve_frame},
                            run_settings, steps, provenance=provenance)
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


def merge_shards(shard_dirs: Sequence, out, kind: str | None = None,
                 overwrite: bool = False) -> dict:
    """Merge the shard folders ``shard_dirs`` of one ``explain`` or ``evaluate`` run into
    the new folder ``out``; returns the kind, the number of shards and what it wrote.

    Checks the shards (:func:`read_shards`, :func:`check_provenance`) and ``out``
    (:func:`fetalhc.report.provenance.check_folder`; ``overwrite`` deletes an earlier
    fetalhc output folder there) before anything is written."""
    found, infos, order, methods = read_shards(shard_dirs, kind)
    out = Path(out)
    for folder, _ in infos:
        folder = Path(folder).resolve()
        if out.resolve() == folder or folder in out.resolve().parents \
                or out.resolve() in folder.parents:
            raise ValueError("--out must be a new folder, not one of the shard folders "
                             "(nor inside one, nor holding one)")
    record = merged_provenance(check_provenance(infos), infos)
    method_results = check_method_provenance(infos, methods) if found == "evaluate" else None
    check_folder(out, record, overwrite=overwrite, markers=MARKERS[found])
    out.mkdir(parents=True, exist_ok=True)
    write_provenance(out, record)
    if found == "explain":
        result = merge_explain(infos, order, methods, out)
    else:
        result = merge_evaluate(infos, order, methods, out, record, method_results)
    return {"kind": found, "shards": len(infos), **result}


"""The ``explain`` output folder: signed saliency maps of a split, written and indexed.

For every image and method :func:`write_explanations` writes ``<out>/<method>/<stem>.npz``
(the map, the input image, the annotation outline when known, and the metadata: method,
target, units, baseline, prediction, reference, pixel size, per-image reports such as IG's
completeness gap, and the image's key: ``set`` (``training_set`` / ``test_set``),
``filename`` and ``method_key``, the method, its options and the target) and
``<out>/<method>/<stem>.png`` (overlay: red raises HC, blue lowers it, the annotated skull
outline as a thin line). Each ``.npz`` also holds the image's reliability flags
(:mod:`fetalhc.models.reliability`, computed once per batch of images from the model and
the images only: the flipped prediction, the flip disagreement, the outside-training-range,
ellipse-at-border and flip-disagreement flags and ``flagged``; a flag is 1.0, 0.0 or NaN =
unknown), which ``index.csv`` shows as the columns of :data:`RELIABILITY_KEYS`. Then :func:`write_index_and_grid` writes ``<out>/grid.png``
(methods x the first images) and ``<out>/index.csv`` (one row per image and method),
rebuilt from all ``.npz`` on disk; ``fetalhc merge`` calls it on the merged shards.

Re-runs (``fetalhc.report.provenance``): ``<out>/provenance.json`` records what made the
folder (model digest, index digest and image keys, split, limit, shard, target, every
method's options after defaults, pre-processing, batch size, the reliability settings:
flip threshold, training HC range, border tolerance). Before any work a re-run
compares it: another value refuses with one line naming the field and ``--overwrite``
(which deletes the folder and recomputes); the same value resumes. A resume keeps the
batches of a clean run (images ``[0, b)``, ``[b, 2b)``, ... of the whole list) and reuses a
batch only when every ``.npz`` and ``.png`` of it exists and each ``.npz`` records the
expected set, file name and method key; any other batch is recomputed whole, so a resumed
folder equals an uninterrupted run's. ``fetalhc evaluate --maps`` reads a folder itself
(:func:`explain_folder_record` tells one, :func:`read_explain_maps` reads the maps of its
first images, checked image by image); :func:`stack_maps` stacks them into
``<method>.npy`` files with the folder's provenance.
Every file goes through :mod:`fetalhc.files`, so an interrupted run leaves no partial files.

Before anything is created, :func:`check_request` (cheap, before a model is loaded),
:func:`check_references` and :func:`check_model` refuse a request that would fail later.
The module is one job, the explain folder: the checks, writing, resuming, indexing and
reading it back (``read_explain_maps``, ``stack_maps``) all follow its layout, kept in
one place.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fetalhc.files import write_bytes, write_csv, write_json, write_npz
from fetalhc.report.provenance import (
    ProvenanceError,
    check_folder_settings_first,
    image_keys,
    image_set,
    index_digest,
    make_provenance,
    method_options,
    model_digest,
    output_units_field,
    read_provenance,
    write_provenance,
)

GRID_IMAGES = 6
# index.csv column -> the .npz key of an image's reliability flags (fetalhc.models.reliability)
RELIABILITY_KEYS = {
    "flipped prediction (mm)": "flipped_prediction_mm",
    "flip disagreement (mm)": "flip_disagreement_mm",
    "flag: outside training range": "flag_outside_training_range",
    "flag: ellipse at border": "flag_ellipse_at_border",
    "flag: flip disagreement": "flag_flip_disagreement",
    "flagged": "flagged",
}
INDEX_COLUMNS = (
    "filename", "method", "target", "units", "prediction (mm)", "reference (mm)",
    "pixel size (mm)", *RELIABILITY_KEYS, "target value", "target units",
    "completeness gap", "conservation gap", "map sum", "map path", "overlay path",
)
# files that make a folder an explain folder (besides provenance.json), for --overwrite
MARKERS = ("index.csv", "grid.png")
# result fields that follow from the settings: a re-run names the setting, not these
DERIVED_FIELDS = ("index", "image_keys")


def check_request(methods: Sequence[str], target: str = "hc_mm",
                  options: dict[str, dict] | None = None, limit: int | None = None,
                  batch_size: int = 8, shard: str | None = None) -> None:
    """Raise a one-line ``ValueError`` for an empty or repeated method list, an unknown
    method, method option or target, options of a method not asked for, a ``limit`` or
    ``batch_size`` below 1, or a bad ``shard`` spec; cheap, so callers check before
    loading a model. What depends on the model is :func:`check_model`."""
    import fetalhc.explain as fe
    from fetalhc.data.shards import parse_shard

    methods = list(methods)
    options = options or {}
    if not methods:
        raise ValueError("no methods to explain (--methods is empty)")
    repeated = sorted({method for method in methods if methods.count(method) > 1})
    if repeated:
        raise ValueError(f"--methods names {', '.join(repeated)} more than once")
    stray = sorted(set(options) - set(methods))
    if stray:
        raise ValueError(f"--option for {', '.join(stray)}, which is not in --methods "
                         f"({', '.join(methods)})")
    for method in methods:
        fe.get_method(method)(**options.get(method, {}))  # one-line ValueErrors: name, options
    for name, value in (("--limit", limit), ("--batch-size", batch_size)):
        if value is None and name == "--limit":
            continue
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
    fe.get_target(target)
    if shard is not None:
        parse_shard(shard)


def check_references(target: str, index, split: str | None = None) -> None:
    """A one-line ``ValueError`` when ``target`` needs a reference HC (``abs_error_mm``) and
    an image of ``index`` has none (the challenge split has none)."""
    import fetalhc.explain as fe

    if not fe.get_target(target).needs_reference:
        return
    missing = int(index["hc_mm"].isna().sum()) if "hc_mm" in index else len(index)
    if missing:
        where = f" of the {split} split" if split else ""
        raise ValueError(f"--target {target} needs the reference HC of every image, but "
                         f"{missing} of the {len(index)} images{where} have none (challenge "
                         "images never do); use --target hc_mm or a split with references")


def check_model(model, image_size: int, methods: Sequence[str], target: str = "hc_mm",
                options: dict[str, dict] | None = None, batch_size: int = 8,
                output_units: str | None = None) -> None:
    """A one-line ``ValueError`` when ``model`` cannot take ``image_size`` px inputs or a
    method cannot run on it as asked (e.g. ``gradcam.layer_name`` naming no 4-D layer of
    the model, listing those there are; an occlusion patch larger than the input; a layer
    no relevance rule covers): :func:`fetalhc.explain.check_methods`, without images."""
    import fetalhc.explain as fe
    from fetalhc.models import check_input_size

    check_input_size(model, image_size)
    fe.check_methods(model, methods, target, options,
                     input_shape=(int(image_size), int(image_size), 1), batch_size=batch_size,
                     output_units=output_units)


def explain_provenance(model, index, image_size: int, methods: Sequence[str], *,
                       target: str = "hc_mm", options: dict[str, dict] | None = None,
                       limit: int | None = None, shard: str | None = None,
                       batch_size: int = 8, split: str | None = None,
                       model_file=None, info: dict | None = None, hc_range_mm=None,
                       flip_threshold_mm: float | None = None,
                       output_units: str = "px", intensity: str = "zscore") -> dict:
    """The provenance record of an explain folder (``reliability``: what the flags depend
    on; ``flip_threshold_mm=None`` is the library default; ``output_units``: of the model's
    HC output, recorded when it is ``"mm"`` — a record without it is of a px output, as
    every record written before the field existed; ``intensity``: of the pre-processing,
    ``fetalhc.data.preprocessing_record``).

    ``index``: the rows explained by the run and its sibling shards, i.e. after ``limit``
    and before ``shard`` (a shard's rows follow from them and ``shard``). The model digest
    is that of ``model_file`` when given (the file the model was loaded from), else of the
    in-memory model's architecture and weights."""
    from fetalhc.data import preprocessing_record
    from fetalhc.data.shards import format_shard, parse_shard
    from fetalhc.models.reliability import DEFAULT_FLIP_THRESHOLD_MM, reliability_settings

    options = options or {}
    if flip_threshold_mm is None:
        flip_threshold_mm = DEFAULT_FLIP_THRESHOLD_MM
    result = {
        "model": model_digest(model_file if model_file is not None else model),
        "split": split,
        "index": index_digest(index),
        "image_keys": image_keys(index),
        "limit": limit,
        "shard": None if shard is None else format_shard(parse_shard(shard)),
        "target": target,
        "methods": {method: method_options(method, options.get(method, {}))
                    for method in methods},
        "preprocessing": {"image_size": int(image_size), **preprocessing_record(intensity)},
        "batch_size": int(batch_size),
        "reliability": reliability_settings(hc_range_mm, flip_threshold_mm),
        **output_units_field(output_units),
    }
    return make_provenance("explain", result, info)


def method_key(method: str, options: dict, target: str) -> str:
    """The key an ``.npz`` records: its method, the options after defaults and the target."""
    return json.dumps({"method": method, "options": method_options(method, options),
                       "target": target}, sort_keys=True)


def _reusable(npz_path: Path, image_set_name: str, filename: str, key: str,
              overlay: bool = True) -> bool:
    """Whether ``npz_path`` (and its overlay, when ``overlay``) exist and the ``.npz``
    records this image (set and file name) and this method key."""
    if not (npz_path.is_file() and (not overlay or npz_path.with_suffix(".png").is_file())):
        return False
    try:
        with np.load(npz_path, allow_pickle=False) as stored:
            return (str(stored["set"]) == image_set_name and str(stored["filename"]) == filename
                    and str(stored["method_key"]) == key)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return False


def write_explanations(model, index, image_size: int, methods: Sequence[str], out: Path, *,
                       limit: int | None = None, target: str = "hc_mm", batch_size: int = 8,
                       progress: bool = True, shard: str | None = None,
                       options: dict[str, dict] | None = None,
                       source: dict | None = None, split: str | None = None,
                       model_file=None, overwrite: bool = False, hc_range_mm=None,
                       flip_threshold_mm: float | None = None, overlays: bool = True,
                       output_units: str | None = None, intensity: str = "zscore") -> dict:
    """Explain the images of ``index`` (a ``fetalhc.data`` index) into the folder ``out``;
    returns what it wrote and reused (``written``, ``skipped`` maps).

    ``limit`` keeps the first images only; ``shard="i/n"`` (1-based, see
    ``fetalhc.data.shards``) then keeps every n-th of them and writes ``shard.json``, which
    also records ``source`` (where the model and data came from, e.g. ``{"model": ...,
    "data": ..., "split": ...}``); ``fetalhc merge`` combines the shard folders into what
    one run writes. ``split`` (its name) and ``model_file`` (the file ``model`` was loaded
    from, else the in-memory weights are digested) go into ``provenance.json`` with the
    rest (:func:`explain_provenance`; ``source`` as its ``info``). Before anything is
    created (or deleted): a bad request (:func:`check_request`), a target without the
    references it needs (:func:`check_references`), a method that cannot run on this model
    as asked (:func:`check_model`, then :func:`fetalhc.explain.check_methods` on the
    images), a bad image file, or a folder made by something else
    (:class:`~fetalhc.report.provenance.ProvenanceError` naming the first differing field)
    raise a one-line ``ValueError``; ``overwrite`` deletes an earlier explain folder first.
    ``progress``: a bar over images x methods. ``hc_range_mm`` (the training split's
    reference HC range, ``None`` = unknown) and ``flip_threshold_mm`` (``None``: 5 mm, the
    library default) set the reliability flags stored with each map. ``overlays=False``
    skips the per-image ``.png`` overlays (a figure per image and method is most of the
    time of a fast method; the maps, the index and the grid are written all the same).
    ``output_units`` / ``intensity``: of a model that is not fetalhc's, the unit of its HC
    output and the intensities its images take (``fetalhc.data.INTENSITIES``).
    """
    from tqdm import tqdm

    import fetalhc.explain as fe
    from fetalhc.data import check_images, load_arrays
    from fetalhc.models.graph import hc_output_units
    from fetalhc.models.reliability import (
        DEFAULT_FLIP_THRESHOLD_MM,
        check_flip_threshold,
        check_hc_range,
    )

    methods = list(methods)
    options = options or {}
    # every check before anything is created (and before --overwrite deletes anything)
    check_request(methods, target, options, limit, batch_size=batch_size, shard=shard)
    threshold = DEFAULT_FLIP_THRESHOLD_MM if flip_threshold_mm is None else \
        check_flip_threshold(flip_threshold_mm)
    hc_range = check_hc_range(hc_range_mm)
    batch_size = int(batch_size)
    known = fe.available_methods()
    if limit is not None:
        index = index.iloc[:limit].reset_index(drop=True)
    index = index.reset_index(drop=True)
    total = len(index)
    selected, positions = index, np.arange(total, dtype=np.int64)
    if shard is not None:
        from fetalhc.data.shards import select_shard

        selected, positions = select_shard(index, shard)
    check_references(target, selected, split)
    check_images(selected)
    units = fe.resolve_output_units(model, target, None, output_units)
    # the flags read the prediction in mm: only with a known unit (not a raw hc_px_input)
    declared = hc_output_units(model, None, output_units)
    record = explain_provenance(model, index, image_size, methods, target=target,
                                options=options, limit=limit, shard=shard,
                                batch_size=batch_size, split=split, model_file=model_file,
                                info=source, hc_range_mm=hc_range, flip_threshold_mm=threshold,
                                output_units=units, intensity=intensity)
    out = Path(out)
    if not overwrite:  # only compares: a folder of other settings is named first
        resumed = check_folder_settings_first(out, record, DERIVED_FIELDS, markers=MARKERS)
    check_model(model, image_size, methods, target, options, batch_size, units)

    index = selected
    with_annotation = bool(index["annotation_path"].notna().all()) if "annotation_path" in index else False
    arrays = load_arrays(index, image_size=image_size, with_annotation=with_annotation,
                         intensity=intensity)
    # what the methods check per image (e.g. LRP input bounds holding every pixel)
    fe.check_methods(model, methods, target, options, images=arrays["image"],
                     pixel_size=arrays["pixel_size_mm"], reference=arrays["hc_mm"],
                     batch_size=batch_size, output_units=units)
    if overwrite:  # deletes the earlier folder: only once every check has passed
        resumed = check_folder_settings_first(out, record, DERIVED_FIELDS, overwrite=True,
                                              markers=MARKERS)
    filenames = [str(name) for name in arrays["filename"]]
    sets = [image_set(path) for path in index["image_path"]]
    stems = [Path(name).stem for name in filenames]
    out.mkdir(parents=True, exist_ok=True)
    if not resumed:  # a resume keeps the record (and its info) of the run it continues
        write_provenance(out, record)
    n = len(stems)
    batches = [list(range(start, min(start + batch_size, n))) for start in range(0, n, batch_size)]
    written, skipped = 0, 0
    flags: dict[int, list[dict]] = {}  # per batch, once for all its methods
    bar = tqdm(total=n * len(methods), desc="explain", unit="map", disable=not progress)
    for method in methods:
        folder = out / method
        folder.mkdir(parents=True, exist_ok=True)
        key = method_key(method, options.get(method, {}), target)
        for chunk in batches:
            if all(_reusable(folder / f"{stems[row]}.npz", sets[row], filenames[row], key,
                             overlays) for row in chunk):
                skipped += len(chunk)
                bar.update(len(chunk))
                continue
            result = fe.explain_batch(
                model, arrays["image"][chunk], method=method, target=target,
                pixel_size=arrays["pixel_size_mm"][chunk], reference=arrays["hc_mm"][chunk],
                batch_size=batch_size, output_units=units, **options.get(method, {}),
            )
            if chunk[0] not in flags:
                flags[chunk[0]] = batch_flags(model, index.iloc[chunk], arrays["image"][chunk],
                                              image_size, hc_range, threshold, declared) \
                    if declared is not None else unknown_flags(len(chunk))
            for position, row in enumerate(chunk):
                stored = {
                    "map": result.maps[position],
                    "image": arrays["image"][row][..., 0],
                    "filename": filenames[row],
                    "set": sets[row],
                    "method_key": key,
                    "method": method,
                    "target": result.target,
                    "units": result.units,
                    "target_units": result.target_units,
                    "baseline": str(result.info.get("baseline", "")),
                    "info": json.dumps(result.info, default=str),
                    **{name: value[position] for name, value in result.metadata.items()
                       if name != "filename"},
                    **flags[chunk[0]][position],
                }
                if with_annotation:
                    stored["annotation"] = arrays["annotation"][row][..., 0]
                npz_path = folder / f"{stems[row]}.npz"
                write_npz(npz_path, **stored)
                if overlays:
                    render_overlay(npz_path, npz_path.with_suffix(".png"))
                written += 1
                bar.update(1)
    bar.close()

    # index and grid from the .npz on disk for these images
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
            "methods": methods, "images": len(stems), "known": known, "resumed": resumed,
            "provenance": record}


def batch_flags(model, index, images, image_size: int, hc_range_mm,
                flip_threshold_mm: float, output_units: str = "px") -> list[dict]:
    """The reliability flags of one batch (``index`` rows and their pre-processed
    ``images``), computed on the batch alone as ``explain_batch`` sees it: per image a dict
    of the ``.npz`` keys of :data:`RELIABILITY_KEYS` (floats; a flag is 1.0, 0.0 or NaN =
    unknown). ``output_units``: of the model's HC output."""
    from fetalhc.models.reliability import reliability_flags

    frame = reliability_flags(model, index.reset_index(drop=True), image_size, hc_range_mm,
                              flip_threshold_mm, batch_size=len(index), images=images,
                              output_units=output_units)
    values = {key: frame[column].astype("Float64").to_numpy(np.float64, na_value=np.nan)
              for column, key in RELIABILITY_KEYS.items()}
    return [{key: np.float64(column[i]) for key, column in values.items()}
            for i in range(len(frame))]


def unknown_flags(count: int) -> list[dict]:
    """Reliability flags left unknown (NaN), for a model whose output unit is not known (an
    undeclared model explained on its raw ``hc_px_input``): the flags read the prediction
    in mm."""
    return [{key: np.float64(np.nan) for key in RELIABILITY_KEYS.values()}
            for _ in range(count)]


def _reliability_columns(get: dict) -> dict:
    """The index.csv reliability columns of one ``.npz``'s scalars (``<NA>`` where unknown
    or where an older ``.npz`` has none)."""
    import pandas as pd

    row = {}
    for column, npz_key in RELIABILITY_KEYS.items():
        value = float(get.get(npz_key, np.nan))
        if column.startswith("flag"):
            row[column] = pd.NA if np.isnan(value) else bool(value)
        else:
            row[column] = value
    return row


def stack_maps(explain_dir, maps_dir, methods: Sequence[str],
               filenames: Sequence[str] | None = None) -> dict:
    """Stack the maps of the explain folder ``explain_dir`` into ``<maps_dir>/<method>.npy``
    (float32 ``(N, S, S)``, in the folder's image order), with ``filenames.json`` and a copy
    of the folder's ``provenance.json`` (kind ``explain``), so the evaluation can check the
    model, target, index and pre-processing. (``fetalhc evaluate --maps`` also reads an
    explain folder itself, :func:`read_explain_maps`.)

    ``filenames``, when given, must be the folder's images in its order (the provenance
    describes those); a ``.npy`` whose bytes would not change is not rewritten. Raises a
    one-line ``ValueError`` for a folder without provenance, a shard folder, another image
    list, a method the folder lacks or an ``.npz`` of another image or method;
    ``FileNotFoundError`` for a missing ``.npz``. Returns the paths."""
    explain_dir, maps_dir = Path(explain_dir), Path(maps_dir)
    record = read_provenance(explain_dir)
    if record is None or record.get("kind") != "explain":
        raise ProvenanceError(f"{explain_dir} has no explain provenance.json (made by an "
                              "older fetalhc?); run `fetalhc explain --overwrite` into it")
    result = record["result"]
    if result.get("shard") is not None:
        raise ValueError(f"{explain_dir} holds shard {result['shard']}; merge the shards "
                         "with `fetalhc merge` and stack the merged folder")
    names = [name for _, name in result["image_keys"]]
    if filenames is not None and list(map(str, filenames)) != names:
        raise ValueError(f"{explain_dir} holds maps of other images (or another order) than "
                         f"asked: {len(names)} images starting {names[:2]}")
    missing = [method for method in methods if method not in result["methods"]]
    if missing:
        raise ValueError(f"{explain_dir} has no maps of {', '.join(missing)}")
    maps_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for method in methods:
        buffer = _npy_bytes(read_explain_maps(explain_dir, record, method)[0])
        target = maps_dir / f"{method}.npy"
        if not target.is_file() or target.read_bytes() != buffer:
            write_bytes(target, buffer)
        written[method] = target
    written["filenames"] = write_json(maps_dir / "filenames.json", names, indent=None)
    written["provenance"] = write_provenance(maps_dir, record)
    return written


def explain_folder_record(folder) -> dict | None:
    """The provenance record of ``folder`` when it is a ``fetalhc explain`` output folder
    (kind ``explain`` with the image keys and methods an explain run records, and a method
    folder of ``.npz`` maps, or no stacked ``<method>.npy`` instead: a run killed before
    its first map), else ``None`` (e.g. maps stacked by :func:`stack_maps`)."""
    folder = Path(folder)
    record = read_provenance(folder) or {}
    result = record.get("result") or {}
    if record.get("kind") != "explain" or "image_keys" not in result or \
            not isinstance(result.get("methods"), dict):
        return None
    if any((folder / method).is_dir() for method in result["methods"]):
        return record
    return None if any((folder / f"{m}.npy").is_file() for m in result["methods"]) else record


def read_explain_maps(folder, record: dict, method: str, count: int | None = None
                      ) -> tuple[np.ndarray, str]:
    """The maps of ``method`` of the first ``count`` images (default: all) of the explain
    ``folder`` with provenance ``record``, float32 ``(count, S, S)`` in its image order,
    and their digest (``sha256:`` of the ``.npy`` :func:`stack_maps` writes of them).

    Every ``.npz`` must record its image (set, file name) and the method key of
    ``record`` (method, options, target); a missing one is a one-line
    ``FileNotFoundError``, an unreadable one or one of another image or method key a
    ``ValueError``, each saying to finish the explain run (re-running it resumes it)."""
    import hashlib

    folder, result = Path(folder), record["result"]
    key = json.dumps({"method": method, "options": result["methods"][method],
                      "target": result["target"]}, sort_keys=True)  # as method_key writes
    finish = (f"the `fetalhc explain` run into {folder} is unfinished; finish it (re-run "
              "the same command, which resumes it)")
    maps = []
    for set_name, name in [tuple(key) for key in result["image_keys"]][:count]:
        path = folder / method / f"{Path(name).stem}.npz"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: {finish}")
        try:
            with np.load(path, allow_pickle=False) as stored:
                found = (str(stored["set"]), str(stored["filename"]), str(stored["method_key"]))
                maps.append(np.asarray(stored["map"], dtype=np.float32))
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
            raise ValueError(f"{path} is unreadable: {finish}") from None
        if found[:2] != (set_name, name):
            raise ValueError(f"{path} holds {found[0]}/{found[1]} where {set_name}/{name} "
                             f"was expected: {finish}")
        if found[2] != key:
            raise ValueError(f"{path} holds a map of other method options or another target "
                             f"than {folder}'s provenance.json records: {finish}")
    stacked = np.stack(maps) if maps else np.zeros((0, 0, 0), np.float32)
    return stacked, f"sha256:{hashlib.sha256(_npy_bytes(stacked)).hexdigest()}"


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


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
                    **_reliability_columns(get),
                    "target value": get.get("target_value"), "target units": get.get("target_units"),
                    "completeness gap": get.get("completeness_gap", np.nan),
                    "conservation gap": get.get("conservation_gap", np.nan),
                    "map sum": float(stored["map"].sum()),
                    "map path": str(npz_path.relative_to(out)),
                    "overlay path": str(npz_path.with_suffix(".png").relative_to(out))
                    if npz_path.with_suffix(".png").is_file() else "",
                })
                if i in grid_rows:
                    grid_maps.setdefault(method, []).append(stored["map"])
                    units[method] = str(get["units"])
    frame = pd.DataFrame(records, columns=list(INDEX_COLUMNS))
    for column in RELIABILITY_KEYS:
        if column.startswith("flag"):
            frame[column] = frame[column].astype("boolean")
    return frame, grid_maps, units

"""The ``evaluate`` output folder: explanation methods scored on a split, written to disk.

One job — one request turned into its folder: the request checks, the per-method resume
and the writing share the request's record and order (everything checked before anything
exists), so they stay together; summaries, provenance and figures live in the sibling
``evaluation_*`` modules.

:func:`write_evaluation` explains (or loads) every method's maps, scores them with
``fetalhc.evaluate.evaluate_maps`` and writes into ``out``::

    provenance.json          what the numbers depend on (``fetalhc.report.provenance``)
    per_image.csv            one row per method and image, metric columns with units
    summary.csv / .md        methods x metrics, mean [95 % bootstrap CI] over images
    summary_by_error.csv/.md the same, split by the prediction error of each image
    randomisation.csv        cascade stages per method (when asked for)
    settings.json            what was run, for people (paths as given)
    figures/*.png            curves, boxplots, error-split bars (:mod:`.evaluation_figures`)
    methods/<name>/          per-method results: the tables, ``<table>.npz`` (their exact
                             numbers), perturbation_steps.csv (HC, error and shift per
                             image, order and step), ``provenance.json`` and last
                             ``done.json``; a finished method is reused on a re-run
    shard.json, methods/<name>/shard_*.npz
                             with ``shard="i/n"``: the exact per-image numbers
                             ``fetalhc merge`` (:mod:`fetalhc.report.merge`) combines

Re-runs: ``provenance.json``'s ``result`` holds the model's content digest, the digest of
the split's rows (after ``limit``, before ``shard``), the split, the metrics, every
``EvaluationSettings`` field, the pre-processing with the image size, the error split, the
limit and the shard. A re-run into the folder compares it before anything is loaded or
written: another value is a one-line ``ProvenanceError`` naming the field (``--overwrite``
deletes the folder and recomputes); the same value resumes. The methods are not part of it:
each method folder's ``provenance.json`` holds the folder's ``result``, the method's name and,
for maps from ``--maps``, their digest, and a method is reused only when that matches and its
``done.json`` exists; its tables are then read back exactly (``.npz``), so a resumed folder
equals an uninterrupted run's. ``--maps`` takes a ``fetalhc explain`` output folder (its
first images' ``.npz`` maps are read) or ``<method>.npy`` stacks with the ``provenance.json``
of the explain folder they were stacked from (``fetalhc.report.explanations.stack_maps``);
their model, target, pre-processing and images are checked against the evaluation's
(:func:`~fetalhc.report.evaluation_provenance.check_maps`).

:mod:`.evaluation_provenance` builds and checks the records, :mod:`.evaluation_summary`
writes the summaries (shared with the merge). Every file goes through :mod:`fetalhc.files`
(atomic writes).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fetalhc.files import write_bytes, write_csv, write_json
from fetalhc.report.evaluation_provenance import (
    DERIVED_FIELDS,
    MAKE_MAPS,
    check_maps,
    check_unsharded,
    evaluation_provenance,
    load_maps,
    method_record,
)
from fetalhc.report.evaluation_summary import write_summaries
from fetalhc.report.provenance import (
    ProvenanceError,
    check_folder_settings_first,
    read_provenance,
    write_provenance,
)

RESULT_FILES = ("per_image.csv", "curves.csv", "randomisation.csv")
SHARD_PER_IMAGE, SHARD_CURVES, SHARD_STEPS = ("shard_per_image.npz", "shard_curves.npz",
                                              "shard_steps.npz")
# files that make a folder an evaluate folder (besides provenance.json), for --overwrite
MARKERS = ("settings.json", "summary.csv")
# result fields that follow from the settings: a re-run names the setting, not these


# ----------------------------------------------------------------------------- checks
def check_methods(methods: Sequence[str], external: bool = False,
                  options: dict | None = None) -> None:
    """Every method is a registered explain method (none needed when ``external`` maps
    are given) that accepts the explain ``options``; else a one-line ``ValueError`` listing
    the available methods (or naming the option)."""
    from fetalhc.explain import available_methods, get_method

    known = available_methods()
    if not methods and not external:
        raise ValueError(f"no method given; available: {', '.join(known)}")
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; available: "
                         f"{', '.join(known)}")
    for method in methods:  # the method's own option checks, without a model
        get_method(method)(**dict(options or {}))


def check_evaluation_request(methods: Sequence[str], metrics, settings, maps_dir=None,
                             error_threshold_mm=None, error_quantiles=None, *,
                             limit: int | None = None, shard: str | None = None
                             ) -> tuple[tuple[str, ...], set[str]]:
    """Check what is asked before any model or image is loaded: the metrics, every
    setting against its choices and range, the error split, ``limit``, the ``shard``
    spec, the methods (registered, their options) and ``maps_dir``. Returns the parsed
    metrics and the methods whose maps come from ``maps_dir`` (those of a ``fetalhc
    explain`` folder, which must not be a shard's, else those with a ``<method>.npy``). What
    depends on the images (the grid against the input size, the maps' shapes) is checked
    by :func:`write_evaluation` before it writes anything."""
    from fetalhc.evaluate.settings import (
        POSITIVE_INT,
        check_error_split,
        parse_metrics,
        require_range,
    )

    metrics = parse_metrics(metrics)
    settings.check()
    check_error_split(error_threshold_mm, error_quantiles)
    if limit is not None:
        require_range(limit, POSITIVE_INT, "limit")
    if shard is not None:
        from fetalhc.data.shards import parse_shard

        parse_shard(shard)
        if "randomisation" in metrics:
            raise ValueError("randomisation is a whole-set metric and cannot be sharded; run "
                             "it without --shard")
    external = set()
    if maps_dir is not None:
        if not Path(maps_dir).is_dir():
            raise FileNotFoundError(f"--maps folder not found: {maps_dir}")
        from fetalhc.report.explanations import explain_folder_record

        explained = explain_folder_record(maps_dir)
        if explained is not None:
            check_unsharded(maps_dir, explained)
            external = {m for m in methods if m in explained["result"]["methods"]}
        else:
            external = {m for m in methods if (Path(maps_dir) / f"{m}.npy").is_file()}
        if external and read_provenance(maps_dir) is None:
            raise ProvenanceError(
                f"the maps in {maps_dir} have no provenance.json, so nothing says which "
                f"model, images, target and pre-processing made them; {MAKE_MAPS}")
    check_methods([m for m in methods if m not in external], bool(external),
                  settings.explain_options)
    if external and ("randomisation" in metrics or settings.recompute):
        from fetalhc.explain import available_methods

        foreign = sorted(external - set(available_methods()))
        if foreign:
            raise ValueError(
                f"maps of {', '.join(foreign)} come from --maps and cannot be recomputed for "
                "randomisation or --recompute; drop those or use an explain method"
            )
    return metrics, external


def check_annotations(index: pd.DataFrame, data_dir) -> None:
    """Every image of ``index`` has its contour annotation (localisation needs them)."""
    missing = []
    for filename, path in zip(index["filename"], index.get("annotation_path", [None] *
                                                           len(index)), strict=True):
        if path is None or (isinstance(path, float)) or not Path(str(path)).is_file():
            stem = Path(str(filename)).stem
            missing.append(f"{stem}_Annotation.png")
    if missing:
        shown = ", ".join(missing[:5]) + (f", ... ({len(missing)} in all)"
                                          if len(missing) > 5 else "")
        raise ValueError(
            f"localisation needs the contour annotations, but {data_dir} lacks "
            f"{len(missing)} of them: {shown}; drop 'localisation' from --metrics or use "
            "an annotated split"
        )


# ----------------------------------------------------------------------------- provenance












# ----------------------------------------------------------------------------- run
def read_method_tables(folder: Path, record: dict) -> dict[str, pd.DataFrame] | None:
    """A finished method's tables with their exact numbers, or ``None`` when the method
    must be (re)computed: no ``done.json``, another provenance (``record``) or a table
    missing."""
    from fetalhc.data.shards import load_table

    if not (folder / "done.json").is_file():
        return None
    try:
        old = read_provenance(folder)
    except ProvenanceError:
        return None
    if old is None or old.get("result") != record["result"]:
        return None
    exact = {name: folder / f"{Path(name).stem}.npz" for name in RESULT_FILES}
    if not (exact["per_image.csv"].is_file() and exact["curves.csv"].is_file()):
        return None
    return {name: load_table(path) for name, path in exact.items() if path.is_file()}


def write_evaluation(model, index: pd.DataFrame, methods: Sequence[str], metrics, settings,
                     out, *, image_size: int, split: str, source: dict, limit: int | None = None,
                     maps_dir=None, shard: str | None = None, error_threshold_mm=None,
                     error_quantiles=None, figures: bool = True, progress: bool = False,
                     model_file=None, overwrite: bool = False,
                     output_units: str | None = None, intensity: str = "zscore") -> dict:
    """Evaluate ``methods`` on the images of ``index`` (a ``fetalhc.data`` index of the split
    ``split``) into the folder ``out``; returns the paths written, the summary and the
    randomisation table.

    ``model``: a Keras model or a model file (loaded once the inputs are checked);
    ``model_file``: the file a given Keras model was loaded from (its bytes identify the
    model in ``provenance.json``; else the in-memory weights do). ``source``: where the
    model and data came from, ``{"model": ..., "data": ...}``, recorded in ``settings.json``
    and the provenance's ``info``. ``limit`` keeps the first images; ``shard="i/n"``
    (1-based, see ``fetalhc.data.shards``) then evaluates only every n-th image, with the
    noise and random orders those images get in the whole set, and also keeps the exact
    per-image numbers and ``shard.json``, from which ``fetalhc merge`` rebuilds what one
    unsharded run writes. ``randomisation`` (a whole-set metric) is refused with a shard.

    Before anything is created: a bad request (:func:`check_evaluation_request`), settings
    that do not fit the images (the grid against ``image_size``, ...), bad image files,
    maps from ``maps_dir`` made for something else or of the wrong count, shape or values
    (an explain folder: fewer images than evaluated, or unfinished), an ``out`` folder
    holding results of something else
    (:class:`~fetalhc.report.provenance.ProvenanceError` naming the first differing field)
    or a model that does not take ``image_size`` raise a one-line ``ValueError``;
    ``overwrite`` deletes an earlier evaluate folder once all of these have passed. The
    same provenance resumes: finished methods are reused. ``progress`` draws a bar over
    images x methods, advanced per batch of images. ``output_units``: ``"mm"`` or ``"px"``,
    the unit of the HC output of a model that is not fetalhc's (recorded when mm);
    ``intensity``: the intensities its images take (``fetalhc.data.INTENSITIES``)."""
    from tqdm.auto import tqdm

    from fetalhc.data import check_images, load_arrays
    from fetalhc.evaluate import evaluate_maps
    from fetalhc.evaluate.forward import BatchedForward
    from fetalhc.evaluate.settings import POSITIVE_INT, require_range
    from fetalhc.explain import check_methods as check_explain_methods
    from fetalhc.explain import explain
    from fetalhc.models import check_input_size, load_model
    from fetalhc.models.graph import check_output_units, require_output_units

    methods = list(methods)
    metrics, external = check_evaluation_request(methods, metrics, settings, maps_dir,
                                                 error_threshold_mm, error_quantiles,
                                                 limit=limit, shard=shard)
    size = int(require_range(image_size, POSITIVE_INT, "image_size"))
    check_output_units(output_units)
    split_rows = index.reset_index(drop=True)  # an explain folder's images must lead them
    if limit is not None:
        index = index.head(int(limit))
    index = index.reset_index(drop=True)
    if len(index) == 0:
        raise ValueError(f"the {split!r} split has no images to evaluate")
    total, selected, positions = len(index), index, None
    if shard is not None:
        from fetalhc.data.shards import select_shard

        selected, positions = select_shard(index, shard)
    settings.validate((len(selected), size, size, 1), metrics)
    localisation = "localisation" in metrics
    if localisation:
        check_annotations(selected, source.get("data"))
    check_images(selected, annotations=localisation)
    record = evaluation_provenance(
        model_file if model_file is not None else model, index, metrics, settings,
        image_size=size, split=split, limit=limit, shard=shard,
        error_threshold_mm=error_threshold_mm, error_quantiles=error_quantiles,
        info={**source, "maps": None if maps_dir is None else str(maps_dir)},
        output_units=output_units or "px", intensity=intensity)
    maps_keys = check_maps(maps_dir, record, sorted(external), total,
                           selected if shard is not None else None,
                           split_rows=split_rows) if external else {}
    out = Path(out)

    computed = [method for method in methods if method not in maps_keys]

    def checked_model(model):
        """The model, loaded, with its input size and every computed method checked against
        it (e.g. Grad-CAM's layer, an occlusion patch that must fit the input)."""
        if isinstance(model, str | Path):
            model = load_model(model, output_units=output_units)
        check_input_size(model, size)
        require_output_units(model, None, output_units)  # the unit of its HC output is known
        check_explain_methods(model, computed, settings.explain_target,
                              {method: settings.explain_options for method in computed},
                              input_shape=(size, size, int(model.inputs[0].shape[-1])),
                              output_units=output_units)
        return model

    if overwrite:  # the earlier folder is deleted only once the model has passed too
        model = checked_model(model)
    resumed = check_folder_settings_first(out, record, DERIVED_FIELDS, overwrite=overwrite,
                                          markers=MARKERS)
    if not overwrite:
        model = checked_model(model)

    arrays = load_arrays(selected, image_size=size, with_annotation=localisation,
                         intensity=intensity)
    images, pixel_size, reference = arrays["image"], arrays["pixel_size_mm"], arrays["hc_mm"]
    pixel_size_original = selected["pixel_size_mm"].to_numpy(np.float32)
    filenames = arrays["filename"]
    # the per-image preparation too (e.g. LRP input bounds holding every pixel)
    check_explain_methods(model, computed, settings.explain_target,
                          {method: settings.explain_options for method in computed},
                          images=images, pixel_size=pixel_size, reference=reference,
                          output_units=output_units)

    out.mkdir(parents=True, exist_ok=True)
    if not resumed:  # a resume keeps the record (and its info) of the run it continues
        write_provenance(out, record)
    run_settings = {**source, "split": split, "limit": limit, "image_size": size,
                    "metrics": list(metrics), "filenames": [str(f) for f in filenames],
                    **settings.as_dict()}
    write_json(out / "settings.json", {**run_settings, "methods": methods})

    # one forward for every method: the random-order curves and the unperturbed
    # predictions, identical for every method, are computed once (see BatchedForward)
    forward = BatchedForward(model, settings.batch_size, settings.precision,
                             output_units=output_units)
    per_image, curves, randomisation = [], [], []
    # the unit of work: one image of one method (the bar advances per batch of images)
    bar = tqdm(total=len(selected) * len(methods), desc="evaluate", unit="image",
               disable=not progress, leave=False)
    for method in methods:
        bar.set_postfix_str(method)
        start = bar.n
        folder = out / "methods" / method
        key = method_record(record, method, maps_keys.get(method),
                            info={"maps": str(maps_dir)} if method in maps_keys else None)
        tables = read_method_tables(folder, key)
        if tables is None:
            (folder / "done.json").unlink(missing_ok=True)  # unfinished until rewritten
            if method in maps_keys:
                maps = load_maps(maps_dir, method, maps_keys[method], total)
                if positions is not None and len(maps) == total != len(positions):
                    maps = maps[positions]  # maps of the whole split → this shard's
            else:
                maps = explain(model, images, method, target=settings.explain_target,
                               pixel_size=pixel_size, reference=reference,
                               output_units=forward.output_units,
                               **settings.explain_options)
            result = evaluate_maps(
                model, images, maps, pixel_size, reference, metrics=metrics,
                settings=settings, annotation=arrays.get("annotation"),
                pixel_size_original_mm=pixel_size_original, method=method,
                positions=positions, progress=bar.update, forward=forward)
            tables = {"per_image.csv": result.per_image.assign(filename=filenames),
                      "curves.csv": result.curves}
            if result.randomisation is not None:
                tables["randomisation.csv"] = result.randomisation
            steps = None
            if result.steps is not None:  # per image, order and step; kept for analysis
                steps = result.steps.assign(filename=filenames[result.steps["image"]])
            if shard is not None:
                write_shard_tables(folder, result, filenames, positions)
            write_method_folder(folder, tables, run_settings, steps, provenance=key)
        if start + len(selected) > bar.n:  # a reused method counts whole
            bar.update(start + len(selected) - bar.n)
        per_image.append(tables["per_image.csv"].assign(method=method))
        curves.append(tables["curves.csv"].assign(method=method))
        if "randomisation.csv" in tables:
            randomisation.append(tables["randomisation.csv"].assign(method=method))

    bar.close()
    if shard is not None:
        from fetalhc.data.shards import format_shard, parse_shard

        write_json(out / "shard.json", {
            "kind": "evaluate", "shard": format_shard(parse_shard(shard)), "total": total,
            "positions": [int(p) for p in positions], "methods": methods,
            "error_threshold_mm": error_threshold_mm, "error_quantiles": error_quantiles,
            "figures": figures})
    written, summary, random_frame = write_summaries(
        out, per_image, curves, methods, split, randomisation=randomisation,
        confidence=settings.confidence, n_boot=settings.n_boot, seed=settings.seed,
        error_threshold_mm=error_threshold_mm, error_quantiles=error_quantiles,
        figures=figures)
    return {"written": written, "summary": summary, "randomisation": random_frame,
            "resumed": resumed, "provenance": record}


def write_method_folder(folder: Path, tables: dict[str, pd.DataFrame], done: dict,
                        steps: pd.DataFrame | None = None, provenance: dict | None = None
                        ) -> None:
    """One method's results: ``tables`` (file name → frame) as CSV and with their exact
    numbers (``<table>.npz``, which a resume reads), ``perturbation_steps.csv`` when given,
    the method's ``provenance`` record when given (:func:`method_record`) and last
    ``done.json`` (``done``: the run settings, for people). ``done.json`` is removed first,
    so a folder interrupted while being rewritten is never taken for finished."""
    from fetalhc.data.shards import save_table

    (folder / "done.json").unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    if steps is not None:
        write_csv(steps, folder / "perturbation_steps.csv")
    for name, frame in tables.items():
        write_csv(frame, folder / name)
        save_table(frame, folder / f"{Path(name).stem}.npz")
    if provenance is not None:
        write_provenance(folder, provenance)
    write_json(folder / "done.json", done)


def write_shard_tables(folder: Path, result, filenames, positions) -> None:
    """The exact per-image numbers of one shard: per-image metrics, the per-image curves
    behind curves.csv, and the per-step table with the images' positions in the split."""
    from fetalhc.data.shards import save_table

    save_table(result.per_image.assign(filename=filenames), folder / SHARD_PER_IMAGE)
    curve_arrays = {"labels": np.asarray([json.dumps({**label, "quantity": quantity})
                                          for label, quantity, _, _ in result.curve_values or []],
                                         dtype=str)}
    for number, (_, _, x, values) in enumerate(result.curve_values or []):
        curve_arrays[f"x{number}"] = np.asarray(x)
        curve_arrays[f"values{number}"] = np.asarray(values)
    buffer = io.BytesIO()
    np.savez(buffer, **curve_arrays)
    write_bytes(folder / SHARD_CURVES, buffer.getvalue())
    if result.steps is not None:
        steps = result.steps.assign(filename=filenames[result.steps["image"]])
        steps["image"] = np.asarray(positions)[steps["image"].to_numpy()]
        save_table(steps, folder / SHARD_STEPS)


# ----------------------------------------------------------------------------- summaries





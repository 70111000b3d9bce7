"""Provenance of an ``evaluate`` folder and of the maps it is given.

- :func:`evaluation_provenance`: the folder's record (what its numbers depend on; see
  :mod:`fetalhc.report.provenance` and :mod:`fetalhc.report.evaluation`);
- :func:`method_record`: one method folder's record (the folder's ``result``, the method,
  the digest of maps from ``--maps``);
- :func:`write_maps_provenance` / :func:`check_maps`: maps made elsewhere get a record, and
  maps from ``--maps`` are checked against the evaluation (model, target, pre-processing,
  split, images) before any work; :func:`load_maps` reads them when a method runs.

``--maps`` takes two forms. Stacked maps, ``<method>.npy`` with a ``provenance.json``
(``stack_maps`` or :func:`write_maps_provenance`), must be of the evaluated images exactly
(or of a shard's own rows). A ``fetalhc explain`` output folder
(:func:`~fetalhc.report.explanations.explain_folder_record`) is read as it is: its model,
target, pre-processing and split must be the evaluation's, its images the first images of
the evaluated split (the evaluation takes the first N of them; an explain folder with fewer
images is refused naming the first evaluated image it lacks), a shard folder is refused
(merge it first), and every map evaluated must be there (else: finish the explain run).
A method's record then holds the digest of the folder's provenance and of the maps read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fetalhc.report.provenance import (
    ProvenanceError,
    file_sha256,
    first_difference,
    image_keys,
    index_digest,
    make_provenance,
    model_digest,
    output_units_field,
    plain_options,
    read_provenance,
    recorded_output_units,
    short_value,
    write_provenance,
)

# result fields that follow from the settings: a re-run names the setting, not these
DERIVED_FIELDS = ("index",)
# what maps from --maps must share with the evaluation, in the order a mismatch is named
MAPS_FIELDS = ("model", "target", "preprocessing", "split", "index")
MAKE_MAPS = ("give --maps a `fetalhc explain` output folder, or maps stacked from one by "
             "fetalhc.report.explanations.stack_maps, which copies its provenance.json (maps "
             "made elsewhere: fetalhc.report.evaluation_provenance.write_maps_provenance)")
# what an explain folder given to --maps must share with the evaluation, in this order
EXPLAIN_FIELDS = ("model", "target", "preprocessing", "split")
REMAKE = "make the maps for this evaluation or evaluate what they were made for"


def evaluation_provenance(model, index: pd.DataFrame, metrics, settings, *, image_size: int,
                          split: str, limit: int | None = None, shard: str | None = None,
                          error_threshold_mm=None, error_quantiles=None,
                          info: dict | None = None, output_units: str = "px",
                          intensity: str = "zscore") -> dict:
    """The provenance record of an evaluate folder (:mod:`fetalhc.report.provenance`).

    ``model``: a model file (its bytes are digested) or a Keras model (its architecture and
    weights). ``index``: the split's rows after ``limit`` and before ``shard`` (a shard's
    rows follow from them and ``shard``, so the shards of one run differ in
    ``result["shard"]`` only). The methods are not part of it (see :func:`method_record`).
    ``output_units``: of the model's HC output, recorded when it is ``"mm"`` (a model declared
    to predict mm; a fetalhc model's is px, and its records stay as they were).
    ``intensity``: of the pre-processing (``fetalhc.data.preprocessing_record``)."""
    from fetalhc.data import preprocessing_record
    from fetalhc.data.shards import format_shard, parse_shard

    values = settings.as_dict()
    values["explain_options"] = plain_options(settings.explain_options)
    result = {
        "model": model_digest(model),
        "split": split,
        "index": index_digest(index),
        "limit": None if limit is None else int(limit),
        "shard": None if shard is None else format_shard(parse_shard(shard)),
        "metrics": list(metrics),
        "settings": values,
        "preprocessing": {"image_size": int(image_size), **preprocessing_record(intensity)},
        "error_threshold_mm": error_threshold_mm,
        "error_quantiles": error_quantiles,
        **output_units_field(output_units),
    }
    return make_provenance("evaluate", result, info)


def method_record(record: dict, method: str, maps: dict | None = None,
                  info: dict | None = None) -> dict:
    """The provenance of one method folder: the folder's ``result``, the method's name and,
    for maps from ``--maps``, what they depend on (:func:`check_maps`); a finished method
    is reused only when this ``result`` is the same."""
    return make_provenance("evaluate", {"evaluation": record["result"], "method": method,
                                        "maps": maps}, info)


def write_maps_provenance(maps_dir, model, index: pd.DataFrame, *, image_size: int,
                          target: str = "hc_mm", split: str | None = None,
                          info: dict | None = None) -> Path:
    """Write ``<maps_dir>/provenance.json`` for ``<method>.npy`` maps made outside
    ``fetalhc explain`` (which ``stack_maps`` covers): ``model`` (its file, or a Keras
    model), the ``index`` rows the maps are of, in order, their ``image_size`` (the
    network input, pre-processed as ``fetalhc.data`` does) and explanation ``target``.
    ``fetalhc evaluate --maps`` checks these against its own."""
    from fetalhc.data import PREPROCESSING

    result = {"model": model_digest(model), "split": split, "index": index_digest(index),
              "target": target, "preprocessing": {"image_size": int(image_size),
                                                  **PREPROCESSING}}
    return write_provenance(maps_dir, make_provenance("explain", result, info))


def check_maps_file(path: Path, need: tuple[int, int, int]) -> None:
    """``path`` is a numpy file of real-valued, finite maps of shape ``need`` ``(N, S, S)``
    (or ``(N, S, S, 1)``); else a one-line ``ValueError`` naming the file. Read in blocks,
    memory-mapped."""
    try:
        maps = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not a numpy array file: {error}") from None
    shape = tuple(maps.shape)
    if shape not in (need, (*need, 1)):
        raise ValueError(f"{path}: maps have shape {shape} but the images need {need}"
                         + (f" ({need[0]} images)" if shape[:1] != need[:1] else ""))
    if not (np.issubdtype(maps.dtype, np.floating) or np.issubdtype(maps.dtype, np.integer)):
        raise ValueError(f"{path}: maps must be real numbers; got dtype {maps.dtype}")
    for start in range(0, len(maps), 64):
        block = np.asarray(maps[start:start + 64]).reshape(len(maps[start:start + 64]), -1)
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            raise ValueError(f"{path}: the map of image {start + int(np.argmin(finite))} "
                             "contains NaN or infinite values")


def _same_fields(maps_dir, theirs: dict, expected: dict, fields, ours_split=None) -> None:
    """Each of ``fields`` of the maps' provenance ``result`` (``theirs``) equals
    ``expected``'s, else a one-line :class:`ProvenanceError` naming the first differing
    field (:func:`~fetalhc.report.provenance.first_difference`)."""
    for field in fields:
        if field not in theirs:
            raise ProvenanceError(f"the provenance.json of the maps in {maps_dir} records no "
                                  f"{field}; {MAKE_MAPS}")
        found = first_difference({field: theirs[field]}, {field: expected[field]})
        if found is not None:
            where, before, now = found
            splits = "" if field != "index" or theirs.get("split") == ours_split else \
                f"; split {theirs.get('split')!r} there, {ours_split!r} now"
            raise ProvenanceError(
                f"the maps in {maps_dir} were made with another {where} ({short_value(before, 24)} "
                f"there, {short_value(now, 24)} now{splits}); {REMAKE}")


def check_maps(maps_dir, record: dict, methods: Sequence[str], total: int,
               shard_rows: pd.DataFrame | None = None,
               split_rows: pd.DataFrame | None = None) -> dict[str, dict]:
    """Check that the maps of ``methods`` in ``maps_dir`` were made for this evaluation
    (``record``): the same model, target, pre-processing and images (the index digest of
    the split's ``total`` rows after ``limit``, or with a shard that of ``shard_rows``),
    and that each ``.npy`` holds one ``(S, S)`` map per one of those images; else a
    one-line ``ValueError`` (:class:`ProvenanceError` naming the field). Returns per method
    what its results depend on: the ``.npy`` digest and the method's options as the maps'
    provenance records them. A ``fetalhc explain`` folder goes to
    :func:`check_explain_maps` (``split_rows``: the split's rows before ``limit``)."""
    from fetalhc.report.explanations import explain_folder_record

    maps_dir = Path(maps_dir)
    explained = explain_folder_record(maps_dir)
    if explained is not None:
        return check_explain_maps(maps_dir, explained, record, methods, total, split_rows)
    theirs = read_provenance(maps_dir)
    if theirs is None:
        raise ProvenanceError(
            f"the maps in {maps_dir} have no provenance.json, so nothing says which model, "
            f"images, target and pre-processing made them; {MAKE_MAPS}")
    theirs = theirs.get("result", {})
    ours = record["result"]
    counts = {ours["index"]: int(total)}  # index digest -> the number of its images
    if shard_rows is not None:
        counts[index_digest(shard_rows)] = len(shard_rows)
    expected = {"model": ours["model"], "target": ours["settings"]["explain_target"],
                "preprocessing": ours["preprocessing"], "index": ours["index"]}
    fields = [field for field in MAPS_FIELDS if field in expected]
    if theirs.get("index") in counts:
        fields.remove("index")
    _same_fields(maps_dir, theirs, expected, fields, ours["split"])
    need = (counts[theirs["index"]], *[int(ours["preprocessing"]["image_size"])] * 2)
    for method in methods:
        check_maps_file(maps_dir / f"{method}.npy", need)
    options = theirs.get("methods") if isinstance(theirs.get("methods"), dict) else {}
    return {method: {"sha256": file_sha256(maps_dir / f"{method}.npy"),
                     "options": options.get(method)} for method in methods}


def check_explain_maps(maps_dir, explained: dict, record: dict, methods: Sequence[str],
                       total: int, split_rows: pd.DataFrame) -> dict[str, dict]:
    """Check the ``fetalhc explain`` folder ``maps_dir`` (provenance ``explained``) against
    the evaluation ``record`` of the first ``total`` rows of ``split_rows`` (the split,
    before ``limit``): the same model, target, pre-processing and split; its images the
    first images of the split (digest of their rows and files) and at least ``total`` of
    them; every map of ``methods`` on the first ``total`` images there. Else one line
    naming the first differing field, the first evaluated image without a map, or the
    unfinished map. Returns per method what its results depend on: the digest of the
    folder's provenance ``result``, the number of images, the digest of those maps
    (:func:`~fetalhc.report.explanations.read_explain_maps`) and the method's options."""
    from fetalhc.report.explanations import read_explain_maps

    check_unsharded(maps_dir, explained)
    theirs, ours = explained["result"], record["result"]
    expected = {"model": ours["model"], "target": ours["settings"]["explain_target"],
                "preprocessing": ours["preprocessing"], "split": ours["split"]}
    _same_fields(maps_dir, theirs, expected, EXPLAIN_FIELDS)
    units = (recorded_output_units(theirs), recorded_output_units(ours))
    if units[0] != units[1]:
        raise ProvenanceError(f"the maps in {maps_dir} were made with another output_units "
                              f"({units[0]!r} there, {units[1]!r} now); {REMAKE}")
    keys = [list(key) for key in theirs["image_keys"]]
    head = split_rows.head(len(keys))
    now = image_keys(head)
    if now != keys:  # the first image that differs, or the first the split lacks
        at = next(i for i in range(len(keys)) if i >= len(now) or keys[i] != now[i])
        detail = (f"image {at + 1} is {'/'.join(keys[at])} there, "
                  f"{'/'.join(now[at]) if at < len(now) else 'beyond the split'} now")
    elif index_digest(head) != theirs["index"]:
        detail = "the same file names, but an image file, pixel size or reference HC changed"
    else:
        detail = None
    if detail is not None:
        raise ProvenanceError(f"the maps in {maps_dir} were made with another index "
                              f"({detail}); {REMAKE}")
    if len(keys) < total:
        missing = "/".join(image_keys(split_rows.iloc[[len(keys)]])[0])
        raise ValueError(
            f"the `fetalhc explain` folder {maps_dir} has maps of the first {len(keys)} "
            f"images of split {ours['split']!r} only, not of {missing} (image "
            f"{len(keys) + 1} of the {total} evaluated); evaluate with --limit {len(keys)}, "
            f"or explain at least {total} images into another folder")
    provenance = json.dumps(theirs, sort_keys=True).encode("utf-8")
    folder = {"provenance": f"sha256:{hashlib.sha256(provenance).hexdigest()}",
              "images": int(total)}
    return {method: {"explain_folder": folder,
                     "sha256": read_explain_maps(maps_dir, explained, method, total)[1],
                     "options": theirs["methods"][method]} for method in methods}


def check_unsharded(maps_dir, explained: dict) -> None:
    """A one-line ``ValueError`` when the explain folder ``maps_dir`` (provenance
    ``explained``) holds one shard of a run: its maps are not the first images."""
    shard = explained["result"].get("shard")
    if shard is not None:
        raise ValueError(f"{maps_dir} holds shard {shard} of a `fetalhc explain` run; merge "
                         "the shards with `fetalhc merge` and give --maps the merged folder")


def load_maps(maps_dir, method: str, key: dict, total: int) -> np.ndarray:
    """The maps of ``method`` from ``--maps`` that :func:`check_maps` checked (``key``: what
    it returned for ``method``): the ``.npy``, or the first ``total`` maps of an explain
    folder, which must still be the maps checked (a one-line ``ValueError`` otherwise)."""
    maps_dir = Path(maps_dir)
    if "explain_folder" not in key:
        return np.load(maps_dir / f"{method}.npy", allow_pickle=False)
    from fetalhc.report.explanations import explain_folder_record, read_explain_maps

    maps, digest = read_explain_maps(maps_dir, explain_folder_record(maps_dir), method, total)
    if digest != key["sha256"]:
        raise ValueError(f"the {method} maps in {maps_dir} changed during the evaluation; "
                         "run the evaluation again")
    return maps

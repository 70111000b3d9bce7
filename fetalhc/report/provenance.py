"""What produced a result folder, and whether a re-run may reuse it.

Every output folder of ``predict``, ``explain``, ``evaluate`` and ``merge`` holds
``provenance.json`` (``predict`` writes files, not a folder: ``<out stem>_provenance.json``
beside its CSV):

- ``result``: every field that changes the numbers: the content hash of the model file (or
  of an in-memory model's architecture and weights), the digest of the index rows used
  (set, file name, pixel size, reference HC and the content hash of each image file), the
  split, the target, the pre-processing, and the command's options (method options,
  evaluation settings, limit, shard; for ``predict`` the TTA views, and for ``predict`` and
  ``explain`` the ``reliability`` settings of their per-image flags: flip threshold, training
  HC range, border tolerance, so a re-run with another threshold is another result). Per
  method, the method's name and options.
- ``info``: what cannot change the numbers: the fetalhc / TensorFlow / Keras versions, the
  command line, the paths as the command spelled them, the time.

A re-run into a folder compares ``result`` field by field (:func:`check_folder`): equal →
the folder's results are reused; different → :class:`ProvenanceError`, one line naming the
first differing field and the flag that recomputes (``--overwrite``). A non-empty folder
without ``provenance.json`` is refused the same way: nothing says what made it.
Library versions are recorded, not compared: a patch release of TensorFlow must not refuse
every folder; ``--overwrite`` recomputes after an upgrade when that matters.

Shards: everything that differs between the shard folders of one run lives under
``result["shard"]`` (:data:`SHARD_FIELD`; ``None`` for an unsharded run), so ``fetalhc
merge`` checks that the shards agree on :func:`without_shard` of their results and gives the
merged folder the record of an unsharded run. :func:`check_folder_settings_first` is
:func:`check_folder` naming a setting (split, limit, ...) before the digests derived from
it (the index digest changes with the split); :func:`method_options` is a method's options
after its defaults, as JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fetalhc.files import sha256_of_file, write_json

PROVENANCE_FILE = "provenance.json"
OVERWRITE_FLAG = "--overwrite"
_HASH_CACHE: dict[tuple[str, int, int], str] = {}


class ProvenanceError(ValueError):
    """A folder holds results of something else than what is asked now (one line)."""


# ----------------------------------------------------------------------------- digests
def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (cached per path, size and modification time)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    digest = _HASH_CACHE.get(key)
    if digest is None:
        digest = _HASH_CACHE[key] = sha256_of_file(path)
    return digest


def model_digest(model) -> str:
    """``sha256:<hex>`` of a model file's bytes, or of an in-memory Keras model's
    architecture (its JSON config) and weights."""
    if isinstance(model, str | os.PathLike):
        return f"sha256:{file_sha256(model)}"
    import numpy as np

    hasher = hashlib.sha256(model.to_json().encode("utf-8"))
    for weight in model.get_weights():
        array = np.ascontiguousarray(weight)
        hasher.update(str((array.dtype.str, array.shape)).encode("ascii"))
        hasher.update(array.tobytes())
    return f"sha256-weights:{hasher.hexdigest()}"


def image_set(image_path) -> str:
    """The set an image belongs to: the name of its folder (``training_set``, ``test_set``)."""
    return Path(str(image_path)).parent.name


def index_digest(index) -> str:
    """``sha256:<hex>`` over the index rows in order: set, file name, pixel size, reference
    HC (NaN where there is none) and the content hash of the image file."""
    hasher = hashlib.sha256()
    for row in index.itertuples(index=False):
        image_path = row.image_path
        fields = (image_set(image_path), str(row.filename), repr(float(row.pixel_size_mm)),
                  repr(float(row.hc_mm)), file_sha256(image_path))
        hasher.update(("\x1f".join(fields) + "\x1e").encode("utf-8"))
    return f"sha256:{hasher.hexdigest()}"


def image_keys(index) -> list[list[str]]:
    """The per-image keys of ``index``: ``[set, file name]`` for every row, in order."""
    return [[image_set(path), str(name)] for path, name in
            zip(index["image_path"], index["filename"], strict=True)]


# ----------------------------------------------------------------------------- records
def _plain(value):
    """JSON round trip: tuples become lists, numpy scalars numbers, paths strings."""
    return json.loads(json.dumps(value, default=_default, sort_keys=True))


def _default(value):
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def versions() -> dict[str, str]:
    """The versions of fetalhc, TensorFlow, Keras and Python that ran."""
    import keras
    import tensorflow as tf

    import fetalhc

    return {"fetalhc": fetalhc.__version__, "tensorflow": tf.__version__,
            "keras": keras.__version__, "python": sys.version.split()[0]}


def make_provenance(kind: str, result: Mapping[str, Any],
                    info: Mapping[str, Any] | None = None) -> dict:
    """A provenance record: ``kind`` (the command), ``result`` (fields compared on re-runs)
    and ``info`` (recorded only: versions, command line, time, plus ``info``)."""
    return {
        "kind": kind,
        "result": _plain(dict(result)),
        "info": _plain({
            **versions(),
            "command": " ".join(sys.argv),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **dict(info or {}),
        }),
    }


def read_provenance(folder: str | os.PathLike) -> dict | None:
    """The folder's provenance record, or ``None`` when it has none."""
    path = Path(folder) / PROVENANCE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ProvenanceError(f"{path} is not valid JSON; use {OVERWRITE_FLAG} to "
                              "recompute the folder") from None


def write_provenance(folder: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Write ``record`` as the folder's ``provenance.json`` (atomically)."""
    return write_json(Path(folder) / PROVENANCE_FILE, dict(record))


def first_difference(old: Any, new: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first field (dotted path, in sorted key order) where ``old`` and ``new`` differ,
    with both values; ``None`` when they are equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            where = f"{path}.{key}" if path else str(key)
            if key not in old:
                return where, "(absent)", new[key]
            if key not in new:
                return where, old[key], "(absent)"
            found = first_difference(old[key], new[key], where)
            if found is not None:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for position, (a, b) in enumerate(zip(old, new, strict=True)):
            found = first_difference(a, b, f"{path}[{position}]")
            if found is not None:
                return found
        return None
    return None if old == new else (path or "(record)", old, new)


def short_value(value, width: int = 60) -> str:
    """A field's value for a one-line message: strings quoted, other values as JSON, cut to
    ``width`` characters with ``...``."""
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def compare(old: Mapping[str, Any] | None, new: Mapping[str, Any], where: str,
            flag: str = OVERWRITE_FLAG) -> None:
    """Raise :class:`ProvenanceError` when the ``result`` parts of two records differ
    (or the kinds do), naming the first differing field and ``flag``."""
    if old is None:
        return
    if old.get("kind") != new.get("kind"):
        raise ProvenanceError(
            f"{where} holds {old.get('kind')!r} results, not {new.get('kind')!r}; use "
            f"{flag} to recompute it")
    found = first_difference(old.get("result", {}), _plain(new.get("result", {})))
    if found is not None:
        field, before, now = found
        raise ProvenanceError(
            f"{where} was made with another {field} ({short_value(before)} there, {short_value(now)} "
            f"now); use {flag} to recompute it, or another output folder")


def check_folder(folder: str | os.PathLike, record: Mapping[str, Any], overwrite: bool = False,
                 flag: str = OVERWRITE_FLAG, ignore: tuple[str, ...] = (),
                 markers: tuple[str, ...] = ()) -> bool:
    """Decide what a command may do with its output ``folder`` before any work:

    - ``overwrite``: the folder is removed, if it is a fetalhc output folder (it holds
      ``provenance.json`` or one of ``markers``, the files the command writes); a folder
      that is neither is never deleted (:class:`ProvenanceError`);
    - a missing or empty folder: a fresh start;
    - a folder with the same provenance ``result``: resume (returns ``True``);
    - anything else: :class:`ProvenanceError` (nothing is changed).

    ``ignore`` lists top-level names in the folder that do not count as results (e.g. a
    log file). Returns whether earlier results may be reused. The caller writes the record
    with :func:`write_provenance` once it starts writing."""
    import shutil

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ProvenanceError(f"{folder} exists and is not a folder")
    if overwrite and folder.exists():
        ours = [name for name in (PROVENANCE_FILE, *markers) if (folder / name).exists()]
        if not ours and any(folder.iterdir()):
            raise ProvenanceError(
                f"{folder} does not look like a fetalhc output folder (no {PROVENANCE_FILE}); "
                f"refusing to delete it for {flag}: choose another output folder")
        shutil.rmtree(folder)
    if not folder.exists():
        return False
    contents = [path for path in folder.iterdir() if path.name not in ignore]
    if not contents:
        return False
    old = read_provenance(folder)
    if old is None:
        raise ProvenanceError(
            f"{folder} is not empty and has no {PROVENANCE_FILE} (written by another tool "
            f"or an older fetalhc), so nothing says what made it; use {flag} to recompute it, "
            "or another output folder")
    compare(old, record, str(folder), flag)
    return True


# ----------------------------------------------------------------------------- helpers
SHARD_FIELD = "shard"


def output_units_field(units: str) -> dict:
    """The ``output_units`` field of a ``result``: recorded for a model output in mm only,
    so a record without it is of a px output, as every record written before the field
    existed (read back by :func:`recorded_output_units`)."""
    return {} if units == "px" else {"output_units": units}


def recorded_output_units(result: Mapping[str, Any]) -> str:
    """The output units a ``result`` records (:func:`output_units_field`)."""
    return result.get("output_units", "px")


def plain_options(options: Mapping[str, Any]) -> dict:
    """``options`` as JSON-able values, keys sorted: numbers, text, booleans and ``None``
    as they are, tuples as lists, an array as ``{"array": shape, "dtype", "sha256"}`` of its
    bytes (so a baseline image is compared by content, not written out)."""
    import numpy as np

    def plain(value):
        if isinstance(value, np.ndarray) or (hasattr(value, "numpy") and hasattr(value, "shape")):
            array = np.ascontiguousarray(np.asarray(value))
            if array.ndim == 0:
                return plain(array.item())
            return {"array": list(array.shape), "dtype": array.dtype.str,
                    "sha256": hashlib.sha256(array.tobytes()).hexdigest()}
        if isinstance(value, Mapping):
            return {str(key): plain(item) for key, item in sorted(value.items())}
        if isinstance(value, list | tuple):
            return [plain(item) for item in value]
        if isinstance(value, np.generic):
            return value.item()
        return value

    return _plain(plain(dict(options)))


def method_options(name: str, options: Mapping[str, Any] | None = None) -> dict:
    """The options of the registered method ``name`` after its defaults
    (``fetalhc.explain.get_method(name)(**options).options``) as :func:`plain_options`;
    a one-line ``ValueError`` for an unknown method or option."""
    import fetalhc.explain as fe

    return plain_options(fe.get_method(name)(**dict(options or {})).options)


def without_shard(result: Mapping[str, Any]) -> dict:
    """``result`` without its :data:`SHARD_FIELD`: what the shards of one run share."""
    return {key: value for key, value in result.items() if key != SHARD_FIELD}


def check_folder_settings_first(folder: str | os.PathLike, record: Mapping[str, Any],
                                derived: tuple[str, ...] = (), overwrite: bool = False,
                                flag: str = OVERWRITE_FLAG, ignore: tuple[str, ...] = (),
                                markers: tuple[str, ...] = ()) -> bool:
    """:func:`check_folder`, but when the folder's record differs from ``record`` both in a
    setting and in one of the ``derived`` top-level ``result`` fields (digests that follow
    from the settings, e.g. the index digest and the image keys, which change with the
    split), the error names the setting. Same return value and errors otherwise."""
    folder = Path(folder)
    if not overwrite and folder.is_dir():
        old = read_provenance(folder)
        if old is not None and old.get("kind") == record.get("kind"):
            def settings(item):
                return {**item, "result": {key: value for key, value in
                                           dict(item.get("result", {})).items()
                                           if key not in derived}}

            compare(settings(old), settings(record), str(folder), flag)
    return check_folder(folder, record, overwrite=overwrite, flag=flag, ignore=ignore,
                        markers=markers)

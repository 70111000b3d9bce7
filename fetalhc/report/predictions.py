"""The ``predict`` output files: HC predictions in the HC18 challenge format and, where the
images have a reference HC, the per-image errors, the metrics and two agreement plots.

``<out>`` (``filename,head circumference (mm)``) and beside it ``<stem>_per_image.csv``,
``<stem>_metrics.json``, ``<stem>_bland_altman.png``, ``<stem>_scatter.png`` and
``<stem>_provenance.json`` (what produced them: model digest, index digest and image keys,
split, pre-processing, TTA, batch size; :mod:`fetalhc.report.provenance`), all through
:mod:`fetalhc.files`. :func:`predict_to_files` is the library path (images checked,
predicted, written); :func:`write_predictions` writes given predictions. A new prediction
into the same ``<out>`` first removes the old provenance and writes the new one last, and
removes the reference-only files of an earlier run when the new split has no reference, so
nothing beside ``<out>`` describes other predictions than ``<out>``'s.
"""

from __future__ import annotations

import numbers
from pathlib import Path

from fetalhc.files import write_csv, write_json
from fetalhc.report.provenance import (
    image_keys,
    index_digest,
    make_provenance,
    model_digest,
)

CHALLENGE_COLUMNS = ("filename", "head circumference (mm)")


def prediction_paths(out: Path) -> dict[str, Path]:
    """The files of a prediction ``out`` (a ``.csv``, else ``ValueError``) by role:
    ``predictions``, ``per_image``, ``metrics``, ``bland_altman``, ``scatter``."""
    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise ValueError(f"--out must be a .csv file, got {out}")
    stem = out.with_suffix("")
    return {
        "predictions": out,
        "per_image": Path(f"{stem}_per_image.csv"),
        "metrics": Path(f"{stem}_metrics.json"),
        "bland_altman": Path(f"{stem}_bland_altman.png"),
        "scatter": Path(f"{stem}_scatter.png"),
        "provenance": Path(f"{stem}_provenance.json"),
    }


def check_prediction_request(out: Path, split: str | None = None, batch_size: int = 32,
                             image_size: int | None = None) -> None:
    """A one-line ``ValueError`` for an ``out`` that is not a ``.csv`` file path (or is a
    folder), a ``batch_size`` below 1 or an ``image_size`` below 1; cheap, so callers check
    before loading a model (the split is checked where it is read)."""
    paths = prediction_paths(out)
    if paths["predictions"].is_dir():
        raise ValueError(f"--out {out} is a folder; give the path of a .csv file")
    for name, value in (("--batch-size", batch_size), ("--image-size", image_size)):
        if value is None and name == "--image-size":
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
    if split is not None and not isinstance(split, str):
        raise ValueError(f"--split must be a split name; got {split!r}")


# the files only a split with reference HC gets
REFERENCE_ROLES = ("per_image", "metrics", "bland_altman", "scatter")


def prediction_provenance(model, index, image_size: int, *, split: str | None,
                          tta: bool = False, batch_size: int = 32, model_file=None,
                          info: dict | None = None) -> dict:
    """The provenance record of a prediction of the ``index`` rows (kind ``predict``); the
    model digest is that of ``model_file`` when given, else of the in-memory weights."""
    from fetalhc.data import PREPROCESSING

    return make_provenance("predict", {
        "model": model_digest(model_file if model_file is not None else model),
        "split": split,
        "index": index_digest(index),
        "image_keys": image_keys(index),
        "preprocessing": {"image_size": int(image_size), **PREPROCESSING},
        "tta": bool(tta),
        "batch_size": int(batch_size),
    }, info)


def predict_to_files(model, index, image_size: int, out: Path, *, split: str,
                     tta: bool = False, batch_size: int = 32, model_file=None,
                     info: dict | None = None, progress: bool = False) -> dict:
    """Predict HC (mm) for the ``index`` rows and write ``out`` and the files beside it
    (:func:`write_predictions`, with the provenance of :func:`prediction_provenance`).

    Checks ``out`` and every image file (``fetalhc.data.check_images``, a one-line error
    naming a missing or truncated image) before anything is computed or written.
    ``progress``: a bar counting images."""
    from tqdm.auto import tqdm

    from fetalhc.data import check_images
    from fetalhc.models import predict_hc_mm, prediction_table

    check_prediction_request(out, split, batch_size=batch_size)
    check_images(index, annotations=False)
    record = prediction_provenance(model, index, image_size, split=split, tta=tta,
                                   batch_size=batch_size, model_file=model_file, info=info)
    with tqdm(total=len(index), desc="predict", unit="image", disable=not progress,
              leave=False) as bar:
        predictions = predict_hc_mm(model, index, image_size, batch_size=batch_size, tta=tta,
                                    on_batch=bar.update)
    table = prediction_table(predictions, index) if index["hc_mm"].notna().all() else None
    model_name = model_file if model_file is not None else (info or {}).get("model", "")
    return write_predictions(out, predictions, table, split=split, model=str(model_name),
                             tta=tta, image_size=image_size, provenance=record)


def write_predictions(out: Path, predictions, table=None, *, split: str, model: str,
                      tta: bool = False, image_size: int | None = None,
                      provenance: dict | None = None) -> dict:
    """Write the challenge CSV of ``predictions`` (columns ``filename``, ``prediction
    (mm)``) to ``out``; with ``table`` (the per-image error table of
    ``fetalhc.training.prediction_table``) also the per-image CSV, the metrics JSON
    (``split``, ``model``, ``tta``, ``image_size`` and the scores in mm) and the
    Bland–Altman and scatter plots; without, it removes those files of an earlier run.
    ``provenance`` (a record of :func:`prediction_provenance`) is written last to
    ``<stem>_provenance.json``; an older one there is removed before anything is written.
    Returns the paths written, ``n`` and, with a table, ``summary`` (the metrics)."""
    from fetalhc.metrics import summarise_mm
    from fetalhc.viz.agreement import bland_altman_figure, save_figure, scatter_figure

    paths = prediction_paths(out)
    written = {"predictions": paths["predictions"]}
    challenge = predictions[["filename", "prediction (mm)"]].rename(
        columns={"prediction (mm)": CHALLENGE_COLUMNS[1]})
    outputs = {}
    if table is not None:
        summary = summarise_mm(table["prediction (mm)"], table["reference (mm)"])
        summary = {"split": split, "model": str(model), "tta": bool(tta),
                   "image_size": None if image_size is None else int(image_size),
                   "units": "mm (pmae in %)", **summary}
        bland_altman = bland_altman_figure(table["prediction (mm)"], table["reference (mm)"],
                                           title=f"Bland–Altman, {split} split")
        scatter = scatter_figure(table["prediction (mm)"], table["reference (mm)"])
        outputs = {"summary": summary, "bland_altman": bland_altman, "scatter": scatter}

    paths["provenance"].unlink(missing_ok=True)  # never beside predictions it did not make
    write_csv(challenge, paths["predictions"], float_format="%.4f")
    if outputs:
        write_csv(table, paths["per_image"], float_format="%.4f")
        write_json(paths["metrics"], outputs["summary"])
        save_figure(outputs["bland_altman"], paths["bland_altman"])
        save_figure(outputs["scatter"], paths["scatter"])
        written.update({role: paths[role] for role in REFERENCE_ROLES})
        written["summary"] = outputs["summary"]
    else:
        for role in REFERENCE_ROLES:  # an earlier split's errors would describe another run
            paths[role].unlink(missing_ok=True)
    if provenance is not None:
        written["provenance"] = write_json(paths["provenance"], provenance)
    written["n"] = len(predictions)
    return written

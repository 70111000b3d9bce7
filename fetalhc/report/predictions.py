"""The ``predict`` output files: HC predictions in the HC18 challenge format, the per-image
table with its reliability flags and, where the images have a reference HC, the errors, the
metrics and two agreement plots.

``<out>`` (``filename,head circumference (mm)``: always exactly these 2 columns) and beside
it ``<stem>_per_image.csv`` and ``<stem>_metrics.json`` (always), ``<stem>_bland_altman.png``
and ``<stem>_scatter.png`` (with references) and ``<stem>_provenance.json`` (what produced
them: model digest, index digest and image keys, split, pre-processing, TTA and its views,
batch size, the reliability settings; :mod:`fetalhc.report.provenance`), all through
:mod:`fetalhc.files`.

``<stem>_per_image.csv``: ``filename``, ``pixel size (mm)``, [``reference (mm)``],
``prediction (mm)``, [``error (mm)``, ``abs error (mm)``] (bracketed: with references
only), then the reliability columns of :mod:`fetalhc.models.reliability`: ``flipped
prediction (mm)``, ``flip disagreement (mm)``, ``flag: outside training range``, ``flag:
ellipse at border``, ``flag: flip disagreement``, ``flagged`` (``True`` / ``False`` /
empty = unknown). So the challenge split, without references, gets its flags in the same
file. ``<stem>_metrics.json``: ``split``, ``model``, ``tta``, ``image_size``, the scores in
mm (with references) and ``reliability`` (the settings, the flagged counts and, with
references, the MAE of flagged and unflagged images).

:func:`predict_to_files` is the library path (images checked, predicted, flagged,
written); :func:`write_predictions` writes given predictions. A new prediction into the
same ``<out>`` first removes the old provenance and writes the new one last, and removes the
files of an earlier run it does not write (the plots, when the new split has no
reference), so nothing beside ``<out>`` describes other predictions than ``<out>``'s.
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
    output_units_field,
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
                             image_size: int | None = None,
                             flip_threshold_mm: float | None = None) -> None:
    """A one-line ``ValueError`` for an ``out`` that is not a ``.csv`` file path (or is a
    folder), a ``batch_size`` below 1, an ``image_size`` below 1 or a ``flip_threshold_mm``
    that is not a finite number > 0 (``None``: not checked); cheap, so callers check before
    loading a model (the split is checked where it is read)."""
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
    if flip_threshold_mm is not None:
        from fetalhc.models.reliability import check_flip_threshold

        check_flip_threshold(flip_threshold_mm)


# the files only a split with reference HC gets
REFERENCE_ROLES = ("bland_altman", "scatter")
# the per-image table and the metrics: every prediction with flags (or with references)
TABLE_ROLES = ("per_image", "metrics")


def _flip_threshold(flip_threshold_mm: float | None) -> float:
    from fetalhc.models.reliability import DEFAULT_FLIP_THRESHOLD_MM, check_flip_threshold

    if flip_threshold_mm is None:
        return DEFAULT_FLIP_THRESHOLD_MM
    return check_flip_threshold(flip_threshold_mm)


def prediction_provenance(model, index, image_size: int, *, split: str | None,
                          tta: bool = False, batch_size: int = 32, model_file=None,
                          info: dict | None = None, hc_range_mm=None,
                          flip_threshold_mm: float | None = None,
                          preprocessing: dict | None = None, localiser_file=None,
                          output_units: str = "px", intensity: str = "zscore") -> dict:
    """The provenance record of a prediction of the ``index`` rows (kind ``predict``); the
    model digest is that of ``model_file`` when given, else of the in-memory weights.
    ``reliability`` records what the flags depend on (flip threshold, training HC range,
    border tolerance; ``flip_threshold_mm=None``: the library default), ``tta_views`` the
    views ``tta`` averages (an older record, of 4 flips, lacks it). ``preprocessing``: the
    run's own rule when it is not the letterbox one (a crop run's), and ``localiser_file``
    the model that placed its crops (its digest is recorded). ``output_units``: of the
    model's HC output, recorded when it is ``"mm"`` (a model declared to predict mm; a
    fetalhc model's is px, and its records stay as they were). ``intensity``: of the
    letterbox pre-processing (``fetalhc.data.preprocessing_record``)."""
    from fetalhc.data import preprocessing_record
    from fetalhc.models.prediction import TTA_VIEWS
    from fetalhc.models.reliability import reliability_settings

    return make_provenance("predict", {
        "model": model_digest(model_file if model_file is not None else model),
        "split": split,
        "index": index_digest(index),
        "image_keys": image_keys(index),
        "preprocessing": {"image_size": int(image_size),
                          **(preprocessing or preprocessing_record(intensity))},
        **({"localiser": model_digest(localiser_file)} if localiser_file is not None else {}),
        "tta": bool(tta),
        "tta_views": list(TTA_VIEWS) if tta else ["identity"],
        "batch_size": int(batch_size),
        "reliability": reliability_settings(hc_range_mm, _flip_threshold(flip_threshold_mm)),
        **output_units_field(output_units),
    }, info)


def predict_to_files(model, index, image_size: int, out: Path, *, split: str,
                     tta: bool = False, batch_size: int = 32, model_file=None,
                     info: dict | None = None, progress: bool = False, hc_range_mm=None,
                     flip_threshold_mm: float | None = None, preprocessing: dict | None = None,
                     localiser_file=None, output_units: str | None = None,
                     intensity: str = "zscore") -> dict:
    """Predict HC (mm) for the ``index`` rows, flag them
    (:func:`fetalhc.models.reliability.flags_from_forward`: ``hc_range_mm`` = the training
    split's reference HC range or ``None`` = unknown; ``flip_threshold_mm``, ``None`` = the
    library default of 5 mm) and write ``out`` and the files beside it
    (:func:`write_predictions`, with the provenance of :func:`prediction_provenance`).

    One forward pass gives the prediction, the flipped prediction (the flip flag, and
    ``tta``'s second view) and the ``ellipse`` output when the model has one. Checks
    ``out``, the settings and every image file (``fetalhc.data.check_images``, a one-line
    error naming a missing or truncated image) before anything is computed or written.
    ``progress``: a bar counting images. A crop run's ``index`` carries its localised
    regions; ``preprocessing`` and ``localiser_file`` then go into the provenance
    (:func:`prediction_provenance`). ``output_units``: ``"mm"`` or ``"px"`` for a model that
    is not fetalhc's (:func:`fetalhc.models.graph.require_output_units`). Rows without a
    reference HC are predicted; the errors and scores cover the rows that have one.
    ``intensity``: of the pre-processing (``fetalhc.data.INTENSITIES``)."""
    from tqdm.auto import tqdm

    from fetalhc.data import check_images
    from fetalhc.models import ELLIPSE_OUTPUT, output_names, prediction_table
    from fetalhc.models.graph import require_output_units
    from fetalhc.models.prediction import forward_pass, prediction_frame
    from fetalhc.models.reliability import check_hc_range, flags_from_forward

    check_prediction_request(out, split, batch_size=batch_size,
                             flip_threshold_mm=flip_threshold_mm)
    threshold = _flip_threshold(flip_threshold_mm)
    hc_range = check_hc_range(hc_range_mm)
    units = require_output_units(model, None, output_units)
    check_images(index, annotations=False)
    record = prediction_provenance(model, index, image_size, split=split, tta=tta,
                                   batch_size=batch_size, model_file=model_file, info=info,
                                   hc_range_mm=hc_range, flip_threshold_mm=threshold,
                                   preprocessing=preprocessing, localiser_file=localiser_file,
                                   output_units=units, intensity=intensity)
    with tqdm(total=len(index), desc="predict", unit="image", disable=not progress,
              leave=False) as bar:
        forward = forward_pass(model, index, image_size, batch_size, flipped=True,
                               ellipse=ELLIPSE_OUTPUT in output_names(model),
                               on_batch=bar.update, output_units=units,
                               intensity=intensity)
    predictions = prediction_frame(forward, index, tta=tta)
    flags = flags_from_forward(forward, index, image_size, hc_range, threshold, tta=tta)
    table = prediction_table(predictions, index) if index["hc_mm"].notna().any() else None
    model_name = model_file if model_file is not None else (info or {}).get("model", "")
    return write_predictions(out, predictions, table, split=split, model=str(model_name),
                             tta=tta, image_size=image_size, provenance=record,
                             flags=flags, reliability=record["result"]["reliability"])


def per_image_frame(predictions, table=None, flags=None):
    """The ``<stem>_per_image.csv`` table: ``table`` (the error table of
    ``fetalhc.models.prediction_table``), else ``filename``, ``pixel size (mm)`` and
    ``prediction (mm)`` of ``predictions``; then the reliability columns of ``flags`` (same
    images in the same order, else a ``ValueError``)."""
    import pandas as pd

    from fetalhc.models.reliability import RELIABILITY_COLUMNS

    base = table if table is not None else predictions[
        ["filename", "pixel size (mm)", "prediction (mm)"]]
    base = base.reset_index(drop=True)
    if flags is None:
        return base
    if list(map(str, flags["filename"])) != list(map(str, base["filename"])):
        raise ValueError("the reliability flags describe other images (or another order) "
                         "than the predictions")
    return pd.concat([base, flags[list(RELIABILITY_COLUMNS)].reset_index(drop=True)], axis=1)


def write_predictions(out: Path, predictions, table=None, *, split: str, model: str,
                      tta: bool = False, image_size: int | None = None,
                      provenance: dict | None = None, flags=None,
                      reliability: dict | None = None) -> dict:
    """Write the challenge CSV of ``predictions`` (columns ``filename``, ``prediction
    (mm)``) to ``out``. With ``table`` (the per-image error table of
    ``fetalhc.models.prediction_table``) or ``flags`` (the reliability table of
    :mod:`fetalhc.models.reliability`, same images) also the per-image CSV
    (:func:`per_image_frame`) and the metrics JSON (``split``, ``model``, ``tta``,
    ``image_size``, the scores in mm with ``table``, and with ``flags`` ``reliability``:
    the ``reliability`` settings and :func:`~fetalhc.models.reliability.flag_summary`);
    with ``table`` the Bland–Altman and scatter plots. Files of an earlier run that this
    one does not write are removed. ``provenance`` (a record of
    :func:`prediction_provenance`) is written last to ``<stem>_provenance.json``; an older
    one there is removed before anything is written. Returns the paths written, ``n``,
    with a table ``summary`` (the metrics), with flags ``reliability`` (its summary)."""
    from fetalhc.metrics import summarise_mm
    from fetalhc.viz.agreement import bland_altman_figure, save_figure, scatter_figure

    paths = prediction_paths(out)
    written = {"predictions": paths["predictions"]}
    challenge = predictions[["filename", "prediction (mm)"]].rename(
        columns={"prediction (mm)": CHALLENGE_COLUMNS[1]})
    metrics, figures = None, {}
    per_image = None
    if table is not None or flags is not None:
        per_image = per_image_frame(predictions, table, flags)
        metrics = {"split": split, "model": str(model), "tta": bool(tta),
                   "image_size": None if image_size is None else int(image_size),
                   "units": "mm (pmae in %)", "n": len(per_image),
                   "n_images": len(per_image)}
    if table is not None:
        # the scores cover the images with a reference HC (all of them, or those of a plain
        # CSV whose hc_mm column is filled in for some); "n" counts those, "n_images" all
        scored = table[table["reference (mm)"].notna()]
        metrics.update(summarise_mm(scored["prediction (mm)"], scored["reference (mm)"]))
        figures = {
            "bland_altman": bland_altman_figure(scored["prediction (mm)"],
                                                scored["reference (mm)"],
                                                title=f"Bland–Altman, {split} split"),
            "scatter": scatter_figure(scored["prediction (mm)"], scored["reference (mm)"]),
        }
    if flags is not None:
        from fetalhc.models.reliability import flag_summary

        errors = None if table is None else table["abs error (mm)"]
        metrics["reliability"] = {**dict(reliability or {}), **flag_summary(flags, errors)}

    paths["provenance"].unlink(missing_ok=True)  # never beside predictions it did not make
    write_csv(challenge, paths["predictions"], float_format="%.4f")
    if per_image is not None:
        write_csv(per_image, paths["per_image"], float_format="%.4f")
        write_json(paths["metrics"], metrics)
        written.update({role: paths[role] for role in TABLE_ROLES})
    for role, figure in figures.items():
        save_figure(figure, paths[role])
        written[role] = paths[role]
    for role in (*TABLE_ROLES, *REFERENCE_ROLES):  # files of an earlier, other prediction
        if role not in written:
            paths[role].unlink(missing_ok=True)
    if table is not None:
        written["summary"] = metrics
    if flags is not None:
        written["reliability"] = metrics["reliability"]
    if provenance is not None:
        written["provenance"] = write_json(paths["provenance"], provenance)
    written["n"] = len(predictions)
    return written

"""The ``predict`` output files: HC predictions in the HC18 challenge format and, where the
images have a reference HC, the per-image errors, the metrics and two agreement plots.

``<out>`` (``filename,head circumference (mm)``) and beside it ``<stem>_per_image.csv``,
``<stem>_metrics.json``, ``<stem>_bland_altman.png`` and ``<stem>_scatter.png``, all
through :mod:`fetalhc.files`.
"""

from __future__ import annotations

from pathlib import Path

from fetalhc.files import write_csv, write_json

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
    }


def write_predictions(out: Path, predictions, table=None, *, split: str, model: str,
                      tta: bool = False, image_size: int | None = None) -> dict:
    """Write the challenge CSV of ``predictions`` (columns ``filename``, ``prediction
    (mm)``) to ``out``; with ``table`` (the per-image error table of
    ``fetalhc.training.prediction_table``) also the per-image CSV, the metrics JSON
    (``split``, ``model``, ``tta``, ``image_size`` and the scores in mm) and the
    Bland–Altman and scatter plots. Returns the paths written, ``n`` and, with a table,
    ``summary`` (the metrics)."""
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

    write_csv(challenge, paths["predictions"], float_format="%.4f")
    if outputs:
        write_csv(table, paths["per_image"], float_format="%.4f")
        write_json(paths["metrics"], outputs["summary"])
        save_figure(outputs["bland_altman"], paths["bland_altman"])
        save_figure(outputs["scatter"], paths["scatter"])
        written.update(paths)
        written["summary"] = outputs["summary"]
    written["n"] = len(predictions)
    return written

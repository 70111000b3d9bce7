"""The study's diagnose step: why a method may fail to beat a random order on HC18.

Per model (``<out>/models/<name>/diagnose/``), with the maps the explain step stacked:

- ``strength_per_image.csv``: how far each perturbation of :data:`DIAGNOSIS` moves the
  prediction in a random order, every image studied
  (:func:`fetalhc.evaluate.diagnosis.perturbation_strength`);
- ``gap_per_image.csv``: per perturbation, method and image of the first
  ``gap_images`` images, the MoRF and random AOPC of the absolute error (mm) at the paper's
  grid and their difference (negative: the method's order beats random).

The folder's provenance record (the model's, the methods and :data:`DIAGNOSIS`) is compared
before any reuse: a folder of other settings is recomputed, never reused.
:func:`diagnosis_tables` turns the models' folders into the page's tables.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fetalhc.files import write_csv
from fetalhc.report.provenance import make_provenance, read_provenance, write_provenance

STEP = "diagnose"
# the perturbations compared, on the paper's grid (4 x 4, 15 steps of one region)
DIAGNOSIS = {"perturbations": ["noise", "mean", "blur", "speckle"], "grid": 4, "steps": 15,
             "regions_per_step": 1, "noise_sd": 0.3, "blur_sigma": 4.0, "seed": 0,
             "gap_images": 48}
STRENGTH_FILE, GAP_FILE = "strength_per_image.csv", "gap_per_image.csv"
REFERENCE, REFERENCE_FILE = "phantoms (reference)", "model.json"


def check_reference(folder) -> None:
    """A diagnose folder made elsewhere (``scripts/phantom_diagnosis.py``) to compare with:
    it must hold the step's two tables, its provenance and ``model.json``; one-line
    ``ValueError`` otherwise."""
    folder = Path(folder)
    missing = [name for name in (STRENGTH_FILE, GAP_FILE, "provenance.json", REFERENCE_FILE)
               if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"--compare-diagnosis {folder}: not a diagnose folder (no "
                         f"{', '.join(missing)}); scripts/phantom_diagnosis.py writes one")
    record = read_provenance(folder)["result"]
    if record.get("diagnosis") != DIAGNOSIS:
        raise ValueError(f"--compare-diagnosis {folder}: made with other diagnosis settings "
                         "than this study's; rerun scripts/phantom_diagnosis.py")


def reference_info(folder, report: Path) -> dict:
    """What the page says of the reference: its path (relative to ``report`` when inside
    it) and its ``model.json``."""
    import json

    folder = Path(folder)
    try:
        where = str(folder.resolve().relative_to(Path(report).resolve()))
    except ValueError:
        where = str(folder)
    return {"path": where, **json.loads((folder / REFERENCE_FILE).read_text())}


def diagnosis_record(model_result: dict, methods: Sequence[str], precision: str) -> dict:
    """The provenance of a diagnose folder: the model's record fields that say what was
    studied (model, split, rows), the methods, :data:`DIAGNOSIS` and the precision."""
    keep = ("model", "split", "index", "image_keys", "image_size")
    return make_provenance("study-diagnosis", {
        **{key: model_result[key] for key in keep}, "methods": list(methods),
        "diagnosis": DIAGNOSIS, "precision": precision})


def diagnosis_done(folder: Path, record: dict) -> bool:
    """Whether ``folder`` holds finished results of exactly ``record``."""
    old = read_provenance(folder) if folder.is_dir() else None
    return (old is not None and old.get("result") == record["result"]
            and (folder / STRENGTH_FILE).is_file() and (folder / GAP_FILE).is_file())


def write_diagnosis(model, index: pd.DataFrame, image_size: int, maps_dir: Path,
                    folder: Path, methods: Sequence[str], record: dict,
                    precision: str) -> Path:
    """Compute the diagnose step into ``folder`` (recomputed whole: a folder of another
    record or an unfinished one is replaced). The record is written last, so a killed
    step leaves no finished-looking folder."""
    from fetalhc.data import load_arrays
    from fetalhc.evaluate.diagnosis import perturbation_strength
    from fetalhc.evaluate.forward import BatchedForward
    from fetalhc.evaluate.perturbation import region_perturbation

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    arrays = load_arrays(index, image_size=image_size)
    images, pixel, reference = arrays["image"], arrays["pixel_size_mm"], arrays["hc_mm"]
    filenames = arrays["filename"]
    settings = {key: DIAGNOSIS[key] for key in
                ("grid", "steps", "regions_per_step", "noise_sd", "blur_sigma", "seed")}
    forward = BatchedForward(model, 256, precision)
    strength = perturbation_strength(model, images, pixel, reference,
                                     perturbations=DIAGNOSIS["perturbations"], forward=forward,
                                     **settings)
    strength.insert(1, "filename", filenames[strength["image"]])
    count = min(len(images), int(DIAGNOSIS["gap_images"]))
    rows = []
    for method in methods:
        maps = np.load(Path(maps_dir) / f"{method}.npy", allow_pickle=False)[:count]
        for perturbation in DIAGNOSIS["perturbations"]:
            curves = region_perturbation(
                model, images[:count], maps, pixel[:count], reference[:count],
                orders=("morf", "random"), perturbation=perturbation, forward=forward,
                **settings)
            morf, random = curves.aopc("abs_error_mm", "morf"), curves.aopc("abs_error_mm",
                                                                             "random")
            rows.append(pd.DataFrame({
                "filename": filenames[:count], "perturbation": perturbation, "method": method,
                "aopc_morf_abs_error_mm": morf, "aopc_random_abs_error_mm": random,
                "morf_minus_random_mm": morf - random}))
    write_csv(strength, folder / STRENGTH_FILE)
    write_csv(pd.concat(rows, ignore_index=True), folder / GAP_FILE)
    write_provenance(folder, record)
    return folder


def diagnosis_tables(folders: dict[str, Path], rich_per_image: dict[str, pd.DataFrame],
                     n_boot: int = 2000) -> dict[str, pd.DataFrame]:
    """The page's diagnosis tables from each model's diagnose ``folders`` (a name without
    one is left out) and its richer protocol's per-image table (localisation columns):

    - ``perturbation_strength``: model x perturbation x measure, mean and CI;
    - ``perturbation_gap``: model x perturbation x method, MoRF - random AOPC (mm) with CI
      and whether the method beats random (CI below 0), and per model and perturbation
      the number of methods that do;
    - ``relevance_outside_head``: model x method, the share of the positive relevance
      outside the annotated head against the share of the image it covers.
    """
    from fetalhc.evaluate.diagnosis import strength_summary
    from fetalhc.evaluate.stats import summarise

    strength, gap, outside = [], [], []
    for name in dict.fromkeys([*folders, *rich_per_image]):
        folder = folders.get(name)
        if folder is not None and (folder / STRENGTH_FILE).is_file():
            per_image = pd.read_csv(folder / STRENGTH_FILE)
            strength.append(strength_summary(per_image, n_boot=n_boot).assign(model=name))
            summary = summarise(pd.read_csv(folder / GAP_FILE), ["morf_minus_random_mm"],
                                by=("perturbation", "method"), n_boot=n_boot)
            gap.append(summary.assign(model=name, beats_random=summary["ci_high"] < 0))
        frame = rich_per_image.get(name)
        if frame is not None and "inside_mass_fraction" in frame:
            outside_frame = frame.assign(
                outside_mass=1.0 - frame["inside_mass_fraction"],
                outside_area=1.0 - frame["inside_area_fraction"])
            summary = summarise(outside_frame, ["outside_mass", "outside_area"],
                                by=("method",), n_boot=n_boot)
            outside.append(summary.assign(model=name))
    tables = {}
    if strength:
        tables["perturbation_strength"] = _tidy(pd.concat(strength, ignore_index=True),
                                                ["model", "perturbation"])
    if gap:
        frame = pd.concat(gap, ignore_index=True)
        tables["perturbation_gap"] = _tidy(frame, ["model", "perturbation", "method"],
                                           extra=["beats_random"])
    if outside:
        tables["relevance_outside_head"] = _tidy(pd.concat(outside, ignore_index=True),
                                                 ["model", "method"])
    return tables


def _tidy(frame: pd.DataFrame, keys: list[str], extra: Sequence[str] = ()) -> pd.DataFrame:
    return frame.rename(columns={"mean": "mean", "ci_low": "CI low", "ci_high": "CI high",
                                 "n": "images", "beats_random": "beats random"})[
        [*keys, "metric", "mean", "CI low", "CI high", "images",
         *[{"beats_random": "beats random"}.get(e, e) for e in extra]]]

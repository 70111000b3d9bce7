"""A studied model's results, small enough to keep beside the page and reuse anywhere.

The steps of a model (``<out>/models/<name>``: maps, per-step curves, ~1 GB) stay where
they ran; what the page needs of them is exported to ``<report>/models/<name>/``
(:func:`export_results`): the model's provenance record and step times, per protocol the
evaluation's ``per_image.csv``, ``summary.csv``, ``summary_by_error.csv``,
``randomisation.csv`` and ``settings.json``, the ``diagnose`` folder, and the figures
(``figures/maps.png`` of the lowest- and highest-error images, the evaluations' own).
``results.json``, written last, lists every file with its SHA-256.

:func:`results_ready` says whether such a folder holds finished results of exactly a
model record (same model file digest, split, rows, options and settings, every listed
file unchanged, the diagnose step of the current settings): ``fetalhc study`` then skips
that model's steps entirely, so a study can be completed on another machine, or in several
sittings, from the folders kept with the page.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fetalhc.files import write_json
from fetalhc.report.provenance import read_provenance, write_provenance

RESULTS_FILE = "results.json"
STEPS_FILE, TIMES_FILE = "steps.json", "times.json"  # finished steps, their times
EVALUATION_FILES = ("per_image.csv", "summary.csv", "summary_by_error.csv",
                    "randomisation.csv", "settings.json")
MAPS_FIGURE = "figures/maps.png"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def results_ready(folder: Path, record: dict, diagnosis: dict | None = None) -> bool:
    """Whether ``folder`` holds the finished, unchanged results of ``record`` (a model's
    provenance record), with a diagnose step of record ``diagnosis`` when given."""
    folder = Path(folder)
    stored = read_provenance(folder) if folder.is_dir() else None
    listing = folder / RESULTS_FILE
    if stored is None or stored.get("result") != record["result"] or not listing.is_file():
        return False
    files = json.loads(listing.read_text()).get("files", {})
    for relative, digest in files.items():
        path = folder / relative
        if not path.is_file() or _sha256(path) != digest:
            return False
    if diagnosis is not None:
        from fetalhc.report.study_diagnosis import STEP, diagnosis_done

        return diagnosis_done(folder / STEP, diagnosis)
    return True


def export_results(model_dir: Path, folder: Path, protocols: Sequence[str],
                   methods: Sequence[str], evaluation_figures) -> Path:
    """Copy what the page needs of ``model_dir`` into ``folder`` (may be ``model_dir``
    itself: then only the figures are added) and write ``results.json`` last."""
    from fetalhc.report.study_diagnosis import GAP_FILE, STEP, STRENGTH_FILE

    model_dir, folder = Path(model_dir), Path(folder)
    same = folder.resolve() == model_dir.resolve()
    (folder / RESULTS_FILE).unlink(missing_ok=True)  # unfinished until rewritten
    files: list[str] = []

    def keep(relative: str) -> None:
        source, target = model_dir / relative, folder / relative
        if source.is_file():
            if not same:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
            files.append(relative)

    folder.mkdir(parents=True, exist_ok=True)
    if not same:
        write_provenance(folder, read_provenance(model_dir))
    files.append("provenance.json")
    for name in (TIMES_FILE, STEPS_FILE):
        keep(name)
    for protocol in protocols:
        for name in EVALUATION_FILES:
            keep(f"evaluate-{protocol}/{name}")
    for name in ("provenance.json", STRENGTH_FILE, GAP_FILE):
        keep(f"{STEP}/{name}")
    for protocol, stem in evaluation_figures:
        source = model_dir / f"evaluate-{protocol}" / "figures" / f"{stem}.png"
        if source.is_file():
            relative = f"figures/{protocol}_{stem}.png"
            (folder / "figures").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, folder / relative)
            files.append(relative)
    _maps_figure(model_dir, folder / MAPS_FIGURE, methods)
    files.append(MAPS_FIGURE)
    write_json(folder / RESULTS_FILE,
               {"files": {relative: _sha256(folder / relative) for relative in files}})
    return folder


def _maps_figure(model_dir: Path, target: Path, methods: Sequence[str]) -> Path:
    """Every method's maps of the two lowest- and two highest-error images of the first
    protocol's ``per_image.csv``, with the annotated contour where there is one."""
    import pandas as pd

    from fetalhc.viz.figures import save_figure
    from fetalhc.viz.overlay import grid_figure

    first = sorted(model_dir.glob("evaluate-*/per_image.csv"))[0]
    errors = (pd.read_csv(first).drop_duplicates("filename").set_index("filename")
              ["abs_error_mm"].sort_values(kind="stable"))
    side = min(2, len(errors) // 2)
    chosen = list(errors.index[:side]) + list(errors.index[-side:])
    images, contours, maps, units = [], [], {}, {}
    for method in methods:
        for filename in chosen:
            path = model_dir / "explain" / method / f"{Path(filename).stem}.npz"
            with np.load(path) as stored:
                maps.setdefault(method, []).append(np.asarray(stored["map"]))
                units[method] = str(stored["units"])
                if method == methods[0]:
                    images.append(np.asarray(stored["image"]))
                    contours.append(stored["annotation"] if "annotation" in stored else None)
    titles = [f"{'low' if i < side else 'high'} error: {Path(f).stem}\n"
              f"|error| {errors[f]:.1f} mm" for i, f in enumerate(chosen)]
    figure = grid_figure(images, maps, contours if all(c is not None for c in contours)
                         else None, column_titles=titles, units=units, cell_inches=1.4)
    return save_figure(figure, target, dpi=72)

"""Write docs/hc18-model.md from result files committed in the repository.

    python scripts/hc18_model_report.py [--docs docs] [--results docs/hc18-model]
        [--final docs/hc18-model/final] [--models models]

Reads result files only (no training, no prediction, no HC18 data):

- ``docs/hc18-model/levers.toml``: the comparisons to show (``[[comparison]]`` with
  ``lever``, ``reference``, ``variant``, optional ``step``, ``reference_column`` and
  ``variant_column``), the lever run whose worst images to describe (``worst = "<name>"``)
  and the final recipe's name (``recipe = "<name>"``); ``[[ensemble]]`` entries (``name``,
  ``members``: lever run names, optional ``note``) are averaged and reported apart from the
  single models;
- ``docs/hc18-model/make-time.json`` (``scripts/hc18_make_time.py``): what ``make
  hc18-model`` cost end to end;
- ``docs/hc18-model/levers/<name>.csv`` and ``.json`` (``scripts/hc18_levers.py run``);
- ``docs/hc18-model/worst/<name>.csv`` and ``.png`` (``scripts/hc18_worst.py``);
- ``docs/hc18-model/final/`` (``fetalhc predict --model models/<recipe> --data $FETALHC_HC18
  --split test --out docs/hc18-model/final/test.csv``, and ``--split val`` likewise);
- ``models/*/`` (``scripts/publish_model.py``: config.toml, history.csv, metrics.json,
  provenance.json).

Writes ``<docs>/hc18-model.md`` and, when the final model and its predictions exist,
``<docs>/hc18-model/bland_altman.png``. The same inputs give the same bytes (fixed bootstrap
seed, fixed number formats, no time stamps, no absolute paths):
``tests/test_hc18_model_report.py`` regenerates the page and compares it with the committed
one. Paired differences use ``paired_difference`` of ``scripts/hc18_levers.py`` (the one
behind ``hc18_levers.py compare``), i.e. ``fetalhc.evaluate.stats.bootstrap_ci``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import os
import sys
import tomllib
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
RESULTS = DOCS / "hc18-model"
MODELS = REPO / "models"
PAGE = "hc18-model.md"
FIGURE = "bland_altman.png"  # written to <docs>/hc18-model/

# Literature values for orientation: cited constants, not results of this project.
# Zhang et al. 2020 (MIDL 2020; J. Imaging 2022, 8(2):23), regression CNN, 5-fold
# cross-validation on the 999 HC18 training images; ../shared/docs/field-notes.md, section 2.
PUBLISHED = {"model": "Zhang et al. 2020: EfficientNet, ImageNet weights, MAE loss",
             "mae_mm": 1.83, "mae_sd_mm": 2.11}
TARGET_MAE_MM = 1.5  # the project's target (a goal, not a result)

HC_BANDS_MM = (0.0, 120.0, 200.0, 280.0, math.inf)
SPLITS = ("train", "val", "test")  # final/<split>_per_image.csv, in this order
WORST_COUNT = 20  # scripts/hc18_worst.py's default --count: the images on its contact sheet
PREDICTION = "prediction (mm)"
REFERENCE = "reference (mm)"
HFLIP_AVERAGE = "h-flip average"  # mean of the prediction and that of the h-flipped image
FLIPPED_COLUMNS = ("h-flipped prediction (mm)", "flipped prediction (mm)")  # levers, predict
FLAGGED = "flagged"
COMPARISON_KEYS = {"step", "lever", "reference", "variant", "reference_column",
                   "variant_column"}
ENSEMBLE_KEYS = {"name", "members", "note"}
MAKE_TIME = "make-time.json"  # scripts/hc18_make_time.py's result, in docs/hc18-model/


# ----------------------------------------------------------------------------- formatting
def finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def number(value, digits: int = 2) -> str:
    """A fixed-format number, "–" when missing or not finite."""
    return f"{float(value):.{digits}f}" if finite(value) else "–"


def interval(low, high, digits: int = 2) -> str:
    return f"[{number(low, digits)}, {number(high, digits)}]"


def minutes(seconds) -> str:
    return number(float(seconds) / 60.0, 1) if finite(seconds) else "–"


def table(header, rows) -> list[str]:
    from fetalhc.files import markdown_table

    return markdown_table(list(header), [list(row) for row in rows]).rstrip("\n").split("\n")


# Input folders given outside the repository (a development page), shown under their
# default names; set by build_page.
ALIASES: dict[Path, str] = {}


def shown(path: Path) -> str:
    """A path as the page shows it: relative to the repository, never absolute."""
    path = Path(path).resolve()
    for root, name in ALIASES.items():
        if path == root or root in path.parents:
            return (Path(name) / path.relative_to(root)).as_posix()
    try:
        return path.relative_to(REPO).as_posix()
    except ValueError:
        return path.name


def link(path: Path) -> str:
    """A link target relative to docs/ (where the page lives in the repository)."""
    try:
        return Path(path).resolve().relative_to(DOCS).as_posix()
    except ValueError:
        return Path(path).name


# ----------------------------------------------------------------------------- reading
def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def read_csv(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.is_file() else None


def flag_values(values) -> pd.Series:
    """A flag column as pandas ``boolean`` (``<NA>`` = unknown), from bools or the text
    ``True``/``False`` with empty cells (how ``fetalhc predict`` writes unknown flags)."""
    series = pd.Series(values)

    def one(value):
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        text = str(value).strip().lower()
        return {"true": True, "false": False, "1": True, "0": False}.get(text, pd.NA)

    return pd.Series([one(value) for value in series], index=series.index, dtype="boolean")


@functools.cache
def levers_module():
    """scripts/hc18_levers.py, for its ``paired_difference`` (importable from anywhere)."""
    path = Path(__file__).resolve().with_name("hc18_levers.py")
    spec = importlib.util.spec_from_file_location("hc18_levers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_levers_toml(path: Path) -> dict:
    """The comparison list; ``{}`` when the file is absent. ``SystemExit`` on a malformed
    entry (a mistake in the list, not a gap in the results)."""
    if not path.is_file():
        return {}
    settings = tomllib.loads(path.read_text())
    for position, entry in enumerate(settings.get("comparison", []), start=1):
        missing = {"lever", "reference", "variant"} - set(entry)
        unknown = set(entry) - COMPARISON_KEYS
        if missing or unknown:
            raise SystemExit(f"{shown(path)}: comparison {position} "
                             + (f"lacks {', '.join(sorted(missing))}" if missing else
                                f"has unknown keys {', '.join(sorted(unknown))}"))
    for position, entry in enumerate(settings.get("ensemble", []), start=1):
        missing = {"name", "members"} - set(entry)
        unknown = set(entry) - ENSEMBLE_KEYS
        if missing or unknown:
            raise SystemExit(f"{shown(path)}: ensemble {position} "
                             + (f"lacks {', '.join(sorted(missing))}" if missing else
                                f"has unknown keys {', '.join(sorted(unknown))}"))
        if not isinstance(entry["members"], list) or len(entry["members"]) < 2:
            raise SystemExit(f"{shown(path)}: ensemble {position} needs a list of at least "
                             "two members")
    return settings


class Levers:
    """The lever result files of ``folder``, each read once."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._frames: dict[str, pd.DataFrame | None] = {}
        self._records: dict[str, dict | None] = {}

    def frame(self, name: str) -> pd.DataFrame | None:
        if name not in self._frames:
            self._frames[name] = read_csv(self.folder / f"{name}.csv")
        return self._frames[name]

    def record(self, name: str) -> dict | None:
        if name not in self._records:
            self._records[name] = read_json(self.folder / f"{name}.json")
        return self._records[name]


# ----------------------------------------------------------------------------- computing
def with_column(frame: pd.DataFrame, column: str) -> tuple[pd.DataFrame | None, str]:
    """``frame`` holding ``column`` (``"h-flip average"`` is made from the prediction and the
    h-flipped prediction), or ``(None, why not)``."""
    if column == HFLIP_AVERAGE:
        flipped = next((name for name in FLIPPED_COLUMNS if name in frame.columns), None)
        if PREDICTION not in frame.columns or flipped is None:
            return None, f"no `{PREDICTION}` and h-flipped prediction column"
        average = (pd.to_numeric(frame[PREDICTION], errors="coerce")
                   + pd.to_numeric(frame[flipped], errors="coerce")) / 2.0
        return frame.assign(**{HFLIP_AVERAGE: average}), ""
    if column not in frame.columns:
        return None, f"no column `{column}`"
    return frame, ""


def compare(reference: pd.DataFrame, variant: pd.DataFrame,
            reference_column: str = PREDICTION, variant_column: str = PREDICTION
            ) -> tuple[dict | None, str]:
    """Paired MAE(variant) − MAE(reference) in mm with its 95 % bootstrap CI
    (``hc18_levers.paired_difference``), or ``(None, why not)``."""
    reference, why = with_column(reference, reference_column)
    if reference is None:
        return None, f"the reference has {why}"
    variant, why = with_column(variant, variant_column)
    if variant is None:
        return None, f"the variant has {why}"
    try:
        return levers_module().paired_difference(reference, variant,
                                                 first_column=reference_column,
                                                 second_column=variant_column), ""
    except ValueError as error:
        return None, str(error)


def reading(result: dict) -> str:
    if result["ci_high_mm"] < 0:
        return "variant better"
    if result["ci_low_mm"] > 0:
        return "variant worse"
    return "no clear difference"


def summary(prediction, reference) -> dict:
    """n, MAE, SD of abs error, PMAE, DF, SD of error, RMSE (``fetalhc.metrics``)."""
    from fetalhc.metrics import summarise_mm

    prediction = pd.to_numeric(pd.Series(prediction), errors="coerce").to_numpy(np.float64)
    reference = pd.to_numeric(pd.Series(reference), errors="coerce").to_numpy(np.float64)
    keep = np.isfinite(prediction) & np.isfinite(reference)
    if not keep.any():
        return {"n": 0}
    return summarise_mm(prediction[keep], reference[keep])


def band_label(low: float, high: float) -> str:
    if low == 0:
        return f"< {high:.0f}"
    if math.isinf(high):
        return f"≥ {low:.0f}"
    return f"{low:.0f}–{high:.0f}"


def band_rows(frame: pd.DataFrame, prediction: str = PREDICTION,
              averaged: str | None = None) -> list[dict]:
    """Errors by reference HC band (``HC_BANDS_MM``), every band listed (n = 0: no numbers).
    ``averaged``: a second prediction column (the h-flip average) whose MAE is added."""
    reference = pd.to_numeric(frame[REFERENCE], errors="coerce")
    rows = []
    for low, high in zip(HC_BANDS_MM[:-1], HC_BANDS_MM[1:], strict=True):
        part = frame[(reference >= low) & (reference < high)]
        stats = summary(part[prediction], part[REFERENCE]) if len(part) else {"n": 0}
        row = {"band": band_label(low, high), "n": stats["n"],
               "mae_mm": stats.get("mae_mm"), "mae_sd_mm": stats.get("mae_sd_mm"),
               "pmae_percent": stats.get("pmae_percent"), "df_mm": stats.get("df_mm")}
        if averaged is not None:
            row["averaged_mae_mm"] = (summary(part[averaged], part[REFERENCE]).get("mae_mm")
                                      if len(part) else None)
        rows.append(row)
    return rows


def flag_rows(frame: pd.DataFrame, prediction: str = PREDICTION) -> list[dict]:
    """Per flag column (``flag: ...`` in file order, then ``flagged``): images flagged, not
    flagged and unknown, and the MAE of the first two."""
    errors = (pd.to_numeric(frame[prediction], errors="coerce")
              - pd.to_numeric(frame[REFERENCE], errors="coerce")).abs()
    columns = [c for c in frame.columns if str(c).startswith("flag: ")]
    columns += [FLAGGED] if FLAGGED in frame.columns else []
    rows = []
    for column in columns:
        flags = flag_values(frame[column])
        known = flags.notna().to_numpy()
        raised = (flags.fillna(False).to_numpy(bool)) & known
        lowered = known & ~raised
        rows.append({"flag": column, "n_flagged": int(raised.sum()),
                     "mae_flagged_mm": errors[raised].mean() if raised.any() else None,
                     "n_unflagged": int(lowered.sum()),
                     "mae_unflagged_mm": errors[lowered].mean() if lowered.any() else None,
                     "n_unknown": int((~known).sum())})
    return rows


def worst_rows(frame: pd.DataFrame, count: int = WORST_COUNT) -> tuple[list[list], list[str]]:
    """Medians of the ``count`` worst images against the rest, and notes on what is missing.
    Rows: quantity, worst, rest (formatted)."""
    order = "rank" if "rank" in frame.columns else "abs error (mm)"
    if order not in frame.columns:
        return [], ["the file has neither `rank` nor `abs error (mm)`: no worst images"]
    ascending = order == "rank"
    frame = frame.sort_values(order, ascending=ascending, kind="stable")
    worst, rest = frame.head(count), frame.iloc[count:]
    rows, notes = [], []
    quantities = [("abs error (mm)", 2), ("reference (mm)", 2), ("pixel size (mm)", 3),
                  ("semi-major axis (px)", 1), ("head / long side", 2),
                  ("skull contrast (SD)", 2)]
    for column, digits in quantities:
        if column not in frame.columns:
            notes.append(f"no column `{column}`")
            continue
        rows.append([f"{column}, median", *(number(pd.to_numeric(part[column],
                                                                  errors="coerce").median(),
                                                    digits) for part in (worst, rest))])
    if "touches border" in frame.columns:
        rows.append(["touching the border (images)",
                     *(f"{int(flag_values(part['touches border']).fillna(False).sum())} of "
                       f"{len(part)}" for part in (worst, rest))])
    else:
        notes.append("no column `touches border`")
    return rows, notes


# ----------------------------------------------------------------------------- sections
def header_lines() -> list[str]:
    return [
        "# The HC18 model: levers, worst images, final recipe",
        "",
        "Generated by `python scripts/hc18_model_report.py` from result files in the "
        "repository only (it trains and predicts nothing, and needs no HC18 data): "
        "`docs/hc18-model/levers.toml` lists what is compared; the numbers come from "
        "`docs/hc18-model/levers/` (`scripts/hc18_levers.py run`), "
        "`docs/hc18-model/worst/` (`scripts/hc18_worst.py`), `docs/hc18-model/final/` "
        "(`fetalhc predict`) and `models/` (`scripts/publish_model.py`). Each section names "
        "the files and the commands that wrote them.",
        "",
        "## Command",
        "",
        "```",
        "make hc18-model                        # stage 1: fetalhc train --config hc18_best"
        " --data $FETALHC_HC18 --out runs/hc18-best-localiser",
        "                                       # stage 2: fetalhc train --config hc18_crop"
        " --data $FETALHC_HC18 --out runs/hc18-best --set data.localiser=runs/hc18-best-localiser",
        "fetalhc predict --model models/hc18-recipe --data $FETALHC_HC18 --split test"
        " --out docs/hc18-model/final/test.csv   # the final section's numbers",
        "python scripts/hc18_model_report.py    # this page, from the result files",
        "```",
        "",
    ]


def weights_line(configs: list[dict]) -> list[str]:
    weights = sorted({str(config.get("model", {}).get("weights", "?")) for config in configs})
    if not weights:
        return []
    if weights == ["none"]:
        return [f"All {len(configs)} run configs recorded for this page train from scratch "
                "(`model.weights = \"none\"`).", ""]
    return [f"Initial weights in the {len(configs)} run configs recorded for this page: "
            f"{', '.join(weights)}.", ""]


def levers_section(settings: dict, levers: Levers, toml_path: Path) -> tuple[list[str], list]:
    lines = ["## Levers: one change at a time, on the same images", ""]
    entries = settings.get("comparison", [])
    if not entries:
        lines += [f"No comparisons: `{shown(toml_path)}` lists no `[[comparison]]`.", ""]
        return lines, []
    order = sorted(range(len(entries)),
                   key=lambda i: (not finite(entries[i].get("step")),
                                  float(entries[i]["step"]) if finite(entries[i].get("step"))
                                  else 0.0, i))
    rows, skipped, runs = [], [], set()
    for i in order:
        entry = entries[i]
        ref_name, var_name = str(entry["reference"]), str(entry["variant"])
        ref_column = entry.get("reference_column", PREDICTION)
        var_column = entry.get("variant_column", PREDICTION)
        runs |= {ref_name, var_name}
        label = f"{entry['lever']} (step {entry['step']})" if "step" in entry else \
            str(entry["lever"])
        frames = {name: levers.frame(name) for name in (ref_name, var_name)}
        absent = [name for name, frame in frames.items() if frame is None]
        if absent:
            skipped.append(f"{label}: no `{'`, `'.join(f'{n}.csv' for n in absent)}` in "
                           f"`{shown(levers.folder)}`")
            continue
        result, why = compare(frames[ref_name], frames[var_name], ref_column, var_column)
        if result is None:
            skipped.append(f"{label}, `{ref_name}` vs `{var_name}`: {why}")
            continue
        records = [levers.record(ref_name), levers.record(var_name)]
        epochs = [str(r["epochs_run"]) if r and "epochs_run" in r else "–" for r in records]
        seconds = [number(r.get("median_epoch_seconds"), 1) if r else "–" for r in records]

        def named(name, column):
            return name if column == PREDICTION else f"{name}: {column}"

        rows.append([entry["lever"], entry.get("step", "–"), named(ref_name, ref_column),
                     named(var_name, var_column),
                     epochs[0] if epochs[0] == epochs[1] else " / ".join(epochs),
                     result["n"], number(result["mae_a_mm"]), number(result["mae_b_mm"]),
                     number(result["difference_mm"]),
                     interval(result["ci_low_mm"], result["ci_high_mm"]), reading(result),
                     seconds[0], seconds[1]])
    draws = levers_module().BOOTSTRAP_DRAWS
    seed = levers_module().BOOTSTRAP_SEED
    lines += [
        "Each row: the paired per-image difference MAE(variant) − MAE(reference) in mm over "
        "the validation and test images both result files hold (negative: the variant errs "
        f"less), with its 95 % percentile bootstrap CI ({draws} resamples of the images, "
        f"seed {seed}; `python scripts/hc18_levers.py compare REFERENCE VARIANT` prints the "
        "same for the plain predictions). `name: column` is a column of that run's file "
        f"instead of its `{PREDICTION}`; `{HFLIP_AVERAGE}` is the mean of the prediction and "
        "that of the horizontally flipped image. Time per epoch: median over the run's "
        "epochs on the shared 2-core machine (from its JSON).",
        "",
    ]
    if rows:
        lines += table(["lever", "step", "reference", "variant", "epochs", "n",
                        "MAE reference (mm)", "MAE variant (mm)", "difference (mm)",
                        "95 % CI (mm)", "reading", "time per epoch, reference (s)",
                        "time per epoch, variant (s)"], rows)
        lines.append("")
    if skipped:
        lines += ["Not compared (missing results or columns):", ""]
        lines += [f"- {note}" for note in skipped]
        lines.append("")
    lines += ["Runs (the command in each run's JSON, which wrote its result files):", ""]
    configs = []
    for name in sorted(runs):
        record = levers.record(name)
        if record is None:
            lines.append(f"- `{name}`: no `{name}.json`, so its command, epochs and time per "
                         "epoch are unknown")
            continue
        configs.append(record.get("config", {}))
        lines.append(f"- `{name}`: `{record.get('command', '–')}`")
    lines.append("")
    return lines, configs


def ensemble_frame(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The mean prediction of ``frames`` (lever result files) on the images all of them
    hold (matched on split and filename), with the first file's reference."""
    keys = ["split", "filename"]
    merged = frames[0][[*keys, REFERENCE, PREDICTION]].rename(columns={PREDICTION: "p0"})
    for position, frame in enumerate(frames[1:], start=1):
        merged = merged.merge(frame[[*keys, PREDICTION]].rename(
            columns={PREDICTION: f"p{position}"}), on=keys, validate="one_to_one")
    columns = [f"p{position}" for position in range(len(frames))]
    values = merged[columns].apply(pd.to_numeric, errors="coerce")
    return merged[[*keys, REFERENCE]].assign(**{PREDICTION: values.mean(axis=1)})


def ensembles_section(settings: dict, levers: Levers) -> list[str]:
    entries = settings.get("ensemble", [])
    if not entries:
        return []
    lines = ["## Ensembles (reported apart from single models)", "",
             "The mean prediction of the members, on the images all members' result files "
             "hold, against the member with the lowest MAE on those images (paired, as "
             "above). An ensemble costs every member's training and prediction; the single "
             "models above are what the recipe ships.", ""]
    rows, skipped = [], []
    for entry in entries:
        members = [str(name) for name in entry["members"]]
        frames = [levers.frame(name) for name in members]
        absent = [name for name, frame in zip(members, frames, strict=True) if frame is None]
        if absent:
            skipped.append(f"`{entry['name']}`: no `{'`, `'.join(f'{n}.csv' for n in absent)}`")
            continue
        ensemble = ensemble_frame(frames)
        shared = ensemble[["split", "filename"]]
        singles = []
        for name, frame in zip(members, frames, strict=True):
            on_shared = frame.merge(shared, on=["split", "filename"])
            error = (pd.to_numeric(on_shared[PREDICTION], errors="coerce")
                     - pd.to_numeric(on_shared[REFERENCE], errors="coerce")).abs().mean()
            singles.append((float(error), name, on_shared))
        best_mae, best_name, best_frame = min(singles, key=lambda item: item[0])
        result, why = compare(best_frame, ensemble)
        if result is None:
            skipped.append(f"`{entry['name']}`: {why}")
            continue
        rows.append([entry["name"], ", ".join(members), entry.get("note", "–"), result["n"],
                     best_name, number(result["mae_a_mm"]), number(result["mae_b_mm"]),
                     number(result["difference_mm"]),
                     interval(result["ci_low_mm"], result["ci_high_mm"]), reading(result)])
    if rows:
        lines += table(["ensemble", "members", "note", "n", "best member", "MAE best member (mm)",
                        "MAE ensemble (mm)", "difference (mm)", "95 % CI (mm)", "reading"],
                       rows)
        lines.append("")
    if skipped:
        lines += ["Not computed (missing results):", "", *[f"- {note}" for note in skipped], ""]
    return lines


def make_time_section(results: Path) -> list[str]:
    path = results / MAKE_TIME
    lines = ["## What `make hc18-model` costs", ""]
    record = read_json(path)
    if record is None:
        return lines + [f"Not measured yet: no `{shown(path)}` (`python scripts/"
                        "hc18_make_time.py --run runs/NAME` writes it).", ""]
    samples = [value for value in record.get("load_1min_samples", []) if finite(value)]
    stages = record.get("stages", {})
    rows = [[name, stage.get("epochs_run", "–"), stage.get("best_epoch", "–"),
             minutes(stage.get("train_seconds")), number(stage.get("val_mae_mm")),
             number(stage.get("test_mae_mm"))] for name, stage in stages.items()]
    lines += [
        f"`{record.get('make_command', '–')}` from a state with neither stage trained, timed "
        f"by `{record.get('command', '–')}` (`{shown(path)}`):",
        "",
        f"- wall time **{minutes(record.get('wall_seconds'))} min** on "
        f"{record.get('cores', '–')} cores (goal: at most 120 min);",
        f"- CPU time of make and all it started {minutes(record.get('cpu_seconds'))} min, "
        f"{number(record.get('cpu_per_wall'))} CPU-seconds per second of wall time;",
        f"- 1-minute load average {number(record.get('load_1min_before'))} before the start, "
        + (f"median {number(float(np.median(samples)))} and maximum "
           f"{number(float(np.max(samples)))} over {len(samples)} samples during the run "
           "(the training alone keeps it near the number of cores; more means something else "
           "ran)." if samples else "no samples during the run."),
        "",
    ]
    if rows:
        lines += table(["stage", "epochs", "best epoch", "train time (min)", "val MAE (mm)",
                        "test MAE (mm)"], rows)
        lines.append("")
    return lines


def splits_of(frame: pd.DataFrame) -> str:
    if "split" not in frame.columns:
        return "splits not recorded"
    names = set(frame["split"].astype(str))
    ordered = [name for name in SPLITS if name in names] + sorted(names - set(SPLITS))
    return " + ".join(ordered) + " images"


def worst_section(settings: dict, results: Path) -> list[str]:
    lines = ["## The worst-predicted images", ""]
    name = settings.get("worst")
    if not name:
        return lines + ["No `worst` run named in `docs/hc18-model/levers.toml`.", ""]
    path = results / "worst" / f"{name}.csv"
    frame = read_csv(path)
    if frame is None:
        return lines + [f"No `{shown(path)}` yet (`python scripts/hc18_worst.py {name}`).",
                        ""]
    count = min(WORST_COUNT, len(frame))
    rows, notes = worst_rows(frame, count)
    lines += [
        f"`{shown(path)}`, written by `python scripts/hc18_worst.py {name}` from the "
        f"predictions in `docs/hc18-model/levers/{name}.csv`: the {count} images with the "
        f"largest absolute error against the other {len(frame) - count} "
        f"({splits_of(frame)}). Head size and position come from the reference ellipse, skull contrast is "
        "the mean intensity on the annotated outline minus the image mean, in image SDs.",
        "",
    ]
    if rows:
        lines += table(["quantity", f"worst {count}", f"other {len(frame) - count}"], rows)
        lines.append("")
    if notes:
        lines += [f"Left out (missing in `{shown(path)}`): " + "; ".join(notes)
                  + ".", ""]
    levers_frame = read_csv(results / "levers" / f"{name}.csv")
    if levers_frame is not None and {"filename", PREDICTION} <= set(frame.columns) \
            and {"filename", PREDICTION} <= set(levers_frame.columns):
        keys = ["split", "filename"] if "split" in frame.columns and \
            "split" in levers_frame.columns else ["filename"]
        merged = frame[[*keys, PREDICTION]].merge(levers_frame[[*keys, PREDICTION]], on=keys)
        gap = (merged[f"{PREDICTION}_x"] - merged[f"{PREDICTION}_y"]).abs()
        if len(merged) != len(frame) or not (gap <= 1e-3).all():
            lines += [f"Note: `{shown(path)}` holds other predictions than "
                      f"`docs/hc18-model/levers/{name}.csv` (rerun `python "
                      f"scripts/hc18_worst.py {name}`).", ""]
    png = path.with_suffix(".png")
    if png.is_file():
        lines += [f"![The {count} worst images of {name} with their reference ellipse]"
                  f"({link(png)})", ""]
    return lines


def published_line() -> list[str]:
    return [
        "## Published reference (literature, not measured here)",
        "",
        f"The project's target is a MAE at or below {TARGET_MAE_MM} mm. For orientation, the "
        f"published regression CNN: **{PUBLISHED['mae_mm']} ± {PUBLISHED['mae_sd_mm']} mm** "
        f"({PUBLISHED['model']}; cited value, 5-fold cross-validation on the 999 HC18 "
        "training images), trained at higher resolution on the full HC18 training set with "
        "ImageNet weights and a GPU; our numbers are on 2 CPU cores from scratch, on fewer "
        "images.",
        "",
    ]


def recipe_lines(config: dict) -> list[str]:
    """The recipe in words, from a run's resolved config.toml."""
    model, train, data = config.get("model", {}), config.get("train", {}), config.get("data", {})
    filters = list(model.get("filters") or [])
    if not filters and model.get("backbone") == "small_cnn":
        from fetalhc.models.build import SMALL_CNN_FILTERS

        filters = list(SMALL_CNN_FILTERS)
    augmentation = config.get("run", {}).get("augmentation", {})
    lines = [
        f"- **Network**: `{model.get('backbone', '?')}`, {len(filters)} blocks (widths "
        f"{filters}, {model.get('convs_per_block', '?')} × conv 3×3 – BN – ReLU, then 2×2 "
        f"max pooling), `{model.get('pooling', '?')}` pooling, dropout "
        f"{model.get('dropout', '?')}, dense layers {model.get('dense_units', [])}, "
        f"`Dense(1)` → HC in input pixels; initial weights `{model.get('weights', '?')}`. "
        f"Input {data.get('image_size', '?')} × {data.get('image_size', '?')} px.",
        f"- **Loss in mm**: `{train.get('loss', '?')}` on the output times each image's "
        "input pixel size.",
    ]
    if model.get("aux_ellipse"):
        lines.append("- **Auxiliary ellipse head**: predicts the annotation's ellipse, MSE "
                     f"weighted {train.get('aux_weight', '?')}.")
    if data.get("augment") and augmentation:
        scale = augmentation.get("scale_range", ["?", "?"])
        contrast = augmentation.get("contrast_range", ["?", "?"])
        flips = [axis for axis in ("horizontal", "vertical")
                 if augmentation.get(f"flip_{axis}")]
        lines.append(
            f"- **Augmentation**: flips {', '.join(flips) or 'none'}, rotation up to "
            f"{augmentation.get('max_rotation_deg', '?')}°, zoom {scale[0]}–{scale[1]} with "
            "the pixel size divided by the zoom, shifts up to "
            f"{augmentation.get('max_translation', '?')} of the side, brightness "
            f"{augmentation.get('brightness', '?')}, contrast {contrast[0]}–{contrast[1]}.")
    elif not data.get("augment"):
        lines.append("- **Augmentation**: none.")
    schedule = train.get("schedule")
    decay = (f"cosine decay to {train.get('min_learning_rate', '?')}" if schedule == "cosine"
             else f"schedule `{schedule}`")
    ema = train.get("ema_momentum")
    lines.append(
        f"- **Optimiser**: Adam, learning rate {train.get('learning_rate', '?')}, {decay}, "
        f"batch {train.get('batch_size', '?')}, {train.get('epochs', '?')} epochs"
        + (f", EMA of the weights (momentum {ema})" if finite(ema) and float(ema) > 0 else "")
        + "; the checkpoint with the best validation MAE is kept.")
    split = config.get("split", {})
    if split:
        counts = ", ".join(f"{len(split.get(part, []))} {part}" for part in SPLITS)
        lines.append(f"- **Split**: grouped by examination, seed {data.get('split_seed', '?')}: "
                     f"{counts} images.")
    return lines


def localiser_lines(config: dict, model_dir: Path, metrics: dict) -> list[str]:
    """For a crop model: its published localiser (stage 1) and the two stages' training
    time together, read from the localiser's ``metrics.json``; nothing otherwise."""
    recorded = str(config.get("run", {}).get("localiser_file", ""))
    if not recorded:
        return []
    localiser_dir = (model_dir / recorded).parent
    path = localiser_dir / "metrics.json"
    if recorded.startswith("/") or not path.is_file():
        return [f"Its localiser (stage 1, `{shown(Path(recorded))}`) is not a published "
                "model here, so "
                "the time of both stages is unknown.", ""]
    stage1 = json.loads(path.read_text()).get("train_seconds")
    stage2 = metrics.get("train_seconds")
    both = stage1 + stage2 if stage1 is not None and stage2 is not None else None
    return [f"This is stage 2 of localise-then-measure; stage 1, its localiser, is "
            f"`{shown(localiser_dir.resolve())}` (trained in {minutes(stage1)} min). Both "
            f"stages together, as `make hc18-model` trains them: **{minutes(both)} min** "
            "(the sum of the two runs' `train_seconds`).", ""]


def final_section(settings: dict, final: Path, models: Path, docs: Path) -> list[str]:
    lines = ["## The final recipe", ""]
    figure = docs / "hc18-model" / FIGURE
    recipe = settings.get("recipe")
    model_dir = models / str(recipe) if recipe else None
    per_image = {split: final / f"{split}_per_image.csv" for split in SPLITS
                 if (final / f"{split}_per_image.csv").is_file()}
    missing = []
    if not recipe:
        missing.append("`docs/hc18-model/levers.toml` names no `recipe`")
    else:
        missing += [f"no `{shown(model_dir / file)}`" for file in
                    ("config.toml", "history.csv", "metrics.json", "provenance.json")
                    if not (model_dir / file).is_file()][:1]
    if not per_image:
        missing.append(f"no `{shown(final)}/test_per_image.csv`")
    if missing:
        if figure.is_file():
            figure.unlink()  # the figure belongs to this section
        return lines + [f"No final model yet ({'; '.join(missing)}), so no numbers here.", ""]
    config = tomllib.loads((model_dir / "config.toml").read_text())
    history = pd.read_csv(model_dir / "history.csv")
    metrics = json.loads((model_dir / "metrics.json").read_text())
    provenance = json.loads((model_dir / "provenance.json").read_text())
    epoch_seconds = (history["epoch_seconds"].median() if "epoch_seconds" in history.columns
                     else None)
    lines += [
        f"`{shown(model_dir)}/`, trained with",
        "",
        "```",
        provenance.get("command", "(no command in provenance.json)"),
        "```",
        "",
        f"Training time on the shared 2-core CPU: **{minutes(metrics.get('train_seconds'))} "
        f"min** for {metrics.get('epochs_run', len(history))} epochs (best epoch "
        f"{metrics.get('best_epoch', '–')}), median {number(epoch_seconds, 1)} s per epoch "
        "(`metrics.json`, `history.csv`).",
        "",
        *localiser_lines(config, model_dir, metrics),
        "### Recipe (its `config.toml`)",
        "",
        *recipe_lines(config),
        "",
        "### Accuracy",
        "",
        f"From `{shown(final)}/`, written by `fetalhc predict --model {shown(model_dir)} "
        f"--data $FETALHC_HC18 --split SPLIT --out {shown(final)}/SPLIT.csv`. "
        f"`{HFLIP_AVERAGE}`: the mean of `{PREDICTION}` and `flipped prediction (mm)` of "
        "the same file.",
        "",
    ]
    frames, accuracy, bands, flags, notes = {}, [], [], [], []
    for split, path in per_image.items():
        frame = pd.read_csv(path)
        frames[split] = frame
        record = read_json(final / f"{split}_provenance.json") or {}
        digest = str(record.get("result", {}).get("model", "")).removeprefix("sha256:")
        if digest != provenance.get("model_sha256"):
            notes.append(f"`{split}_per_image.csv` was not predicted by `{shown(model_dir)}` "
                         "(its provenance names another model digest, or none)")
        tta = bool((read_json(final / f"{split}_metrics.json") or {}).get("tta"))
        averaged, why = (frame, "") if tta else with_column(frame, HFLIP_AVERAGE)
        column = PREDICTION if tta else HFLIP_AVERAGE
        views = [("as predicted" + (" (`--tta`: the h-flip average)" if tta else ""),
                  PREDICTION)]
        if averaged is not None and not tta:
            frame = frames[split] = averaged
            views.append((HFLIP_AVERAGE, HFLIP_AVERAGE))
        elif not tta:
            notes.append(f"`{split}_per_image.csv`: {why}, so no h-flip average")
            column = None
        for view, prediction in views:
            stats = summary(frame[prediction], frame[REFERENCE])
            accuracy.append([split, view, stats["n"], *(number(stats.get(key)) for key in (
                "mae_mm", "mae_sd_mm", "pmae_percent", "df_mm", "df_sd_mm", "rmse_mm"))])
        for row in band_rows(frame, PREDICTION, column):
            bands.append([split, row["band"], row["n"], number(row["mae_mm"]),
                          number(row["mae_sd_mm"]), number(row["pmae_percent"]),
                          number(row["df_mm"]), number(row.get("averaged_mae_mm"))])
        rows = flag_rows(frame)
        if not rows:
            notes.append(f"`{split}_per_image.csv` has no flag columns")
        for row in rows:
            flags.append([split, f"`{row['flag']}`", row["n_flagged"],
                          number(row["mae_flagged_mm"]), row["n_unflagged"],
                          number(row["mae_unflagged_mm"]), row["n_unknown"]])
    lines += table(["split", "prediction", "n", "MAE (mm)", "SD of abs error (mm)",
                    "PMAE (%)", "DF (mm)", "SD of error (mm)", "RMSE (mm)"], accuracy)
    lines.append("")
    lines += [f"Note: {note}." for note in notes]
    lines += [""] if notes else []
    lines += ["### By reference HC band", "",
              *table(["split", "reference HC (mm)", "n", "MAE (mm)", "SD of abs error (mm)",
                      "PMAE (%)", "DF (mm)", f"MAE, {HFLIP_AVERAGE} (mm)"], bands), "",
              "### By reliability flag", "",
              "A flag is raised, not raised or unknown per image (`fetalhc predict`); "
              "`flagged` is raised when any known flag is. MAE as predicted.", "",
              *table(["split", "flag", "n flagged", "MAE flagged (mm)", "n not flagged",
                      "MAE not flagged (mm)", "n unknown"], flags), ""]
    both = pd.concat(frames.values(), ignore_index=True)
    from fetalhc.viz.agreement import bland_altman_figure
    from fetalhc.viz.figures import save_figure

    figure.parent.mkdir(parents=True, exist_ok=True)
    title = f"{recipe}: {' + '.join(frames)}, as predicted"
    save_figure(bland_altman_figure(both[PREDICTION], both[REFERENCE], title=title), figure)
    lines += [f"![Bland–Altman plot of {recipe} ({' + '.join(frames)})](hc18-model/{FIGURE})",
              ""]
    return lines


def models_section(models: Path) -> list[str]:
    lines = ["## Published models", ""]
    folders = sorted(folder for folder in models.glob("*/")
                     if (folder / "metrics.json").is_file()
                     and (folder / "provenance.json").is_file()) if models.is_dir() else []
    if not folders:
        return lines + [f"None yet: `{shown(models)}/` holds no folder with `metrics.json` "
                        "and `provenance.json` (`scripts/publish_model.py` writes them).", ""]
    rows, commands = [], []
    for folder in folders:
        metrics = json.loads((folder / "metrics.json").read_text())
        provenance = json.loads((folder / "provenance.json").read_text())
        rows.append([f"`{folder.name}`", metrics.get("epochs_run", "–"),
                     metrics.get("best_epoch", "–"), minutes(metrics.get("train_seconds")),
                     number(metrics.get("val", {}).get("mae_mm")),
                     number(metrics.get("test", {}).get("mae_mm"))])
        commands.append(f"- `{folder.name}`: `{provenance.get('command', '–')}`")
    lines += [f"Every folder of `{shown(models)}/` with `metrics.json` and `provenance.json` "
              "(load one with `fetalhc.models.pretrained(NAME)`); MAE on the run's own "
              "validation and test splits, as predicted.", ""]
    lines += table(["model", "epochs", "best epoch", "train time (min)", "val MAE (mm)",
                    "test MAE (mm)"], rows)
    return lines + ["", "Training commands (`provenance.json`):", "", *commands, ""]


def build_page(results: Path, final: Path, models: Path, docs: Path) -> str:
    ALIASES.clear()
    outside = []
    for option, path, default in (("--results", results, RESULTS), ("--final", final,
                                                                    RESULTS / "final"),
                                  ("--models", models, MODELS)):
        if REPO not in Path(path).resolve().parents:
            ALIASES[Path(path).resolve()] = default.relative_to(REPO).as_posix()
            outside.append(option)
    toml_path = results / "levers.toml"
    settings = read_levers_toml(toml_path)
    levers = Levers(results / "levers")
    lever_lines, configs = levers_section(settings, levers, toml_path)
    recipe = settings.get("recipe")
    if recipe and (models / str(recipe) / "config.toml").is_file():
        configs.append(tomllib.loads((models / str(recipe) / "config.toml").read_text()))
    warning = [f"**Development page**: {', '.join(outside)} named folders outside the "
               "repository, shown below under the repository's names; do not commit it.",
               ""] if outside else []
    lines = [*header_lines(), *warning, *weights_line(configs), *published_line(), *lever_lines,
             *ensembles_section(settings, levers), *worst_section(settings, results),
             *final_section(settings, final, models, docs), *make_time_section(results),
             *models_section(models)]
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=Path, default=DOCS,
                        help="where hc18-model.md (and hc18-model/bland_altman.png) go")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="folder of levers.toml, levers/ and worst/")
    parser.add_argument("--final", type=Path, default=None,
                        help="fetalhc predict's output for the recipe (default RESULTS/final)")
    parser.add_argument("--models", type=Path, default=MODELS, help="published models")
    args = parser.parse_args(argv)
    final = args.final if args.final is not None else args.results / "final"
    page = build_page(args.results, final, args.models, args.docs)
    from fetalhc.files import write_text

    args.docs.mkdir(parents=True, exist_ok=True)
    written = write_text(args.docs / PAGE, page)
    print(f"wrote {written}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

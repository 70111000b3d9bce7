"""The ground-truth faithfulness benchmark's result folder and page.

For each shortcut-phantom variant (:mod:`fetalhc.data.shortcut`: ``contour``, ``marker``,
``mixed``) a model is trained on written phantoms (the command line calls
``fetalhc.train`` with :func:`training_config`) and scored here on fresh phantoms of the
same variant (another seed, never trained on) by :func:`score_variant`, which writes
``<out>/<variant>/``:

- ``provenance.json``: model file digest, variant, phantom settings, methods and
  evaluation settings; the same record resumes (a finished variant is not recomputed),
  another one is refused in one line naming the first differing field (``--overwrite``);
- ``intervention.csv`` (one row per quantity) and ``intervention_per_image.csv``: what the
  model uses, by intervention (``fetalhc.evaluate.groundtruth.intervention_check``);
- ``relevance_per_image.csv`` and ``relevance_summary.csv``: where each method puts its
  relevance (marker mask, contour band, marker region rank, first-steps shifts), means
  with bootstrap CIs over images;
- ``cues_summary.csv``: each cue's measured influence against each method's relevance
  split (``cue_influence``);
- ``done.json``: written last; a variant without it is recomputed.

:func:`write_benchmark_page` writes ``<out>/benchmark.md`` from those files and
``<out>/benchmark.json`` (the command) alone (no model, no data; same files, same bytes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fetalhc.files import markdown_table, write_csv, write_json, write_text
from fetalhc.report.provenance import (
    check_folder,
    make_provenance,
    model_digest,
    write_provenance,
)

PAGE = "benchmark.md"
RECORD = "benchmark.json"  # the command and variants the page shows
DEFAULT_VARIANTS = ("contour", "marker", "mixed")
DONE = "done.json"
INTERVENTION = "intervention.csv"
INTERVENTION_PER_IMAGE = "intervention_per_image.csv"
RELEVANCE_PER_IMAGE = "relevance_per_image.csv"
RELEVANCE_SUMMARY = "relevance_summary.csv"
CUES_SUMMARY = "cues_summary.csv"
TEST_SEED_OFFSET = 1000  # test phantoms: seed + this, never the training phantoms' seed

VARIANT_TEXT = {
    "contour": "HC carried by the skull contour alone; the marker sits at a random place "
               "(a decoy): a faithful map puts little relevance on it",
    "marker": "HC carried by the marker's position alone; the drawn head's size is "
              "independent of the HC: a faithful map puts the relevance on the marker",
    "mixed": "HC carried by both the head and the marker (the marker with noise): a faithful "
             "map splits its relevance between the cues as the interventions say the "
             "model does",
}
SHOWN_METRICS = (
    ("marker abs mass share", "marker share of abs relevance"),
    ("marker abs enrichment (x area share)", "marker enrichment (x area)"),
    ("marker region rank (1 = top)", "marker region rank"),
    ("contour band abs mass share", "contour band share of abs relevance"),
    ("MoRF first-k mean shift (mm)", "MoRF first steps shift (mm)"),
)


def training_config(image_size: int = 64, epochs: int = 20, seed: int = 0) -> dict[str, Any]:
    """The benchmark models' training config: the small CNN on whole images without
    augmentation (a flip or zoom would move the marker off its HC code), MAE in mm."""
    return {
        "data": {"image_size": int(image_size), "val_fraction": 0.15, "test_fraction": 0.0,
                 "split_seed": int(seed), "augment": False, "cache": True},
        "model": {"backbone": "small_cnn", "filters": [16, 32, 48, 64], "dropout": 0.0},
        "train": {"epochs": int(epochs), "batch_size": 16, "learning_rate": 2e-3,
                  "schedule": "cosine", "min_learning_rate": 1e-5, "loss": "mae",
                  "patience": int(epochs), "seed": int(seed), "tensorboard": False},
    }


def score_variant(model, model_file, variant: str, out_dir, *, n_images: int = 32,
                  seed: int = 0, width: int = 160, height: int = 120,
                  methods: Sequence[str] | None = None, n_boot: int = 2000,
                  overwrite: bool = False,
                  progress: Callable[[str], None] | None = None) -> Path:
    """Score ``model`` (trained on ``variant`` phantoms) on ``n_images`` fresh phantoms
    (seed ``seed + TEST_SEED_OFFSET``) into ``out_dir`` (see the module docstring); returns
    ``out_dir``. A finished folder with the same record is reused as it is."""
    from fetalhc.data.shortcut import check_variant, shortcut_phantoms
    from fetalhc.evaluate.groundtruth import (
        cue_influence,
        intervention_check,
        marker_relevance,
        prepare_shortcut_inputs,
    )
    from fetalhc.explain import available_methods

    variant = check_variant(variant)
    if int(n_images) < 2:
        raise ValueError(f"n_images must be at least 2 (a CI needs images); got {n_images}")
    methods = list(available_methods() if methods is None else methods)
    out_dir = Path(out_dir)
    record = make_provenance("benchmark", {
        "model_sha256": model_digest(model_file),
        "variant": variant,
        "phantoms": {"n": int(n_images), "seed": int(seed) + TEST_SEED_OFFSET,
                     "width_px": int(width), "height_px": int(height)},
        "methods": methods,
        "n_boot": int(n_boot),
    })
    if check_folder(out_dir, record, overwrite, markers=(DONE,)) and (out_dir / DONE).is_file():
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    write_provenance(out_dir, record)
    size = int(model.inputs[0].shape[1])
    phantoms = shortcut_phantoms(variant, int(n_images), seed=int(seed) + TEST_SEED_OFFSET,
                                 width=int(width), height=int(height))
    inputs = prepare_shortcut_inputs(phantoms, size)
    check = intervention_check(model, inputs, n_boot=n_boot)
    write_csv(check.summary(), out_dir / INTERVENTION)
    write_csv(check.per_image, out_dir / INTERVENTION_PER_IMAGE)
    relevance = marker_relevance(model, inputs, methods, progress=progress)
    write_csv(relevance.per_image, out_dir / RELEVANCE_PER_IMAGE)
    write_csv(relevance.summary(n_boot=n_boot), out_dir / RELEVANCE_SUMMARY)
    write_csv(cue_influence(check, relevance).summary(n_boot=n_boot), out_dir / CUES_SUMMARY)
    write_json(out_dir / DONE, {"rule": check.rule, "relevance_settings": relevance.settings,
                                "intervention_settings": check.settings})
    return out_dir


# ---------------------------------------------------------------------------------- page
def _number(value, digits: int = 2) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "–"
    return f"{value:.{digits}f}" if math.isfinite(value) else "–"


def _cell(row: pd.Series | None, digits: int = 2) -> str:
    if row is None:
        return "–"
    return (f"{_number(row['mean'], digits)} [{_number(row['ci_low'], digits)}, "
            f"{_number(row['ci_high'], digits)}]")


def _lookup(summary: pd.DataFrame, method: str, metric: str) -> pd.Series | None:
    rows = summary[(summary["method"] == method) & (summary["metric"] == metric)]
    return None if rows.empty else rows.iloc[0]


def _intervention_lines(folder: Path) -> list[str]:
    table = pd.read_csv(folder / INTERVENTION)
    values = dict(zip(table["quantity"], table["value"], strict=True))
    done = pd.read_json(folder / DONE, typ="series")
    uses = values.get("uses marker (1 = yes)") == 1.0
    return [
        f"Intervention check on {int(values.get('images', 0))} fresh phantoms "
        f"(`{INTERVENTION}`): slope of the predicted change on the marker-encoded change "
        f"**{_number(values.get('slope of predicted on marker-encoded change (mm per mm)'))}** "
        f"[{_number(values.get('slope CI low (mm per mm)'))}, "
        f"{_number(values.get('slope CI high (mm per mm)'))}] mm per mm (1 = follows the "
        "marker fully, 0 = ignores it); median |prediction change| "
        f"{_number(values.get('median |marker moved change| (mm)'), 1)} mm when the marker "
        f"is moved, {_number(values.get('median |marker removed change| (mm)'), 1)} mm when "
        f"it is removed, {_number(values.get('median |head hidden change| (mm)'), 1)} mm when "
        f"the head is hidden. **The model {'uses' if uses else 'does not (provably) use'} "
        f"the marker** ({done['rule']}).",
        "",
        *_accuracy_lines(folder),
    ]


def _accuracy_lines(folder: Path) -> list[str]:
    """The model's MAE on the fresh phantoms of the check, from its per-image file."""
    from fetalhc.evaluate.stats import bootstrap_ci

    per_image = pd.read_csv(folder / INTERVENTION_PER_IMAGE)
    errors = (per_image["prediction (mm)"] - per_image["reference HC (mm)"]).abs()
    mean, low, high, n = bootstrap_ci(errors.to_numpy())
    return [f"Model accuracy on these {n} phantoms: MAE **{_number(mean, 1)}** "
            f"[{_number(low, 1)}, {_number(high, 1)}] mm (|prediction − reference HC| per "
            f"image, `{INTERVENTION_PER_IMAGE}`).", ""]


def _relevance_table(folder: Path) -> list[str]:
    summary = pd.read_csv(folder / RELEVANCE_SUMMARY)
    methods = list(dict.fromkeys(summary["method"]))
    area = _lookup(summary, methods[0], "marker area share") if methods else None
    oracle = _lookup(summary, methods[0], "marker-first mean shift (mm)") if methods else None
    rows = [[f"`{method}`", *[_cell(_lookup(summary, method, metric),
                                    1 if "rank" in metric or "(mm)" in metric else 2)
                              for metric, _ in SHOWN_METRICS]] for method in methods]
    lines = [f"Per method, mean over images with its 95 % bootstrap CI (`{RELEVANCE_SUMMARY}`;"
             f" per image in `{RELEVANCE_PER_IMAGE}`). The marker mask covers "
             f"{_number(None if area is None else 100 * area['mean'], 2)} % of the input; "
             "perturbing the marker's region first moves the prediction by "
             f"{_number(None if oracle is None else oracle['mean'], 1)} mm on average over the "
             "first steps (the same for every method: what a map that finds the marker "
             "achieves).", ""]
    lines += markdown_table(["method", *[label for _, label in SHOWN_METRICS]],
                            rows).rstrip("\n").split("\n")
    return lines + [""]


def _cues_table(folder: Path) -> list[str]:
    summary = pd.read_csv(folder / CUES_SUMMARY)
    methods = list(dict.fromkeys(summary["method"]))
    if not methods:
        return []
    measured = _lookup(summary, methods[0], "intervention marker share")
    rows = [[f"`{method}`", _cell(_lookup(summary, method, "marker abs cue share")),
             _cell(_lookup(summary, method, "abs share minus intervention share"))]
            for method in methods]
    lines = ["Cue split. The marker's share of the intervention effect (|marker removed change| against "
             "|marker removed| + |head hidden| change, per image): "
             f"**{_cell(measured)}** (`{CUES_SUMMARY}`). Each method's share of its abs relevance"
             " on the two cues that falls on the marker, and the difference (> 0: the method "
             "over-credits the marker):", ""]
    lines += markdown_table(["method", "marker share of cue abs relevance", "minus measured share"],
                            rows).rstrip("\n").split("\n")
    return lines + [""]


def _in_short(out: Path, variants: Sequence[str]) -> list[str]:
    """Per method, its marker share of cue relevance minus the measured share, side by side
    for every scored variant, and the mean |difference| over them (0 = the relevance splits
    as the interventions say the model does, on every variant)."""
    frames = {}
    for variant in variants:
        path = out / variant / CUES_SUMMARY
        if (out / variant / DONE).is_file() and path.is_file():
            summary = pd.read_csv(path)
            frames[variant] = summary[summary["metric"] == "abs share minus intervention share"]
    if not frames:
        return []
    methods = list(dict.fromkeys(method for frame in frames.values()
                                 for method in frame["method"]))
    rows = []
    for method in methods:
        cells, gaps = [], []
        for frame in frames.values():
            row = _lookup(frame, method, "abs share minus intervention share")
            cells.append(_cell(row))
            if row is not None and math.isfinite(float(row["mean"])):
                gaps.append(abs(float(row["mean"])))
        mean_gap = sum(gaps) / len(gaps) if len(gaps) == len(frames) else math.nan
        rows.append((mean_gap, [f"`{method}`", *cells, _number(mean_gap)]))
    rows.sort(key=lambda item: (not math.isfinite(item[0]), item[0]))
    lines = ["## In short", "",
             "Per method: its share of the abs relevance on the two cues (marker, contour band) "
             "that falls on the marker, minus the marker's measured share of the effect (by "
             "intervention: marker removed against head hidden), per variant with its 95 % "
             "CI; ordered by the mean |difference| (0: the map splits its relevance as the "
             "model uses the cues, on every variant). From each variant's "
             f"`{CUES_SUMMARY}`.", ""]
    lines += markdown_table(["method", *[f"{variant}: minus measured" for variant in frames],
                             "mean abs difference"],
                            [row for _, row in rows]).rstrip("\n").split("\n")
    return lines + [""]


def write_benchmark_page(out, command: str | None = None,
                         variants: Sequence[str] | None = None) -> Path:
    """``<out>/benchmark.md`` from the stored files only. ``command`` and ``variants``, when
    given, are first recorded in ``<out>/benchmark.json`` (which the page reads), so
    ``write_benchmark_page(out)`` regenerates the same bytes."""
    import json

    out = Path(out)
    if command is not None or variants is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / RECORD, {"command": command,
                                  "variants": list(variants or DEFAULT_VARIANTS)})
    stored = json.loads((out / RECORD).read_text()) if (out / RECORD).is_file() else {}
    lines = ["# Ground-truth faithfulness benchmark: shortcut phantoms", "",
             "Written by `fetalhc benchmark` from the files beside it. Each variant trains a "
             "model on phantoms whose HC evidence is planted, checks by intervention what the "
             "model uses, then asks every saliency method where the evidence is. A method "
             "that does not find a cue the model provably uses is not faithful, whatever its "
             "AOPC.", ""]
    if stored.get("command"):
        lines += [f"Command: `{stored['command']}`", ""]
    for variant in stored.get("variants", DEFAULT_VARIANTS):
        folder = out / variant
        lines += [f"## `{variant}`", "", VARIANT_TEXT.get(variant, variant) + ".", ""]
        if not (folder / DONE).is_file():
            lines += [f"Not scored yet: no `{variant}/{DONE}`.", ""]
            continue
        lines += _intervention_lines(folder)
        lines += _relevance_table(folder)
        lines += _cues_table(folder)
    lines += _in_short(out, stored.get("variants", DEFAULT_VARIANTS))
    return write_text(out / PAGE, "\n".join(lines).rstrip("\n") + "\n")


def relevance_ranking(out, variant: str = "marker",
                      metric: str = "marker abs mass share") -> pd.DataFrame:
    """Methods of one scored variant ordered by ``metric`` (mean, highest first), with CIs."""
    summary = pd.read_csv(Path(out) / variant / RELEVANCE_SUMMARY)
    chosen = summary[summary["metric"] == metric]
    return chosen.sort_values("mean", ascending=False, kind="stable").reset_index(drop=True)


__all__ = ["TEST_SEED_OFFSET", "relevance_ranking", "score_variant", "training_config",
           "write_benchmark_page"]

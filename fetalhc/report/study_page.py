"""The page of the explainability study: ``study.md`` written from ``study.json`` and
``tables/*.csv`` alone (:func:`write_page`; no model, no data, no clock: the same files give
the same bytes), with the file names and column titles it shares with
:mod:`fetalhc.report.study`, which computes those files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from fetalhc.files import markdown_table, write_text
from fetalhc.report.study_diagnosis import REFERENCE

STUDY_FILE, PAGE_FILE = "study.json", "study.md"
AOPC_PX, AOPC_MM = "aopc_morf_abs_error_px_original", "aopc_morf_abs_error_mm"
METRIC_TITLES = {
    AOPC_MM: "AOPC MoRF of |error|", AOPC_PX: "AOPC MoRF of |error|, the paper's unit",
    "aopc_lerf_abs_error_mm": "AOPC LeRF of |error|",
    "aopc_random_abs_error_mm": "AOPC random order of |error|",
    "aopc_morf_shift_mm": "AOPC MoRF of the shift from the unperturbed HC",
    "deletion_auc_abs_error_mm": "Deletion area of |error| (larger = better)",
    "insertion_auc_abs_error_mm": "Insertion area of |error| (smaller = better)",
    "band_ratio": "Contour-band ratio (positive relevance near the contour; 1 = chance)",
    "top_distance_mm": "Distance of the top pixels to the contour (smaller = closer)",
}
PAGE_METRICS = {"paper": (AOPC_MM, AOPC_PX, "aopc_lerf_abs_error_mm",
                          "aopc_random_abs_error_mm", "aopc_morf_shift_mm"),
                "rich": (AOPC_MM, "aopc_lerf_abs_error_mm", "aopc_random_abs_error_mm",
                         "deletion_auc_abs_error_mm", "insertion_auc_abs_error_mm",
                         "band_ratio", "top_distance_mm")}


def metric_units(metric: str) -> str:
    """The units of an evaluation metric, read from its name."""
    if metric.endswith("_px_original"):
        return "original px"
    if metric.endswith("_mm"):
        return "mm"
    return "ratio, 1 = chance" if "ratio" in metric else "1"


# ----------------------------------------------------------------------------- the page
def number(value, digits: int | None = None) -> str:
    """A number for the page: 2 significant decimals by size, a true minus sign, ``n/a``."""
    if value is None or not np.isfinite(float(value)):
        return "n/a"
    if digits is None:
        digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{float(value):.{digits}f}".replace("-", "−")


def _cell(rows) -> str:
    """``mean [CI low, CI high]`` of the first of ``rows`` (a frame or a row), or n/a."""
    if isinstance(rows, pd.DataFrame):
        if rows.empty:
            return "n/a"
        rows = rows.iloc[0]
    return (f"{number(rows['mean (units)'])} [{number(rows['CI low (units)'])}, "
            f"{number(rows['CI high (units)'])}]")


def write_page(out) -> Path:
    """Write ``<out>/study.md`` from ``study.json`` and ``tables/*.csv`` alone (no model,
    no data, no clock: the same files give the same bytes); returns its path."""
    out = Path(out)
    info = json.loads((out / STUDY_FILE).read_text())
    tables = out / "tables"
    names, methods = info["models"], info["methods"]
    summary = pd.read_csv(tables / "summary.csv")
    models = pd.read_csv(tables / "models.csv")
    paired = pd.read_csv(tables / "paired_vs_random.csv")
    beats = paired[paired["protocol"] == info["protocols"][0]]
    randomised = (pd.read_csv(tables / "randomisation.csv")
                  if (tables / "randomisation.csv").is_file() else None)
    images = sorted(set(models["images"]))
    parts = [
        "# Explainability study\n",
        f"Which saliency maps of these HC regression models are faithful, and does the seed "
        f"paper's ranking of methods hold? Models: {', '.join(f'`{n}`' for n in names)}; "
        f"{'/'.join(map(str, images))} images of each model's {'/'.join(sorted(set(models['split'])))} "
        f"split. Methods ({len(methods)}): {', '.join(methods)}. Protocols: "
        f"{', '.join(info['protocols'])}. Written by `fetalhc study` from the files beside it "
        "(`tables/`, `study.json`); `fetalhc.report.study_page.write_page(folder)` rewrites "
        "it from them alone. Command:\n",
        f"```bash\n{info.get('command') or '(not recorded: run through the library)'}\n```\n",
        "## In short\n", in_short(models, beats, randomised, tables, len(methods)),
        "\n## The seed paper's claims, decided\n",
        "Each claim of the paper (Zhang et al., iMIMIC 2020) tested on this study's images: "
        "paired differences per image, bootstrap 95 % CIs, sign-flip (or permutation) p "
        "values and Holm's correction over each family of comparisons "
        "(`fetalhc.report.study_claims`; `tables/paired_methods.csv` holds every pair). "
        "*undecided at this n*: no difference in either direction survives the correction.\n",
        _frame_table(pd.read_csv(tables / "claims.csv")),
        "\n## Models\n", _frame_table(models)]
    for protocol in info["protocols"]:
        values = info["settings"][protocol]
        parts.append(f"\n**{protocol} protocol**: {values['grid']} x {values['grid']} grid, "
                     f"{values['regions_per_step']} region(s) per step replaced by "
                     f"N(0, {values['noise_sd']:g}) noise, {values['steps']} steps, ranked by "
                     f"{values['aggregation']} relevance; metrics "
                     f"{', '.join(values['metrics'])}; {values['n_boot']} bootstrap "
                     "resamples for the 95 % CIs" + ("" if protocol != "paper" or values.get(
                         "protocol") else f" (the paper's at {values['image_size']} px, not 128)")
                     + ".\n")
    if (tables / "step_times.csv").is_file():
        times = pd.read_csv(tables / "step_times.csv")
        parts += ["\n## What was run, and how long it took\n",
                  "Wall and CPU time (user + system, all threads) of each step when it ran, "
                  "with the machine's cores and 1-minute load average before and after it "
                  "(n/a: the step ran in an earlier, interrupted invocation or untimed). "
                  "Other work on the machine slows a step; the load says how much ran. The "
                  "floor of a step that predicts is the forward passes it needs at the least "
                  "(a perturbed image shared by every method counted once; "
                  "`fetalhc.report.study_times.floor_passes`) at the model's forward rate measured "
                  "when it was studied; explaining (the explain step, the randomisation "
                  "inside the richer protocol) has no such floor.\n",
                  _frame_table(times)]
        totals = times.groupby("model", sort=False)["wall time (s)"].sum(min_count=1)
        parts.append("\nWhole study per model: " + "; ".join(
            f"`{name}` {number(value / 60.0)} min" for name, value in totals.items()) + ".\n")
    for protocol in info["protocols"]:
        parts.append(f"\n## {protocol.capitalize()} protocol\n")
        for metric in PAGE_METRICS[protocol]:
            rows = summary[(summary["protocol"] == protocol) & (summary["metric"] == metric)]
            if rows.empty:
                continue
            body = [[method] + [_cell(rows[(rows["model"] == name) & (rows["method"] == method)])
                                for name in names] for method in methods]
            parts += [f"\n**{METRIC_TITLES.get(metric, metric)}** (mean [95 % CI])\n",
                      markdown_table(["method"] + [f"{n} ({metric_units(metric)})"
                                                   for n in names], body)]
    parts += ["\n## Which maps beat a random order?\n",
              "Per image AOPC MoRF − AOPC random (mm), 95 % bootstrap CI, sign-flip p and "
              "Holm's correction over the methods of each model and protocol; a method "
              "beats random when its corrected difference is significant and below 0.\n",
              _frame_table(paired)]
    for name in names:
        mine = beats[(beats["model"] == name) & beats["beats random"]]
        parts.append(f"- `{name}`: {len(mine)} of {len(methods)} methods beat random"
                     f" ({', '.join(mine['method']) or 'none'}).")
    if randomised is not None:
        parts += ["\n## Model randomisation\n",
                  "Similarity of each map with the trained model's once every layer is "
                  "random (flagged: the map does not depend enough on the weights).\n",
                  _frame_table(randomised)]
    by_error = pd.read_csv(tables / "summary_by_error.csv")
    rows = by_error[by_error["metric"] == AOPC_MM]
    if not rows.empty:
        parts += ["\n## Low versus high prediction error\n",
                  "AOPC MoRF of |error| (mm) per error group (median split of each "
                  "model's images), mean [95 % CI].\n",
                  markdown_table(["protocol", "model", "method", "error group", "AOPC (mm)"],
                                 [[r["protocol"], r["model"], r["method"], r["error group"],
                                   _cell(r)] for _, r in rows.iterrows()])]
    parts += diagnosis_section(tables, info)
    parts.append("\n## Figures\n")
    parts += [f"![{key}]({path})\n" for key, path in info["figures"].items()]
    parts += ["\n## Against the seed paper\n",
              f"Reference: {info['paper']['source']}. {info['paper']['description']}\n",
              _frame_table(pd.read_csv(tables / "paper_reference.csv"))]
    if (tables / "paper_correlation.csv").is_file():
        parts += [f"\nSpearman's rho between our AOPC ranking (paper protocol, original px) "
                  f"and the paper's over the {len(info['paper_methods'])} methods both "
                  "evaluated; the CI comes from bootstrap resamples of our images, p is the "
                  "exact one-sided permutation probability.\n",
                  _frame_table(pd.read_csv(tables / "paper_correlation.csv")),
                  "\nRanks per method (1 = most negative AOPC = best):\n",
                  _frame_table(pd.read_csv(tables / "paper_ranks.csv"))]
    else:
        parts.append(f"\nA rank comparison needs at least 3 of the paper's methods evaluated "
                     f"with the paper protocol; this study has "
                     f"{len(info['paper_methods'])}.\n")
    return write_text(out / PAGE_FILE, "\n".join(parts).rstrip() + "\n")


def _frame_table(frame: pd.DataFrame) -> str:
    def cell(value):  # a stored table's value on the page
        if isinstance(value, bool | np.bool_):
            return "yes" if value else "no"
        return number(value) if isinstance(value, float | np.floating) else str(value)

    return markdown_table(list(frame.columns),
                          [[cell(v) for v in row] for row in frame.itertuples(index=False)])


# ----------------------------------------------------------------------------- summaries


def _joined(items) -> str:
    return ", ".join(items) or "none"


def in_short(models: pd.DataFrame, beats: pd.DataFrame, randomised: pd.DataFrame | None,
             tables: Path, n_methods: int) -> str:
    """The page's opening bullets, from the stored tables."""
    mae = models["MAE on the studied images (mm)"]
    lines = [f"- **Models**: {len(models)}, MAE {number(mae.min())} to {number(mae.max())} mm "
             "on the studied images (*Models*)."]
    passing: dict[str, set] = {}
    faithful = []
    for name in models["model"]:
        mine = beats[(beats["model"] == name) & beats["beats random"]]
        faithful.append(f"`{name}` {len(mine)} of {n_methods} ({_joined(mine['method'])})")
        if randomised is not None:
            rows = randomised[(randomised["model"] == name) & ~randomised["flagged"]]
            passing[name] = set(rows["method"])
    lines.append("- **Faithfulness** (a method beats a random order when its paired "
                 "MoRF − random AOPC is below 0, Holm-corrected over the methods): "
                 + "; ".join(faithful) + ".")
    if randomised is not None:
        lines.append("- **Sanity** (cascading model randomisation; passing = the map changes "
                     "when the weights do): " + "; ".join(
                         f"`{name}` {len(found)} of {n_methods} ({_joined(sorted(found))})"
                         for name, found in passing.items()) + ".")
        beating = beats[beats["beats random"]]
        both = sorted({method for model, method in zip(beating["model"], beating["method"],
                                                       strict=True)
                       if method in passing.get(model, set())})
        lines.append(f"- **Both** (beats random and passes randomisation for at least one "
                     f"model): {_joined(both)}.")
    if (tables / "perturbation_strength.csv").is_file():
        strength = pd.read_csv(tables / "perturbation_strength.csv")
        strength = strength[strength["metric"] == "random_shift_percent"]
        lines.append("- **Perturbations** (how far a random order of replaced regions moves "
                     "the HC, mean |shift| as % of HC over the curve): " + "; ".join(
                         f"`{name}` " + ", ".join(f"{r['perturbation']} {number(r['mean'])}"
                                                  for _, r in rows.iterrows())
                         for name, rows in strength.groupby("model", sort=False))
                     + " (*Why a map may not beat random*).")
    if (tables / "claims.csv").is_file():
        verdicts = pd.read_csv(tables / "claims.csv")["verdict"].value_counts()
        lines.append("- **The paper's claims**: " + ", ".join(
            f"{count} {verdict}" for verdict, count in verdicts.items())
            + " (*The seed paper's claims, decided*).")
    if (tables / "paper_correlation.csv").is_file():
        rho = pd.read_csv(tables / "paper_correlation.csv")
        lines.append("- **Against the seed paper** (Spearman rho of the AOPC ranks, 95 % CI): "
                     + "; ".join(f"`{r['model']}` vs {r['paper model']} "
                                 f"{number(r['Spearman rho (1)'])} [{number(r['rho CI low (1)'])}, "
                                 f"{number(r['rho CI high (1)'])}]" for _, r in rho.iterrows())
                     + ".")
    return "\n".join(lines) + "\n"


def diagnosis_section(tables: Path, info: dict) -> list[str]:
    """*Why a method may not beat random*: how far each perturbation moves the prediction
    in a random order, which perturbation lets the most methods beat random, and how much
    relevance lies outside the head (``perturbation_strength.csv``,
    ``perturbation_gap.csv``, ``relevance_outside_head.csv``)."""
    parts = []
    strength_file, gap_file = tables / "perturbation_strength.csv", tables / "perturbation_gap.csv"
    if strength_file.is_file():
        strength = pd.read_csv(strength_file)
        wide = strength[strength["metric"].isin(["random_shift_mm", "random_shift_percent"])]
        titles = {"random_shift_mm": "mean |shift| (mm)",
                  "random_shift_percent": "mean |shift| (% of HC)"}
        body = [[r["model"], r["perturbation"], titles[r["metric"]],
                 f"{number(r['mean'])} [{number(r['CI low'])}, {number(r['CI high'])}]",
                 int(r["images"])] for _, r in wide.iterrows()]
        parts += ["\n## Why a map may not beat random: the perturbations\n",
                  "How far replacing regions in a random order moves each model's prediction "
                  "at all (the random curve every MoRF curve is compared with), per "
                  "perturbation on the paper's 4 x 4 grid: the mean |shift| of the HC over "
                  "the 16 points of the curve (mm, and as % of the unperturbed HC), 95 % CI "
                  "(`fetalhc.evaluate.diagnosis`). noise: N(0, 0.3) (the paper's); mean: the "
                  "image mean; blur: Gaussian of 4 px; speckle: the image's own pixels "
                  "shuffled (its intensity histogram, no structure).\n",
                  markdown_table(["model", "perturbation", "measure", "mean [95 % CI]",
                                  "images"], body)]
        reference = info.get("compare_diagnosis")
        if reference:
            parts.append(
                f"\n*phantoms (reference)*: the same step on {reference['images']} phantoms "
                f"(`{reference['path']}`): the recipe's network trained "
                f"{reference['overrides']['train.epochs']} epochs on "
                f"{reference['data']}, MAE {number(reference['MAE on the studied images (mm)'])}"
                f" mm, mean HC {number(reference['mean reference HC (mm)'])} mm. Command: "
                f"`{reference['command']}`.\n")
    if gap_file.is_file():
        gap = pd.read_csv(gap_file)
        counts = (gap.groupby(["model", "perturbation"], sort=False)["beats random"].sum()
                  .unstack("perturbation"))
        images = int(gap["images"].max())
        parts += [f"\nMethods (of {gap['method'].nunique()}) whose MoRF order beats the random "
                  f"order (95 % CI of the paired AOPC difference below 0) under each "
                  f"perturbation, on the first {images} images of each model:\n",
                  markdown_table(["model", *counts.columns],
                                 [[name, *[str(int(v)) for v in row]]
                                  for name, row in counts.iterrows()])]
        # the choice is made on the studied models; the phantom reference is context
        studied = counts.drop(index=REFERENCE, errors="ignore")
        mean_counts = studied.mean(axis=0).sort_values(ascending=False)
        used = info["settings"][info["protocols"][0]].get("perturbation", "noise")
        best = mean_counts.index[0]
        parts.append(
            f"\nThe study's protocols replace regions with **{used}** (the paper's, kept so "
            f"that its numbers compare). By this evidence {best} separates the most methods "
            f"from random ({number(mean_counts.iloc[0], 1)} per studied model on average"
            + (f"): {used} is also the choice the evidence makes." if best == used else
               f", against {number(mean_counts.get(used, float('nan')), 1)} for {used}); "
               f"read the faithfulness verdicts under {used} with that in mind.") + "\n")
    outside_file = tables / "relevance_outside_head.csv"
    if outside_file.is_file():
        outside = pd.read_csv(outside_file)
        mass = outside[outside["metric"] == "outside_mass"].set_index(["model", "method"])
        area = outside[outside["metric"] == "outside_area"].set_index(["model", "method"])
        body = [[model, method,
                 f"{number(r['mean'])} [{number(r['CI low'])}, {number(r['CI high'])}]",
                 number(area.loc[(model, method), "mean"])]
                for (model, method), r in mass.iterrows()]
        parts += ["\n**Is the relevance diffuse?** Share of each method's positive relevance "
                  "outside the annotated head (richer protocol's images), against the share "
                  "of the image outside the head (what a map spread evenly would give).\n",
                  markdown_table(["model", "method", "relevance outside the head (1)",
                                  "image outside the head (1)"], body)]
    return parts


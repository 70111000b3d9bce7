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
    beats = pd.read_csv(tables / "beats_random.csv")
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
        parts += ["\n## What was run, and how long it took\n",
                  "Wall and CPU time (user + system, all threads) of each step when it ran, "
                  "with the machine's cores and 1-minute load average before and after it "
                  "(n/a: the step ran in an earlier, interrupted invocation or untimed). "
                  "Other work on the machine slows a step; the load says how much ran.\n",
                  _frame_table(pd.read_csv(tables / "step_times.csv"))]
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
              "Per image AOPC MoRF − AOPC random (mm); a method beats random when the whole "
              "95 % CI is below 0.\n", _frame_table(beats)]
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
                  _frame_table(pd.read_csv(tables / "paper_ranks.csv")),
                  "\n### The paper's claims, checked\n",
                  "Each claim of the paper's findings against this study's numbers (derived "
                  "from the tables above; descriptive: no multiple-comparison correction).\n",
                  _frame_table(paper_claims(tables))]
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
FAMILIES = {"small_cnn": "plain", "vgg16": "plain", "small_resnet": "residual",
            "resnet50": "residual"}
NEAR_TOP = 3  # "at or near the top": among the best 3 of the paper's 8 methods


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
    lines.append("- **Faithfulness** (a method beats a random order when the 95 % CI of its "
                 "paired MoRF − random AOPC is below 0): " + "; ".join(faithful) + ".")
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
    if (tables / "paper_correlation.csv").is_file():
        rho = pd.read_csv(tables / "paper_correlation.csv")
        lines.append("- **Against the seed paper** (Spearman rho of the AOPC ranks, 95 % CI): "
                     + "; ".join(f"`{r['model']}` vs {r['paper model']} "
                                 f"{number(r['Spearman rho (1)'])} [{number(r['rho CI low (1)'])}, "
                                 f"{number(r['rho CI high (1)'])}]" for _, r in rho.iterrows())
                     + "; the paper's claims one by one are in the last section.")
    return "\n".join(lines) + "\n"


def _verdict(hits: int, total: int) -> str:
    return "yes" if total and hits == total else "partly" if hits else "no"


def paper_claims(tables: Path) -> pd.DataFrame:
    """The seed paper's claims (``paper's claim``, ``our numbers``, ``holds here?``) checked
    against ``paper_ranks.csv``, ``models.csv``, ``summary.csv`` and
    ``summary_by_error.csv``."""
    ranked = (pd.read_csv(tables / "paper_ranks.csv")
              .drop_duplicates(["model", "method"]).set_index(["model", "method"])["our rank"])
    models = pd.read_csv(tables / "models.csv").set_index("model")
    names = list(dict.fromkeys(ranked.index.get_level_values(0)))
    n = len(set(ranked.index.get_level_values(1)))
    family = {name: FAMILIES.get(str(models.loc[name].get("backbone")), "other")
              for name in names}
    loss = {name: str(models.loc[name].get("loss", "")).upper() for name in names}
    rows = []

    def rank(name, method):
        return ranked.get((name, method), np.nan)

    for method, label in (("input_x_gradient", "Input x Gradient"), ("lrp_z", "LRP-z")):
        near = [m for m in names if rank(m, method) <= NEAR_TOP]
        rows.append([f"{label} is at or near the top (AOPC) for every model and loss",
                     f"in our top {NEAR_TOP} of {n} for {len(near)} of {len(names)} models ("
                     + ", ".join(f"{m} #{number(rank(m, method), 1)}" for m in names) + ")",
                     _verdict(len(near), len(names))])
    plain_mae = [m for m in names if family[m] == "plain" and loss[m] == "MAE"]
    rows.append(["IG is the best method for VGG16 (plain) with the MAE loss",
                 "; ".join(f"IG ranks #{number(rank(m, 'integrated_gradients'), 1)} of {n} "
                           f"for {m}" for m in plain_mae) or "no plain MAE model",
                 _verdict(sum(rank(m, "integrated_gradients") == 1 for m in plain_mae),
                          len(plain_mae))])
    weaker = [m for m in names if rank(m, "integrated_gradients") > rank(m, "gradient")]
    rows.append(["IG fails in some settings (ResNet50 / MAE: IG −5.60 px, worse than "
                 "Gradient −11.53)", f"IG ranks below Gradient for {len(weaker)} of "
                 f"{len(names)} models ({_joined(weaker)})", "yes" if weaker else "no"])
    summary = pd.read_csv(tables / "summary.csv")
    paper_rows = summary[(summary["protocol"] == "paper") & (summary["metric"] == AOPC_PX)]
    for each in sorted(set(loss.values())):
        plain = [m for m in names if family[m] == "plain" and loss[m] == each]
        residual = [m for m in names if family[m] == "residual" and loss[m] == each]
        for a, b in ((a, b) for a in plain for b in residual):
            ours = {m: paper_rows[paper_rows["model"] == m].set_index("method")
                    for m in (a, b)}
            shared = [m for m in ours[a].index if m in ours[b].index]
            better = [m for m in shared if ours[b].loc[m, "CI high (units)"]
                      < ours[a].loc[m, "CI low (units)"]]
            worse = [m for m in shared if ours[b].loc[m, "CI low (units)"]
                     > ours[a].loc[m, "CI high (units)"]]
            rows.append([f"ResNet50 explains better than VGG16 (here {b} vs {a}, {each} loss)",
                         f"residual AOPC (original px) lower with separate CIs for "
                         f"{len(better)} of {len(shared)} methods, higher for {len(worse)} "
                         "(the models' errors differ too)",
                         "undecided at this n" if not better and not worse else
                         _verdict(len(better), len(shared)) if not worse else "no"])
    band = summary[(summary["protocol"] == "rich") & (summary["metric"] == "band_ratio")]
    if not band.empty:
        agree, detail = 0, []
        for name in names:
            order = (band[band["model"] == name].sort_values("mean (units)", ascending=False)
                     ["method"].tolist())
            upper = set(order[:len(order) // 2])
            agree += {"guided_backprop", "deep_taylor"} <= upper and not (
                {"gradient", "deconvnet"} & upper)
            detail.append(f"{name}: {', '.join(order[:3])}")
        rows.append(["Guided Backprop and DeepTaylor trace the contour most clearly; Gradient "
                     "and DeConvNet show little (shown, not measured)",
                     f"GB and DT in the upper half and G and DCN in the lower half of the "
                     f"methods by contour-band ratio for {agree} of {len(names)} models (top "
                     f"three: {'; '.join(detail)})", _verdict(agree, len(names))])
    by_error = pd.read_csv(tables / "summary_by_error.csv")
    by_error = by_error[(by_error["metric"] == AOPC_MM) & (by_error["protocol"] == "paper")]
    if not by_error.empty:
        # the groups are "error <= T mm" and "error > T mm" with T the model's median
        half = np.where(by_error["error group"].str.contains("<="), "low", "high")
        wide = by_error.assign(half=half).pivot_table(index=["model", "method"],
                                                      columns="half", values="mean (units)")
        high, low = "high", "low"
        worse = int((wide[high] > wide[low]).sum())
        rows.append(["Map quality is worse where the prediction error is high (shown with "
                     "examples, not measured)",
                     f"AOPC MoRF (mm) less negative in the high-error half than in the "
                     f"low-error half for {worse} of {len(wide)} model-method pairs (means; "
                     "*Low versus high prediction error*)", _verdict(worse, len(wide))])
    return pd.DataFrame(rows, columns=["paper's claim", "our numbers", "holds here?"])

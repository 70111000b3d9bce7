"""``fetalhc evaluate``: score explanation methods on a split — AOPC (mm), deletion /
insertion, localisation against the skull contour, model randomisation.

Writes into ``--out``::

    per_image.csv            one row per method and image, metric columns with units
    summary.csv / .md        methods x metrics, mean [95 % bootstrap CI] over images
    summary_by_error.csv/.md the same, split by the prediction error of each image
    randomisation.csv        cascade stages per method (when asked for)
    settings.json            what was run
    figures/*.png            curves, boxplots, error-split bars
    methods/<name>/          per-method results (also perturbation_steps.csv: HC, error and
                             shift per image, order and step); finished methods are skipped

All files are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from fetalhc.cli._files import write_csv, write_text

METRIC_LABELS = {"aopc_morf_abs_error_mm": "AOPC, MoRF, |error| (mm)",
                 "deletion_auc_abs_error_mm": "deletion AUC, |error| (mm)",
                 "band_ratio": "contour-band relevance ratio (1 = chance)"}
RESULT_FILES = ("per_image.csv", "curves.csv", "randomisation.csv")


# ----------------------------------------------------------------------------- file helpers
def _split_list(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def _float_list(text: str | None, what: str) -> list[float] | None:
    items = _split_list(text)
    if not items:
        return None
    try:
        return [float(item) for item in items]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated numbers; got {text!r}") from None


# ----------------------------------------------------------------------------- inputs
def _resolve_inputs(model_path: Path, data_dir: Path, split: str | None,
                    image_size: int | None):
    """Model file, input size, index rows and split name, loading the model only if the
    input size is not known from a run folder (so bad options fail fast)."""
    import fetalhc
    from fetalhc.data import load_index
    from fetalhc.training import load_run, run_split_index

    model_path = Path(model_path)
    run, model = None, None
    if model_path.is_dir():
        run = load_run(model_path)
        model_file = run.model_path
    else:
        model_file = model_path
        if (model_path.parent / "config.toml").is_file():
            run = load_run(model_path.parent)
    if image_size is None:
        if run is not None:
            image_size = run.image_size
        else:
            model = fetalhc.load_model(model_file)
            side = model.inputs[0].shape[1]
            if side is None:
                raise ValueError(f"{model_file} takes any input size; give --image-size")
            image_size = int(side)
    if run is not None:
        split = split or "test"
        index = load_index(data_dir, "training", validate=False) if split == "all" else \
            run_split_index(run.config, data_dir, split)
    else:
        split = split or "all"
        if split not in ("all", "challenge"):
            raise ValueError(
                f"{model_file} has no run folder (config.toml beside it), so only --split all "
                "(the whole training part of --data) or --split challenge is possible"
            )
        index = load_index(data_dir, "challenge" if split == "challenge" else "training",
                           validate=False)
    return model_file, model, int(image_size), index.reset_index(drop=True), split


def _check_annotations(index, data_dir: Path) -> None:
    missing = []
    for filename, path in zip(index["filename"], index.get("annotation_path", [None] *
                                                           len(index)), strict=True):
        if path is None or (isinstance(path, float)) or not Path(str(path)).is_file():
            stem = Path(str(filename)).stem
            missing.append(f"{stem}_Annotation.png")
    if missing:
        shown = ", ".join(missing[:5]) + (f", ... ({len(missing)} in all)"
                                          if len(missing) > 5 else "")
        raise ValueError(
            f"localisation needs the contour annotations, but {data_dir} lacks "
            f"{len(missing)} of them: {shown}; drop 'localisation' from --metrics or use "
            "an annotated split"
        )


def _check_methods(methods: list[str], external: bool = False) -> None:
    from fetalhc.explain import available_methods

    known = available_methods()
    if not methods and not external:
        raise ValueError(f"no method given; available: {', '.join(known)}")
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; available: "
                         f"{', '.join(known)}")


def _settings(options: dict):
    from fetalhc.evaluate import EvaluationSettings

    values = {
        "grid": options["grid"], "steps": options["steps"],
        "regions_per_step": options["regions_per_step"],
        "perturbation": options["perturbation"], "noise_sd": options["noise_sd"],
        "blur_sigma": options["blur_sigma"], "aggregation": options["aggregation"],
        "recompute": options["recompute"], "deletion_unit": options["deletion_unit"],
        "deletion_steps": options["deletion_steps"], "baseline": options["baseline"],
        "band_mm": options["band_mm"], "relevance": options["relevance"],
        "top_percent": options["top_percent"], "similarity": options["similarity"],
        "similarity_threshold": options["similarity_threshold"],
        "randomisation_images": options["randomisation_images"],
        "n_boot": options["n_boot"], "seed": options["seed"],
        "batch_size": options["batch_size"], "precision": options["precision"],
        "explain_target": options["target"],
    }
    if options["protocol"] == "paper":
        # The paper fixes these; other options (deletion, localisation, ...) still apply.
        for key in ("grid", "steps", "regions_per_step", "perturbation", "noise_sd",
                    "aggregation", "recompute"):
            values.pop(key)
        return EvaluationSettings.paper(**values)
    if options["protocol"] is not None:
        raise ValueError(f"unknown protocol {options['protocol']!r}; known: paper")
    return EvaluationSettings(**values)


# ----------------------------------------------------------------------------- run
def evaluate_command(model_path: Path, data_dir: Path, methods: list[str], metrics,
                     out: Path, split: str | None = None, limit: int | None = None,
                     image_size: int | None = None, error_threshold_mm=None,
                     error_quantiles=None, figures: bool = True, progress: bool = False,
                     maps_dir: Path | None = None, shard: str | None = None, **options) -> dict:
    """Library side of ``fetalhc evaluate``; returns the paths it wrote and the summary.

    ``shard="i/n"`` (1-based, see ``fetalhc.data.shards``) evaluates only every n-th image of
    the split (after ``limit``), with the noise and random orders those images get in the
    whole set, and also keeps the exact per-image numbers (``methods/<m>/shard_*.npz``) and
    ``shard.json``, from which ``fetalhc merge`` rebuilds what one unsharded run writes.
    ``randomisation`` (a whole-set metric) is refused with a shard."""
    import numpy as np
    import pandas as pd
    from tqdm.auto import tqdm

    from fetalhc.data import load_arrays
    from fetalhc.evaluate import (
        evaluate_maps,
        parse_metrics,
    )
    from fetalhc.explain import explain

    metrics = parse_metrics(metrics)
    external = set()
    if maps_dir is not None:
        if not Path(maps_dir).is_dir():
            raise FileNotFoundError(f"--maps folder not found: {maps_dir}")
        external = {m for m in methods if (Path(maps_dir) / f"{m}.npy").is_file()}
    _check_methods([m for m in methods if m not in external], bool(external))
    settings = _settings(options)
    if external and ("randomisation" in metrics or settings.recompute):
        from fetalhc.explain import available_methods

        foreign = sorted(external - set(available_methods()))
        if foreign:
            raise ValueError(
                f"maps of {', '.join(foreign)} come from --maps and cannot be recomputed for "
                "randomisation or --recompute; drop those or use an explain method"
            )
    if error_threshold_mm is not None and error_quantiles is not None:
        raise ValueError("give either --error-threshold-mm or --error-quantiles, not both")
    model_file, model, size, index, split = _resolve_inputs(model_path, data_dir, split,
                                                            image_size)
    if limit is not None:
        index = index.head(int(limit)).reset_index(drop=True)
    total, positions = len(index), None
    if shard is not None:
        from fetalhc.data.shards import select_shard

        if "randomisation" in metrics:
            raise ValueError("randomisation is a whole-set metric and cannot be sharded; run "
                             "it without --shard")
        index, positions = select_shard(index, shard)
    settings.validate((len(index), size, size, 1), metrics)
    localisation = "localisation" in metrics
    if localisation:
        _check_annotations(index, data_dir)
    if model is None:
        import fetalhc

        model = fetalhc.load_model(model_file)
    from fetalhc.models import check_input_size

    check_input_size(model, size)

    arrays = load_arrays(index, image_size=size, with_annotation=localisation)
    images = arrays["image"]
    pixel_size = arrays["pixel_size_mm"]
    reference = arrays["hc_mm"]
    pixel_size_original = index["pixel_size_mm"].to_numpy(np.float32)
    filenames = arrays["filename"]

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run_settings = {"model": str(model_path), "data": str(data_dir), "split": split,
                    "limit": limit, "image_size": size, "metrics": list(metrics),
                    "filenames": [str(f) for f in filenames], **settings.as_dict()}
    write_text(out / "settings.json", json.dumps({**run_settings, "methods": methods},
                                                  indent=2) + "\n")

    per_image, curves, randomisation = [], [], []
    bar = tqdm(methods, desc="evaluate", unit="method", disable=not progress, leave=False)
    for method in bar:
        bar.set_postfix_str(method)
        folder = out / "methods" / method
        done_file = folder / "done.json"
        if done_file.is_file() and json.loads(done_file.read_text()) == run_settings:
            tables = {name: pd.read_csv(folder / name) for name in RESULT_FILES
                      if (folder / name).is_file()}
        else:
            if maps_dir is not None and (Path(maps_dir) / f"{method}.npy").is_file():
                maps = np.load(Path(maps_dir) / f"{method}.npy", allow_pickle=False)
                if positions is not None and len(maps) == total != len(positions):
                    maps = maps[positions]  # maps of the whole split → this shard's
            else:
                maps = explain(model, images, method, target=settings.explain_target,
                               pixel_size=pixel_size, reference=reference,
                               **settings.explain_options)
            result = evaluate_maps(
                model, images, maps, pixel_size, reference, metrics=metrics,
                settings=settings, annotation=arrays.get("annotation"),
                pixel_size_original_mm=pixel_size_original, method=method,
                positions=positions)
            tables = {"per_image.csv": result.per_image.assign(filename=filenames),
                      "curves.csv": result.curves}
            if result.randomisation is not None:
                tables["randomisation.csv"] = result.randomisation
            if result.steps is not None:  # per image, order and step; kept for analysis
                write_csv(result.steps.assign(filename=filenames[result.steps["image"]]),
                           folder / "perturbation_steps.csv")
            for name, frame in tables.items():
                write_csv(frame, folder / name)
            if shard is not None:
                _write_shard_tables(folder, result, filenames, positions)
            write_text(done_file, json.dumps(run_settings, indent=2) + "\n")
        per_image.append(tables["per_image.csv"].assign(method=method))
        curves.append(tables["curves.csv"].assign(method=method))
        if "randomisation.csv" in tables:
            randomisation.append(tables["randomisation.csv"].assign(method=method))

    if shard is not None:
        from fetalhc.data.shards import format_shard, parse_shard

        write_text(out / "shard.json", json.dumps({
            "kind": "evaluate", "shard": format_shard(parse_shard(shard)), "total": total,
            "positions": [int(p) for p in positions], "methods": list(methods),
            "error_threshold_mm": error_threshold_mm, "error_quantiles": error_quantiles,
            "figures": figures}, indent=2) + "\n")
    written, summary, random_frame = _write_summaries(
        out, per_image, curves, randomisation, methods, split, settings, error_threshold_mm,
        error_quantiles, figures)
    return {"written": written, "summary": summary, "randomisation": random_frame}


def _write_shard_tables(folder: Path, result, filenames, positions) -> None:
    """The exact per-image numbers of one shard: per-image metrics, the per-image curves
    behind curves.csv, and the per-step table with the images' positions in the split."""
    import numpy as np

    from fetalhc.data.shards import save_table

    save_table(result.per_image.assign(filename=filenames), folder / "shard_per_image.npz")
    curve_arrays = {"labels": np.asarray([json.dumps({**label, "quantity": quantity})
                                          for label, quantity, _, _ in result.curve_values or []],
                                         dtype=str)}
    for number, (_, _, x, values) in enumerate(result.curve_values or []):
        curve_arrays[f"x{number}"] = np.asarray(x)
        curve_arrays[f"values{number}"] = np.asarray(values)
    with open(folder / "shard_curves.npz", "wb") as stream:
        np.savez(stream, **curve_arrays)
    if result.steps is not None:
        steps = result.steps.assign(filename=filenames[result.steps["image"]])
        steps["image"] = np.asarray(positions)[steps["image"].to_numpy()]
        save_table(steps, folder / "shard_steps.npz")


def _write_summaries(out: Path, per_image, curves, randomisation, methods, split, settings,
                     error_threshold_mm, error_quantiles, figures):
    """Tables, Markdown and figures from the per-method results (shared with ``merge``)."""
    import numpy as np
    import pandas as pd

    from fetalhc.evaluate import error_groups, markdown_table, summary_table, wide_table

    table = pd.concat(per_image, ignore_index=True)
    if error_threshold_mm is None and error_quantiles is None:
        error_quantiles = [0.5]
    table["error_group"] = error_groups(table["abs_error_mm"], threshold_mm=error_threshold_mm,
                                        quantiles=error_quantiles)
    first = ["method", "filename", "hc_pred_mm", "reference_mm", "abs_error_mm", "error_group"]
    table = table[first + [c for c in table.columns if c not in first]]
    summary = summary_table(table, by=("method",), confidence=settings.confidence,
                            n_boot=settings.n_boot, seed=settings.seed)
    by_error = summary_table(table, by=("method", "error_group"),
                             confidence=settings.confidence, n_boot=settings.n_boot,
                             seed=settings.seed)
    # Error groups from the smallest to the largest errors, methods in the given order.
    typical = table.groupby("error_group")["abs_error_mm"].median().fillna(np.inf)
    by_error = by_error.assign(
        _method=by_error["method"].map({m: i for i, m in enumerate(methods)}),
        _group=by_error["error_group"].map(typical.rank(method="first")),
    ).sort_values(["_method", "_group"], kind="stable").drop(columns=["_method", "_group"])
    written = {"per_image": out / "per_image.csv", "summary": out / "summary.csv",
               "summary_md": out / "summary.md", "by_error": out / "summary_by_error.csv",
               "by_error_md": out / "summary_by_error.md"}
    write_csv(table, written["per_image"])
    write_csv(summary, written["summary"])
    write_csv(by_error, written["by_error"])
    markdown = [f"# Explanation evaluation ({split} split, {table['filename'].nunique()} "
                f"images)\n", "Mean over images [95 % bootstrap CI]. AOPC: more negative is "
                "better; deletion AUC: larger is better; insertion AUC: smaller is better; "
                "band / inside ratios: 1 = chance. Units in column names.\n",
                *_family_tables(summary, markdown_table, wide_table)]
    random_frame = None
    if randomisation:
        random_frame = pd.concat(randomisation, ignore_index=True)
        written["randomisation"] = out / "randomisation.csv"
        write_csv(random_frame, written["randomisation"])
        final = random_frame.groupby("method", sort=False).agg(
            similarity=("similarity", "first"), final_similarity=("final_similarity", "first"),
            flagged=("flagged", "first")).round(3)
        markdown += ["\n## Model randomisation (cascading, top layer first)\n",
                     "A flagged method's maps stay similar to the trained model's once every "
                     "layer is random.\n", markdown_table(final)]
    write_text(written["summary_md"], "\n".join(markdown))
    write_text(written["by_error_md"], "\n".join(
        ["# Explanation evaluation split by prediction error\n"]
        + _family_tables(by_error, markdown_table, wide_table, ("method", "error_group"))))
    if figures:
        written.update(_figures(out / "figures", table, pd.concat(curves, ignore_index=True),
                                by_error))
    return written, summary, random_frame


FAMILIES = (("AOPC, region perturbation (more negative is better)", "aopc_"),
            ("Deletion / insertion, normalised areas", "deletion_"),
            ("", "insertion_"),
            ("Localisation against the annotated contour", ""))


def _family_tables(summary, markdown_table, wide_table, index=("method",)) -> list[str]:
    """One Markdown table per metric family (methods x metrics), so tables stay readable."""
    parts, used = [], set()
    metrics = list(dict.fromkeys(summary["metric"]))
    for position, (title, prefix) in enumerate(FAMILIES):
        if prefix == "deletion_":  # deletion and insertion share one table
            chosen = [m for m in metrics if m.startswith(("deletion_", "insertion_"))]
        elif prefix == "insertion_":
            continue
        elif position == len(FAMILIES) - 1:
            chosen = [m for m in metrics if m not in used]
        else:
            chosen = [m for m in metrics if m.startswith(prefix)]
        used.update(chosen)
        if chosen:
            rows = summary[summary["metric"].isin(chosen)]
            parts += [f"\n## {title}\n", markdown_table(wide_table(rows, index=index))]
    return parts


def _figures(folder: Path, table, curves, by_error) -> dict:
    import numpy as np

    from fetalhc.viz.curves import (
        deletion_insertion_figure,
        error_split_bars,
        localisation_boxplot,
        perturbation_figure,
        save_figure,
    )

    written = {}
    labels = {"abs_error_mm": "|predicted HC - reference| (mm)",
              "shift_mm": "|predicted HC - unperturbed prediction| (mm)",
              "abs_error_px_original": "|predicted HC - reference| (original px)"}

    def nested(frame):
        result = {}
        for (method, panel), group in frame.groupby(["method", "panel"], sort=False):
            group = group.sort_values("x")
            result.setdefault(method, {})[panel] = (group["x"].to_numpy(),
                                                    group["mean"].to_numpy(),
                                                    group["ci_low"].to_numpy(),
                                                    group["ci_high"].to_numpy())
        return result

    if len(curves):
        perturbation = curves[curves["curve"] == "perturbation"].assign(
            panel=lambda f: f["order"])
        for quantity, group in perturbation.groupby("quantity", sort=False):
            if not group["mean"].notna().any():  # no references (e.g. challenge split)
                continue
            path = folder / f"perturbation_{quantity}.png"
            written[f"figure_perturbation_{quantity}"] = save_figure(
                perturbation_figure(nested(group), ylabel=labels[quantity]), path)
        deletion = curves[curves["curve"].isin(["deletion", "insertion"])].assign(
            panel=lambda f: f["curve"])
        for quantity, group in deletion.groupby("quantity", sort=False):
            if not group["mean"].notna().any():
                continue
            path = folder / f"deletion_insertion_{quantity}.png"
            written[f"figure_deletion_{quantity}"] = save_figure(
                deletion_insertion_figure(nested(group), ylabel=labels[quantity]), path)
    for column, ylabel, chance in (
            ("band_ratio", "contour-band ratio (1 = chance)", 1.0),
            ("inside_ratio", "inside-head ratio (1 = chance)", 1.0),
            ("top_distance_mm", "top pixels to contour (mm)", None)):
        if column in table:
            values = {m: g[column].to_numpy() for m, g in table.groupby("method", sort=False)}
            written[f"figure_{column}"] = save_figure(
                localisation_boxplot(values, ylabel, chance=chance),
                folder / f"localisation_{column}.png")
    preferred = ["aopc_morf_abs_error_mm", "deletion_auc_abs_error_mm", "band_ratio"]
    metric = next((m for m in preferred if m in set(by_error["metric"])), None)
    if metric is not None:
        rows = by_error[by_error["metric"] == metric]
        methods = list(dict.fromkeys(rows["method"]))
        typical = table.groupby("error_group")["abs_error_mm"].median()
        groups = [g for g in typical.sort_values().index if g != "no reference"
                  and g in set(rows["error_group"])]
        if groups:
            shape = (len(methods), len(groups))
            means, lows, highs = (np.full(shape, np.nan) for _ in range(3))
            for row in rows.itertuples():
                if row.error_group in groups:
                    i, j = methods.index(row.method), groups.index(row.error_group)
                    means[i, j], lows[i, j], highs[i, j] = row.mean, row.ci_low, row.ci_high
            written["figure_error_split"] = save_figure(
                error_split_bars(groups, methods, means, lows, highs,
                                 ylabel=METRIC_LABELS.get(metric, metric)),
                folder / f"error_split_{metric}.png")
    return written


@click.command("evaluate")
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path),
              help="Run folder (or the model.keras inside one), or a bare .keras file.")
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path),
              help="HC18-layout data folder (real or phantom).")
@click.option("--methods", default="gradient,input_x_gradient,integrated_gradients",
              show_default=True, help="Comma-separated explain methods.")
@click.option("--metrics", default="aopc,deletion,insertion", show_default=True,
              help="Comma-separated: aopc, deletion, insertion, localisation, randomisation.")
@click.option("--protocol", default=None,
              help="'paper': 128 px, 4 x 4 grid, mean signed relevance, N(0, 0.3), 15 steps.")
@click.option("--split", default=None,
              help="train/val/test/challenge of the run (default test), or all.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="First N images.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--image-size", type=int, default=None, help="Override the input size S.")
@click.option("--grid", type=int, default=4, show_default=True, help="Regions per side.")
@click.option("--steps", type=int, default=None, help="Perturbation steps (default R - 1).")
@click.option("--regions-per-step", type=int, default=1, show_default=True)
@click.option("--perturbation", default="noise", show_default=True,
              help="noise, mean, zeros or blur.")
@click.option("--noise-sd", type=float, default=0.3, show_default=True)
@click.option("--blur-sigma", type=float, default=4.0, show_default=True, help="Pixels.")
@click.option("--aggregation", default="mean", show_default=True,
              help="Region ranking: mean (signed) or abs.")
@click.option("--recompute/--once", default=False, show_default=True,
              help="Recompute maps on the perturbed image before every step.")
@click.option("--deletion-unit", default="pixels", show_default=True, help="pixels or regions.")
@click.option("--deletion-steps", type=int, default=20, show_default=True)
@click.option("--baseline", default="zeros", show_default=True,
              help="Deletion / insertion baseline: zeros, mean, blur or noise.")
@click.option("--band-mm", type=float, default=3.0, show_default=True,
              help="Half-width of the contour band (mm).")
@click.option("--relevance", default="positive", show_default=True, help="positive or abs.")
@click.option("--top-percent", type=float, default=5.0, show_default=True)
@click.option("--similarity", default="spearman_abs", show_default=True,
              help="Randomisation flag: spearman, spearman_abs or ssim.")
@click.option("--similarity-threshold", type=float, default=0.5, show_default=True)
@click.option("--randomisation-images", type=int, default=8, show_default=True)
@click.option("--target", default="hc_mm", show_default=True, help="Explanation target.")
@click.option("--error-threshold-mm", default=None, help="Error split at these mm (a,b,...).")
@click.option("--error-quantiles", default=None, help="Error split at quantiles (default 0.5).")
@click.option("--n-boot", type=int, default=2000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True,
              help="Images per forward pass (memory bound).")
@click.option("--precision", default="float32", show_default=True,
              help="float32, mixed_float16 or mixed_bfloat16 forward passes.")
@click.option("--maps", "maps_dir", type=click.Path(path_type=Path), default=None,
              help="Folder of precomputed maps <method>.npy, float (N, S, S), in the order "
                   "of the evaluated images; other methods go through fetalhc.explain.")
@click.option("--shard", default=None, metavar="I/N",
              help="Evaluate only shard I of N (1-based, round robin over the split's order); "
                   "combine the shard folders with `fetalhc merge`.")
@click.option("--figures/--no-figures", default=True, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
def command(model_path, data_dir, methods, metrics, out, split, limit, image_size,
            error_threshold_mm, error_quantiles, maps_dir, shard, figures, progress, **options):
    """Evaluate explanation methods of a model on a data split (see docs/evaluate.md)."""
    result = evaluate_command(
        model_path, data_dir, _split_list(methods), metrics, out, split=split, limit=limit,
        image_size=image_size,
        error_threshold_mm=_float_list(error_threshold_mm, "--error-threshold-mm"),
        error_quantiles=_float_list(error_quantiles, "--error-quantiles"),
        figures=figures, progress=progress, maps_dir=maps_dir, shard=shard, **options)
    for name, path in result["written"].items():
        click.echo(f"{name}: {path}")

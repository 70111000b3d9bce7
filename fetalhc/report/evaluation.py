"""The ``evaluate`` output folder: explanation methods scored on a split, written to disk.

:func:`write_evaluation` explains (or loads) every method's maps, scores them with
``fetalhc.evaluate.evaluate_maps`` and writes into ``out``::

    per_image.csv            one row per method and image, metric columns with units
    summary.csv / .md        methods x metrics, mean [95 % bootstrap CI] over images
    summary_by_error.csv/.md the same, split by the prediction error of each image
    randomisation.csv        cascade stages per method (when asked for)
    settings.json            what was run
    figures/*.png            curves, boxplots, error-split bars (:mod:`.evaluation_figures`)
    methods/<name>/          per-method results (also perturbation_steps.csv: HC, error and
                             shift per image, order and step); finished methods are skipped
    shard.json, methods/<name>/shard_*.npz
                             with ``shard="i/n"``: the exact per-image numbers
                             ``fetalhc merge`` (:mod:`fetalhc.report.merge`) combines

:func:`write_summaries` (the tables, Markdown pages and figures from per-method results) is
shared with the merge. Every file goes through :mod:`fetalhc.files` (atomic writes).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fetalhc.files import markdown_frame, write_bytes, write_csv, write_json, write_text

RESULT_FILES = ("per_image.csv", "curves.csv", "randomisation.csv")
SHARD_PER_IMAGE, SHARD_CURVES, SHARD_STEPS = ("shard_per_image.npz", "shard_curves.npz",
                                              "shard_steps.npz")
FAMILIES = (("AOPC, region perturbation (more negative is better)", "aopc_"),
            ("Deletion / insertion, normalised areas", "deletion_"),
            ("", "insertion_"),
            ("Localisation against the annotated contour", ""))


# ----------------------------------------------------------------------------- checks
def check_methods(methods: Sequence[str], external: bool = False) -> None:
    """Every method is a registered explain method (none needed when ``external`` maps
    are given); else a one-line ``ValueError`` listing the available ones."""
    from fetalhc.explain import available_methods

    known = available_methods()
    if not methods and not external:
        raise ValueError(f"no method given; available: {', '.join(known)}")
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; available: "
                         f"{', '.join(known)}")


def check_evaluation_request(methods: Sequence[str], metrics, settings, maps_dir=None,
                             error_threshold_mm=None, error_quantiles=None
                             ) -> tuple[tuple[str, ...], set[str]]:
    """Check what is asked before any model or image is loaded; returns the parsed metrics
    and the methods whose maps come from ``maps_dir`` (``<method>.npy``)."""
    from fetalhc.evaluate import parse_metrics

    metrics = parse_metrics(metrics)
    external = set()
    if maps_dir is not None:
        if not Path(maps_dir).is_dir():
            raise FileNotFoundError(f"--maps folder not found: {maps_dir}")
        external = {m for m in methods if (Path(maps_dir) / f"{m}.npy").is_file()}
    check_methods([m for m in methods if m not in external], bool(external))
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
    return metrics, external


def check_annotations(index: pd.DataFrame, data_dir) -> None:
    """Every image of ``index`` has its contour annotation (localisation needs them)."""
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


# ----------------------------------------------------------------------------- run
def write_evaluation(model, index: pd.DataFrame, methods: Sequence[str], metrics, settings,
                     out, *, image_size: int, split: str, source: dict, limit: int | None = None,
                     maps_dir=None, shard: str | None = None, error_threshold_mm=None,
                     error_quantiles=None, figures: bool = True, progress: bool = False) -> dict:
    """Evaluate ``methods`` on the images of ``index`` (a ``fetalhc.data`` index of the split
    ``split``) into the folder ``out``; returns the paths written, the summary and the
    randomisation table.

    ``model``: a Keras model or a model file (loaded once the inputs are checked).
    ``source``: where the model and data came from, ``{"model": ..., "data": ...}``,
    recorded in ``settings.json``. ``limit`` keeps the first images; ``shard="i/n"``
    (1-based, see ``fetalhc.data.shards``) then evaluates only every n-th image, with the
    noise and random orders those images get in the whole set, and also keeps the exact
    per-image numbers and ``shard.json``, from which ``fetalhc merge`` rebuilds what one
    unsharded run writes. ``randomisation`` (a whole-set metric) is refused with a shard."""
    from tqdm.auto import tqdm

    from fetalhc.data import load_arrays
    from fetalhc.evaluate import evaluate_maps
    from fetalhc.explain import explain
    from fetalhc.models import check_input_size, load_model

    methods = list(methods)
    metrics, _ = check_evaluation_request(methods, metrics, settings, maps_dir,
                                          error_threshold_mm, error_quantiles)
    size = int(image_size)
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
        check_annotations(index, source.get("data"))
    if isinstance(model, str | Path):
        model = load_model(model)
    check_input_size(model, size)

    arrays = load_arrays(index, image_size=size, with_annotation=localisation)
    images, pixel_size, reference = arrays["image"], arrays["pixel_size_mm"], arrays["hc_mm"]
    pixel_size_original = index["pixel_size_mm"].to_numpy(np.float32)
    filenames = arrays["filename"]

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run_settings = {**source, "split": split, "limit": limit, "image_size": size,
                    "metrics": list(metrics), "filenames": [str(f) for f in filenames],
                    **settings.as_dict()}
    write_json(out / "settings.json", {**run_settings, "methods": methods})

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
            steps = None
            if result.steps is not None:  # per image, order and step; kept for analysis
                steps = result.steps.assign(filename=filenames[result.steps["image"]])
            if shard is not None:
                write_shard_tables(folder, result, filenames, positions)
            write_method_folder(folder, tables, run_settings, steps)
        per_image.append(tables["per_image.csv"].assign(method=method))
        curves.append(tables["curves.csv"].assign(method=method))
        if "randomisation.csv" in tables:
            randomisation.append(tables["randomisation.csv"].assign(method=method))

    if shard is not None:
        from fetalhc.data.shards import format_shard, parse_shard

        write_json(out / "shard.json", {
            "kind": "evaluate", "shard": format_shard(parse_shard(shard)), "total": total,
            "positions": [int(p) for p in positions], "methods": methods,
            "error_threshold_mm": error_threshold_mm, "error_quantiles": error_quantiles,
            "figures": figures})
    written, summary, random_frame = write_summaries(
        out, per_image, curves, methods, split, randomisation=randomisation,
        confidence=settings.confidence, n_boot=settings.n_boot, seed=settings.seed,
        error_threshold_mm=error_threshold_mm, error_quantiles=error_quantiles,
        figures=figures)
    return {"written": written, "summary": summary, "randomisation": random_frame}


def write_method_folder(folder: Path, tables: dict[str, pd.DataFrame], done: dict,
                        steps: pd.DataFrame | None = None) -> None:
    """One method's results: ``tables`` (file name → frame), ``perturbation_steps.csv``
    when given, and last ``done.json`` (``done``: the run settings, which mark the folder
    finished for these settings, so a re-run skips it)."""
    if steps is not None:
        write_csv(steps, folder / "perturbation_steps.csv")
    for name, frame in tables.items():
        write_csv(frame, folder / name)
    write_json(folder / "done.json", done)


def write_shard_tables(folder: Path, result, filenames, positions) -> None:
    """The exact per-image numbers of one shard: per-image metrics, the per-image curves
    behind curves.csv, and the per-step table with the images' positions in the split."""
    from fetalhc.data.shards import save_table

    save_table(result.per_image.assign(filename=filenames), folder / SHARD_PER_IMAGE)
    curve_arrays = {"labels": np.asarray([json.dumps({**label, "quantity": quantity})
                                          for label, quantity, _, _ in result.curve_values or []],
                                         dtype=str)}
    for number, (_, _, x, values) in enumerate(result.curve_values or []):
        curve_arrays[f"x{number}"] = np.asarray(x)
        curve_arrays[f"values{number}"] = np.asarray(values)
    buffer = io.BytesIO()
    np.savez(buffer, **curve_arrays)
    write_bytes(folder / SHARD_CURVES, buffer.getvalue())
    if result.steps is not None:
        steps = result.steps.assign(filename=filenames[result.steps["image"]])
        steps["image"] = np.asarray(positions)[steps["image"].to_numpy()]
        save_table(steps, folder / SHARD_STEPS)


# ----------------------------------------------------------------------------- summaries
def summary_tables(per_image: Sequence[pd.DataFrame], methods: Sequence[str], *,
                   confidence: float = 0.95, n_boot: int = 2000, seed: int = 0,
                   error_threshold_mm=None, error_quantiles=None):
    """(the per-image table of every method with its error group, the summary per method,
    the summary per method and error group) from the methods' per-image tables. The error
    split defaults to the median error; groups run from the smallest to the largest errors,
    methods in the order of ``methods``."""
    from fetalhc.evaluate import error_groups, summary_table

    table = pd.concat(per_image, ignore_index=True)
    if error_threshold_mm is None and error_quantiles is None:
        error_quantiles = [0.5]
    table["error_group"] = error_groups(table["abs_error_mm"], threshold_mm=error_threshold_mm,
                                        quantiles=error_quantiles)
    first = ["method", "filename", "hc_pred_mm", "reference_mm", "abs_error_mm", "error_group"]
    table = table[first + [c for c in table.columns if c not in first]]
    summary = summary_table(table, by=("method",), confidence=confidence, n_boot=n_boot,
                            seed=seed)
    by_error = summary_table(table, by=("method", "error_group"), confidence=confidence,
                             n_boot=n_boot, seed=seed)
    typical = table.groupby("error_group")["abs_error_mm"].median().fillna(np.inf)
    by_error = by_error.assign(
        _method=by_error["method"].map({m: i for i, m in enumerate(methods)}),
        _group=by_error["error_group"].map(typical.rank(method="first")),
    ).sort_values(["_method", "_group"], kind="stable").drop(columns=["_method", "_group"])
    return table, summary, by_error


def write_summaries(out, per_image: Sequence[pd.DataFrame], curves: Sequence[pd.DataFrame],
                    methods: Sequence[str], split: str, *,
                    randomisation: Sequence[pd.DataFrame] = (), confidence: float = 0.95,
                    n_boot: int = 2000, seed: int = 0, error_threshold_mm=None,
                    error_quantiles=None, figures: bool = True):
    """The tables, Markdown pages and figures of an evaluation folder from the per-method
    results (frames with a ``method`` column); returns (paths written, summary,
    randomisation table or None)."""
    out = Path(out)
    table, summary, by_error = summary_tables(
        per_image, methods, confidence=confidence, n_boot=n_boot, seed=seed,
        error_threshold_mm=error_threshold_mm, error_quantiles=error_quantiles)
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
                *family_tables(summary)]
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
                     "layer is random.\n", markdown_frame(final)]
    write_text(written["summary_md"], "\n".join(markdown))
    write_text(written["by_error_md"], "\n".join(
        ["# Explanation evaluation split by prediction error\n"]
        + family_tables(by_error, ("method", "error_group"))))
    if figures:
        from fetalhc.report.evaluation_figures import write_figures

        written.update(write_figures(out / "figures", table,
                                     pd.concat(curves, ignore_index=True), by_error))
    return written, summary, random_frame


def family_tables(summary: pd.DataFrame, index: Sequence[str] = ("method",)) -> list[str]:
    """One Markdown table per metric family (``index`` rows x metrics, "mean [CI]" cells) of
    a long summary, each under a ``##`` title, so the tables stay readable."""
    from fetalhc.evaluate import wide_table

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
            parts += [f"\n## {title}\n", markdown_frame(wide_table(rows, index=index))]
    return parts

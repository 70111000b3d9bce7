"""The explainability study as a library: every method of every model explained, scored
with the seed paper's protocol and a richer one, and one page comparing them with the paper.

:func:`run_study` takes already-resolved models (:class:`StudyModel`; the command line
resolves run folders) and writes ``<out>/provenance.json`` (the options), per model
``models/<name>/``: ``provenance.json``, ``steps.json`` (finished steps), ``explain/``
(:func:`~fetalhc.report.explanations.write_explanations`), ``maps/`` (``stack_maps``),
``evaluate-<protocol>/`` (:func:`~fetalhc.report.evaluation.write_evaluation`); then
``tables/*.csv`` and ``study.json`` (:func:`collect`: every table the page quotes),
``figures/*.png`` and ``study.md`` (:func:`write_page`, from ``tables/`` and ``study.json``
alone, deterministic).

Re-runs: the study's and each model's record (model file digest, split, index digest,
methods, target, images, protocol settings) are checked before any work
(:func:`fetalhc.report.provenance.check_folder`): the same record resumes, and a step whose
folder record is unchanged since it finished is skipped; another record is refused in one
line naming the first differing field, unless ``overwrite`` recomputes the study. An
unfinished step resumes inside the explain / evaluate writers (finished batches and methods
are reused), so a resumed study equals an uninterrupted one.

One job in one module (over 400 lines): the steps, the tables they feed and the page that
quotes them share one file layout and one set of column names.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fetalhc.data import check_images
from fetalhc.evaluate.settings import POSITIVE_INT, require_range, split_list
from fetalhc.files import write_csv, write_json
from fetalhc.report.evaluation import check_annotations, write_evaluation
from fetalhc.report.explanations import (
    check_model,
    check_request,
    stack_maps,
    write_explanations,
)
from fetalhc.report.provenance import (
    check_folder,
    image_keys,
    index_digest,
    make_provenance,
    model_digest,
    plain_options,
    read_provenance,
    write_provenance,
)
from fetalhc.report.study_claims import permutation_p, ranks, rho_interval, spearman
from fetalhc.report.study_diagnosis import STEP as DIAGNOSE
from fetalhc.report.study_diagnosis import diagnosis_record
from fetalhc.report.study_page import (
    AOPC_MM,
    AOPC_PX,
    PAGE_FILE,
    STUDY_FILE,
    metric_units,
    write_page,
)
from fetalhc.report.study_results import STEPS_FILE, export_results, results_ready
from fetalhc.report.study_times import (
    FORWARD_RATE,
    forward_rate,
    record_time,
    step_times,
    timed,
)

PROTOCOLS = ("paper", "rich")
PROTOCOL_METRICS = {"paper": ("aopc",), "rich": ("aopc", "deletion", "insertion",
                                                 "localisation", "randomisation")}
# the paper's region perturbation, spelt out (``--protocol paper`` needs 128 px inputs)
PAPER_SETTINGS = {"grid": 4, "steps": 15, "regions_per_step": 1, "perturbation": "noise",
                  "noise_sd": 0.3, "aggregation": "mean", "recompute": False}
# the richer AOPC: 8 x 8 regions four at a time, as many forward passes as the paper's
RICH_SETTINGS = {**PAPER_SETTINGS, "grid": 8, "regions_per_step": 4}
# how the study computes, in both protocols (fetalhc study --precision /
# --randomisation-stages override): forward passes in mixed bfloat16 (its AOPC moved by
# ~0.02 mm against a CI half-width of ~2.4 mm: benchmarks/precision_aopc.py), the
# randomisation cascade explained at 5 checkpoints with the methods' fixed-cost rules
STUDY_COMPUTE = {"precision": "mixed_bfloat16", "randomisation_stages": 5,
                 "randomisation_fixed_cost": True}
TARGET = "hc_mm"
# settings.json keys that name inputs, not settings (paths stay out of the tables)
INPUT_KEYS = ("model", "data", "filenames", "methods", "limit", "maps", "split")
# the evaluations' own figures the page links to: (protocol, file stem)
EVALUATION_FIGURES = (
    ("paper", "perturbation_abs_error_px_original"), ("rich", "perturbation_abs_error_mm"),
    ("rich", "deletion_insertion_abs_error_mm"), ("rich", "localisation_band_ratio"),
    ("paper", "error_split_aopc_morf_abs_error_mm"))


@dataclass(frozen=True)
class StudyModel:
    """One model: ``name`` (``<out>/models/<name>``), the Keras ``model``, the ``index``
    rows of its ``split``, its input ``image_size``; ``model_file`` (digested, else the
    weights are), ``hc_range_mm`` (for the reliability flags), ``description`` (models-table
    columns, :func:`run_description`), ``source`` (paths, recorded as ``info`` only)."""

    name: str
    model: Any = field(repr=False)
    index: pd.DataFrame = field(repr=False)
    image_size: int
    split: str = "test"
    model_file: Path | None = None
    hc_range_mm: tuple[float, float] | None = None
    description: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)


def paper_reference() -> dict:
    """The seed paper's AOPC table with its ``source`` (package data ``paper_aopc.json``)."""
    return json.loads(files("fetalhc.report").joinpath("data/paper_aopc.json").read_text())


def run_description(config: dict | None, metrics: dict | None) -> dict:
    """The models-table columns of a run folder, from its resolved ``config.toml`` and its
    ``metrics.json`` (plain dicts; missing values are left out)."""
    config, metrics = config or {}, metrics or {}
    values = {"backbone": config.get("model", {}).get("backbone"),
              "loss": str(config.get("train", {}).get("loss", "")).upper() or None,
              "epochs run": metrics.get("epochs_run"),
              **{f"{part} MAE of the run (mm)": metrics.get(part, {}).get("mae_mm")
                 for part in ("val", "test")}}
    return {key: value for key, value in values.items() if value is not None}


# ----------------------------------------------------------------------------- request
def parse_images(images) -> int | None:
    """``--images``: ``"all"`` / ``None`` → ``None`` (every image of the split), else an
    integer >= 2 (the error split needs two images); one-line ``ValueError`` otherwise."""
    if images is None or str(images).strip().lower() == "all":
        return None
    text = str(images).strip()
    if isinstance(images, bool) or not text.isdigit() or int(text) < 2:
        raise ValueError(f"--images must be an integer >= 2 or 'all'; got {images!r}")
    return int(text)


def parse_protocols(protocols) -> tuple[str, ...]:
    """``"rich,paper"`` (or a list) → the known protocols, in :data:`PROTOCOLS` order;
    one-line ``ValueError`` otherwise."""
    names = split_list(protocols)
    unknown = [name for name in names if name not in PROTOCOLS]
    if not names or unknown:
        raise ValueError(f"unknown protocol(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from: {', '.join(PROTOCOLS)}")
    return tuple(name for name in PROTOCOLS if name in names)  # one order: one record


def parse_methods(methods) -> list[str]:
    """``"all"`` → every registered method; else the comma-separated (or listed) methods,
    each registered and named once; one-line ``ValueError``."""
    import fetalhc.explain as fe

    names = fe.available_methods() if methods == "all" else split_list(methods)
    check_request(names)
    return list(names)


def protocol_settings(protocol: str, image_size: int, randomisation_images: int | None = None,
                      overrides: dict | None = None):
    """``EvaluationSettings`` of a protocol at ``image_size`` px: the paper's (``--protocol
    paper`` at 128 px, the same settings spelt out otherwise) or the richer one, computed
    as :data:`STUDY_COMPUTE` says unless ``overrides`` say otherwise."""
    from fetalhc.evaluate import EvaluationSettings

    overrides = {**STUDY_COMPUTE, **(overrides or {})}
    if randomisation_images is not None:
        overrides["randomisation_images"] = int(randomisation_images)
    if protocol == "paper" and int(image_size) == 128:
        return EvaluationSettings.paper(**overrides)
    return EvaluationSettings(**(PAPER_SETTINGS if protocol == "paper" else RICH_SETTINGS),
                              **overrides)


def model_record(entry: StudyModel, options: dict, settings: dict) -> dict:
    """The provenance of ``<out>/models/<name>``: model digest, split, the rows studied
    (digest and keys), the study options and every protocol's settings and metrics."""
    rows = entry.index if options["images"] is None else entry.index.head(options["images"])
    return make_provenance("study-model", {
        "model": model_digest(entry.model_file if entry.model_file is not None
                              else entry.model),
        "split": entry.split, "index": index_digest(rows), "image_keys": image_keys(rows),
        "image_size": int(entry.image_size), **options,
        "settings": {p: {"metrics": list(PROTOCOL_METRICS[p]),
                         **plain_options(s.as_dict())} for p, s in settings.items()}},
        {"source": entry.source, "description": entry.description})


# ----------------------------------------------------------------------------- steps
def _step(model_dir: Path, step: str, finish: bool = False) -> bool:
    """Whether ``step`` finished (``steps.json`` holds the digest of its folder's record
    as it was then); ``finish`` records it as finished now."""
    record = read_provenance(model_dir / step) if (model_dir / step).is_dir() else None
    digest = None if record is None else hashlib.sha256(
        json.dumps(record.get("result"), sort_keys=True).encode("utf-8")).hexdigest()
    path = model_dir / STEPS_FILE
    done = json.loads(path.read_text()) if path.is_file() else {}
    if finish:
        write_json(path, {**done, step: digest})
    return digest is not None and done.get(step) == digest


def run_study(models: Sequence[StudyModel], out, *, methods="all", images=None,
              protocols=PROTOCOLS, randomisation_images: int | None = None,
              evaluation_overrides: dict | None = None, overwrite: bool = False,
              progress: bool = False, log: Callable[[str], None] | None = None,
              report=None, command: str | None = None, compare_diagnosis=None) -> Path:
    """Explain, evaluate (per protocol) and report ``models`` into ``out``; returns the
    page's path. ``images``: the first N images of each split (``None`` / ``"all"``:
    every image); ``evaluation_overrides``: ``EvaluationSettings`` fields set in every
    protocol (e.g. ``n_boot``). Every request, model and folder check runs before anything
    is written; ``log`` receives one line per step. ``report``: the folder of the page and
    the files it quotes (``study.md``, ``study.json``, ``tables/``, ``figures/``; default
    ``out``), e.g. a docs folder while the bulky step folders stay in ``out``; ``command``:
    the command line quoted on the page; ``compare_diagnosis``: a diagnose folder made
    elsewhere (``scripts/phantom_diagnosis.py``: the same step on phantoms) shown beside the
    models' on the page (page input only, not part of the study's record)."""
    say = log or (lambda _message: None)
    if compare_diagnosis is not None:
        from fetalhc.report.study_diagnosis import check_reference

        check_reference(compare_diagnosis)
    methods, images = parse_methods(methods), parse_images(images)
    protocols = parse_protocols(protocols)
    if randomisation_images is not None:
        require_range(randomisation_images, POSITIVE_INT, "--randomisation-images")
    names = [entry.name for entry in models]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"the models need distinct names; got {', '.join(names) or 'none'}")
    out = Path(out)
    options = {"methods": methods, "images": images, "protocols": list(protocols),
               "target": TARGET, "randomisation_images": randomisation_images,
               "evaluation_overrides": plain_options(evaluation_overrides or {})}
    plans = []
    for entry in models:  # every check before anything is written
        settings = {p: protocol_settings(p, entry.image_size, randomisation_images,
                                         evaluation_overrides) for p in protocols}
        rows = entry.index if images is None else entry.index.head(images)
        if len(rows) < 2 or rows["hc_mm"].isna().any():
            raise ValueError(f"{entry.name}: the study needs at least 2 images, each with a "
                             f"reference HC; the {entry.split} split has {len(rows)} images, "
                             f"{int(rows['hc_mm'].isna().sum())} without")
        for protocol, values in settings.items():
            values.validate((len(rows), entry.image_size, entry.image_size, 1),
                            PROTOCOL_METRICS[protocol])
        if "rich" in protocols:  # localisation needs the contours
            check_annotations(rows, entry.source.get("data"))
        check_images(rows, annotations="rich" in protocols)
        check_model(entry.model, entry.image_size, methods)
        plans.append((entry, settings, model_record(entry, options, settings)))
    study = make_provenance("study", options)
    check_folder(out, study, overwrite=overwrite, markers=(STUDY_FILE, PAGE_FILE))
    report = out if report is None or Path(report).resolve() == out.resolve() else Path(report)
    # the report holds studies of these options; each model's exported results are checked
    # against its own record (study_results.results_ready), so models may be added later
    report_record = make_provenance("study-report", options)
    if report is not out:  # a page of other options is refused, never overwritten silently
        check_folder(report, report_record, overwrite=overwrite,
                     markers=(STUDY_FILE, PAGE_FILE))
    for entry, _, record in plans:
        check_folder(out / "models" / entry.name, record, markers=(STEPS_FILE,))
    out.mkdir(parents=True, exist_ok=True)
    if read_provenance(out) is None:
        write_provenance(out, study)
    if report is not out:
        report.mkdir(parents=True, exist_ok=True)
        if read_provenance(report) is None:
            write_provenance(report, report_record)
    for entry, settings, record in plans:
        model_dir, results = out / "models" / entry.name, report / "models" / entry.name
        diagnosis = diagnosis_record(record["result"], methods,
                                     next(iter(settings.values())).precision)
        if results_ready(results, record, diagnosis):
            say(f"{entry.name}: its results in {results} are this study's; steps skipped")
            continue
        model_dir.mkdir(parents=True, exist_ok=True)
        if read_provenance(model_dir) is None:
            write_provenance(model_dir, record)
        _run_model(entry, model_dir, methods, images, settings, progress, say)
        _diagnose(entry, model_dir, images, diagnosis, say)
        export_results(model_dir, results, list(settings), methods, EVALUATION_FIGURES)
    say("tables and figures ...")
    collect(out, [entry.name for entry in models], methods, report=report, command=command,
            compare_diagnosis=compare_diagnosis)
    return write_page(report)


def _run_model(entry: StudyModel, model_dir: Path, methods, images, settings, progress,
               say) -> None:
    """The steps of one model: explain (+ stacked maps), then one evaluation per protocol;
    a finished step is skipped. Each step's wall and CPU time go to ``times.json``."""
    if _step(model_dir, "explain"):
        say(f"{entry.name}: explain already done")
    else:
        say(f"{entry.name}: explain ({len(methods)} methods) ...")
        with timed(model_dir, "explain"):
            write_explanations(
                entry.model, entry.index, entry.image_size, methods, model_dir / "explain",
                limit=images, target=TARGET, progress=progress, source=entry.source,
                split=entry.split, model_file=entry.model_file,
                hc_range_mm=entry.hc_range_mm, overlays=False)
            stack_maps(model_dir / "explain", model_dir / "maps", methods)
        _step(model_dir, "explain", finish=True)
    for protocol, values in settings.items():
        step = f"evaluate-{protocol}"
        if _step(model_dir, step):
            say(f"{entry.name}: {step} already done")
            continue
        say(f"{entry.name}: {step} ...")
        with timed(model_dir, step):
            write_evaluation(
                entry.model, entry.index, methods, PROTOCOL_METRICS[protocol], values,
                model_dir / step, image_size=entry.image_size, split=entry.split,
                source=entry.source, limit=images, maps_dir=model_dir / "maps",
                progress=progress, model_file=entry.model_file)
        _step(model_dir, step, finish=True)


def _diagnose(entry: StudyModel, model_dir: Path, images, expected: dict, say) -> None:
    """The diagnose step (:mod:`fetalhc.report.study_diagnosis`) after the evaluations:
    reused only when its folder's record is ``expected`` (this model's, methods and
    settings)."""
    from fetalhc.report.study_diagnosis import diagnosis_done, write_diagnosis

    if diagnosis_done(model_dir / DIAGNOSE, expected):
        say(f"{entry.name}: {DIAGNOSE} already done")
        return
    say(f"{entry.name}: {DIAGNOSE} (perturbation strength and gaps) ...")
    rows = entry.index if images is None else entry.index.head(images)
    methods, precision = expected["result"]["methods"], expected["result"]["precision"]
    with timed(model_dir, DIAGNOSE):
        write_diagnosis(entry.model, rows, entry.image_size, model_dir / "maps",
                        model_dir / DIAGNOSE, methods, expected, precision)
    record_time(model_dir, FORWARD_RATE, forward_rate(entry.model, entry.image_size,
                                                       precision))


# ----------------------------------------------------------------------------- tables
def collect(out, names: Sequence[str], methods: Sequence[str], report=None,
            command: str | None = None, compare_diagnosis=None) -> dict:
    """Every table and figure of the page, from the models' exported results in
    ``<report>/models/<name>`` (:mod:`fetalhc.report.study_results`): ``tables/*.csv``,
    ``figures/*.png`` and ``study.json`` in ``report`` (default ``out``); returns what
    ``study.json`` holds."""
    out = Path(out)
    report = out if report is None else Path(report)
    paper = paper_reference()
    summaries, by_error, randomised, models = [], [], [], []
    per_image: dict[tuple[str, str], pd.DataFrame] = {}
    settings: dict[str, dict] = {}
    for name in names:
        model_dir = report / "models" / name  # the model's exported results
        record = read_provenance(model_dir)["result"]
        protocols = [p for p in PROTOCOLS if p in record["protocols"]]
        for protocol in protocols:
            folder = model_dir / f"evaluate-{protocol}"
            for file, target in (("summary", summaries), ("summary_by_error", by_error),
                                 ("randomisation", randomised)):
                if (folder / f"{file}.csv").is_file():
                    target.append(pd.read_csv(folder / f"{file}.csv")
                                  .assign(protocol=protocol, model=name))
            per_image[(name, protocol)] = pd.read_csv(folder / "per_image.csv")
            values = json.loads((folder / "settings.json").read_text())
            settings.setdefault(protocol, {k: v for k, v in values.items()
                                           if k not in INPUT_KEYS})
        first = per_image[(name, protocols[0])].drop_duplicates("filename")
        models.append({"model": name, "split": record["split"], "images": len(first),
                       "input size (px)": record["image_size"],
                       **read_provenance(model_dir)["info"].get("description", {}),
                       "MAE on the studied images (mm)": float(first["abs_error_mm"].mean())})
    tables = report / "tables"
    studied = {name: len(per_image[(name, protocols[0])].drop_duplicates("filename"))
               for name, protocols in ((n, [p for p in PROTOCOLS if (n, p) in per_image])
                                       for n in names)}
    write_csv(step_times(report, names, settings, len(methods), studied),
              tables / "step_times.csv")
    summary = pd.concat(summaries, ignore_index=True)

    def tidy(frame, keys):
        return frame.assign(units=frame["metric"].map(metric_units)).rename(columns={
            "mean": "mean (units)", "ci_low": "CI low (units)", "ci_high": "CI high (units)",
            "n": "images", "error_group": "error group"})[
            [*keys, "metric", "units", "mean (units)", "CI low (units)", "CI high (units)",
             "images"]]

    write_csv(tidy(summary, ["protocol", "model", "method"]), tables / "summary.csv")
    write_csv(tidy(pd.concat(by_error, ignore_index=True),
                   ["protocol", "model", "method", "error group"]),
              tables / "summary_by_error.csv")
    write_csv(pd.DataFrame(models), tables / "models.csv")
    compared = _paired_tables(tables, report, names, methods, per_image,
                              pd.DataFrame(models), compare_diagnosis)
    if randomised:
        frame = pd.concat(randomised, ignore_index=True).drop_duplicates(["model", "method"])
        write_csv(frame[["model", "method", "similarity", "final_similarity", "flagged"]]
                  .rename(columns={"similarity": "similarity measure", "final_similarity":
                                   "final similarity (1 = identical)"}),
                  tables / "randomisation.csv")
    reference = pd.DataFrame([{"paper model": model, "method": method,
                               f"AOPC ({paper['units']})": value}
                              for model, item in paper["models"].items()
                              for method, value in item["aopc"].items()])
    write_csv(reference, tables / "paper_reference.csv")
    overlap = [m for m in paper["models"][next(iter(paper["models"]))]["aopc"] if m in methods]
    comparison, correlation = [], []
    if len(overlap) >= 3 and "paper" in settings:
        for name in names:
            frame = per_image[(name, "paper")]
            ours = [float(frame.loc[frame["method"] == m, AOPC_PX].mean()) for m in overlap]
            for model, item in paper["models"].items():
                theirs = [item["aopc"][m] for m in overlap]
                low, high = rho_interval(frame, overlap, theirs, AOPC_PX)
                correlation.append({
                    "model": name, "paper model": model, "methods": len(overlap),
                    "Spearman rho (1)": spearman(ours, theirs), "rho CI low (1)": low,
                    "rho CI high (1)": high, "permutation p (1)": permutation_p(ours, theirs)})
                for method, a, b, ra, rb in zip(overlap, ours, theirs, ranks(ours),
                                                ranks(theirs), strict=True):
                    comparison.append({"model": name, "paper model": model, "method": method,
                                       "our AOPC (original px)": a, "our rank": ra,
                                       "paper AOPC (original px)": b, "paper rank": rb})
        write_csv(pd.DataFrame(correlation), tables / "paper_correlation.csv")
        write_csv(pd.DataFrame(comparison), tables / "paper_ranks.csv")
    figures = _figures(report, names, methods, summary)
    if comparison:
        figures["our ranks against the paper's"] = _ranks_figure(
            report, pd.DataFrame(comparison), pd.DataFrame(correlation))
    info = {"models": list(names), "methods": list(methods), "protocols": list(settings),
            "settings": settings, "figures": figures, "paper": {
                key: paper[key] for key in ("source", "units", "description", "loss")},
            "paper_methods": overlap, "command": command, "compare_diagnosis": compared}
    write_json(report / STUDY_FILE, info)
    return info


def _paired_tables(tables: Path, report: Path, names, methods, per_image: dict,
                   models: pd.DataFrame, compare_diagnosis=None) -> dict | None:
    """The per-image values the claims rest on (``per_image.csv.gz``: every model, protocol,
    method and image, compressed: plain it outgrows 2 MB at four models), the paired tests
    (``paired_vs_random.csv``, ``paired_methods.csv``), the claims' verdicts
    (``claims.csv``, :mod:`fetalhc.report.study_claims`) and the diagnosis tables
    (:func:`fetalhc.report.study_diagnosis.diagnosis_tables`)."""
    from fetalhc.report import study_claims
    from fetalhc.report.study_diagnosis import diagnosis_tables

    compact = []
    for (name, protocol), frame in per_image.items():
        columns = [c for c in study_claims.PER_IMAGE_COLUMNS if c in frame]
        compact.append(frame[["method", "filename", *columns]].assign(model=name,
                                                                       protocol=protocol))
    compact = pd.concat(compact, ignore_index=True)
    write_csv(compact[["model", "protocol", "method", "filename",
                       *[c for c in study_claims.PER_IMAGE_COLUMNS if c in compact]]],
              tables / "per_image.csv.gz")
    versus_random = study_claims.paired_vs_random(per_image, methods)
    write_csv(versus_random, tables / "paired_vs_random.csv")
    pairs = pd.concat([study_claims.paired_methods(per_image, methods),
                       study_claims.paired_methods(per_image, methods, study_claims.BAND,
                                                   protocols=("rich",))], ignore_index=True)
    write_csv(pairs, tables / "paired_methods.csv")
    write_csv(study_claims.claims(models, per_image, methods, pairs, versus_random),
              tables / "claims.csv")
    rich = {name: frame for (name, protocol), frame in per_image.items() if protocol == "rich"}
    folders = {name: report / "models" / name / DIAGNOSE for name in names}
    reference = None
    if compare_diagnosis is not None:
        from fetalhc.report.study_diagnosis import REFERENCE, reference_info

        reference = reference_info(compare_diagnosis, report)
        folders[REFERENCE] = Path(compare_diagnosis)
    for key, table in diagnosis_tables(folders, rich).items():
        write_csv(table, tables / f"{key}.csv")
    return reference


# ----------------------------------------------------------------------------- figures
def _ranks_figure(report: Path, comparison: pd.DataFrame, correlation: pd.DataFrame) -> str:
    """Our AOPC rank against the paper's per method: a panel per (our model, paper model)."""
    from matplotlib.figure import Figure

    from fetalhc.viz.figures import save_figure

    pairs = list(comparison.groupby(["model", "paper model"], sort=False))
    columns = min(4, len(pairs))
    rows = -(-len(pairs) // columns)
    figure = Figure(figsize=(3.0 * columns, 3.0 * rows), dpi=100)
    for number_, ((name, paper_model), frame) in enumerate(pairs):
        axis = figure.add_subplot(rows, columns, number_ + 1)
        n = len(frame)
        axis.plot([1, n], [1, n], color="grey", linewidth=0.8, linestyle="--")
        axis.scatter(frame["paper rank"], frame["our rank"], s=12)
        for _, row in frame.iterrows():
            axis.annotate(row["method"], (row["paper rank"], row["our rank"]), fontsize=5,
                          xytext=(2, 2), textcoords="offset points")
        rho = correlation[(correlation["model"] == name)
                          & (correlation["paper model"] == paper_model)]["Spearman rho (1)"]
        axis.set_title(f"{name} vs {paper_model}: rho {float(rho.iloc[0]):.2f}", fontsize=7)
        axis.set_xlabel("rank in the paper (1 = best)", fontsize=7)
        axis.set_ylabel("our rank (1 = best)", fontsize=7)
        axis.set_xlim(n + 0.5, 0.5)
        axis.set_ylim(n + 0.5, 0.5)
        axis.tick_params(labelsize=6)
    figure.tight_layout()
    return str(save_figure(figure, report / "figures" / "paper_ranks.png").relative_to(report))


def _figures(report: Path, names, methods, summary) -> dict:
    """The page's figures (paths relative to ``report``): the AOPC overview in
    ``report/figures``, and each model's exported figures (:mod:`.study_results`: maps of
    the lowest- and highest-error images, the evaluations' own)."""
    from matplotlib.figure import Figure

    from fetalhc.report.study_results import MAPS_FIGURE
    from fetalhc.viz.figures import save_figure

    folder, figures = report / "figures", {}
    rows = summary[summary["metric"] == AOPC_MM]
    if not rows.empty:
        figure = Figure(figsize=(6.4, 0.32 * len(methods) + 1.4), dpi=100)
        axis = figure.add_subplot(1, 1, 1)
        offsets = np.linspace(-0.3, 0.3, len(names)) if len(names) > 1 else [0.0]
        for offset, name in zip(offsets, names, strict=True):
            mine = rows[(rows["model"] == name) & (rows["protocol"] == rows["protocol"].iloc[0])
                        ].set_index("method").reindex(methods)
            axis.errorbar(mine["mean"], np.arange(len(methods)) + offset, fmt="o",
                          xerr=[mine["mean"] - mine["ci_low"], mine["ci_high"] - mine["mean"]],
                          markersize=3, capsize=2, label=name)
        axis.set_yticks(range(len(methods)), methods, fontsize=7)
        axis.invert_yaxis()
        axis.set_xlabel("AOPC MoRF of |error| (mm); more negative = better")
        axis.legend(fontsize=7, frameon=False)
        figure.tight_layout()
        figures["overview"] = str(save_figure(figure, folder / "aopc_overview.png")
                                  .relative_to(report))
    strength_file = report / "tables" / "perturbation_strength.csv"
    if strength_file.is_file():
        figures["how far each perturbation moves the HC"] = _strength_figure(
            report, pd.read_csv(strength_file))
    for name in names:
        results = report / "models" / name
        figures[f"maps {name}"] = f"models/{name}/{MAPS_FIGURE}"
        for protocol, stem in EVALUATION_FIGURES:
            if (results / "figures" / f"{protocol}_{stem}.png").is_file():
                figures[f"{protocol} protocol, {name}: {stem}"] = \
                    f"models/{name}/figures/{protocol}_{stem}.png"
    return figures


def _strength_figure(report: Path, strength: pd.DataFrame) -> str:
    """Mean |shift| of the HC in a random order (% of HC, 95 % CI) per perturbation, one
    marker per model (and the reference, if any)."""
    from matplotlib.figure import Figure

    from fetalhc.viz.figures import save_figure

    rows = strength[strength["metric"] == "random_shift_percent"]
    models = list(dict.fromkeys(rows["model"]))
    perturbations = list(dict.fromkeys(rows["perturbation"]))
    figure = Figure(figsize=(6.4, 0.45 * len(perturbations) * max(1, len(models)) / 2 + 1.4),
                    dpi=100)
    axis = figure.add_subplot(1, 1, 1)
    offsets = np.linspace(-0.3, 0.3, len(models)) if len(models) > 1 else [0.0]
    for offset, name in zip(offsets, models, strict=True):
        mine = rows[rows["model"] == name].set_index("perturbation").reindex(perturbations)
        axis.errorbar(mine["mean"], np.arange(len(perturbations)) + offset, fmt="o",
                      xerr=[mine["mean"] - mine["CI low"], mine["CI high"] - mine["mean"]],
                      markersize=4, capsize=2, label=name)
    axis.set_yticks(range(len(perturbations)), perturbations)
    axis.invert_yaxis()
    axis.set_xlabel("mean |shift| of the HC in a random order (% of HC)")
    axis.legend(fontsize=7, frameon=False)
    figure.tight_layout()
    return str(save_figure(figure, report / "figures" / "perturbation_strength.png")
               .relative_to(report))


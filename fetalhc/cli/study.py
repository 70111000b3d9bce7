"""``fetalhc study``: explain every method of several runs, score the maps with the seed
paper's protocol and a richer one, and write one page comparing them with the paper.

Parses the options, resolves each run folder (or published ``models/<name>`` folder) and
its split through ``fetalhc.training``, and calls :func:`fetalhc.report.study.run_study`,
which writes ``<out>/study.md`` with its tables and figures. A re-run with the same runs,
data, split and options resumes (finished steps are skipped); anything else is refused
naming the first differing field, unless ``--overwrite`` recomputes the study.

Only click, the standard library and TensorFlow-free modules are imported here.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from fetalhc.cli.options import Command, progress_option, show_progress
from fetalhc.evaluate.settings import PRECISIONS
from fetalhc.training.config import SPLITS


def resolve_runs(texts, data_dir: Path, split: str | None) -> list:
    """The :class:`fetalhc.report.study.StudyModel` of each ``--runs`` entry: a run folder,
    else the name of a published model (``models/<name>``). Every entry and its split is
    resolved before any model is loaded; one-line errors."""
    import json

    import fetalhc
    from fetalhc.models.shipped import pretrained_dir
    from fetalhc.report.study import StudyModel, run_description
    from fetalhc.training import resolve_model_split

    resolved = []
    for text in texts:
        path = Path(text)
        if not path.is_dir():
            try:
                path = pretrained_dir(text)
            except ValueError as error:
                raise ValueError(f"--runs: unknown run {text!r}: no such run folder, and "
                                 f"{error}") from None
        resolved.append((text, path, resolve_model_split(path, data_dir, split)))
    models = []
    for text, path, run in resolved:
        metrics_file = path / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
        models.append(StudyModel(
            name=path.resolve().name, model=fetalhc.load_model(run.model_file),
            index=run.index, image_size=run.image_size, split=run.split,
            model_file=run.model_file, hc_range_mm=run.hc_range_mm,
            description=run_description(run.run.config, metrics),
            source={"model": text, "data": str(data_dir)}))
    return models


@click.command("study", cls=Command)
@click.option("--runs", required=True,
              help="Comma-separated run folders, or names of published models "
                   "(models/<name>).")
@click.option("--data", "data_dir", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="HC18-layout data folder the runs were trained on.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: study.md, tables/, figures/, models/<run>/ (a re-run "
                   "resumes it).")
@click.option("--report", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the page and the files it quotes (study.md, study.json, "
                   "tables/, figures/; default: --out), e.g. under docs/ while the "
                   "bulky step folders stay in --out.")
@click.option("--compare-diagnosis", type=click.Path(exists=True, file_okay=False,
                                                     path_type=Path), default=None,
              help="A diagnose folder made on other data (scripts/phantom_diagnosis.py: on "
                   "phantoms) shown beside the models' perturbation diagnosis on the page.")
@click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True,
              help="Which images of each run.")
@click.option("--images", default="24", show_default=True, metavar="N|all",
              help="The first N images of each run's split (at least 2), or all.")
@click.option("--protocols", default="paper,rich", show_default=True,
              help="Comma-separated: paper (the seed paper's AOPC), rich (finer AOPC, "
                   "deletion / insertion, localisation, randomisation).")
@click.option("--methods", default="all", show_default=True,
              help="Comma-separated registered methods (`fetalhc explain --list`), or all.")
@click.option("--randomisation-images", type=click.IntRange(min=1), default=None,
              help="Images of the randomisation check (default: fetalhc evaluate's); it "
                   "recomputes every map once per weighted layer.")
@click.option("--randomisation-stages", type=click.IntRange(min=0), default=None,
              help="Checkpoints of the randomisation cascade at which the maps are "
                   "recomputed, evenly spaced, the last the fully random model (0: after "
                   "every weighted layer) [default: 5].")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Precision of the evaluations' forward passes [default: mixed_bfloat16; "
                   "benchmarks/precision_aopc.py measures what it changes].")
@click.option("--n-boot", type=click.IntRange(min=1), default=None,
              help="Bootstrap resamples of the confidence intervals (default: fetalhc "
                   "evaluate's).")
@click.option("--overwrite", is_flag=True,
              help="Delete an earlier study at --out and recompute it (a re-run with other "
                   "settings is refused without it; with the same, it resumes).")
@progress_option
def command(runs, data_dir, out, report, compare_diagnosis, split, images, protocols, methods, randomisation_images,
            randomisation_stages, precision, n_boot, overwrite, progress):
    """Explain and evaluate several runs and compare the methods' ranking with the seed
    paper's (Zhang et al., iMIMIC 2020): <out>/study.md."""
    from fetalhc.evaluate.settings import split_list
    from fetalhc.report.study import parse_images, parse_methods, parse_protocols, run_study

    # the cheap checks first, before any model loads
    images, protocols, methods = (parse_images(images), parse_protocols(protocols),
                                  parse_methods(methods))
    names = split_list(runs)
    if not names:
        raise ValueError("--runs is empty; give run folders separated by commas")
    models = resolve_runs(names, data_dir, split)
    context = click.get_current_context()  # the command as given, for the page
    given = [param.opts[0] if getattr(param, "is_flag", False)
             else f"{param.opts[0]} {shlex.quote(str(context.params[param.name]))}"
             for param in context.command.params
             if param.name in context.params and param.name not in ("progress", "overwrite")
             and context.get_parameter_source(param.name).name not in ("DEFAULT",
                                                                       "DEFAULT_MAP")]
    page = run_study(models, out, methods=methods, images=images, protocols=protocols,
                     randomisation_images=randomisation_images,
                     evaluation_overrides={
                         key: value for key, value in (
                             ("randomisation_stages", randomisation_stages),
                             ("precision", precision), ("n_boot", n_boot))
                         if value is not None},
                     overwrite=overwrite, progress=show_progress(progress), log=click.echo,
                     report=report, command=" ".join(["fetalhc study", *given]),
                     compare_diagnosis=compare_diagnosis)
    click.echo(f"wrote {page}")

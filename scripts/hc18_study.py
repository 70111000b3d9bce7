#!/usr/bin/env python
"""The HC18 explainability study (issue 11): one command, one docs page.

    python scripts/hc18_study.py [--data $FETALHC_HC18] [--runs runs/study] [--docs docs]
        [--images 24] [--methods all] [--train/--no-train] [--quick]

For every model of the matrix below (plain / residual backbone x MAE / MSE loss):

1. ``fetalhc train`` with the command printed (and recorded in the page); it runs only with
   ``--train`` and only when ``<runs>/<name>/model.keras`` is missing;
2. ``fetalhc explain`` on the first ``--images`` images of the run's own test split, every
   method; the maps are stacked into ``<runs>/<name>/maps/<method>.npy``;
3. ``fetalhc evaluate`` twice on those maps: the seed paper's protocol (``--protocol
   paper``: 4 x 4 regions, N(0, 0.3), 15 steps, errors in mm and original pixels) and a
   richer one (8 x 8 regions four at a time, deletion / insertion, contour localisation,
   cascading randomisation); both split by the median prediction error;
4. ``<docs>/study.md`` and ``<docs>/study/*.png`` from the files those commands wrote, with
   a rank comparison against the seed paper's AOPC table.

Every step is resumable: a step whose recorded command and outputs are complete is skipped,
``fetalhc explain`` skips maps already on disk and ``fetalhc evaluate`` skips finished
methods. The page is written atomically. ``--quick`` runs the whole chain on phantoms at 32
px with tiny models (for the test and for development); its page says so at the top.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import resource
import shlex
import subprocess
import sys
import time
import tomllib
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------- model matrix ---


@dataclass(frozen=True)
class ModelSpec:
    """One model of the study: a config file plus ``--set`` overrides."""

    name: str
    family: str  # "plain" or "residual"
    loss: str  # "mae" or "mse"
    config: str | None
    sets: tuple[str, ...] = ()


# The recipe of docs/hc18-model.md at a 15-epoch schedule (the cosine decay spans the run);
# the same runs serve the loss comparison of docs/hc18-model.md.
STUDY_EPOCHS = "train.epochs=15"
MODELS = (
    ModelSpec("plain-mae", "plain", "mae", "configs/hc18_best.toml",
              ("train.loss=mae", STUDY_EPOCHS)),
    ModelSpec("plain-mse", "plain", "mse", "configs/hc18_best.toml",
              ("train.loss=mse", STUDY_EPOCHS)),
    ModelSpec("residual-mae", "residual", "mae", "configs/hc18_residual.toml",
              ("train.loss=mae", STUDY_EPOCHS)),
    ModelSpec("residual-mse", "residual", "mse", "configs/hc18_residual.toml",
              ("train.loss=mse", STUDY_EPOCHS)),
)
FAMILY_LABELS = {"plain": "plain (as the paper's VGG16)",
                 "residual": "residual (as the paper's ResNet50)"}

# --quick: phantoms, 32 px, tiny models, a few methods and images. No config file, so the
# quick chain does not depend on the HC18 configs; the backbone comes from --set.
QUICK_BACKBONES = {"plain": "small_cnn", "residual": "small_resnet"}
QUICK_SETS = ("data.image_size=32", "data.val_fraction=0.2", "data.test_fraction=0.3",
              "data.cache=false", "train.epochs=1", "train.batch_size=8")
QUICK_PHANTOMS = 40
QUICK_METHODS = ("gradient", "input_x_gradient", "guided_backprop")
QUICK_IMAGES = 4
QUICK_EVALUATE = ("--n-boot", "200", "--deletion-steps", "5", "--randomisation-images", "2")

# ----------------------------------------------------------------------- the protocols ---
# The paper's protocol at 128 px; the same settings spelt out for another input size (the
# CLI refuses --protocol paper on a non-128 px model).
PAPER_SIZE = 128
PAPER_EXPLICIT = ("--grid", "4", "--steps", "15", "--regions-per-step", "1", "--perturbation",
                  "noise", "--noise-sd", "0.3", "--aggregation", "mean", "--once")
PAPER_METRICS = "aopc"
# The richer protocol. Its AOPC uses a finer grid (8 x 8 regions replaced four at a time,
# 15 steps: the same number of forward passes as the paper's 4 x 4 grid); with the default
# 4 x 4 grid it would repeat the paper protocol's numbers exactly.
RICH_ARGS = ("--metrics", "aopc,deletion,insertion,localisation,randomisation", "--grid", "8",
             "--regions-per-step", "4", "--steps", "15", "--perturbation", "noise",
             "--noise-sd", "0.3", "--aggregation", "mean", "--once")
PROTOCOLS = ("paper", "rich")

# ------------------------------------------------------------------- the paper's table ---
# Zhang, Petitjean, Yger, Ainouz, "Explainability for regression CNN in fetal head
# circumference estimation from ultrasound images", iMIMIC @ MICCAI 2020: AOPC of MoRF
# region perturbation, errors in pixels of the original image, MAE loss (the only loss whose
# numbers we have). Source: /work/shared/docs/field-notes.md, section 3 ("Their AOPC
# (pixels), MAE loss"). Their "LRP" is LRP-z, here lrp_z.
PAPER_AOPC_PX = {
    "VGG16": {"gradient": -7.31, "smoothgrad": -7.39, "deconvnet": -2.87, "deep_taylor": -7.40,
              "guided_backprop": -1.66, "input_x_gradient": -9.19,
              "integrated_gradients": -9.49, "lrp_z": -9.17},
    "ResNet50": {"gradient": -11.53, "smoothgrad": -11.84, "deconvnet": -9.25,
                 "deep_taylor": -9.89, "guided_backprop": -9.72, "input_x_gradient": -14.75,
                 "integrated_gradients": -5.60, "lrp_z": -14.58},
}
PAPER_TWIN = {"plain-mae": "VGG16", "residual-mae": "ResNet50"}
# Best regression accuracy of the same group (EfficientNet + MAE loss, 5-fold CV on the 999
# training images; field-notes.md section 2).
PAPER_BEST_MAE_MM = 1.83
PAPER_METHODS = tuple(PAPER_AOPC_PX["VGG16"])

# ------------------------------------------------------------------------------ helpers ---
START = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - START:8.1f} s] {message}", flush=True)


def display(args) -> str:
    """A command as a user types it."""
    return "fetalhc " + shlex.join(str(a) for a in args)


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run_cli(args, log_path: Path, in_process: bool) -> tuple[int, float]:
    """Run ``fetalhc <args>``, output into ``log_path``; returns the exit code and the CPU
    seconds it used (user + system, all threads; on a loaded machine a fairer measure of
    the work than the wall clock)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        log.write(f"$ {display(args)}\n")
        log.flush()
        if not in_process:
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL",
                                                                          "2")}
            before = cpu_seconds(resource.RUSAGE_CHILDREN)
            code = subprocess.run([sys.executable, "-m", "fetalhc.cli.main", *map(str, args)],
                                  stdout=log, stderr=subprocess.STDOUT, env=env).returncode
            return code, cpu_seconds(resource.RUSAGE_CHILDREN) - before
        from fetalhc.cli.main import main

        before = cpu_seconds(resource.RUSAGE_SELF)
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            try:
                code = main([str(a) for a in args])
            except Exception:  # a bug, not a user error: keep the traceback in the log
                traceback.print_exc(file=log)
                code = 1
        return code, cpu_seconds(resource.RUSAGE_SELF) - before


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Steps:
    """``<runs>/<name>/study_steps.json``: per step its command, exit code and seconds."""

    def __init__(self, path: Path):
        self.path = path
        self.records = json.loads(path.read_text()) if path.is_file() else {}

    def done(self, step: str, command: str, stamp: str) -> bool:
        record = self.records.get(step, {})
        return (same_command(record.get("command", ""), command)
                and record.get("returncode") == 0 and record.get("model_stamp") == stamp)

    def record(self, step: str, **values) -> None:
        from fetalhc.files import write_json

        self.records[step] = values
        write_json(self.path, self.records)


PATH_OPTIONS = ("--data", "--model", "--maps", "--out")


def same_command(recorded: str, command: str) -> bool:
    """The same command, with path arguments compared by the folder they name: the data
    folder given as ``../shared/data/hc18`` or through ``$FETALHC_HC18`` as an absolute path
    must not redo hours of finished work."""
    def canonical(text: str) -> list[str]:
        words = shlex.split(text)
        return [str(Path(word).resolve()) if index and words[index - 1] in PATH_OPTIONS
                else word for index, word in enumerate(words)]
    return bool(recorded) and canonical(recorded) == canonical(command)


def model_stamp(model_file: Path) -> str:
    stat = model_file.stat()
    return f"{stat.st_size}:{int(stat.st_mtime)}"


def event_wall_times(path: Path) -> list[float]:
    """Wall times of a TensorBoard event file (TFRecord of ``Event`` protos). ``wall_time``
    is field 1 (a double, tag byte 0x09), serialised first; records without it are skipped."""
    import struct

    times = []
    with open(path, "rb") as stream:
        while True:
            head = stream.read(12)
            if len(head) < 12:
                break
            (length,) = struct.unpack("<Q", head[:8])
            data = stream.read(length)
            stream.read(4)
            if len(data) >= 9 and data[0] == 0x09:
                times.append(struct.unpack("<d", data[1:9])[0])
    return times


def train_seconds(run_dir: Path, steps: Steps) -> tuple[float, str]:
    """Training time of a run folder and where it comes from."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("train_seconds", "train_time_s"):
        if isinstance(metrics.get(key), (int, float)):
            return float(metrics[key]), f"metrics.json {key}"
    spans = []
    for events in sorted((run_dir / "logs" / "train").glob("events.out.tfevents.*")):
        times = event_wall_times(events)
        if len(times) >= 2:
            spans.append(max(times) - min(times))
    if spans:
        return float(sum(spans)), "TensorBoard event wall times (logs/train)"
    record = steps.records.get("train", {})
    if record.get("returncode") == 0 and "seconds" in record:
        return float(record["seconds"]), "wall time of `fetalhc train` run by this script"
    return float("nan"), "unknown (no TensorBoard log)"


# ------------------------------------------------------------------------- the study ---


@dataclass
class ModelResult:
    spec: ModelSpec
    work: Path
    run_dir: Path
    train_command: list
    external: bool = False
    status: str = "ok"  # ok, missing, failed
    message: str = ""
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    train_time: tuple = (float("nan"), "")
    filenames: list = field(default_factory=list)
    protocol_note: str = ""
    tables: dict = field(default_factory=dict)  # (protocol, kind) -> DataFrame
    settings: dict = field(default_factory=dict)  # protocol -> evaluate's settings.json
    steps: dict = field(default_factory=dict)


def train_command(spec: ModelSpec, data: Path, runs: Path, quick: bool) -> list:
    args = ["train"]
    if not quick and spec.config:
        args += ["--config", spec.config]
    args += ["--data", str(data), "--out", str(runs / spec.name)]
    sets = list(spec.sets)
    if quick:
        sets = [f"model.backbone={QUICK_BACKBONES[spec.family]}", *QUICK_SETS, *sets]
    for item in sets:
        args += ["--set", item]
    if quick:
        args.append("--quiet")
    return args


def config_differences(result: ModelResult) -> list[str]:
    """``section.key`` values of the run's config.toml that differ from what its train
    command (config file + ``--set``) gives: e.g. a run trained with ``--epochs 15``."""
    from fetalhc.training.config import DEFAULTS, parse_set_option, resolve_config

    args, config, overrides = result.train_command, None, {}
    for flag, value in zip(args, args[1:], strict=False):
        if flag == "--config":
            config = Path(value) if Path(value).is_file() else REPO_ROOT / value
        elif flag == "--set":
            key, parsed = parse_set_option(value)
            overrides[key] = parsed
    try:
        expected = resolve_config(config, overrides=overrides)
        actual = resolve_config(result.run_dir / "config.toml", allow_resolved=True)
    except (ValueError, OSError) as error:
        return [f"(could not compare with the command: {error})"]
    return [f"{section}.{key} = {actual[section][key]!r} (the command gives "
            f"{expected[section][key]!r})"
            for section in DEFAULTS for key in DEFAULTS[section]
            if actual[section].get(key) != expected[section].get(key)]


def evaluate_args(run_dir: Path, data: Path, methods, maps: Path, out: Path, images: int,
                  image_size: int, protocol: str, quick: bool,
                  randomisation_images: int | None = None) -> tuple[list, str]:
    args = ["evaluate", "--model", str(run_dir), "--data", str(data), "--split", "test",
            "--limit", str(images), "--methods", ",".join(methods), "--maps", str(maps),
            "--out", str(out), "--no-progress"]
    note = ""
    if protocol == "paper":
        if image_size == PAPER_SIZE:
            args += ["--protocol", "paper"]
        else:
            args += list(PAPER_EXPLICIT)
            note = (f"the paper's settings spelt out at {image_size} px (the paper used "
                    f"{PAPER_SIZE} px, so `--protocol paper` refuses this model)")
        args += ["--metrics", PAPER_METRICS]
    else:
        args += list(RICH_ARGS)
        if randomisation_images is not None:
            args += ["--randomisation-images", str(randomisation_images)]
    if quick:
        args += list(QUICK_EVALUATE)
    return args, note


def run_step(result: ModelResult, steps: Steps, step: str, args, stamp: str,
             in_process: bool, complete, page_only: bool = False) -> bool:
    """Run one CLI step unless it is already complete; True on success."""
    command = display(args)
    if (steps.done(step, command, stamp) or (page_only and step in steps.records)) \
            and complete():
        record = steps.records[step]
        result.steps[step] = {**record, "skipped": True}
        say(f"{result.spec.name}: {step} already done ({record['seconds']:.0f} s when it ran)")
        return True
    if page_only:
        result.status = "missing"
        result.message = f"trained; {step} not run yet"
        say(f"{result.spec.name}: {result.message}")
        return False
    say(f"{result.spec.name}: {step} ...")
    log = result.work / "logs" / f"{step}.log"
    start = time.monotonic()
    code, cpu = run_cli(args, log, in_process)
    seconds = time.monotonic() - start
    record = {"command": command, "returncode": code, "seconds": round(seconds, 1),
              "cpu_seconds": round(cpu, 1), "model_stamp": stamp,
              "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "log": str(log)}
    steps.record(step, **record)
    result.steps[step] = {**record, "skipped": False}
    if code != 0:
        result.status, result.message = "failed", f"{step} failed (exit {code}); see {log}"
        say(f"{result.spec.name}: {step} FAILED after {seconds:.0f} s; last lines of {log}:\n"
            + tail(log))
        return False
    say(f"{result.spec.name}: {step} done in {seconds:.1f} s ({cpu:.0f} s CPU)")
    return True


def study_model(spec: ModelSpec, options) -> ModelResult:
    work = options.runs / spec.name
    external = spec.name in options.use_run
    run_dir = options.use_run.get(spec.name, work)
    result = ModelResult(spec, work, run_dir,
                         train_command(spec, options.data, options.runs, options.quick),
                         external=external)
    model_file = run_dir / "model.keras"
    if not (model_file.is_file() and (run_dir / "metrics.json").is_file()):
        if not options.train or external or options.page_only:
            result.status = "missing"
            result.message = f"no trained model in {run_dir} yet (command below)"
            say(f"{spec.name}: {result.message}: {display(result.train_command)}")
            return result
        args = list(result.train_command)
        if (run_dir / "config.toml").is_file():  # an interrupted training: continue it
            args.append("--resume")
        say(f"{spec.name}: training ({display(args)}) ...")
        start = time.monotonic()
        log = options.runs / f"{spec.name}.train.log"
        code, cpu = run_cli(args, log, options.in_process)
        seconds = time.monotonic() - start
        if code != 0:
            result.status, result.message = "failed", f"training failed (exit {code}); see {log}"
            say(f"{spec.name}: training FAILED; last lines of {log}:\n{tail(log)}")
            return result
        say(f"{spec.name}: trained in {seconds:.1f} s ({cpu:.0f} s CPU)")
        train_record = {"command": display(result.train_command), "returncode": 0,
                        "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
                        "log": str(log),
                        "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    else:
        train_record = None
    work.mkdir(parents=True, exist_ok=True)
    steps = Steps(work / "study_steps.json")
    if train_record is not None:
        steps.record("train", **train_record)
    if "train" in steps.records:
        result.steps["train"] = {**steps.records["train"], "skipped": train_record is None}
    result.config = tomllib.loads((run_dir / "config.toml").read_text())
    result.metrics = json.loads((run_dir / "metrics.json").read_text())
    result.train_time = train_seconds(run_dir, steps)
    image_size = int(result.config["data"]["image_size"])
    test = list(result.config.get("split", {}).get("test", []))
    if not test:
        result.status, result.message = "failed", f"{run_dir} has no test split"
        return result
    filenames = test[:options.images]
    result.filenames = filenames
    stamp = model_stamp(model_file)
    methods = options.methods

    explain_dir = work / "explain"
    explain = ["explain", "--model", str(run_dir), "--data", str(options.data), "--split",
               "test", "--limit", str(len(filenames)), "--methods", ",".join(methods),
               "--out", str(explain_dir)]

    def explained() -> bool:
        return (explain_dir / "provenance.json").is_file() and \
            (explain_dir / "index.csv").is_file() and \
            all((explain_dir / m / f"{Path(n).stem}.npz").is_file()
                for m in methods for n in filenames)

    _check_stale(steps, stamp, work)
    if not run_step(result, steps, "explain", explain, stamp, options.in_process, explained,
                    options.page_only):
        return result
    maps_dir = work / "maps"
    if not options.page_only:
        # <maps>/<method>.npy + filenames.json + the explain folder's provenance.json, so
        # evaluate --maps can check the model, target, images and pre-processing
        from fetalhc.report.explanations import stack_maps

        stack_maps(explain_dir, maps_dir, methods, filenames)

    for protocol in PROTOCOLS:
        out = work / f"evaluate-{protocol}"
        args, note = evaluate_args(run_dir, options.data, methods, maps_dir, out,
                                   len(filenames), image_size, protocol, options.quick,
                                   options.randomisation_images)
        if protocol == "paper":
            result.protocol_note = note

        def evaluated(out=out) -> bool:
            return (out / "summary.csv").is_file() and (out / "per_image.csv").is_file()

        if not run_step(result, steps, f"evaluate-{protocol}", args, stamp,
                        options.in_process, evaluated, options.page_only):
            return result
        settings = json.loads((out / "settings.json").read_text())
        result.settings[protocol] = settings
        if settings.get("filenames") != filenames:
            raise ValueError(f"{out}/settings.json evaluated other images than the maps in "
                             f"{maps_dir} were made for")
        for kind in ("per_image", "summary", "summary_by_error", "randomisation"):
            path = out / f"{kind}.csv"
            if path.is_file():
                result.tables[(protocol, kind)] = pd.read_csv(path)
    return result


def _check_stale(steps: Steps, stamp: str, work: Path) -> None:
    """Maps on disk were made by another model.keras: ``fetalhc explain`` would refuse the
    folder (its provenance names another model); say which folders to delete."""
    old = steps.records.get("explain", {}).get("model_stamp")
    if old is not None and old != stamp:
        raise ValueError(
            f"the model changed since the maps in {work / 'explain'} were made; delete "
            f"{work / 'explain'}, {work / 'maps'} and {work}/evaluate-* and run again")


# ------------------------------------------------------------------------- statistics ---


def bootstrap(values, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    from fetalhc.evaluate.stats import bootstrap_ci

    mean, low, high, _ = bootstrap_ci(values, n_boot=n_boot, seed=seed)
    return mean, low, high


def ranks(values) -> np.ndarray:
    """Rank 1 = most negative (best AOPC); ties share the mean rank."""
    from scipy.stats import rankdata

    return rankdata(np.asarray(values, dtype=float))


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def permutation_p(a, b) -> float:
    """Exact one-sided p of Spearman's rho >= observed over all orderings (n <= 9)."""
    a, b = ranks(a), ranks(b)
    observed = spearman(a, b)
    perms = np.array(list(itertools.permutations(b)))
    centred_a = a - a.mean()
    centred = perms - perms.mean(axis=1, keepdims=True)
    rho = (centred @ centred_a) / (np.linalg.norm(centred, axis=1) * np.linalg.norm(centred_a))
    return float(np.mean(rho >= observed - 1e-12))


def rho_critical(n: int, alpha: float = 0.05) -> float:
    """Smallest Spearman rho whose exact one-sided permutation p is <= alpha (n <= 9)."""
    base = np.arange(1.0, n + 1)
    perms = np.array(list(itertools.permutations(base)))
    centred = base - base.mean()
    rho = (perms - base.mean()) @ centred / (centred @ centred)
    values = np.sort(np.unique(np.round(rho, 12)))
    p = np.array([np.mean(rho >= v - 1e-12) for v in values])
    return float(values[p <= alpha].min()) if np.any(p <= alpha) else float("nan")


def rho_bootstrap(per_image: pd.DataFrame, methods, paper, column, n_boot=2000, seed=0):
    """Percentile CI of Spearman's rho between our per-method means and the paper's, over
    bootstrap resamples of the images (the same images for every method)."""
    from scipy.stats import rankdata

    wide = per_image.pivot_table(index="filename", columns="method", values=column)[methods]
    values = wide.to_numpy(float)
    rng = np.random.default_rng(seed)
    means = np.stack([np.nanmean(values[rng.integers(0, len(values), len(values))], axis=0)
                      for _ in range(n_boot)])
    keep = np.all(np.isfinite(means), axis=1) & (np.ptp(means, axis=1) > 0)
    if not keep.any():
        return float("nan"), float("nan")
    ours = rankdata(means[keep], axis=1)
    theirs = rankdata(np.asarray(paper, dtype=float))
    ours = ours - ours.mean(axis=1, keepdims=True)
    theirs = theirs - theirs.mean()
    rho = ours @ theirs / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs))
    low, high = np.quantile(rho, [0.025, 0.975])
    return float(low), float(high)


# ---------------------------------------------------------------------- formatting ---


def number(value: float, digits: int | None = None) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    if digits is None:
        size = abs(value)
        digits = 0 if size >= 100 else 1 if size >= 10 else 2
    return f"{value:.{digits}f}".replace("-", "−")


def ci_cell(mean, low, high, digits=None) -> str:
    if not np.isfinite(mean):
        return "n/a"
    return f"{number(mean, digits)} [{number(low, digits)}, {number(high, digits)}]"


def summary_lookup(frame: pd.DataFrame | None, method: str, metric: str, group: str | None = None):
    if frame is None:
        return (float("nan"),) * 3
    rows = frame[(frame["method"] == method) & (frame["metric"] == metric)]
    if group is not None:
        rows = rows[rows["error_group"] == group]
    if rows.empty:
        return (float("nan"),) * 3
    row = rows.iloc[0]
    return float(row["mean"]), float(row["ci_low"]), float(row["ci_high"])


def error_group_names(by_error: pd.DataFrame | None) -> tuple[str | None, str | None]:
    """(low-error label, high-error label) of a median split."""
    if by_error is None:
        return None, None
    labels = [g for g in dict.fromkeys(by_error["error_group"]) if g != "no reference"]
    low = next((g for g in labels if g.startswith("error <=")), None)
    high = next((g for g in labels if g.startswith("error >")), None)
    return low, high


# -------------------------------------------------------------------------- figures ---


def compact_png(path: Path) -> None:
    """Re-encode a PNG with a 256-colour palette (keeps docs/study small)."""
    from PIL import Image

    from fetalhc.files import atomic_path

    with Image.open(path) as image:
        palette = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    with atomic_path(path) as temporary:
        palette.save(temporary, format="PNG", optimize=True)


def copy_png(source: Path, target: Path) -> Path | None:
    if not source.is_file():
        return None
    from fetalhc.files import write_bytes

    write_bytes(target, source.read_bytes())
    compact_png(target)
    return target


MAP_CELL_INCHES, MAP_DPI = 1.4, 72  # 16 methods x 4 images: about 0.3 MB per model


def maps_figure(result: ModelResult, methods, target: Path, per_side: int = 2) -> Path | None:
    """Rows = methods, columns = the lowest- and highest-error images (from the paper
    evaluation's per-image table); maps read back from ``fetalhc explain``'s ``.npz``."""
    from fetalhc.viz.figures import save_figure
    from fetalhc.viz.overlay import grid_figure

    per_image = result.tables.get(("paper", "per_image"))
    if per_image is None:
        return None
    errors = per_image.drop_duplicates("filename").set_index("filename")["abs_error_mm"]
    errors = errors.reindex(result.filenames).dropna().sort_values()
    side = min(per_side, len(errors) // 2)
    if side < 1:
        return None
    chosen = list(errors.index[:side]) + list(errors.index[-side:])
    titles = [f"{'low' if i < side else 'high'} error: {Path(n).stem}\n"
              f"|error| {errors[n]:.1f} mm" for i, n in enumerate(chosen)]
    images, contours, maps, units = [], [], {}, {}
    for method in methods:
        for name in chosen:
            with np.load(result.work / "explain" / method / f"{Path(name).stem}.npz") as stored:
                maps.setdefault(method, []).append(np.asarray(stored["map"]))
                units[method] = str(stored["units"])
                if method == methods[0]:
                    images.append(np.asarray(stored["image"]))
                    contours.append(np.asarray(stored["annotation"])
                                    if "annotation" in stored else None)
    if any(c is None for c in contours):
        contours = None
    figure = grid_figure(images, maps, contours, column_titles=titles,
                         cell_inches=MAP_CELL_INCHES)
    columns = len(chosen)
    for row, method in enumerate(methods):  # the map's units beside the method's name
        figure.axes[row * columns].set_ylabel(f"{method}\n({units[method]})", fontsize=7)
    height = figure.get_size_inches()[1]
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.3 / height))  # room for the suptitle
    save_figure(figure, target, dpi=MAP_DPI)
    compact_png(target)
    return target


def overview_figure(results, methods, target: Path) -> Path | None:
    """AOPC MoRF (paper protocol, mm) per method and model, with 95 % CIs."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from fetalhc.viz.figures import save_figure

    ready = [r for r in results if ("paper", "summary") in r.tables]
    if not ready:
        return None
    figure = Figure(figsize=(6.4, 0.32 * len(methods) + 1.4), dpi=100)
    axis = figure.add_subplot(1, 1, 1)
    offsets = np.linspace(-0.3, 0.3, len(ready)) if len(ready) > 1 else [0.0]
    y = np.arange(len(methods))
    for offset, result in zip(offsets, ready, strict=True):
        stats = [summary_lookup(result.tables[("paper", "summary")], m,
                                "aopc_morf_abs_error_mm") for m in methods]
        mean = np.array([s[0] for s in stats])
        low, high = np.array([s[1] for s in stats]), np.array([s[2] for s in stats])
        axis.errorbar(mean, y + offset, xerr=[mean - low, high - mean], fmt="o", markersize=3,
                      capsize=2, label=result.spec.name)
    random_stats = summary_lookup(ready[0].tables[("paper", "summary")], methods[0],
                                  "aopc_random_abs_error_mm")
    if np.isfinite(random_stats[0]):
        axis.axvline(random_stats[0], color="grey", linestyle=":", linewidth=1,
                     label=f"random order ({ready[0].spec.name})")
    axis.set_yticks(y, methods, fontsize=7)
    axis.invert_yaxis()
    axis.set_xlabel("AOPC, MoRF, |predicted HC − reference| (mm); more negative = better")
    axis.grid(alpha=0.3, axis="x")
    axis.legend(fontsize=7, frameon=False)
    axis.set_title("paper protocol, mean over images [95 % bootstrap CI]", fontsize=9)
    figure.tight_layout()
    save_figure(figure, target, dpi=100)
    compact_png(target)
    return target


def ranks_figure(pairs, target: Path) -> Path | None:
    """Our rank against the paper's rank per method, one panel per model pair."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from fetalhc.viz.figures import save_figure

    if not pairs:
        return None
    figure = Figure(figsize=(4.6 * len(pairs), 4.2), dpi=100)
    for index, pair in enumerate(pairs):
        axis = figure.add_subplot(1, len(pairs), index + 1)
        n = len(pair["methods"])
        axis.plot([1, n], [1, n], color="grey", linewidth=0.8, linestyle="--")
        axis.scatter(pair["paper_rank"], pair["our_rank"], s=14)
        for method, x, y in zip(pair["methods"], pair["paper_rank"], pair["our_rank"],
                                strict=True):
            axis.annotate(method, (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points")
        axis.set_xlabel(f"rank in the paper ({pair['paper']}, MAE)")
        axis.set_ylabel(f"our rank ({pair['model']})")
        axis.set_title(f"ρ = {number(pair['rho'], 2)}", fontsize=9)
        axis.set_xlim(0.5, n + 0.5)
        axis.set_ylim(0.5, n + 0.5)
        axis.set_xticks(range(1, n + 1))
        axis.set_yticks(range(1, n + 1))
        axis.invert_xaxis()
        axis.invert_yaxis()
        axis.grid(alpha=0.3)
    figure.suptitle("AOPC MoRF rank, original px (1 = most negative = best)", fontsize=9)
    figure.tight_layout()
    save_figure(figure, target, dpi=100)
    compact_png(target)
    return target


# ---------------------------------------------------------------------------- the page ---

PAPER_COLUMNS = (  # (metric, table title, unit, digits)
    ("aopc_morf_abs_error_mm", "AOPC MoRF of |error|", "mm", None),
    ("aopc_morf_abs_error_px_original", "AOPC MoRF of |error|, the paper's unit",
     "original px", None),
    ("aopc_lerf_abs_error_mm", "AOPC LeRF of |error|", "mm", None),
    ("aopc_random_abs_error_mm", "AOPC random order of |error|", "mm", None),
    ("aopc_morf_shift_mm", "AOPC MoRF of the shift from the unperturbed HC", "mm", None),
)
RICH_COLUMNS = (
    ("aopc_morf_abs_error_mm", "AOPC MoRF of |error|, 8 x 8 grid", "mm", None),
    ("aopc_lerf_abs_error_mm", "AOPC LeRF of |error|, 8 x 8 grid", "mm", None),
    ("aopc_random_abs_error_mm", "AOPC random order of |error|, 8 x 8 grid", "mm", None),
    ("deletion_auc_abs_error_mm", "Deletion area of |error| (larger = better)", "mm", None),
    ("insertion_auc_abs_error_mm", "Insertion area of |error| (smaller = better)", "mm",
     None),
    ("band_ratio", "Contour-band ratio: positive relevance within ±3 mm of the contour "
     "over the band's area share (1 = chance)", "ratio", 2),
    ("top_distance_mm", "Distance of the top-5 % pixels to the contour (smaller = closer)",
     "mm", None),
)


class Page:
    def __init__(self):
        self.parts: list[str] = []

    def add(self, *texts: str) -> None:
        self.parts.extend(texts)

    def text(self) -> str:
        return "\n".join(self.parts).rstrip() + "\n"


def per_metric_tables(page: Page, ready, methods, protocol: str, columns) -> None:
    """One table per metric: methods (rows) x models (columns), mean [95 % CI] (rank)."""
    from fetalhc.files import markdown_table

    for metric, title, unit, digits in columns:
        present = [r for r in ready if (protocol, "summary") in r.tables and
                   metric in set(r.tables[(protocol, "summary")]["metric"])]
        if not present:
            continue
        header = ["method"] + [f"{r.spec.name} ({unit})" for r in present]
        stats = {r.spec.name: [summary_lookup(r.tables[(protocol, "summary")], m, metric)
                               for m in methods] for r in present}
        rank_of = {}
        if metric.startswith("aopc_morf"):
            for name, values in stats.items():
                rank_of[name] = ranks([v[0] for v in values])
        rows = []
        for i, method in enumerate(methods):
            row = [method]
            for r in present:
                cell = ci_cell(*stats[r.spec.name][i], digits)
                if r.spec.name in rank_of and cell != "n/a":
                    cell += f" (#{rank_of[r.spec.name][i]:g})"
                row.append(cell)
            rows.append(row)
        page.add(f"\n**{title}** ({unit}; mean [95 % CI]"
                 + ("; (#k) = rank, 1 = best" if rank_of else "") + ")\n",
                 markdown_table(header, rows))


def beats_random(per_image: pd.DataFrame, methods, metric_morf, metric_random):
    """Per method: paired bootstrap CI of MoRF − random AOPC over images (mm)."""
    out = {}
    for method in methods:
        rows = per_image[per_image["method"] == method]
        if rows.empty or metric_morf not in rows or metric_random not in rows:
            continue
        out[method] = bootstrap(rows[metric_morf].to_numpy() - rows[metric_random].to_numpy())
    return out


def write_page(results, options, methods, wall_seconds: float, study_command: str) -> Path:
    from fetalhc.files import markdown_table

    docs = options.docs
    figures_dir = docs / "study"
    figures_dir.mkdir(parents=True, exist_ok=True)
    ready = [r for r in results if r.status == "ok"]
    page = Page()
    n_images = max((len(r.filenames) for r in ready), default=options.images)
    page.add("# HC18 explainability study\n")
    if options.quick:
        page.add("> **Quick mode**: phantom data, 32 px inputs, tiny models trained for one "
                 "epoch, a few methods and images. The numbers below test the pipeline and "
                 "mean nothing about HC18.\n")
    page.add(
        "Which saliency maps of the HC regression CNNs are faithful, and does the seed "
        "paper's ranking of methods (Zhang et al., iMIMIC 2020) hold for our models? This "
        "page is written by `scripts/hc18_study.py` from the files the `fetalhc` commands "
        "below wrote; every number in it was read from those files. Run the study (it "
        "skips what is done; `--page-only` only rewrites this page) with:\n",
        f"```bash\n{study_command}\n```\n",
        f"Data: `{options.data}` (the HC18 development copy; `$FETALHC_HC18`). Images: the "
        f"first {n_images} images of each run's own test split. Methods: {len(methods)} "
        f"({', '.join(methods)}). Written {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{os.cpu_count()} CPU cores, this invocation took {wall_seconds / 60:.1f} min "
        "(steps already done were skipped; their times below are from when they ran).\n")

    summary_at = len(page.parts)
    page.add("")  # "In short", filled in once the numbers below are known

    # ---- models
    page.add("## Models\n")
    rows = []
    for result in results:
        if result.status != "ok":
            rows.append([result.spec.name, FAMILY_LABELS[result.spec.family],
                         result.spec.loss.upper(), "–", "–", "–", "–", "–", "–", "–",
                         f"{result.status}: {result.message}"])
            continue
        model_cfg, train_cfg = result.config["model"], result.config["train"]
        test, val = result.metrics.get("test", {}), result.metrics.get("val", {})
        seconds, source = result.train_time
        rows.append([
            result.spec.name, f"{FAMILY_LABELS[result.spec.family]}: `{model_cfg['backbone']}`",
            str(train_cfg["loss"]).upper(), str(result.config["data"]["image_size"]),
            str(result.metrics.get("epochs_run", "–")),
            number(seconds / 60, 1), number(val.get("mae_mm", float("nan")), 2),
            number(test.get("mae_mm", float("nan")), 2),
            number(test.get("rmse_mm", float("nan")), 2),
            number(test.get("pmae_percent", float("nan")), 2) + f" (n = {test.get('n', '–')})",
            source])
    page.add(markdown_table(["model", "backbone", "loss", "input (px)", "epochs run",
                           "train time (min)", "val MAE (mm)", "test MAE (mm)", "test RMSE (mm)",
                           "test PMAE (%)", "train time from / status"], rows))
    mismatched = [r for r in ready if str(r.config["train"]["loss"]).lower() != r.spec.loss]
    for result in mismatched:
        page.add(f"\n**Note:** `{result.spec.name}` was trained with loss "
                 f"{result.config['train']['loss']}, not {result.spec.loss} as its name says.\n")
    for result in ready:
        differences = config_differences(result)
        if differences:
            page.add(f"\n**Note:** the run of `{result.spec.name}` differs from its command "
                     f"below in: {'; '.join(differences)}.\n")
    page.add("\nTraining commands (CPU recipe; the run folder records the resolved config, the "
             "split and the history):\n")
    lines = []
    for result in results:
        if result.external:
            lines.append(f"# {result.spec.name}: existing run folder {result.run_dir} "
                         "(see its config.toml)")
        else:
            lines.append(display(result.train_command))
    page.add("```bash\n" + "\n".join(lines) + "\n```\n")

    # ---- steps
    page.add("## What was run, and how long it took\n",
             "Wall-clock and CPU seconds (user + system, all threads) on the shared CPU; "
             "other jobs ran at the same time, so wall times are indicative. Logs: "
             "`<runs>/<model>/logs/`.\n")
    rows = []
    for result in results:
        for step, record in result.steps.items():
            rows.append([result.spec.name, step, number(record.get("seconds", float("nan")), 0),
                         number(record.get("cpu_seconds", float("nan")), 0),
                         "yes" if record.get("skipped") else "no", f"`{record['command']}`"])
    page.add(markdown_table(["model", "step", "wall time (s)", "CPU time (s)",
                           "reused from an earlier invocation", "command"], rows)
             if rows else "Nothing was run.\n")
    notes = {r.protocol_note for r in ready if r.protocol_note}
    protocol_text = protocol_description(ready)
    page.add("\n" + protocol_text + "\n")
    for note in sorted(notes):
        page.add(f"Note: paper protocol here = {note}.\n")
    if not ready:
        page.add("\nNo model is ready yet: train them with the commands above.\n")
        return _finish(page, docs)

    # ---- paper protocol
    page.add("## Paper protocol\n")
    per_metric_tables(page, ready, methods, "paper", PAPER_COLUMNS)
    page.add("\n**Which maps beat a random order?** Paired per image: AOPC MoRF − AOPC "
             "random (mm), mean [95 % bootstrap CI]; a method beats random when the whole "
             "interval is below 0.\n")
    header, rows, verdicts = ["method"], [], []
    paired = {}
    for result in ready:
        per_image = result.tables[("paper", "per_image")]
        paired[result.spec.name] = beats_random(per_image, methods, "aopc_morf_abs_error_mm",
                                                "aopc_random_abs_error_mm")
        header.append(f"{result.spec.name} (mm)")
    for method in methods:
        row = [method]
        for result in ready:
            stats = paired[result.spec.name].get(method)
            row.append(ci_cell(*stats) if stats else "n/a")
        rows.append(row)
    page.add(markdown_table(header, rows))
    beating = {name: [m for m, s in stats.items() if s[2] < 0] for name, stats in paired.items()}
    for result in ready:
        stats = paired[result.spec.name]
        better = beating[result.spec.name]
        worse = [m for m, s in stats.items() if s[1] > 0]
        verdicts.append(
            f"- `{result.spec.name}`: {len(better)} of {len(stats)} methods beat random "
            f"({', '.join(better) or 'none'})"
            + (f"; worse than random: {', '.join(worse)}" if worse else "") + ".")
    page.add("\n" + "\n".join(verdicts) + "\n")

    # ---- richer protocol
    page.add("## Richer protocol\n")
    per_metric_tables(page, ready, methods, "rich", RICH_COLUMNS)
    randomised = [r for r in ready if ("rich", "randomisation") in r.tables]
    if randomised:
        rich = randomised[0].settings["rich"]
        page.add("\n**Model randomisation** (cascading, output layer first): mean similarity "
                 f"({rich['similarity']}) of the map with the trained model's map once every "
                 f"layer is random, over the first {rich['randomisation_images']} images "
                 f"(FLAGGED: above {rich['similarity_threshold']:g}, the map does not depend "
                 "enough on what the model learned). A general caveat: maps that multiply "
                 "by the input (Input x Gradient, IG, LRP-z) or whose patches follow the "
                 "image layout (occlusion, where padding never matters) can stay correlated "
                 "through the image alone.\n")
        rows = []
        for method in methods:
            row = [method]
            for result in randomised:
                frame = result.tables[("rich", "randomisation")]
                frame = frame[frame["method"] == method]
                if frame.empty:
                    row.append("n/a")
                    continue
                value = float(frame["final_similarity"].iloc[0])
                flag = bool(frame["flagged"].iloc[0])
                row.append(number(value, 2) + (" FLAGGED" if flag else ""))
            rows.append(row)
        page.add(markdown_table(["method"] + [f"{r.spec.name} (similarity, 1 = identical)"
                                            for r in randomised], rows))
        flagged = {r.spec.name: [m for m in methods if _flagged(r, m)] for r in randomised}
        page.add("\n" + "\n".join(f"- `{name}`: flagged: {', '.join(items) or 'none'}."
                                  for name, items in flagged.items()) + "\n")
    else:
        flagged = {}
    page.parts[summary_at] = in_short(ready, paired, beating, flagged)

    # ---- error split
    error_split_section(page, ready, methods)

    # ---- figures
    figure_section(page, ready, methods, figures_dir)

    # ---- paper comparison
    comparison_section(page, ready, methods, figures_dir)
    return _finish(page, docs)


def protocol_description(ready) -> str:
    """What the two evaluations did, from their settings.json (the first ready model's)."""
    if not ready:
        return ("**Paper protocol**: `fetalhc evaluate --protocol paper --metrics "
                f"{PAPER_METRICS}`. **Richer protocol**: `fetalhc evaluate "
                + " ".join(RICH_ARGS) + "`.")
    paper, rich = ready[0].settings["paper"], ready[0].settings["rich"]
    differ = [r.spec.name for r in ready[1:]
              if any({k: v for k, v in r.settings[p].items() if k not in IDENTITY_KEYS}
                     != {k: v for k, v in ready[0].settings[p].items()
                         if k not in IDENTITY_KEYS} for p in PROTOCOLS)]

    def regions(settings):
        grid, size = settings["grid"], settings["image_size"]
        return (f"{grid} x {grid} grid of {size // grid} x {size // grid} px regions "
                f"(at {size} px) ranked by "
                f"{'mean signed' if settings['aggregation'] == 'mean' else 'mean absolute'} "
                "relevance, "
                f"{settings['regions_per_step']} region(s) replaced per step by "
                f"N(0, {settings['noise_sd']:g}) noise, {settings['steps']} steps, MoRF / LeRF "
                f"/ random orders, maps computed "
                f"{'anew each step' if settings['recompute'] else 'once'}")

    text = (
        f"**Paper protocol** (`--protocol {paper['protocol']}`" if paper.get("protocol") else
        "**Paper protocol** (the paper's settings given one by one")
    text += (
        f"): {regions(paper)}. Per image AOPC = e(0) − mean over the {paper['steps'] + 1} "
        "points of e(k), e = |predicted HC − reference|; more negative = better; mean over "
        f"images with a {paper['confidence']:.0%} percentile bootstrap CI ({paper['n_boot']} "
        "resamples); in mm and in pixels of the original image (the paper's unit). "
        f"**Richer protocol**: AOPC on the {regions(rich)}; deletion and insertion of "
        f"{rich['deletion_unit']} in {rich['deletion_steps']} steps (baseline "
        f"{rich['baseline']}: 0 = the image mean; areas in mm per image); localisation of the "
        f"{rich['relevance']} relevance against the annotated skull contour (band ±"
        f"{rich['band_mm']:g} mm, top {rich['top_percent']:g} % pixels); cascading model "
        f"randomisation on the first {rich['randomisation_images']} images, flagged when the "
        f"mean {rich['similarity']} similarity with every layer random exceeds "
        f"{rich['similarity_threshold']:g}.")
    if differ:
        text += f" (Settings of {', '.join(differ)} differ; see their settings.json.)"
    return text


IDENTITY_KEYS = ("model", "data", "filenames", "methods", "limit")


def in_short(ready, paired, beating, flagged) -> str:
    """The page's summary, from the same numbers as the sections below (``beating``: per
    model, the methods that beat a random order)."""
    test_mae = [r.metrics.get("test", {}).get("mae_mm", float("nan")) for r in ready]
    lines = ["## In short\n",
             f"- **Models**: {len(ready)}, test MAE {number(min(test_mae), 2)} to "
             f"{number(max(test_mae), 2)} mm (*Models*).",
             "- **Faithfulness** (paper protocol; a method beats a random order when the "
             "95 % CI of its paired MoRF − random AOPC is below 0): "
             + "; ".join(f"`{name}` {len(better)} of {len(paired[name])}"
                         + (f" ({', '.join(better)})" if better else "")
                         for name, better in beating.items()) + "."]
    if flagged:
        passing = {name: [m for m in paired[name] if m not in items]
                   for name, items in flagged.items()}
        lines.append("- **Sanity** (cascading model randomisation; not flagged = the map "
                     "changes when the weights do): "
                     + "; ".join(f"`{name}` {len(items)} of {len(paired[name])} pass"
                                 + (f" ({', '.join(items)})" if items else "")
                                 for name, items in passing.items()) + ".")
        both = sorted({m for name, items in passing.items() for m in items
                       if m in beating[name]})
        lines.append("- **Both** (beats random and passes randomisation for at least one "
                     f"model): {', '.join(both) or 'no method'}.")
    lines.append("- **Against the seed paper**: rank correlations and the paper's claims, "
                 "checked one by one, are in the last section.\n")
    return "\n".join(lines)


def _flagged(result: ModelResult, method: str) -> bool:
    frame = result.tables[("rich", "randomisation")]
    frame = frame[frame["method"] == method]
    return bool(not frame.empty and frame["flagged"].iloc[0])


def error_split_section(page: Page, ready, methods) -> None:
    from fetalhc.files import markdown_table

    page.add("## Low versus high prediction error\n",
             "Each model's evaluated images split at their median absolute HC error (the "
             "threshold is in the column header). Mean [95 % bootstrap CI] per group. The "
             "AOPC of |error| mixes faithfulness with the direction of the error (a "
             "perturbation can move a wrong prediction towards the reference), so the "
             "MoRF − LeRF gap of the *shift* from the unperturbed prediction (paper "
             "protocol; more negative = the map orders regions better) and the contour-band "
             "ratio (richer protocol; larger = more relevance on the skull) are shown "
             "beside it.\n")
    columns = (("paper", "aopc_morf_abs_error_mm", "AOPC MoRF |error|", "mm", -1, None),
               ("paper", "aopc_gap_shift_mm", "MoRF − LeRF gap, shift", "mm", -1, None),
               ("rich", "band_ratio", "contour-band ratio", "1 = chance", +1, 2))
    for result in ready:
        by_error = {p: result.tables.get((p, "summary_by_error")) for p in PROTOCOLS}
        low, high = error_group_names(by_error["paper"])
        if low is None or high is None:
            page.add(f"\n`{result.spec.name}`: no error split (too few images).\n")
            continue
        header, spec = ["method"], []
        for protocol, metric, title, unit, sign, digits in columns:
            if by_error[protocol] is None or metric not in set(by_error[protocol]["metric"]):
                continue
            spec.append((protocol, metric, title, sign, digits))
            header += [f"{title}, {low} ({unit})", f"{title}, {high} ({unit})"]
        rows, counts = [], {metric: [0, 0, 0] for _, metric, _, _, _ in spec}
        for method in methods:
            row = [method]
            for protocol, metric, _title, sign, digits in spec:
                a = summary_lookup(by_error[protocol], method, metric, low)
                b = summary_lookup(by_error[protocol], method, metric, high)
                row += [ci_cell(*a, digits), ci_cell(*b, digits)]
                if np.isfinite(a[0]) and np.isfinite(b[0]):
                    counts[metric][0] += 1
                    if sign * (a[0] - b[0]) > 0:  # better in the low-error group
                        counts[metric][1] += 1
                        apart = a[1] > b[2] if sign > 0 else a[2] < b[1]
                        counts[metric][2] += int(apart)
            rows.append(row)
        page.add(f"\n### `{result.spec.name}`\n", markdown_table(header, rows))
        sentences = []
        for _protocol, metric, title, _sign, _digits in spec:
            total, better, apart = counts[metric]
            sentences.append(f"{title}: better in the low-error group for {better} of "
                             f"{total} methods ({apart} with non-overlapping CIs)")
        page.add("\n" + "; ".join(sentences) + ".\n")


def figure_section(page: Page, ready, methods, figures_dir: Path) -> None:
    page.add("## Figures\n")
    overview = overview_figure(ready, methods, figures_dir / "aopc_overview.png")
    if overview:
        page.add(f"![AOPC MoRF per method and model](study/{overview.name})\n")
    for result in ready:
        name = result.spec.name
        page.add(f"\n### `{name}`\n")
        target = maps_figure(result, methods, figures_dir / f"maps_{name}.png")
        if target:
            page.add("Signed maps (red raises HC, blue lowers it; each cell its own colour "
                     "limit, printed above it; green: annotated contour) of the "
                     "lowest- and highest-error images:\n",
                     f"![maps, {name}](study/{target.name})\n")
        copies = (
            ("paper", "perturbation_abs_error_px_original.png", "paper_curves",
             "Paper protocol: |error| in original px against regions replaced (MoRF / LeRF / "
             "random)"),
            ("rich", "perturbation_abs_error_mm.png", "rich_curves",
             "Richer protocol: |error| (mm) against regions replaced, 8 x 8 grid"),
            ("rich", "deletion_insertion_abs_error_mm.png", "deletion_insertion",
             "Deletion / insertion, |error| (mm)"),
            ("rich", "localisation_band_ratio.png", "localisation",
             "Contour-band ratio per image"),
            ("paper", "error_split_aopc_morf_abs_error_mm.png", "error_split",
             "AOPC MoRF by error group (paper protocol)"),
        )
        for protocol, source, stem, caption in copies:
            copied = copy_png(result.work / f"evaluate-{protocol}" / "figures" / source,
                              figures_dir / f"{stem}_{name}.png")
            if copied:
                page.add(f"{caption}:\n\n![{caption}](study/{copied.name})\n")


def comparison_section(page: Page, ready, methods, figures_dir: Path) -> None:
    from fetalhc.files import markdown_table

    page.add("## Against the seed paper\n",
             "The paper reports AOPC of MoRF region perturbation in pixels of the original "
             "image for eight methods, ImageNet-pretrained VGG16 and ResNet50 with the MAE "
             "loss, at 128 px (numbers from `/work/shared/docs/field-notes.md`, section 3; no "
             "MSE numbers are available to us). Ours: the same protocol on from-scratch small "
             "CNNs, our AOPC in original px from the paper-protocol run. Absolute values are "
             "not comparable (different models, pre-processing and error levels); ranks "
             "are. Spearman's ρ over the methods both evaluated; its 95 % CI comes from "
             "bootstrap resamples of our images; p is the exact one-sided permutation "
             "probability of a ρ at least as large if the two rankings were unrelated.\n")
    overlap = [m for m in PAPER_METHODS if m in methods]
    if len(overlap) < 3:
        page.add(f"Only {len(overlap)} of the paper's methods were evaluated "
                 f"({', '.join(overlap) or 'none'}); a rank comparison needs at least 3.\n")
        return
    metric = "aopc_morf_abs_error_px_original"
    ours = {}
    for result in ready:
        summary = result.tables[("paper", "summary")]
        ours[result.spec.name] = np.array([summary_lookup(summary, m, metric)[0]
                                           for m in overlap])
    paper_internal = spearman([PAPER_AOPC_PX["VGG16"][m] for m in overlap],
                              [PAPER_AOPC_PX["ResNet50"][m] for m in overlap])
    rows = []
    for result in ready:
        row = [result.spec.name]
        for paper in PAPER_AOPC_PX:
            values = [PAPER_AOPC_PX[paper][m] for m in overlap]
            rho = spearman(ours[result.spec.name], values)
            low, high = rho_bootstrap(result.tables[("paper", "per_image")], overlap, values,
                                      metric)
            p = permutation_p(ours[result.spec.name], values) if len(overlap) <= 9 else \
                float("nan")
            twin = " (twin)" if PAPER_TWIN.get(result.spec.name) == paper else ""
            row.append(f"{number(rho, 2)} [{number(low, 2)}, {number(high, 2)}], "
                       f"p = {number(p, 3)}{twin}")
        rows.append(row)
    page.add(markdown_table(["our model"] + [f"ρ vs paper {p} MAE (rank correlation, CI, p)"
                                           for p in PAPER_AOPC_PX], rows))
    page.add(f"\nFor scale: the paper's own two models agree with ρ = "
             f"{number(paper_internal, 2)} over these {len(overlap)} methods.")
    names = list(ours)
    if len(names) >= 2:
        pairs_text = []
        for a, b in itertools.combinations(names, 2):
            pairs_text.append(f"`{a}` vs `{b}` ρ = {number(spearman(ours[a], ours[b]), 2)}")
        page.add(" Our models among themselves: " + "; ".join(pairs_text) + ".")
        if len(methods) > len(overlap):
            every = {r.spec.name: [summary_lookup(r.tables[("paper", "summary")], m, metric)[0]
                                   for m in methods] for r in ready}
            pairs_text = [f"`{a}` vs `{b}` ρ = {number(spearman(every[a], every[b]), 2)}"
                          for a, b in itertools.combinations(names, 2)]
            page.add(f" Over all {len(methods)} methods: " + "; ".join(pairs_text) + ".")
    page.add("\n")

    pairs = []
    for result in ready:
        paper = PAPER_TWIN.get(result.spec.name)
        if paper is None:
            continue
        values = np.array([PAPER_AOPC_PX[paper][m] for m in overlap])
        summary = result.tables[("paper", "summary")]
        stats = [summary_lookup(summary, m, metric) for m in overlap]
        paper_rank, our_rank = ranks(values), ranks([s[0] for s in stats])
        rows = []
        for i, method in enumerate(overlap):
            difference = our_rank[i] - paper_rank[i]
            verdict = "agrees (within 1 rank)" if abs(difference) <= 1 else \
                ("ours lower by " if difference > 0 else "ours higher by ") + \
                f"{abs(difference):g} ranks"
            rows.append([method, number(values[i], 2), f"{paper_rank[i]:g}",
                         ci_cell(*stats[i]), f"{our_rank[i]:g}", verdict])
        page.add(f"\n### `{result.spec.name}` against the paper's {paper} (MAE loss)\n",
                 markdown_table(["method", f"paper {paper} AOPC (original px)", "paper rank",
                               f"{result.spec.name} AOPC (original px)", "our rank",
                               "rank agreement"], rows))
        agree = [m for i, m in enumerate(overlap) if abs(our_rank[i] - paper_rank[i]) <= 1]
        page.add(f"\nWithin one rank of the paper: {len(agree)} of {len(overlap)} methods "
                 f"({', '.join(agree) or 'none'}). Our values span "
                 f"{number(min(s[0] for s in stats))} to {number(max(s[0] for s in stats))} "
                 f"original px; the paper's {number(values.min())} to "
                 f"{number(values.max())}.\n")
        pairs.append({"methods": overlap, "paper_rank": paper_rank, "our_rank": our_rank,
                      "paper": paper, "model": result.spec.name,
                      "rho": spearman([s[0] for s in stats], values)})
    figure = ranks_figure(pairs, figures_dir / "paper_ranks.png")
    if figure:
        page.add(f"![our ranks against the paper's](study/{figure.name})\n")

    claims_section(page, ready, overlap, ours)


def claims_section(page: Page, ready, overlap, ours) -> None:
    """The paper's claims, each checked against our numbers (text generated from them)."""
    from fetalhc.files import markdown_table

    page.add("### The paper's claims, checked\n")
    rows = []
    top = max(1, len(overlap) * 3 // 8)  # "at or near the top": the best 3 of 8
    position = {name: dict(zip(overlap, ranks(values), strict=True))
                for name, values in ours.items()}

    def rank_text(method):
        return ", ".join(f"{name} #{position[name][method]:g}" for name in position
                         if method in position[name])

    for method, label in (("input_x_gradient", "Input x Gradient"), ("lrp_z", "LRP-z")):
        if method in overlap:
            near = [n for n in position if position[n][method] <= top]
            rows.append([f"{label} is at or near the top for every model and loss",
                         f"{label} in our top {top} of {len(overlap)} for {len(near)} of "
                         f"{len(position)} models ({rank_text(method)})",
                         "yes" if len(near) == len(position) else
                         "partly" if near else "no"])
    if "integrated_gradients" in overlap and "plain-mae" in position:
        rank = position["plain-mae"]["integrated_gradients"]
        rows.append(["IG is the best method for VGG16 with the MAE loss",
                     f"IG ranks #{rank:g} of {len(overlap)} for plain-mae",
                     "yes" if rank == 1 else "no"])
    if {"integrated_gradients", "gradient"} <= set(overlap):
        weaker = [n for n in position
                  if position[n]["integrated_gradients"] > position[n]["gradient"]]
        rows.append(["IG fails in some settings (ResNet50/MAE: IG −5.60 px, worse than "
                     "Gradient −11.53)",
                     f"IG ranks below Gradient for {len(weaker)} of {len(position)} models "
                     f"({', '.join(weaker) or 'none'})",
                     "yes" if weaker else "no"])
    for loss in ("mae", "mse"):
        plain, residual = f"plain-{loss}", f"residual-{loss}"
        if plain in ours and residual in ours:
            better = int(np.sum(ours[residual] < ours[plain]))
            rows.append([f"ResNet50 explains better than VGG16 (here: {loss.upper()} loss)",
                         f"residual AOPC more negative than plain for {better} of "
                         f"{len(overlap)} methods (mean {number(np.mean(ours[residual]))} vs "
                         f"{number(np.mean(ours[plain]))} px; confounded by the models' "
                         "different errors and sensitivity)",
                         "yes" if better > len(overlap) / 2 else "no"])
    contour_rows = []
    for result in ready:
        summary = result.tables.get(("rich", "summary"))
        if summary is None or "band_ratio" not in set(summary["metric"]):
            continue
        band = {m: summary_lookup(summary, m, "band_ratio")[0] for m in overlap}
        order = sorted(overlap, key=lambda m: -band[m])
        half = len(order) // 2
        traced = [m for m in ("guided_backprop", "deep_taylor") if m in order[:half]]
        faint = [m for m in ("gradient", "deconvnet") if m in order[half:]]
        contour_rows.append((result.spec.name, order, traced, faint))
    if contour_rows:
        agree = [r for r in contour_rows if len(r[2]) == 2 and len(r[3]) == 2]
        detail = "; ".join(f"{name}: top by band ratio {', '.join(order[:3])}"
                           for name, order, _, _ in contour_rows)
        rows.append(["Guided Backprop and DeepTaylor trace the contour most clearly; Gradient "
                     "and DeConvNet show little (shown, not measured)",
                     f"GB and DT in the upper half and G and DCN in the lower half of the "
                     f"{len(overlap)} methods by contour-band ratio for {len(agree)} of "
                     f"{len(contour_rows)} models ({detail})",
                     "yes" if len(agree) == len(contour_rows) else
                     "partly" if agree else "no"])
    page.add(markdown_table(["paper's claim", "our numbers", "holds here?"], rows))
    page.add(
        "\nThe error-split claim (map quality is worse where the prediction error is high; the "
        "paper shows examples) is measured in the section *Low versus high prediction "
        "error* above.\n")
    why_section(page, ready, overlap)


def why_section(page: Page, ready, overlap) -> None:
    """General reasons, with the numbers they lean on read from the runs and constants."""
    errors = [r.metrics.get("test", {}).get("mae_mm", float("nan")) for r in ready]
    errors = [e for e in errors if np.isfinite(e)]
    if not errors:
        error_text = "test errors in the table above"
    elif round(min(errors), 1) == round(max(errors), 1):
        error_text = f"{number(min(errors), 1)} mm test MAE"
    else:
        error_text = f"{number(min(errors), 1)}–{number(max(errors), 1)} mm test MAE"
    internal = spearman([PAPER_AOPC_PX["VGG16"][m] for m in overlap],
                        [PAPER_AOPC_PX["ResNet50"][m] for m in overlap])
    paper_gap = max(abs(PAPER_AOPC_PX[p]["input_x_gradient"] - PAPER_AOPC_PX[p]["lrp_z"])
                    for p in PAPER_AOPC_PX)
    lrp_text = ""
    if {"input_x_gradient", "lrp_z"} <= set(overlap):
        gaps = []
        for result in ready:
            per_image = result.tables[("paper", "per_image")].set_index(["method", "filename"])
            column = per_image["aopc_morf_abs_error_px_original"]
            gaps.append(float(np.nanmax(np.abs(column.loc["input_x_gradient"].to_numpy()
                                               - column.loc["lrp_z"].to_numpy()))))
        lrp_text = (f" Our LRP-z and Input x Gradient AOPCs differ by at most "
                    f"{max(gaps):.2g} original px per image (LRP-z equals Input x Gradient on a "
                    f"ReLU network); the paper's two values differ by up to {paper_gap:.2f} px.")
    critical = rho_critical(len(overlap)) if 3 <= len(overlap) <= 9 else float("nan")
    page.add(
        "\n### Why the rankings can differ (general reasons, not measured here)\n",
        f"- **Models.** The paper explains ImageNet-pretrained VGG16 / ResNet50 regressors "
        f"(its best regression model reached {PAPER_BEST_MAE_MM} mm MAE); ours are small CNNs "
        f"trained from scratch on a 2-core CPU ({error_text}). Maps of a weaker, smaller "
        "model need not rank like those of a large pretrained one; the paper's own two "
        f"models rank these {len(overlap)} methods with ρ = {number(internal, 2)} between "
        "them.\n"
        "- **Pre-processing.** We keep the aspect ratio and pad with the image mean; the paper "
        "squashes the image to a square. Some of our regions are padding, so fewer regions "
        "carry anatomy.\n"
        "- **Target.** Our models predict HC in input pixels with each image's pixel size in "
        "the loss (mm); theirs HC in original pixels divided by the largest training value. "
        "The AOPC in original pixels is the same quantity in both, but how far a perturbation "
        "moves the prediction is a property of the model.\n"
        "- **Noise.** N(0, 0.3) regions in a z-scored image are out of distribution; how "
        "strongly a model reacts (hence the AOPC's magnitude) depends on the model, not only "
        "on the map.\n"
        "- **Implementations.** Our IG uses a zeros (image-mean) baseline with adaptive "
        "quadrature; the paper's IG baseline and steps are not known to us." + lrp_text + "\n"
        "- **Few methods, few images.** "
        + (f"With {len(overlap)} methods, ρ must reach {number(critical, 2)} for a one-sided "
           "permutation p ≤ 0.05" if np.isfinite(critical) else
           f"With {len(overlap)} methods no ρ reaches a one-sided permutation p ≤ 0.05")
        + f"; the bootstrap CIs of ρ above (over the {max(len(r.filenames) for r in ready)} "
        "images per model) show how much our ranking moves with the choice of images.\n")


def _finish(page: Page, docs: Path) -> Path:
    from fetalhc.files import write_text

    return write_text(docs / "study.md", page.text())


# ------------------------------------------------------------------------------- main ---


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None,
                        help="HC18 folder (default $FETALHC_HC18, else ../shared/data/hc18; "
                             "--quick: phantoms written to <runs>/phantoms).")
    parser.add_argument("--runs", type=Path, default=None,
                        help="Run folders (default runs/study; --quick: runs/study-quick).")
    parser.add_argument("--docs", type=Path, default=None,
                        help="Where study.md and study/ go (default docs; --quick: "
                             "<runs>/docs).")
    parser.add_argument("--images", type=int, default=None,
                        help="First N test images per model (default 24; --quick: 4).")
    parser.add_argument("--methods", default=None,
                        help="Comma-separated methods, or 'all' (default; --quick: "
                             f"{','.join(QUICK_METHODS)}).")
    parser.add_argument("--models", default="all",
                        help=f"Comma-separated subset of {', '.join(m.name for m in MODELS)}.")
    parser.add_argument("--use-run", action="append", default=[], metavar="NAME=PATH",
                        help="Use an existing run folder for model NAME (read only; outputs "
                             "still go to <runs>/NAME). Repeatable.")
    parser.add_argument("--train", action=argparse.BooleanOptionalAction, default=None,
                        help="Train models whose run folder has no model.keras (default: no; "
                             "--quick: yes).")
    parser.add_argument("--in-process", action=argparse.BooleanOptionalAction, default=None,
                        help="Run the fetalhc commands in this process instead of "
                             "subprocesses (default: only with --quick, to save TF start-ups).")
    parser.add_argument("--randomisation-images", type=int, default=None,
                        help="Images of the randomisation check (default: fetalhc "
                             "evaluate's, 8); it recomputes every map once per weighted "
                             "layer, the most expensive part of the study.")
    parser.add_argument("--page-only", action="store_true",
                        help="Run nothing: write the page from the outputs already on disk.")
    parser.add_argument("--quick", action="store_true",
                        help="Phantoms, 32 px, tiny models, few methods and images.")
    options = parser.parse_args(argv)
    quick = options.quick
    options.runs = options.runs or Path("runs/study-quick" if quick else "runs/study")
    options.docs = options.docs or (options.runs / "docs" if quick else Path("docs"))
    options.images = options.images or (QUICK_IMAGES if quick else 24)
    if options.data is None:
        options.data = options.runs / "phantoms" if quick else \
            Path(os.environ.get("FETALHC_HC18", "../shared/data/hc18"))
    options.train = quick if options.train is None else options.train
    options.in_process = quick if options.in_process is None else options.in_process
    if options.images < 2:
        parser.error("--images must be >= 2 (the error split needs two groups)")
    use_run = {}
    for text in options.use_run:
        name, sep, path = text.partition("=")
        if not sep:
            parser.error(f"--use-run expects NAME=PATH, got {text!r}")
        use_run[name.strip()] = Path(path.strip())
    options.use_run = use_run
    known = [m.name for m in MODELS]
    wanted = known if options.models == "all" else \
        [n.strip() for n in options.models.split(",") if n.strip()]
    unknown = [n for n in wanted + list(use_run) if n not in known]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(known)}")
    options.model_specs = [m for m in MODELS if m.name in wanted]
    return options


def resolve_methods(text: str | None, quick: bool) -> list[str]:
    import fetalhc.explain as fe

    known = fe.available_methods()
    if text is None:
        return list(QUICK_METHODS) if quick else known
    if text == "all":
        return known
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise SystemExit(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return methods


def study_command(options, argv) -> str:
    if argv is None:
        argv = sys.argv[1:]
    argv = [a for a in argv if a != "--page-only"]
    return "python scripts/hc18_study.py " + shlex.join(argv) if argv else \
        "python scripts/hc18_study.py"


def main(argv=None) -> int:
    options = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    methods = resolve_methods(options.methods, options.quick)
    options.methods = methods
    say(f"study: {len(options.model_specs)} models, {len(methods)} methods, "
        f"{options.images} images, data {options.data}, runs {options.runs}, docs "
        f"{options.docs}" + (" (quick)" if options.quick else ""))
    if options.quick and not options.page_only and \
            not (options.data / "training_set_pixel_size_and_HC.csv").is_file():
        from fetalhc.data.phantom import write_phantom_dataset

        write_phantom_dataset(options.data, n=QUICK_PHANTOMS, seed=0, width=96, height=72)
        say(f"wrote {QUICK_PHANTOMS} phantoms to {options.data}")
    if not options.page_only and \
            not (options.data / "training_set_pixel_size_and_HC.csv").is_file():
        raise SystemExit(f"no HC18 data in {options.data}: set $FETALHC_HC18 or --data")
    for spec in options.model_specs:
        command = train_command(spec, options.data, options.runs, options.quick)
        say(f"{spec.name}: train command: {display(command)}")
    results = []
    for spec in options.model_specs:
        try:
            results.append(study_model(spec, options))
        except (ValueError, OSError, KeyError, tomllib.TOMLDecodeError) as error:
            say(f"{spec.name}: FAILED: {error}")
            work = options.runs / spec.name
            results.append(ModelResult(
                spec, work, options.use_run.get(spec.name, work),
                train_command(spec, options.data, options.runs, options.quick),
                external=spec.name in options.use_run, status="failed", message=str(error)))
    say("writing the page ...")
    page = write_page(results, options, methods, time.monotonic() - START,
                      study_command(options, argv))
    size = sum(p.stat().st_size for p in (options.docs / "study").glob("*.png"))
    say(f"wrote {page} and {options.docs / 'study'} ({size / 1e6:.2f} MB of figures)")
    if size > 3e6:
        say("warning: the figures exceed 3 MB")
    failed = [r.spec.name for r in results if r.status == "failed"]
    if failed:
        say(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

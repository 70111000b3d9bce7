"""Accuracy levers of the HC18 recipe, measured on the same images (issue #19).

``run`` trains one variant (a config plus overrides) into ``runs/levers/<name>`` with
``fetalhc.train`` and predicts its validation and test images (169 with the recipe's split)
as they are; it writes ``docs/hc18-model/levers/<name>.csv`` (one
row per image) and ``<name>.json`` (the command, the resolved config, epochs, time per
epoch, the model's digest). A run folder that exists is reused only when its resolved
config equals the requested one (else the script refuses); predictions are always
recomputed from its ``model.keras``.

``compare A B`` prints the paired per-image bootstrap CI of MAE(B) − MAE(A) in mm on the
images both files hold. ``docs/hc18-model.md`` (scripts/hc18_model_report.py) reads the
same files.

    python scripts/hc18_levers.py run base-e20 --config hc18_best --epochs 20
    python scripts/hc18_levers.py run ema-e20 --config hc18_best --epochs 20 \\
        --set train.ema_momentum=0.99
    python scripts/hc18_levers.py compare base-e20 ema-e20
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "hc18-model" / "levers"
RUNS = ROOT / "runs" / "levers"
SPLITS = ("val", "test")
TRAINED_SECTIONS = ("data", "model", "train")


def parse_value(text: str):
    """A ``--set`` value: TOML scalar or list (``1e-3``, ``true``, ``"avg"``, ``[1, 2]``)."""
    import tomllib

    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def overrides_of(settings: list[str]) -> dict:
    overrides = {}
    for setting in settings:
        key, separator, value = setting.partition("=")
        if not separator:
            raise SystemExit(f"--set needs SECTION.KEY=VALUE, got {setting!r}")
        overrides[key.strip()] = parse_value(value.strip())
    return overrides


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def train_variant(name: str, config: str, overrides: dict, data_dir: Path) -> Path:
    """Train ``runs/levers/<name>`` (resuming a killed run), or reuse a finished run of the
    same resolved config, data folder and split (``fetalhc.training.fit.train_or_reuse``);
    ``config`` is a shipped config's name or a TOML path; returns the run folder."""
    from fetalhc.training.fit import train_or_reuse

    out = RUNS / name
    try:
        train_or_reuse(config, data_dir, out, overrides=overrides, verbose=2)
    except ValueError as error:
        raise SystemExit(f"{error} (delete it or pick another name)") from None
    return out


def predict_variant(run: Path, data_dir: Path) -> pd.DataFrame:
    """Per-image predictions (mm) of ``run`` on its val and test splits: as they are, of the
    horizontally flipped image, and for a model with the ellipse head, the HC of its
    predicted ellipse (Ramanujan's perimeter × the pixel size: a geometric head's answer,
    read off the auxiliary output). A crop run predicts on its localiser's crops. A split the
    run does not have (val of a run trained on train + val) is left out."""
    import fetalhc
    from fetalhc.data.ellipse import ellipse_perimeter
    from fetalhc.models import ELLIPSE_OUTPUT, output_names
    from fetalhc.models.localise import predict_ellipses
    from fetalhc.models.reliability import reliability_flags
    from fetalhc.training import resolve_model_split
    from fetalhc.training.config import read_toml
    from fetalhc.training.setup import prediction_index

    model = fetalhc.load_model(run / "model.keras")
    recorded = read_toml(run / "config.toml")["split"]
    frames = []
    for split in (split for split in SPLITS if recorded.get(split)):
        resolved = resolve_model_split(run, data_dir, split, crop_runs=True)
        index = prediction_index(resolved.run.config, resolved.index,
                                 run_dir=resolved.run.run_dir)
        flags = reliability_flags(model, index, resolved.image_size,
                                  hc_range_mm=resolved.hc_range_mm)
        frame = pd.DataFrame({
            "split": split,
            "filename": flags["filename"],
            "pixel size (mm)": index["pixel_size_mm"].to_numpy(np.float64),
            "reference (mm)": resolved.index["hc_mm"].to_numpy(np.float64),
            "prediction (mm)": flags["prediction (mm)"],
            "h-flipped prediction (mm)": flags["flipped prediction (mm)"],
        })
        for column in flags.columns:
            if column.startswith("flag"):
                frame[column] = flags[column]
        if ELLIPSE_OUTPUT in output_names(model) and "region_side_px" not in index.columns:
            ellipses = predict_ellipses(model, index, resolved.image_size)
            frame["ellipse-head HC (mm)"] = (ellipse_perimeter(ellipses[:, 2], ellipses[:, 3])
                                             * frame["pixel size (mm)"].to_numpy())
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def run_command(args) -> None:
    data_dir = Path(args.data)
    overrides = overrides_of(args.set or [])
    if args.epochs:
        overrides["train.epochs"] = args.epochs
    started = time.perf_counter()
    run = train_variant(args.name, args.config, overrides, data_dir)
    table = predict_variant(run, data_dir)
    from fetalhc.files import write_csv, write_json
    from fetalhc.training.config import read_toml

    history = pd.read_csv(run / "history.csv")
    metrics = json.loads((run / "metrics.json").read_text())
    config = read_toml(run / "config.toml")
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_csv(table, RESULTS / f"{args.name}.csv")
    errors = (table["prediction (mm)"] - table["reference (mm)"]).abs()
    record = {
        "name": args.name,
        "command": "python scripts/hc18_levers.py " + shlex.join(sys.argv[1:]),
        "config": {section: config[section] for section in TRAINED_SECTIONS},
        "split_seed": config["data"]["split_seed"],
        "epochs_run": int(len(history)),
        "best_epoch": metrics.get("best_epoch"),
        "train_seconds": metrics.get("train_seconds"),
        "median_epoch_seconds": float(history["epoch_seconds"].median())
        if "epoch_seconds" in history else None,
        "model_sha256": file_digest(run / "model.keras"),
        "fetalhc_revision": git_revision(),
        "n_images": int(len(table)),
        "mae_mm": float(errors.mean()),
        "mae_mm_by_split": {split: float(errors[table["split"] == split].mean())
                            for split in SPLITS if (table["split"] == split).any()},
        "script_seconds": time.perf_counter() - started,
        "machine": f"{os.cpu_count()} cores",
    }
    write_json(RESULTS / f"{args.name}.json", record)
    print(json.dumps({key: record[key] for key in ("name", "mae_mm", "mae_mm_by_split",
                                                   "median_epoch_seconds")}, indent=1))


BOOTSTRAP_DRAWS = 10000  # resamples of the paired bootstrap (compare, and the model page)
BOOTSTRAP_SEED = 0
PREDICTION = "prediction (mm)"
REFERENCE = "reference (mm)"


def paired_difference(first: pd.DataFrame, second: pd.DataFrame,
                      n_boot: int = BOOTSTRAP_DRAWS, seed: int = BOOTSTRAP_SEED,
                      first_column: str = PREDICTION, second_column: str = PREDICTION) -> dict:
    """Paired bootstrap of MAE(second) − MAE(first) in mm over the images both hold.

    Images are matched on ``split`` and ``filename``; each file's absolute errors are
    ``|column − reference (mm)|`` with its own column (``first_column``, ``second_column``;
    default ``prediction (mm)``), and images where either error is not finite are left out.
    The mean and 95 % percentile CI of the per-image differences come from
    :func:`fetalhc.evaluate.stats.bootstrap_ci` (fixed seed). ``ValueError`` when a column is
    missing or the files share no image.
    """
    from fetalhc.evaluate.stats import bootstrap_ci

    keys = ["split", "filename"]
    sides = []
    for frame, column, suffix in ((first, first_column, "a"), (second, second_column, "b")):
        missing = [name for name in (*keys, REFERENCE, column) if name not in frame.columns]
        if missing:
            raise ValueError(f"result file {suffix} has no column {', '.join(missing)}")
        sides.append(pd.DataFrame({
            "split": frame["split"].to_numpy(), "filename": frame["filename"].to_numpy(),
            f"error {suffix}": (pd.to_numeric(frame[column], errors="coerce")
                                - pd.to_numeric(frame[REFERENCE], errors="coerce")).abs()}))
    merged = sides[0].merge(sides[1], on=keys, validate="one_to_one")
    a = merged["error a"].to_numpy(np.float64)
    b = merged["error b"].to_numpy(np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    if not keep.any():
        raise ValueError("the two result files share no image with finite errors")
    a, b = a[keep], b[keep]
    difference, low, high, n = bootstrap_ci(b - a, confidence=0.95, n_boot=n_boot, seed=seed)
    return {"n": n, "mae_a_mm": float(a.mean()), "mae_b_mm": float(b.mean()),
            "difference_mm": difference, "ci_low_mm": low, "ci_high_mm": high}


def compare_command(args) -> None:
    first = pd.read_csv(RESULTS / f"{args.a}.csv")
    second = pd.read_csv(RESULTS / f"{args.b}.csv")
    try:
        print(json.dumps(paired_difference(first, second), indent=1))
    except ValueError as error:
        raise SystemExit(f"{args.a} vs {args.b}: {error}") from None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train a variant and predict val + test")
    run.add_argument("name")
    run.add_argument("--config", default="hc18_best",
                     help="a shipped config's name (fetalhc/configs/) or a TOML path")
    run.add_argument("--epochs", type=int, default=0)
    run.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE")
    run.add_argument("--data", default=os.environ.get("FETALHC_HC18",
                                                      str(ROOT.parent / "shared/data/hc18")))
    run.set_defaults(handler=run_command)
    compare = commands.add_parser("compare", help="paired bootstrap CI of two variants")
    compare.add_argument("a")
    compare.add_argument("b")
    compare.set_defaults(handler=compare_command)
    args = parser.parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()

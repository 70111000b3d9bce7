"""The run folder: its files, reading a run back, starting or resuming one, writing results.

Run folder (docs/architecture.md)::

    out_dir/
    ├── config.toml    resolved config + [preprocessing], [run] (HC statistics, versions),
    │                  [split] (the exact train/val/test file names)
    ├── model.keras    best checkpoint by validation MAE (mm), written atomically
    ├── history.csv    one row per epoch (rewritten whole, atomically, at each epoch)
    ├── metrics.json   val/test metrics in mm of model.keras
    ├── logs/          TensorBoard
    └── backup/        the epoch backup (fetalhc.training.backup; removed once metrics.json
                       is written)

Every file here is written through :mod:`fetalhc.files` (``model.keras`` by
:func:`save_model_atomically`, the one place that saves it).

A crop run (``[data] crop_margin > 0``) records the crop pre-processing and its HC
statistics in crop input px, and is validated and scored on its localiser's crops (else on
reference crops, optimistic; see ``fetalhc.training.setup.validation_index``); a localiser
trained on the run's val or test images is refused (``setup.check_localiser_split``).

One job in one module (over 400 lines): every file of the run folder and every split of
a run (train, val, test, val+test, challenge) is read and written here, nowhere else.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from fetalhc.data.crop import CROP_PREPROCESSING
from fetalhc.data.pipeline import PREPROCESSING
from fetalhc.files import atomic_path, write_csv, write_json
from fetalhc.training.config import (
    DEFAULTS,
    HELD_OUT,
    RESOLVED_SECTIONS,
    SPLITS,
    resolve_config,
    user_sections,
    write_config,
)
from fetalhc.training.setup import (
    augmentation_of,
    check_localiser_split,
    crop_margin_of,
    hc_statistics,
    localiser_file,
    monitor_name,
)

CONFIG_FILE = "config.toml"
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
LOGS_DIR = "logs"
BACKUP_DIR = "backup"
DISCARDED_BACKUP = ".backup.discarded"  # backup/ renamed away, then deleted
RUN_FILES = (CONFIG_FILE, MODEL_FILE, HISTORY_FILE, METRICS_FILE, LOGS_DIR, BACKUP_DIR,
             DISCARDED_BACKUP)


@dataclass
class Run:
    """A run folder read back: its resolved config and where its files are."""

    run_dir: Path
    config: dict[str, Any]
    model_path: Path

    @property
    def image_size(self) -> int:
        return int(self.config["data"]["image_size"])


@dataclass
class TrainResult:
    """What ``train`` returns: the run folder, its best model file, metrics and history."""

    run_dir: Path
    model_path: Path
    metrics: dict[str, Any]
    history: pd.DataFrame = field(repr=False)


# ----------------------------------------------------------------------- reading runs ---


def load_run(run_dir: str | os.PathLike) -> Run:
    """Read a run folder (or the ``model.keras`` inside one) → ``Run``."""
    path = Path(run_dir)
    if path.is_file():
        path = path.parent
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{path} is not a fetalhc run folder (no {CONFIG_FILE})")
    config = resolve_config(config_path, allow_resolved=True)
    return Run(run_dir=path, config=config, model_path=path / MODEL_FILE)


def run_split_index(run_config: dict[str, Any], data_dir: str | os.PathLike,
                    split: str = "test") -> pd.DataFrame:
    """The index rows of one split of a run: ``train``/``val``/``test`` from the file names
    recorded in the run's config, ``val+test`` (:data:`HELD_OUT`) = its val rows then its
    test rows (every image the run held out; a run without val gives its test rows),
    ``challenge`` = the unlabelled HC18 test_set.

    Raises ``ValueError`` when the split is unknown, empty, or names files the data folder
    does not have.
    """
    from fetalhc.data import load_index

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known splits: {', '.join(SPLITS)}")
    if split == "challenge":
        index = load_index(data_dir, "challenge", validate=False)
        if len(index) == 0:
            raise ValueError(f"the challenge split of {data_dir} is empty")
        return index
    parts = ("val", "test") if split == HELD_OUT else (split,)
    names = [name for part in parts for name in run_config.get("split", {}).get(part, [])]
    if not names:
        raise ValueError(f"the {split!r} split of this run is empty (see [split] in config.toml)")
    index = load_index(data_dir, "training", validate=False)
    by_name = index.set_index("filename", drop=False)
    missing = [name for name in names if name not in by_name.index]
    if missing:
        raise ValueError(
            f"{data_dir} lacks {len(missing)} file(s) of the run's {split!r} split, "
            f"e.g. {missing[0]}: is it the data folder the run was trained on? (--split all "
            "takes every image of the folder)"
        )
    return by_name.loc[names].reset_index(drop=True)


def resolve_split(config: dict[str, Any], data_dir) -> dict[str, list[str]]:
    """The train / val / test file names ``config`` selects from ``data_dir`` (deterministic)."""
    from fetalhc.data import kfold_split, load_index, split_index

    data = config["data"]
    index = load_index(data_dir, "training", validate=False)
    if len(index) == 0:
        raise ValueError(f"{data_dir} has no training images")
    if data["k"] >= 2:
        outer = split_index(index, seed=data["split_seed"], val_fraction=0.0,
                            test_fraction=data["test_fraction"])
        folds = kfold_split(outer["train"], k=data["k"], fold=data["fold"],
                            seed=data["split_seed"])
        parts = {"train": folds["train"], "val": folds["val"], "test": outer["test"]}
    else:
        parts = split_index(index, seed=data["split_seed"], val_fraction=data["val_fraction"],
                            test_fraction=data["test_fraction"])
    return {name: [str(f) for f in part["filename"]] for name, part in parts.items()}


# --------------------------------------------------------------- starting or resuming ---


def check_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> bool:
    """Refuse an unusable ``out_dir`` without touching it; returns True when it holds a
    run to resume (``resume``), False when a new run goes there (new, empty, or
    ``overwrite``)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"--out {out_dir} exists and is not a folder")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return False
    if not (out_dir / CONFIG_FILE).is_file():
        raise ValueError(
            f"--out {out_dir} is not empty and holds no fetalhc run; choose another folder"
        )
    if resume and overwrite:
        raise ValueError("choose either resume or overwrite, not both")
    if overwrite:
        return False
    if not resume:
        raise ValueError(
            f"--out {out_dir} already holds a run; pass --resume to continue it or "
            "--overwrite to replace it"
        )
    return True


def prepare_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> bool:
    """Check/clean ``out_dir``; returns True when an existing run is to be resumed."""
    resuming = check_out_dir(out_dir, resume, overwrite)
    if not resuming:
        out_dir.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for name in RUN_FILES:
                target = out_dir / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
    shutil.rmtree(out_dir / DISCARDED_BACKUP, ignore_errors=True)  # a kill during discard
    return resuming


def check_training_data(config: dict[str, Any], data_dir, out_dir=None,
                        resume: bool = False) -> None:
    """The data folder holds what the run needs: the HC18 layout whose index loads, a
    non-empty training part, the split of ``config`` (or, on ``resume``, the split recorded
    in ``out_dir``'s ``config.toml``), and every train / val / test image (and annotation,
    for the ellipse output) decodes in full (``fetalhc.data.check_images``). One-line
    errors; nothing is written."""
    from fetalhc.data import check_images, load_index

    data_dir = Path(data_dir)
    config_path = None if out_dir is None else Path(out_dir) / CONFIG_FILE
    if resume and config_path is not None and config_path.is_file():
        split = resolve_config(config_path, allow_resolved=True).get("split", {})
    else:
        split = resolve_split(config, data_dir)
    names = {name for part in ("train", "val", "test") for name in split.get(part, [])}
    index = load_index(data_dir, "training", validate=False)
    missing = sorted(names - set(index["filename"]))
    if missing:
        raise ValueError(
            f"{data_dir} lacks {len(missing)} file(s) of the run's split, e.g. {missing[0]}: "
            "is it the data folder the run was trained on?")
    # annotations are read only for the ellipse output and the reference crops (as the
    # input pipeline checks them)
    check_images(index[index["filename"].isin(names)],
                 annotations=bool(config["model"]["aux_ellipse"]) or crop_margin_of(config) > 0)
    if config["data"].get("localiser"):
        from fetalhc.models import check_localiser, load_model

        path = localiser_file(config)
        check_localiser(load_model(path))
        check_localiser_split(path, split)


def plan_run(config: dict[str, Any], data_dir: Path, out_dir: Path, resume: bool,
             overwrite: bool) -> tuple[dict[str, Any], bool]:
    """What :func:`start_run` writes, decided without writing anything: on a new run the
    config with its ``[preprocessing]``, ``[run]`` (HC statistics, versions) and ``[split]``
    sections; on resume the stored config (refused when it is another run, an incomplete
    one or a finished one). Returns (config, resuming)."""
    import keras

    import fetalhc
    from fetalhc.data import load_index

    resuming = check_out_dir(out_dir, resume, overwrite)
    config_path = out_dir / CONFIG_FILE
    if resuming:
        stored = resolve_config(config_path, allow_resolved=True)
        absent = [f"[{name}]" for name in RESOLVED_SECTIONS if name not in stored]
        if absent or not {"monitor", "hc_mean_px", "hc_std_px"} <= set(stored["run"]):
            raise ValueError(
                f"--out {out_dir} holds no complete run ({CONFIG_FILE} lacks "
                f"{', '.join(absent) or 'keys of [run]'}); use another --out or --overwrite")
        wanted, had = user_sections(config), user_sections(stored)
        wanted["train"]["epochs"] = had["train"]["epochs"]
        if wanted != had:
            changed = [f"[{s}] {k}" for s in DEFAULTS for k in DEFAULTS[s]
                       if wanted[s][k] != had[s][k]]
            raise ValueError(
                f"--out {out_dir} holds a different run (differs in {', '.join(changed)}); "
                "use another --out or --overwrite"
            )
        if (out_dir / METRICS_FILE).is_file() and not (out_dir / BACKUP_DIR).exists():
            raise ValueError(f"nothing to resume: the run in {out_dir} has finished")
        stored["train"]["epochs"] = config["train"]["epochs"]
        return stored, True
    config = dict(config)
    data, model_cfg, train_cfg = config["data"], config["model"], config["train"]
    size = data["image_size"]
    split = resolve_split(config, data_dir)
    index = load_index(data_dir, "training", validate=False)
    train_index = index[index["filename"].isin(set(split["train"]))]
    margin = crop_margin_of(config)
    hc_mean, hc_std = hc_statistics(train_index, size, margin)
    if not model_cfg["standardise_output"]:
        hc_mean, hc_std = 0.0, 1.0
    config["preprocessing"] = {"image_size": size, **(
        {**CROP_PREPROCESSING, "crop_margin": margin} if margin > 0 else PREPROCESSING)}
    config["run"] = {
        "fetalhc_version": fetalhc.__version__,
        "keras_version": keras.__version__,
        "data_dir": str(data_dir.resolve()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seed": train_cfg["seed"],
        "fold": data["fold"] if data["k"] >= 2 else -1,
        "hc_mean_px": hc_mean,
        "hc_std_px": hc_std,
        # the training split's reference HC range (mm): predict's outside-range flag (#19)
        "hc_min_mm": float(train_index["hc_mm"].min()),
        "hc_max_mm": float(train_index["hc_mm"].max()),
        "monitor": monitor_name(model_cfg["aux_ellipse"], bool(split["val"])),
    }
    if data.get("localiser"):
        config["run"]["localiser_file"] = str(localiser_file(config))
    if data["augment"]:
        from fetalhc.data.pipeline import augmentation_config

        config["run"]["augmentation"] = {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in augmentation_config(augmentation_of(config)).items()
        }
    config["split"] = split
    return config, False


def start_run(config: dict[str, Any], out_dir: Path, resuming: bool, overwrite: bool) -> None:
    """Create (or clean, for ``overwrite``) the run folder and write the ``config`` of
    :func:`plan_run` into it; on resume only a changed epoch count is written."""
    prepare_out_dir(out_dir, resuming, overwrite and not resuming)
    config_path = out_dir / CONFIG_FILE
    if not resuming:
        write_config(config, config_path)
    elif resolve_config(config_path, allow_resolved=True)["train"]["epochs"] != \
            config["train"]["epochs"]:
        write_config(config, config_path)


def prepare_run(config: dict[str, Any], data_dir: Path, out_dir: Path, resume: bool,
                overwrite: bool) -> tuple[dict[str, Any], bool]:
    """Check ``out_dir``; on a new run resolve the split and the HC statistics and write
    ``config.toml``; on resume read the stored config back (:func:`plan_run`, then
    :func:`start_run`). Returns (config, resuming)."""
    config, resuming = plan_run(config, data_dir, out_dir, resume, overwrite)
    start_run(config, out_dir, resuming, overwrite)
    return config, resuming


# ------------------------------------------------------------------ history and backup ---


def read_history(path: Path) -> pd.DataFrame:
    """``history.csv`` as a DataFrame (empty when the file is missing or empty)."""
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame()
    return pd.read_csv(path)


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write the epoch rows (dicts with ``epoch`` first) as ``history.csv``, atomically and
    at full precision; no rows: no file."""
    if not rows:
        path.unlink(missing_ok=True)
        return
    write_csv(pd.DataFrame(rows), path, float_format=None)


def discard_backup(out_dir: Path) -> None:
    """Delete ``out_dir/backup`` as one step: renamed away first (atomic), then deleted, so
    that a kill leaves either the whole backup or none."""
    backup, discarded = out_dir / BACKUP_DIR, out_dir / DISCARDED_BACKUP
    shutil.rmtree(discarded, ignore_errors=True)
    if backup.exists():
        os.replace(backup, discarded)
    shutil.rmtree(discarded, ignore_errors=True)


# ------------------------------------------------------------------------- results ---


def save_model_atomically(model, model_path: Path) -> None:
    """Save ``model`` to ``model_path`` (``.keras``) so that it is never half written."""
    with atomic_path(model_path) as temporary:
        model.save(temporary)


def history_summary(history: pd.DataFrame, monitor: str) -> dict[str, int]:
    """``epochs_run`` and ``best_epoch`` (-1 when ``monitor`` was never logged)."""
    return {
        "epochs_run": int(len(history)),
        "best_epoch": int(history.loc[history[monitor].idxmin(), "epoch"])
        if monitor in history.columns and len(history) else -1,
    }


def write_metrics(out_dir: Path, metrics: dict[str, Any], config: dict[str, Any],
                  data_dir: Path) -> dict[str, Any]:
    """Score the best checkpoint ``model.keras`` on the run's val and test splits, add the
    scores to ``metrics`` and write ``metrics.json``; returns ``metrics``.

    A crop run is scored on the crops of its localiser when it has one, else on reference
    crops (perfect localisation: optimistic); ``metrics["crop"]`` says which."""
    from fetalhc.models import load_model, predict_and_score
    from fetalhc.training.setup import prediction_index, training_index

    best_model = load_model(out_dir / MODEL_FILE)
    margin = crop_margin_of(config)
    localiser = localiser_file(config) if margin > 0 else None
    localiser_model = load_model(localiser) if localiser is not None else None
    if margin > 0:
        metrics["crop"] = {"crop_margin": margin, "regions": f"localiser {localiser}" if
                           localiser else "reference ellipse (perfect localisation: optimistic)"}
    batch_size = config["train"]["batch_size"]
    for name in ("val", "test"):
        if config["split"].get(name):
            index = run_split_index(config, data_dir, name)
            index = (training_index(index, margin) if localiser_model is None else
                     prediction_index(config, index, localiser_model, batch_size))
            _, metrics[name] = predict_and_score(
                best_model, index, config["data"]["image_size"], batch_size=batch_size)
    write_json(out_dir / METRICS_FILE, metrics)
    return metrics

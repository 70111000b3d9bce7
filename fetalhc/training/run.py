"""``train``: config → grouped split → ``model.fit`` → run folder; run-folder helpers.

Run folder (docs/architecture.md)::

    out_dir/
    ├── config.toml    resolved config + [preprocessing], [run] (HC statistics, versions),
    │                  [split] (the exact train/val/test file names)
    ├── model.keras    best checkpoint by validation MAE (mm), written atomically
    ├── history.csv    one row per epoch (appended on resume)
    ├── metrics.json   val/test metrics in mm of model.keras
    ├── logs/          TensorBoard
    └── backup/        keras.callbacks.BackupAndRestore state (removed when training ends)
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fetalhc.training.config import (
    DEFAULTS,
    resolve_config,
    user_sections,
    write_config,
)

CONFIG_FILE = "config.toml"
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
LOGS_DIR = "logs"
BACKUP_DIR = "backup"
RUN_FILES = (CONFIG_FILE, MODEL_FILE, HISTORY_FILE, METRICS_FILE, LOGS_DIR, BACKUP_DIR)
SPLITS = ("train", "val", "test", "challenge")

PREPROCESSING = {
    "resize": "keep aspect ratio, longer side = image_size, bilinear with anti-aliasing",
    "normalise": "z-score per image (mean 0, SD 1 over the image's own pixels)",
    "pad": "centred to a square with 0 (the image mean after z-scoring)",
    "pad_value": 0.0,
    "channels": 1,
}


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
    run_dir: Path
    model_path: Path
    metrics: dict[str, Any]
    history: pd.DataFrame = field(repr=False)


# ----------------------------------------------------------------------- run folders ---


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
    recorded in the run's config, ``challenge`` = the unlabelled HC18 test_set.

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
    names = list(run_config.get("split", {}).get(split, []))
    if not names:
        raise ValueError(f"the {split!r} split of this run is empty (see [split] in config.toml)")
    index = load_index(data_dir, "training", validate=False)
    by_name = index.set_index("filename", drop=False)
    missing = [name for name in names if name not in by_name.index]
    if missing:
        raise ValueError(
            f"{data_dir} lacks {len(missing)} file(s) of the run's {split!r} split, "
            f"e.g. {missing[0]}: is it the data folder the run was trained on?"
        )
    return by_name.loc[names].reset_index(drop=True)


def _prepare_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> bool:
    """Check/clean ``out_dir``; returns True when an existing run is to be resumed."""
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"--out {out_dir} exists and is not a folder")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        out_dir.mkdir(parents=True, exist_ok=True)
        return False
    is_run = (out_dir / CONFIG_FILE).is_file()
    if not is_run:
        raise ValueError(
            f"--out {out_dir} is not empty and holds no fetalhc run; choose another folder"
        )
    if resume and overwrite:
        raise ValueError("choose either resume or overwrite, not both")
    if overwrite:
        for name in RUN_FILES:
            target = out_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        return False
    if not resume:
        raise ValueError(
            f"--out {out_dir} already holds a run; pass --resume to continue it or "
            "--overwrite to replace it"
        )
    return True


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


def _hc_statistics(index: pd.DataFrame, image_size: int) -> tuple[float, float]:
    """Mean and SD of HC in input pixels over ``index`` (for output standardisation)."""
    long_side = np.maximum(index["width_px"].to_numpy(float), index["height_px"].to_numpy(float))
    pixel_size_input = index["pixel_size_mm"].to_numpy(float) * long_side / image_size
    hc_px = index["hc_mm"].to_numpy(float) / pixel_size_input
    std = float(np.std(hc_px)) if len(hc_px) > 1 else 0.0
    return float(np.mean(hc_px)), std if std > 1e-6 else max(1.0, 0.1 * float(np.mean(hc_px)))


def standardise_ellipse(ellipse, image_size: int):
    """Dataset ``ellipse`` (cx, cy, a, b in input px, sin 2θ, cos 2θ) → the 6 standardised
    values of the auxiliary output: centre ``(c - S/2) / (S/4)``, semi-axes
    ``(a - S/4) / (S/8)``, sin and cos unchanged. Works on numpy arrays and tensors."""
    size = float(image_size)
    centre = (ellipse[..., 0:2] - size / 2) / (size / 4)
    axes = (ellipse[..., 2:4] - size / 4) / (size / 8)
    angle = ellipse[..., 4:6]
    if isinstance(ellipse, np.ndarray):
        return np.concatenate([centre, axes, angle], axis=-1)
    import tensorflow as tf

    return tf.concat([centre, axes, angle], axis=-1)


def _fit_dataset(index, config: dict[str, Any], training: bool, batch_size: int | None = None):
    import tensorflow as tf

    from fetalhc.data import make_dataset
    from fetalhc.losses import pack_targets
    from fetalhc.models import ELLIPSE_OUTPUT, HC_OUTPUT

    data, model_cfg, train_cfg = config["data"], config["model"], config["train"]
    aux = model_cfg["aux_ellipse"]
    size = data["image_size"]
    dataset = make_dataset(
        index, image_size=size, batch_size=batch_size or train_cfg["batch_size"],
        shuffle=training,
        augment=bool(data["augment"]) and training, with_ellipse=aux,
        cache=data["cache"], seed=train_cfg["seed"],
    )

    def to_xy(element):
        y = pack_targets(element["hc_mm"], element["pixel_size_mm"])
        if aux:
            y = {HC_OUTPUT: y, ELLIPSE_OUTPUT: standardise_ellipse(element["ellipse"], size)}
        return element["image"], y

    dataset = dataset.map(to_xy, num_parallel_calls=tf.data.AUTOTUNE)
    if training and train_cfg["steps_per_epoch"]:
        dataset = dataset.repeat()
    return dataset


def _monitor_name(aux: bool, has_val: bool) -> str:
    metric = "hc_px_input_mae_mm" if aux else "mae_mm"
    return f"val_{metric}" if has_val else metric


def _read_history(path: Path) -> pd.DataFrame:
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame()
    return pd.read_csv(path)


def _truncate_history(path: Path, epochs_done: int) -> None:
    """Keep only the rows of epochs already backed up (so a resumed epoch is logged once)."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    column = header.index("epoch") if "epoch" in header else 0
    kept = [row for row in body if row and int(float(row[column])) < epochs_done]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(kept)


def _backup_epoch(backup_dir: Path) -> int:
    metadata = backup_dir / "training_metadata.json"
    if not metadata.is_file():
        return 0
    return int(json.loads(metadata.read_text()).get("epoch", 0))


def _epoch_timer():
    """A callback adding ``epoch_seconds`` (wall time of the epoch, validation included) to
    the logs; list it before CSVLogger so history.csv records it."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        """Adds ``epoch_seconds`` (wall time of the epoch, validation included) to the logs."""

        def on_epoch_begin(self, epoch, logs=None):
            self._started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["epoch_seconds"] = time.perf_counter() - self._started

    return EpochTimer()


def _make_best_checkpoint(model_path: Path, monitor: str, best: float):
    import keras

    class AtomicBestCheckpoint(keras.callbacks.Callback):
        """Save the model when ``monitor`` improves (lower is better), atomically."""

        def __init__(self):
            super().__init__()
            self.best = best

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(monitor)
            if value is None or not math.isfinite(float(value)) or float(value) >= self.best:
                return
            self.best = float(value)
            temporary = model_path.with_name(f".{model_path.stem}.tmp.keras")
            self.model.save(temporary)
            os.replace(temporary, model_path)

    return AtomicBestCheckpoint()


def predict_hc_mm(model, index: pd.DataFrame, image_size: int, batch_size: int = 32,
                  tta: bool = False) -> pd.DataFrame:
    """Predict HC (mm) for the rows of ``index``; uses only images and pixel sizes.

    Returns a DataFrame with ``filename``, ``pixel size (mm)`` (of the original image),
    ``input pixel size (mm)``, ``prediction (px)`` (input px) and ``prediction (mm)``.
    ``tta`` averages the predictions (in input px) over the identity and the horizontal,
    vertical and double flips, which all keep the HC of an ellipse.
    """
    from fetalhc.data import make_dataset
    from fetalhc.models import HC_OUTPUT, check_input_size

    check_input_size(model, image_size)
    if len(index) == 0:
        raise ValueError("nothing to predict: the split is empty")
    # hc_mm is replaced so the reference can never reach the computation.
    blind = index.assign(hc_mm=np.nan)
    dataset = make_dataset(blind, image_size=image_size, batch_size=batch_size, shuffle=False,
                           augment=False, cache=False)
    names, pixel_sizes, predictions = [], [], []
    for batch in dataset:
        images = batch["image"]
        views = [images]
        if tta:
            views += [images[:, :, ::-1], images[:, ::-1, :], images[:, ::-1, ::-1]]
        outputs = []
        for view in views:
            output = model(view, training=False)
            if isinstance(output, dict):
                output = output[HC_OUTPUT]
            outputs.append(np.asarray(output, dtype=np.float64).reshape(-1))
        predictions.append(np.mean(outputs, axis=0))
        pixel_sizes.append(batch["pixel_size_mm"].numpy().astype(np.float64))
        names.extend(name.decode() for name in batch["filename"].numpy())
    prediction_px = np.concatenate(predictions)
    pixel_size_input = np.concatenate(pixel_sizes)
    return pd.DataFrame({
        "filename": names,
        "pixel size (mm)": index["pixel_size_mm"].to_numpy(np.float64),
        "input pixel size (mm)": pixel_size_input,
        "prediction (px)": prediction_px,
        "prediction (mm)": prediction_px * pixel_size_input,
    })


def prediction_table(predictions: pd.DataFrame, index: pd.DataFrame) -> pd.DataFrame:
    """Join predictions with the index's reference HC → the per-image error table (mm)."""
    reference = index["hc_mm"].to_numpy(np.float64)
    table = pd.DataFrame({
        "filename": predictions["filename"],
        "pixel size (mm)": predictions["pixel size (mm)"],
        "reference (mm)": reference,
        "prediction (mm)": predictions["prediction (mm)"],
    })
    table["error (mm)"] = table["prediction (mm)"] - table["reference (mm)"]
    table["abs error (mm)"] = table["error (mm)"].abs()
    return table


def evaluate_split(model, index: pd.DataFrame, image_size: int, batch_size: int = 32,
                   tta: bool = False) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Predict a labelled split and score it: (per-image table, metrics in mm)."""
    from fetalhc.metrics import summarise_mm

    predictions = predict_hc_mm(model, index, image_size, batch_size=batch_size, tta=tta)
    table = prediction_table(predictions, index)
    return table, summarise_mm(table["prediction (mm)"], table["reference (mm)"])


# ----------------------------------------------------------------------------- train ---


def _prepare_run(config: dict[str, Any], data_dir: Path, out_dir: Path, resume: bool,
                 overwrite: bool) -> tuple[dict[str, Any], bool]:
    """Check ``out_dir``; on a new run resolve the split and the HC statistics and write
    ``config.toml``; on resume read the stored config back. Returns (config, resuming)."""
    import keras

    import fetalhc
    from fetalhc.data import load_index

    resuming = _prepare_out_dir(out_dir, resume, overwrite)
    config_path = out_dir / CONFIG_FILE
    if resuming:
        stored = resolve_config(config_path, allow_resolved=True)
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
        if stored["train"]["epochs"] != config["train"]["epochs"]:
            stored["train"]["epochs"] = config["train"]["epochs"]
            write_config(stored, config_path)
        config = stored
    data, model_cfg, train_cfg = config["data"], config["model"], config["train"]
    size = data["image_size"]

    if not resuming:
        split = resolve_split(config, data_dir)
        index = load_index(data_dir, "training", validate=False)
        train_index = index[index["filename"].isin(set(split["train"]))]
        hc_mean, hc_std = _hc_statistics(train_index, size)
        if not model_cfg["standardise_output"]:
            hc_mean, hc_std = 0.0, 1.0
        config["preprocessing"] = {"image_size": size, **PREPROCESSING}
        config["run"] = {
            "fetalhc_version": fetalhc.__version__,
            "keras_version": keras.__version__,
            "data_dir": str(data_dir.resolve()),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seed": train_cfg["seed"],
            "fold": data["fold"] if data["k"] >= 2 else -1,
            "hc_mean_px": hc_mean,
            "hc_std_px": hc_std,
            "monitor": _monitor_name(model_cfg["aux_ellipse"], bool(split["val"])),
        }
        if data["augment"]:
            from fetalhc.data.pipeline import augmentation_config

            config["run"]["augmentation"] = {
                key: list(value) if isinstance(value, tuple) else value
                for key, value in augmentation_config(True).items()
            }
        config["split"] = split
        write_config(config, config_path)
    return config, resuming


def _build_and_compile(config: dict[str, Any], learning_rate: float):
    """The model, optimizer and loss of ``config`` (call inside a strategy's scope)."""
    import keras

    from fetalhc.losses import get_loss
    from fetalhc.metrics import keras_metrics
    from fetalhc.models import ELLIPSE_OUTPUT, HC_OUTPUT, build_model

    data, model_cfg, train_cfg = config["data"], config["model"], config["train"]
    size = data["image_size"]
    run_info = config["run"]
    small_net_options = {}
    if model_cfg["filters"]:
        small_net_options["small_cnn_filters"] = tuple(model_cfg["filters"])
    model = build_model(
        model_cfg["backbone"],
        input_shape=(size, size, 1),
        weights=None if model_cfg["weights"] in ("", "none") else model_cfg["weights"],
        pooling=model_cfg["pooling"],
        dropout=model_cfg["dropout"],
        dense_units=tuple(model_cfg["dense_units"]),
        aux_ellipse=model_cfg["aux_ellipse"],
        hc_mean_px=run_info["hc_mean_px"],
        hc_std_px=run_info["hc_std_px"],
        bn_momentum=model_cfg["bn_momentum"],
        alpha=model_cfg["alpha"] or None,
        convs_per_block=model_cfg["convs_per_block"],
        precision=train_cfg["precision"],
        **small_net_options,
    )
    loss = get_loss(train_cfg["loss"], huber_delta_mm=train_cfg["huber_delta_mm"])
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
    if model_cfg["aux_ellipse"]:
        model.compile(
            optimizer=optimizer,
            loss={HC_OUTPUT: loss, ELLIPSE_OUTPUT: keras.losses.MeanSquaredError()},
            loss_weights={HC_OUTPUT: 1.0, ELLIPSE_OUTPUT: train_cfg["aux_weight"]},
            metrics={HC_OUTPUT: keras_metrics()},
        )
    else:
        model.compile(optimizer=optimizer, loss=loss, metrics=keras_metrics())

    return model, optimizer, loss


def train(config: dict[str, Any] | str | os.PathLike | None, data_dir: str | os.PathLike,
          out_dir: str | os.PathLike, callbacks=(), resume: bool = False,
          overwrite: bool = False, overrides: dict[str, Any] | None = None,
          verbose: int = 0) -> TrainResult:
    """Train a regression CNN as ``config`` says and write the run folder ``out_dir``.

    ``callbacks`` are extra Keras callbacks appended after fetalhc's own (best checkpoint,
    BackupAndRestore, EarlyStopping, ReduceLROnPlateau, TensorBoard, CSVLogger,
    TerminateOnNaN). ``resume`` continues a run killed in ``out_dir`` (same config; the
    epoch count may change); ``overwrite`` replaces the run in ``out_dir``.
    """
    import keras

    data_dir = Path(data_dir)
    out_dir = Path(out_dir)
    config = resolve_config(config, overrides=overrides)
    if config["train"]["strategy"] == "multiworker":  # keras fit cannot (keras#20585)
        from fetalhc.training.distributed import train_multiworker

        return train_multiworker(config, data_dir, out_dir, callbacks=callbacks, resume=resume,
                                 overwrite=overwrite, verbose=verbose)
    config, resuming = _prepare_run(config, data_dir, out_dir, resume, overwrite)
    data, train_cfg = config["data"], config["train"]
    size = data["image_size"]
    from fetalhc.training.distributed import (
        make_strategy,
        scaled_batch_and_learning_rate,
        synchronise_batch_norm,
    )

    strategy = make_strategy(train_cfg["strategy"])
    global_batch, learning_rate = scaled_batch_and_learning_rate(
        train_cfg, strategy.num_replicas_in_sync)
    split = config["split"]
    run_info = config["run"]
    monitor = run_info["monitor"]
    has_val = bool(split.get("val"))

    train_index = run_split_index(config, data_dir, "train")
    val_index = run_split_index(config, data_dir, "val") if has_val else None

    keras.utils.set_random_seed(train_cfg["seed"])
    with strategy.scope():
        model, _, _ = _build_and_compile(config, learning_rate)
        if strategy.num_replicas_in_sync > 1:
            synchronise_batch_norm(model)

    history_path = out_dir / HISTORY_FILE
    backup_dir = out_dir / BACKUP_DIR
    model_path = out_dir / MODEL_FILE
    best = math.inf
    if resuming:
        _truncate_history(history_path, _backup_epoch(backup_dir))
        previous = _read_history(history_path)
        if monitor in previous.columns and len(previous):
            best = float(previous[monitor].min())
        if not model_path.is_file():
            best = math.inf
    if train_cfg["schedule"] == "cosine":
        from fetalhc.training.config import cosine_learning_rate

        schedule = keras.callbacks.LearningRateScheduler(
            lambda epoch, _: cosine_learning_rate(epoch, train_cfg["epochs"], learning_rate,
                                                  train_cfg["min_learning_rate"]))
    else:
        schedule = keras.callbacks.ReduceLROnPlateau(
            monitor=monitor, factor=train_cfg["reduce_lr_factor"],
            patience=train_cfg["reduce_lr_patience"], min_lr=train_cfg["min_learning_rate"],
            mode="min",
        )
    own_callbacks = [
        keras.callbacks.TerminateOnNaN(),
        _epoch_timer(),  # before CSVLogger, which then records epoch_seconds
        schedule,
        keras.callbacks.EarlyStopping(monitor=monitor, patience=train_cfg["patience"], mode="min"),
        _make_best_checkpoint(model_path, monitor, best),
        keras.callbacks.CSVLogger(str(history_path), append=True),
    ]
    if train_cfg["tensorboard"]:
        own_callbacks.append(keras.callbacks.TensorBoard(
            log_dir=str(out_dir / LOGS_DIR), write_graph=False, profile_batch=0))
    own_callbacks.append(keras.callbacks.BackupAndRestore(str(backup_dir)))

    fit_kwargs = {}
    if train_cfg["steps_per_epoch"]:
        fit_kwargs["steps_per_epoch"] = train_cfg["steps_per_epoch"]
    model.fit(
        _fit_dataset(train_index, config, training=True, batch_size=global_batch),
        validation_data=_fit_dataset(val_index, config, training=False,
                                     batch_size=global_batch) if has_val else None,
        epochs=train_cfg["epochs"],
        callbacks=[*own_callbacks, *callbacks],
        verbose=verbose,
        shuffle=False,  # the tf.data pipeline shuffles
        **fit_kwargs,
    )
    if not model_path.is_file():  # no epoch ever improved (e.g. NaN from the start)
        temporary = model_path.with_name(f".{model_path.stem}.tmp.keras")
        model.save(temporary)
        os.replace(temporary, model_path)

    from fetalhc.models import load_model

    best_model = load_model(model_path)
    history = _read_history(history_path)
    metrics: dict[str, Any] = {
        "units": "mm (pmae in %)",
        "monitor": monitor,
        "epochs_run": int(len(history)),
        "best_epoch": int(history.loc[history[monitor].idxmin(), "epoch"])
        if monitor in history.columns and len(history) else -1,
        "strategy": train_cfg["strategy"],
        "replicas": int(strategy.num_replicas_in_sync),
        "global_batch_size": int(global_batch),
        "learning_rate": float(learning_rate),
        "train_seconds": float(history["epoch_seconds"].sum())
        if "epoch_seconds" in history.columns else None,
    }
    for name in ("val", "test"):
        if split.get(name):
            _, metrics[name] = evaluate_split(
                best_model, run_split_index(config, data_dir, name), size,
                batch_size=train_cfg["batch_size"])
    temporary = out_dir / f".{METRICS_FILE}.tmp"
    temporary.write_text(json.dumps(metrics, indent=2))
    os.replace(temporary, out_dir / METRICS_FILE)
    return TrainResult(out_dir, model_path, metrics, history)

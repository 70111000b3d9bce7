"""Training configuration: TOML in, validated and resolved dict out.

A config has the sections ``[data]``, ``[model]`` and ``[train]``; every key has a default
(``DEFAULTS``) and a type. Unknown sections or keys and values of the wrong type raise a
``ValueError`` naming the key. ``resolve_config`` fills the defaults; ``train`` adds the
sections ``[preprocessing]``, ``[run]`` and ``[split]`` before writing ``config.toml`` into
the run folder.

The configs fetalhc ships are package data, ``fetalhc/configs/<name>.toml``: wherever a
config file is taken, ``config_file`` also takes such a bare name (``"quick_cpu"``), so
``fetalhc train --config quick_cpu`` works from any folder and from an installed wheel.
"""

from __future__ import annotations

import copy
import math
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from fetalhc.files import write_text

DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {
        "image_size": 128,  # network input side S (px)
        "val_fraction": 0.1,  # of filename groups (ignored when k >= 2)
        "test_fraction": 0.1,  # of filename groups, held out before any k-fold split
        "k": 0,  # k-fold cross-validation on the non-test groups when >= 2
        "fold": 0,  # which fold is validation (0-based) when k >= 2
        "split_seed": 0,  # seed of the grouped split (independent of train.seed)
        "augment": False,  # random augmentation of training images (fetalhc.data)
        "augment_translation": 0.05,  # with augment: largest shift, share of the input side
        "augment_zoom": 0.1,  # with augment: zoom factor drawn in [1 - z, 1 + z]
        "cache": True,  # cache decoded images in memory
        # crop stage (docs/training.md "Crop stage"): 0 = the whole letterboxed image; > 0 =
        # a square crop of side 2 x crop_margin x semi-major axis around the head (reference
        # ellipse in training, the localiser's at prediction time), resized to image_size
        "crop_margin": 0.0,
        # a stage-1 run folder or model file with an `ellipse` output that places the crops
        # at prediction time ("" = none; a crop run then trains, scored on reference crops)
        "localiser": "",
    },
    "model": {
        "backbone": "small_cnn",
        "weights": "none",  # "none", "imagenet" or a weights file path
        "pooling": "avg",  # "avg", "max" or "flatten"
        "dropout": 0.2,
        "dense_units": [],
        "aux_ellipse": False,  # auxiliary output: 6 standardised ellipse values
        "bn_momentum": 0.9,
        "alpha": 0.0,  # MobileNetV2 width multiplier; 0 = the backbone's default
        "standardise_output": True,  # predict (hc - mean) / sd of the training split
        "filters": [],  # small_cnn / small_resnet block widths; [] = (16, 32, 64, 128)
        "convs_per_block": 2,  # small_cnn / small_resnet convolutions per block
    },
    "train": {
        "epochs": 30,
        "batch_size": 16,
        "learning_rate": 1e-4,
        "loss": "mae",  # "mae", "mse" or "huber" (all in mm)
        "huber_delta_mm": 5.0,
        "aux_weight": 0.1,  # weight of the ellipse loss when model.aux_ellipse
        "patience": 10,  # early stopping on the validation MAE (epochs)
        "schedule": "plateau",  # "plateau" (reduce on plateau) or "cosine" (per epoch, to min)
        "reduce_lr_patience": 5,
        "reduce_lr_factor": 0.5,
        "min_learning_rate": 1e-6,
        "seed": 0,
        "steps_per_epoch": 0,  # 0 = the whole training split each epoch
        "tensorboard": True,
        "strategy": "default",  # "default", "mirrored" (one machine) or "multiworker" (TF_CONFIG)
        "scale_learning_rate": False,  # multiply learning_rate by the number of replicas
        "precision": "float32",  # Keras dtype policy: float32, mixed_float16, mixed_bfloat16
        "ema_momentum": 0.0,  # 0 = off; else validate and keep an EMA of the weights (averaging)
    },
}

# Keras dtype policies accepted by [train] precision (mixed_bfloat16 suits CPUs with AMX/AVX-512
# bf16; mixed_float16 suits GPUs and gets a loss-scale optimizer from Keras).
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
SCHEDULES = ("plateau", "cosine")
# [train] strategy: one device, all devices of this machine, or the workers of TF_CONFIG
STRATEGIES = ("default", "mirrored", "multiworker")
# [data] crop_margin: 0 (off) or within these bounds; below 1 the square cuts the head
CROP_MARGIN_RANGE = (1.0, 4.0)


def cosine_learning_rate(epoch: int, epochs: int, learning_rate: float, minimum: float) -> float:
    """Learning rate of 0-based ``epoch`` under ``[train] schedule = "cosine"``: half a cosine
    from ``learning_rate`` (first epoch) down to ``minimum`` (after the last epoch)."""
    progress = min(max(epoch / max(epochs, 1), 0.0), 1.0)
    return minimum + 0.5 * (learning_rate - minimum) * (1.0 + math.cos(math.pi * progress))

# Sections written by `train` into the resolved config; accepted when reading a run back.
RESOLVED_SECTIONS = ("preprocessing", "run", "split")
# The splits of a run: train / val / test recorded in its [split], val+test = every image
# the run held out (its val rows, then its test rows), challenge = HC18 test_set.
HELD_OUT = "val+test"
SPLITS = ("train", "val", "test", HELD_OUT, "challenge")
# What predict / explain / evaluate / study may name: a run's splits, or every image of the
# data folder (fetalhc.data.plain.load_folder_index), the default on a folder not the run's.
ALL_IMAGES = "all"
DATA_SPLITS = (*SPLITS, ALL_IMAGES)

_OVERRIDE_ALIASES = {
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "seed": "train.seed",
    "fold": "data.fold",
    "learning_rate": "train.learning_rate",
}


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list of integers"
    return type(value).__name__


def _check_value(section: str, key: str, value: Any) -> Any:
    default = DEFAULTS[section][key]
    where = f"config key [{section}] {key}"
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, list):
        ok = isinstance(value, list) and all(
            isinstance(item, int) and not isinstance(item, bool) for item in value
        )
    else:  # pragma: no cover - DEFAULTS only holds the types above
        ok = True
    if not ok:
        raise ValueError(
            f"{where} must be {_type_name(default)}, got {value!r} ({type(value).__name__})"
        )
    return value


def _check_ranges(config: dict[str, dict[str, Any]]) -> None:
    data, model, train = config["data"], config["model"], config["train"]
    checks = [
        (data["image_size"] >= 16, "[data] image_size must be >= 16"),
        (0.0 <= data["val_fraction"] < 1.0, "[data] val_fraction must be in [0, 1)"),
        (0.0 <= data["test_fraction"] < 1.0, "[data] test_fraction must be in [0, 1)"),
        (data["k"] == 0 or data["k"] >= 2, "[data] k must be 0 (no k-fold) or >= 2"),
        (data["fold"] >= 0, "[data] fold must be >= 0"),
        (data["split_seed"] >= 0, "[data] split_seed must be >= 0"),
        (0.0 <= data["augment_translation"] <= 0.5, "[data] augment_translation must be in [0, 0.5]"),
        (0.0 <= data["augment_zoom"] < 1.0, "[data] augment_zoom must be in [0, 1)"),
        (data["k"] < 2 or 0 <= data["fold"] < data["k"], "[data] fold must be in [0, k - 1]"),
        (math.isfinite(data["crop_margin"]) and (
            data["crop_margin"] == 0.0
            or CROP_MARGIN_RANGE[0] <= data["crop_margin"] <= CROP_MARGIN_RANGE[1]),
         f"[data] crop_margin must be 0 (no crop: the whole image) or in "
         f"[{CROP_MARGIN_RANGE[0]:g}, {CROP_MARGIN_RANGE[1]:g}] (the crop's side is "
         f"2 x crop_margin x the head's semi-major axis; below 1 it cuts the head); "
         f"got {data['crop_margin']}"),
        (data["localiser"] == data["localiser"].strip(),
         "[data] localiser must not start or end with spaces"),
        (not data["localiser"] or data["crop_margin"] > 0,
         "[data] localiser places crops: it needs [data] crop_margin > 0"),
        (data["crop_margin"] == 0.0 or train["strategy"] != "multiworker",
         "[data] crop_margin > 0 is not supported with [train] strategy = \"multiworker\" "
         "(its validation pass does not crop yet); use \"default\" or \"mirrored\""),
        (0.0 <= model["dropout"] < 1.0, "[model] dropout must be in [0, 1)"),
        (all(units > 0 for units in model["dense_units"]), "[model] dense_units must be > 0"),
        (0.0 < model["bn_momentum"] < 1.0, "[model] bn_momentum must be in (0, 1)"),
        (model["alpha"] >= 0.0, "[model] alpha must be >= 0 (0 = default)"),
        (all(width > 0 for width in model["filters"]), "[model] filters must be > 0"),
        (model["convs_per_block"] >= 1, "[model] convs_per_block must be >= 1"),
        (not model["filters"] or model["backbone"] in ("small_cnn", "small_resnet"),
         "[model] filters applies only to the small_cnn and small_resnet backbones"),
        (train["schedule"] in SCHEDULES,
         f"[train] schedule must be one of {', '.join(SCHEDULES)}"),
        (train["precision"] in PRECISIONS,
         f"[train] precision must be one of {', '.join(PRECISIONS)}"),
        (train["epochs"] >= 1, "[train] epochs must be >= 1"),
        (train["batch_size"] >= 1, "[train] batch_size must be >= 1"),
        (train["learning_rate"] > 0, "[train] learning_rate must be > 0"),
        (train["huber_delta_mm"] > 0, "[train] huber_delta_mm must be > 0"),
        (train["aux_weight"] >= 0, "[train] aux_weight must be >= 0"),
        (train["patience"] >= 1, "[train] patience must be >= 1"),
        (train["reduce_lr_patience"] >= 1, "[train] reduce_lr_patience must be >= 1"),
        (0 < train["reduce_lr_factor"] < 1, "[train] reduce_lr_factor must be in (0, 1)"),
        (train["seed"] >= 0, "[train] seed must be >= 0"),
        (train["min_learning_rate"] >= 0, "[train] min_learning_rate must be >= 0"),
        (0.0 <= train["ema_momentum"] < 1.0, "[train] ema_momentum must be in [0, 1)"),
        (train["steps_per_epoch"] >= 0, "[train] steps_per_epoch must be >= 0"),
        (train["strategy"] in STRATEGIES,
         f"[train] strategy must be one of {', '.join(STRATEGIES)}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    from fetalhc.losses import LOSS_NAMES
    from fetalhc.models import available_backbones
    from fetalhc.models.build import POOLINGS

    if model["backbone"] not in available_backbones():
        raise ValueError(
            f"[model] backbone {model['backbone']!r} is unknown; known backbones: "
            f"{', '.join(available_backbones())}"
        )
    if model["pooling"] not in POOLINGS:
        raise ValueError(
            f"[model] pooling {model['pooling']!r} is unknown; known: {', '.join(POOLINGS)}"
        )
    if train["loss"] not in LOSS_NAMES:
        raise ValueError(
            f"[train] loss {train['loss']!r} is unknown; known losses: {', '.join(LOSS_NAMES)}"
        )


# The configs shipped with fetalhc: package data (setup.cfg), one TOML file per name.
CONFIGS_FOLDER = Path(__file__).resolve().parents[1] / "configs"
_CONFIG_NAME = re.compile(r"[A-Za-z0-9_-]+")


def shipped_configs() -> list[str]:
    """Names of the configs shipped with fetalhc (``fetalhc/configs/<name>.toml``), sorted."""
    if not CONFIGS_FOLDER.is_dir():
        return []
    return sorted(path.stem for path in CONFIGS_FOLDER.glob("*.toml") if path.is_file())


def config_file(config: str | os.PathLike) -> Path:
    """The TOML file ``config`` stands for: an existing file as it is (a path always works),
    else a bare name (letters, digits, ``_`` and ``-``: no folder, no ``.toml``) is the
    shipped config of that name, e.g. ``"quick_cpu"`` →
    ``fetalhc/configs/quick_cpu.toml``. One-line errors: an unknown name lists the shipped
    names; a missing file says so (and names the shipped config of the same stem, if any)."""
    path = Path(config)
    if path.is_file():
        return path
    names = shipped_configs()
    text = os.fspath(config)
    if _CONFIG_NAME.fullmatch(text):
        if text in names:
            return CONFIGS_FOLDER / f"{text}.toml"
        raise ValueError(f"no shipped config named {text!r}; shipped configs: "
                         f"{', '.join(names) or 'none'} (or give the path of a TOML file)")
    hint = f"; the shipped config of that name is {path.stem!r}" if path.stem in names else ""
    raise FileNotFoundError(f"config file not found: {path}{hint}")


def read_toml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path}: invalid TOML ({error})") from None


def resolve_config(
    config: dict[str, Any] | str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
    allow_resolved: bool = False,
) -> dict[str, Any]:
    """Validate a config (dict, TOML path or shipped config name: :func:`config_file`),
    fill defaults, apply ``overrides``.

    ``overrides`` maps ``"section.key"`` (or the aliases ``epochs``, ``batch_size``, ``seed``,
    ``fold``, ``learning_rate``) to values. With ``allow_resolved`` the run sections
    (``[preprocessing]``, ``[run]``, ``[split]``) of a resolved config are kept as they are.
    """
    if config is None:
        raw: dict[str, Any] = {}
    elif isinstance(config, (str, os.PathLike)):
        raw = read_toml(config_file(config))
    elif isinstance(config, dict):
        raw = copy.deepcopy(config)
    else:
        raise ValueError(f"config must be a dict, a TOML file path or a shipped config name, "
                         f"got {type(config).__name__}")
    resolved = copy.deepcopy(DEFAULTS)
    extra: dict[str, Any] = {}
    for section, values in raw.items():
        if allow_resolved and section in RESOLVED_SECTIONS:
            extra[section] = copy.deepcopy(values)
            continue
        if section not in DEFAULTS:
            raise ValueError(
                f"unknown config section [{section}]; known sections: {', '.join(DEFAULTS)}"
            )
        if not isinstance(values, dict):
            raise ValueError(f"config section [{section}] must be a table of keys")
        for key, value in values.items():
            if key not in DEFAULTS[section]:
                raise ValueError(
                    f"unknown config key [{section}] {key}; known keys: "
                    f"{', '.join(DEFAULTS[section])}"
                )
            resolved[section][key] = _check_value(section, key, value)
    for dotted, value in (overrides or {}).items():
        dotted = _OVERRIDE_ALIASES.get(dotted, dotted)
        section, _, key = dotted.partition(".")
        if section not in DEFAULTS or key not in DEFAULTS[section]:
            raise ValueError(
                f"unknown config key {dotted!r}; use section.key with a section of "
                f"{', '.join(DEFAULTS)}"
            )
        resolved[section][key] = _check_value(section, key, value)
    _check_ranges(resolved)
    resolved.update(extra)
    return resolved


def parse_set_option(text: str) -> tuple[str, Any]:
    """``"train.loss=mse"`` → ``("train.loss", "mse")``; the value is read as TOML
    (numbers, booleans, lists, quoted strings) and otherwise taken as a bare string."""
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key:
        raise ValueError(f"--set expects section.key=value, got {text!r}")
    try:
        parsed = tomllib.loads(f"value = {value}")["value"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key, parsed


def write_config(config: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a resolved config as TOML (atomically)."""
    write_text(path, tomli_w.dumps(config))


def user_sections(config: dict[str, Any]) -> dict[str, Any]:
    """Only the ``[data]``, ``[model]`` and ``[train]`` sections (for comparing runs)."""
    return {section: dict(config.get(section, {})) for section in DEFAULTS}

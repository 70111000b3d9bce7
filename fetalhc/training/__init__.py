"""Training: TOML config → ``model.fit`` → run folder, and helpers that read runs back.

One job per module: ``config`` (TOML, defaults, validation, the shipped configs by name),
``run_folder`` (the run folder: reading runs back, starting or resuming one, writing its
results), ``sources`` (what a command's ``--model`` and ``--split`` resolve to), ``setup``
(model, optimizer, loss and datasets of a config), ``strategy`` (``tf.distribute``
strategies and what they scale), ``fit`` (``train`` with ``model.fit``), ``backup`` (the
epoch backup of ``fit``, committed so that a kill at any moment resumes) and ``multiworker``
(the custom loop for ``MultiWorkerMirroredStrategy``). Prediction lives in
``fetalhc.models.prediction``; its helpers are re-exported here.

``fetalhc.training`` imports ``data``, ``models``, ``losses`` and ``metrics``; callbacks come
from its caller (it never imports ``fetalhc.callbacks``).

The names below load on first use (PEP 562), so ``fetalhc.training.config`` (TOML and the
config checks, no TensorFlow) can be imported by the command line before any work.
"""

from __future__ import annotations

import importlib

# public name -> (submodule, its name there)
_EXPORTS: dict[str, tuple[str, str]] = {
    **{name: ("fetalhc.models.prediction", name)
       for name in ("predict_and_score", "predict_hc_mm", "prediction_table")},
    "evaluate_split": ("fetalhc.models.prediction", "predict_and_score"),  # the former name
    **{name: ("fetalhc.training.config", name)
       for name in ("DEFAULTS", "SPLITS", "STRATEGIES", "config_file", "parse_set_option",
                    "read_toml", "resolve_config", "shipped_configs", "write_config")},
    **{name: ("fetalhc.training.fit", name) for name in ("check_training_request", "train",
                                                             "train_or_reuse")},
    **{name: ("fetalhc.training.run_folder", name)
       for name in ("Run", "TrainResult", "check_training_data", "load_run", "resolve_split",
                    "run_split_index")},
    **{name: ("fetalhc.training.sources", name)
       for name in ("CommandModel", "ModelSplit", "load_command_model", "model_input_size",
                    "resolve_model_split")},
    "standardise_ellipse": ("fetalhc.training.setup", "standardise_ellipse"),
}
_SUBMODULES = ("backup", "config", "fit", "multiworker", "run_folder", "setup", "sources",
               "strategy")

__all__ = [
    "CommandModel",
    "DEFAULTS",
    "ModelSplit",
    "SPLITS",
    "STRATEGIES",
    "Run",
    "TrainResult",
    "check_training_data",
    "check_training_request",
    "config_file",
    "evaluate_split",
    "load_command_model",
    "load_run",
    "model_input_size",
    "parse_set_option",
    "predict_and_score",
    "predict_hc_mm",
    "prediction_table",
    "resolve_model_split",
    "resolve_split",
    "read_toml",
    "resolve_config",
    "run_split_index",
    "shipped_configs",
    "standardise_ellipse",
    "train",
    "train_or_reuse",
    "write_config",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        module, attribute = _EXPORTS[name]
        value = getattr(importlib.import_module(module), attribute)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # looked up once
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))

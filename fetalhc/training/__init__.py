"""Training: TOML config → ``model.fit`` → run folder, and helpers that read runs back.

One job per module: ``config`` (TOML, defaults, validation), ``run_folder`` (the run
folder: reading runs back, starting or resuming one, writing its results), ``setup``
(model, optimizer, loss and datasets of a config), ``strategy`` (``tf.distribute``
strategies and what they scale), ``fit`` (``train`` with ``model.fit``), ``backup`` (the
epoch backup of ``fit``, committed so that a kill at any moment resumes) and ``multiworker``
(the custom loop for ``MultiWorkerMirroredStrategy``). Prediction lives in
``fetalhc.models.prediction``; its helpers are re-exported here.

``fetalhc.training`` imports ``data``, ``models``, ``losses`` and ``metrics``; callbacks come
from its caller (it never imports ``fetalhc.callbacks``).
"""

from fetalhc.models.prediction import predict_and_score, predict_hc_mm, prediction_table
from fetalhc.training.config import (
    DEFAULTS,
    parse_set_option,
    read_toml,
    resolve_config,
    write_config,
)
from fetalhc.training.fit import train
from fetalhc.training.run_folder import (
    Run,
    TrainResult,
    load_run,
    resolve_split,
    run_split_index,
)
from fetalhc.training.setup import standardise_ellipse

evaluate_split = predict_and_score  # the former name, kept for the public API

__all__ = [
    "DEFAULTS",
    "Run",
    "TrainResult",
    "evaluate_split",
    "load_run",
    "parse_set_option",
    "predict_and_score",
    "predict_hc_mm",
    "prediction_table",
    "resolve_split",
    "read_toml",
    "resolve_config",
    "run_split_index",
    "standardise_ellipse",
    "train",
    "write_config",
]

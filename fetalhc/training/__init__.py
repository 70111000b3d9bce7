"""Training: TOML config → ``model.fit`` → run folder, and helpers that read runs back.

``fetalhc.training`` imports ``data``, ``models``, ``losses`` and ``metrics``; callbacks come
from its caller (it never imports ``fetalhc.callbacks``).
"""

from fetalhc.training.config import (
    DEFAULTS,
    parse_set_option,
    read_toml,
    resolve_config,
    write_config,
)
from fetalhc.training.run import (
    Run,
    TrainResult,
    evaluate_split,
    load_run,
    predict_hc_mm,
    prediction_table,
    resolve_split,
    run_split_index,
    standardise_ellipse,
    train,
)

__all__ = [
    "DEFAULTS",
    "Run",
    "TrainResult",
    "evaluate_split",
    "load_run",
    "parse_set_option",
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

"""fetalhc: explainable regression CNNs for fetal head circumference on Keras 3.

Importing ``fetalhc`` registers its serializable Keras objects (layers, losses, metrics),
so ``keras.models.load_model("model.keras")`` works in any project after ``import fetalhc``.
Sub-packages (``fetalhc.explain``, ``fetalhc.evaluate``, ...) load on first access.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = {
    "data", "models", "losses", "metrics", "training", "explain", "evaluate", "callbacks", "viz",
}


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"fetalhc.{name}")
    raise AttributeError(f"module 'fetalhc' has no attribute {name!r}")

"""fetalhc: explainable regression CNNs for fetal head circumference on Keras 3.

Importing ``fetalhc`` registers its serializable Keras objects (layers, losses, metrics),
so ``keras.models.load_model("model.keras")`` works in any project after ``import fetalhc``.
Sub-packages (``fetalhc.explain``, ``fetalhc.evaluate``, ...) load on first access.

The one exception is the ``fetalhc`` console script (``fetalhc_console.py``): there the
registration waits for the first command that loads a model, so ``fetalhc --help`` answers
without importing TensorFlow (docs/architecture.md, "Start-up").
"""

from __future__ import annotations

import importlib

from fetalhc import startup

__version__ = "0.1.0"

_SUBMODULES = {
    "data", "files", "models", "losses", "metrics", "training", "explain", "evaluate", "report",
    "callbacks", "viz", "startup",
}

if not startup.keras_registration_deferred():
    # fetalhc.models.io imports the modules whose classes are registered serializable
    # Keras objects (fetalhc.losses, fetalhc.metrics, fetalhc.models.layers).
    import fetalhc.models.io  # noqa: F401


def __getattr__(name: str):
    if name == "train":
        from fetalhc.training import train

        return train
    if name == "load_model":
        from fetalhc.models.io import load_model

        return load_model
    if name in _SUBMODULES:
        return importlib.import_module(f"fetalhc.{name}")
    raise AttributeError(f"module 'fetalhc' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _SUBMODULES | {"train", "load_model"})

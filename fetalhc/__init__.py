"""fetalhc: explainable regression CNNs for fetal head circumference on Keras 3.

Importing ``fetalhc`` registers its serializable Keras objects (layers, losses, metrics),
so ``keras.models.load_model("model.keras")`` works in any project after ``import fetalhc``.
Sub-packages (``fetalhc.explain``, ``fetalhc.evaluate``, ...) load on first access.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = {
    "data", "files", "models", "losses", "metrics", "training", "explain", "evaluate", "report",
    "callbacks", "viz",
}


from fetalhc import _startup  # noqa: E402

if _startup.running_as_cli():
    _startup.import_tensorflow_quietly()

# Eager imports: they register fetalhc's serializable Keras objects (layers, losses,
# metrics), so `keras.models.load_model` works on fetalhc models after `import fetalhc`.
import fetalhc.losses  # noqa: E402,F401
import fetalhc.metrics  # noqa: E402,F401
import fetalhc.models.layers  # noqa: E402,F401
from fetalhc.models.io import load_model as load_model  # noqa: E402


def __getattr__(name: str):
    if name == "train":
        from fetalhc.training import train

        return train
    if name in _SUBMODULES:
        return importlib.import_module(f"fetalhc.{name}")
    raise AttributeError(f"module 'fetalhc' has no attribute {name!r}")

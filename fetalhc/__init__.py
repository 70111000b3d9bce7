"""fetalhc: explainable regression CNNs for fetal head circumference on Keras 3.

Importing ``fetalhc`` registers its serializable Keras objects (layers, losses, metrics),
so ``keras.models.load_model("model.keras")`` works in any project after ``import fetalhc``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from fetalhc import data  # noqa: E402,F401

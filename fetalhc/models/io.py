"""Safe loading of saved fetalhc models (and the input-size check before predicting).

Importing this module registers every serializable Keras object of fetalhc (the classes of
``fetalhc.losses``, ``fetalhc.metrics`` and ``fetalhc.models.layers`` register themselves
on import): the package root imports it for that, and so does every path that loads a model,
including the command line, where the root defers the registration.

``output_names`` is :func:`fetalhc.models.graph.output_names`, re-exported here.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import keras

import fetalhc.losses  # noqa: F401 - registers fetalhc's Keras losses
import fetalhc.metrics  # noqa: F401 - registers fetalhc's Keras metrics
import fetalhc.models.export_layers  # noqa: F401 - registers the exported models' layers
import fetalhc.models.layers  # noqa: F401 - registers fetalhc's Keras layers
from fetalhc.models.graph import HC_OUTPUT, RAW_HC_OUTPUT, check_output_units, output_names


def load_model(path: str | os.PathLike, compile: bool = False,
               output_units: str | None = None) -> keras.Model:
    """Load a ``.keras`` fetalhc model with ``safe_mode=True``.

    Raises ``FileNotFoundError`` for a missing file and a one-line ``ValueError`` for a
    file that is not a ``.keras`` archive, needs unsafe deserialisation (e.g. ``Lambda``
    layers), or is not a fetalhc model (no output named ``hc_px_input``, or an exported
    model's ``hc_px_raw``). Any other Keras regression model loads when ``output_units``
    (``"mm"`` or ``"px"``) declares the unit of its HC output (its only output, or the one
    the caller names later).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    if path.suffix != ".keras" or not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a Keras v3 '.keras' model file")
    try:
        model = keras.saving.load_model(path, compile=compile, safe_mode=True)
    except Exception as error:  # noqa: BLE001 - turned into a one-line user error
        message = " ".join(str(error).split())
        if "safe_mode" in message or "unsafe" in message.lower() or "lambda" in message.lower():
            raise ValueError(
                f"refusing to load {path}: it needs unsafe deserialisation (e.g. a Lambda "
                "layer); fetalhc models load with safe_mode=True"
            ) from None
        raise ValueError(f"cannot load {path} as a fetalhc model: {message[:200]}") from None
    names = output_names(model)
    if check_output_units(output_units) is not None:
        return model
    if HC_OUTPUT not in names and RAW_HC_OUTPUT not in names:
        raise ValueError(
            f"{path} is not a fetalhc model: it has no output named {HC_OUTPUT!r} "
            f"(outputs: {', '.join(names) or 'none'}); for your own model, declare the unit "
            "of its HC output (--output-units mm|px)"
        )
    return model


def check_input_size(model: keras.Model, image_size: int) -> None:
    """Raise a ``ValueError`` when ``model`` cannot take ``image_size`` x ``image_size`` x 1."""
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[-1] != 1:
        raise ValueError(f"model {model.name!r} takes inputs of shape {shape[1:]}, not (S, S, 1)")
    height, width = shape[1], shape[2]
    if (height is not None and height != image_size) or (
        width is not None and width != image_size
    ):
        raise ValueError(
            f"model {model.name!r} takes {height}x{width} px inputs, got image size {image_size}"
        )

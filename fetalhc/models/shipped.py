"""Trained HC18 models that ship with the repository, loaded by name.

Each model lives in ``models/<name>/`` at the repository root as the run folder it was
trained in, minus the TensorBoard logs: ``model.keras``, ``config.toml`` (the resolved
config, with the split's file names in ``[split]``), ``history.csv``, ``metrics.json`` and
``provenance.json`` (where it came from: the run folder, the command, the model's
SHA-256). Because it is a run folder, every command that takes ``--model`` accepts
``models/<name>`` and finds the pre-processing and the splits in it.

``FETALHC_MODELS`` points at another folder of such models (e.g. an installed copy).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MODELS_ENV = "FETALHC_MODELS"
MODEL_FILE = "model.keras"
PROVENANCE_FILE = "provenance.json"


def models_folder() -> Path:
    """Where the named models are: ``$FETALHC_MODELS``, else the repository's ``models/``."""
    configured = os.environ.get(MODELS_ENV)
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "models"


def available_pretrained() -> list[str]:
    """Names of the models in :func:`models_folder` (sorted; empty when there is none)."""
    folder = models_folder()
    if not folder.is_dir():
        return []
    return sorted(child.name for child in folder.iterdir() if (child / MODEL_FILE).is_file())


def pretrained_dir(name: str) -> Path:
    """The run folder of the named model; ``ValueError`` listing the names otherwise."""
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ValueError(f"a pretrained model name is a plain folder name; got {name!r}")
    folder = models_folder() / name
    if not (folder / MODEL_FILE).is_file():
        names = available_pretrained()
        known = ", ".join(names) if names else (
            f"none in {models_folder()} (the named models ship with the repository's models/ "
            f"folder, not with the wheel: set {MODELS_ENV} to such a folder)")
        raise ValueError(f"no pretrained model named {name!r}; available: {known}")
    return folder


def check_pretrained(name: str) -> dict:
    """The model's ``provenance.json``, after checking that ``model.keras`` is the file it
    describes (SHA-256); ``ValueError`` when it is not."""
    folder = pretrained_dir(name)
    provenance_path = folder / PROVENANCE_FILE
    if not provenance_path.is_file():
        raise ValueError(f"{folder} has no {PROVENANCE_FILE}: cannot tell where it came from")
    provenance = json.loads(provenance_path.read_text())
    digest = hashlib.sha256((folder / MODEL_FILE).read_bytes()).hexdigest()
    if digest != provenance.get("model_sha256"):
        raise ValueError(f"{folder / MODEL_FILE} is not the model its {PROVENANCE_FILE} "
                         "describes (SHA-256 differs)")
    return provenance


def pretrained(name: str, compile: bool = False):
    """Load a named model of :func:`available_pretrained`, e.g.
    ``fetalhc.models.pretrained("hc18-plain-mae")`` (checked against its provenance). A
    crop model (the recipe's stage 2) needs its localiser's crops: run it with
    ``fetalhc predict --model models/<name>``."""
    from fetalhc.models.io import load_model

    check_pretrained(name)
    return load_model(pretrained_dir(name) / MODEL_FILE, compile=compile)

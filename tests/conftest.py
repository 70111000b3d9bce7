"""Shared fixtures: where HC18 lives, and small phantom datasets for the fast tests
(``phantoms``, ``phantom_dir_factory``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HC18 = REPO_ROOT.parent / "shared" / "data" / "hc18"


def hc18_root() -> Path:
    return Path(os.environ.get("FETALHC_HC18", DEFAULT_HC18))


@pytest.fixture(scope="session")
def hc18_path() -> Path:
    """The real HC18 development copy; tests using it skip when it is absent."""
    root = hc18_root()
    if not (root / "training_set_pixel_size_and_HC.csv").is_file():
        pytest.skip(
            f"HC18 not found at {root} (set FETALHC_HC18 to the folder holding "
            "training_set_pixel_size_and_HC.csv)"
        )
    return root


@pytest.fixture(scope="session")
def phantom_dir_factory(tmp_path_factory):
    """``make(n=60, challenge=4) -> Path``: a phantom HC18-layout dataset (seed 0), written
    once per pytest session and shared by every test asking for the same ``n``/``challenge``."""
    from fetalhc.data import write_phantom_dataset

    def make(n: int = 60, challenge: int = 4) -> Path:
        root = tmp_path_factory.getbasetemp() / f"fetalhc_phantoms_{n}_{challenge}"
        if not (root / "training_set_pixel_size_and_HC.csv").is_file():
            write_phantom_dataset(root, n=n, seed=0, challenge=challenge)
        return root

    return make


@pytest.fixture(scope="session")
def phantoms(phantom_dir_factory) -> Path:
    """The default phantoms of the training / CLI tests: 60 images, challenge 4, seed 0.

    A test module may define its own ``phantoms`` fixture; that one wins in its module."""
    return phantom_dir_factory()

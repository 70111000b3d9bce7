"""Shared fixtures: where HC18 lives, and small phantom datasets for the fast tests."""

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

"""Atomic file writes shared by every command: a temporary file in the same folder, then
``os.replace``, so an interrupted command never leaves half a file behind."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path


def write_bytes(path: Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_csv(frame, path: Path, float_format: str = "%.6g") -> Path:
    return write_text(path, frame.to_csv(index=False, float_format=float_format))


def write_npz(path: Path, **arrays) -> Path:
    import numpy as np

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return write_bytes(path, buffer.getvalue())

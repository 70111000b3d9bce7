"""The one writer of result files, the one file digest, and the one Markdown table.

Every file fetalhc writes (tables, arrays, JSON, configs, figures, models, pages) goes
through :func:`atomic_path` or one of the ``write_*`` helpers built on it: the content goes
to a temporary file in the destination folder, which then replaces the destination in one
``os.replace``. An interrupted command leaves the old file or the new one, never half of
one. The file gets the mode an ordinary ``open`` would give it (0644 under umask 022), not
``mkstemp``'s 0600; a writer that makes its own temporary folder (``mkdtemp``, 0700) gives it
:func:`folder_mode` (0755 under umask 022) before moving it into place.

This module is the package's foundation: it imports no other fetalhc module, and every
fetalhc module may import it (``data`` and ``viz`` included; docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any


def umask() -> int:
    """The process umask, read without changing it where the system tells it (Linux:
    ``/proc/self/status``). Elsewhere it is set and restored at once, through the
    restrictive 0o077 so that a file another thread creates in that instant is private,
    never world-writable."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode an ordinary ``open`` gives a new file: ``0o666 & ~umask`` (0644 under 022)."""
    return 0o666 & ~umask()


def folder_mode() -> int:
    """The mode an ordinary ``mkdir`` gives a new folder: ``0o777 & ~umask`` (0755 under
    022). For folders made by ``tempfile.mkdtemp`` (always 0700) that become results."""
    return 0o777 & ~umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix) to write to; on success it
    replaces ``path`` atomically, on any error it is removed and ``path`` is untouched.

    For writers that want a file name (``figure.savefig``, ``model.save``, ``np.save``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}",
                                         dir=path.parent)
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        os.chmod(temporary, file_mode())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, value: Any, indent: int = 2) -> Path:
    """Write ``value`` as JSON (``default=str`` for paths and the like) atomically."""
    return write_text(path, json.dumps(value, indent=indent, default=str) + "\n")


def write_csv(frame, path: str | os.PathLike, float_format: str | None = "%.6g") -> Path:
    """Write a pandas DataFrame as CSV without its index, atomically; gzip-compressed when
    ``path`` ends in ``.gz`` (no time stamp inside, so the same table gives the same bytes;
    ``pandas.read_csv`` reads it as it is)."""
    text = frame.to_csv(index=False, float_format=float_format)
    if str(path).endswith(".gz"):
        import gzip

        return write_bytes(path, gzip.compress(text.encode("utf-8"), mtime=0))
    return write_text(path, text)


def write_npz(path: str | os.PathLike, **arrays) -> Path:
    """Write numpy arrays to a compressed ``.npz`` atomically."""
    import numpy as np

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return write_bytes(path, buffer.getvalue())


def write_npy(path: str | os.PathLike, array) -> Path:
    """Write one numpy array to a ``.npy`` atomically."""
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array))
    return write_bytes(path, buffer.getvalue())


def sha256_of_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, in hex (read in 1 MiB blocks; no caching)."""
    import hashlib

    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- Markdown
def markdown_cell(value: Any) -> str:
    """A value as one Markdown table cell (``|`` escaped)."""
    return str(value).replace("|", "\\|")


def markdown_table(header: Sequence[Any], rows: Iterable[Sequence[Any]],
                   align: Sequence[str] | None = None) -> str:
    """A GitHub Markdown table ending in a newline; ``align`` holds ``"l"``, ``"r"`` or
    ``"c"`` per column (default: plain ``---``). Cells are written with :func:`markdown_cell`."""
    if align is not None and len(align) != len(header):
        raise ValueError(f"align has {len(align)} entries for {len(header)} columns")
    rule = {"l": ":---", "r": "---:", "c": ":---:"}
    separators = ["---"] * len(header) if align is None else [rule[a] for a in align]
    lines = [
        "| " + " | ".join(markdown_cell(cell) for cell in header) + " |",
        "| " + " | ".join(separators) + " |",
    ]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a table row has {len(row)} cells for {len(header)} columns")
        lines.append("| " + " | ".join(markdown_cell(cell) for cell in row) + " |")
    return "\n".join(lines) + "\n"


def markdown_frame(frame) -> str:
    """A pandas DataFrame as a Markdown table (its index becomes the first columns)."""
    flat = frame.reset_index()
    return markdown_table([str(column) for column in flat.columns],
                          list(flat.itertuples(index=False)))

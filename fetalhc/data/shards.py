"""Shards: split the rows of a split into ``n`` fixed, deterministic parts.

A shard is written ``i/n`` with **1-based** ``i`` (``1/3``, ``2/3``, ``3/3``), as Slurm array
task ids usually are; a 0-based index (Kubernetes' ``JOB_COMPLETION_INDEX``, Ray's task
number) is turned into a shard with :func:`shard_from_zero_based` or ``$((i + 1))/n``.
Shard ``i/n`` holds the rows at positions ``p`` of the split's own order with
``p % n == i - 1`` (round robin), so every shard gets about ``N / n`` rows, shards are
disjoint and together cover the split exactly once, and a row's shard never depends on the
machine, the time or the other shards. The positions are kept so a merge can restore the
split's order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fetalhc.files import atomic_path


def parse_shard(text: str | tuple[int, int]) -> tuple[int, int]:
    """``"2/3"`` (or ``(2, 3)``) → ``(2, 3)``; raises ``ValueError`` unless ``1 <= i <= n``."""
    if isinstance(text, tuple):
        index, count = text
    else:
        number, sep, total = str(text).strip().partition("/")
        try:
            index, count = int(number), int(total)
        except ValueError:
            index = count = None
        if not sep or index is None:
            raise ValueError(f"--shard expects i/n with whole numbers (e.g. 1/4); got {text!r}")
    if count < 1:
        raise ValueError(f"shard count must be >= 1; got {count}")
    if not 1 <= index <= count:
        hint = " (shards are 1-based: 1/n .. n/n)" if index == 0 else ""
        raise ValueError(f"shard index must lie in 1..{count}; got {index}/{count}{hint}")
    return int(index), int(count)


def shard_from_zero_based(zero_based_index: int, count: int) -> tuple[int, int]:
    """A 0-based task index (e.g. ``JOB_COMPLETION_INDEX``) and the count → ``(i, n)``."""
    return parse_shard((int(zero_based_index) + 1, int(count)))


def format_shard(shard: tuple[int, int]) -> str:
    index, count = parse_shard(shard)
    return f"{index}/{count}"


def shard_positions(total: int, shard: str | tuple[int, int]) -> np.ndarray:
    """Positions (0-based, ascending) of the ``total`` rows that belong to ``shard``."""
    index, count = parse_shard(shard)
    if total < 0:
        raise ValueError(f"total must be >= 0; got {total}")
    return np.arange(index - 1, total, count, dtype=np.int64)


def select_shard(frame: pd.DataFrame, shard: str | tuple[int, int] | None
                 ) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows of ``frame`` in ``shard`` (index reset) and their positions in ``frame``.
    ``shard=None`` returns every row. Raises ``ValueError`` when the shard is empty."""
    if shard is None:
        return frame.reset_index(drop=True), np.arange(len(frame), dtype=np.int64)
    positions = shard_positions(len(frame), shard)
    if len(positions) == 0:
        index, count = parse_shard(shard)
        raise ValueError(f"shard {index}/{count} is empty: the split has only {len(frame)} "
                         f"image(s); use at most {len(frame)} shards")
    return frame.iloc[positions].reset_index(drop=True), positions


def check_complete(positions_by_shard: dict[str, np.ndarray], total: int) -> np.ndarray:
    """Check that the shards' positions cover ``0..total-1`` exactly once; returns the
    order (indices into the concatenation of the shards' positions, in the given shard
    order) that sorts the rows back into the split's order."""
    if not positions_by_shard:
        raise ValueError("no shards to merge")
    joined = np.concatenate([np.asarray(p, dtype=np.int64) for p in positions_by_shard.values()])
    counts = np.bincount(joined[(joined >= 0) & (joined < total)], minlength=total)
    if len(joined) != total or (counts != 1).any() or ((joined < 0) | (joined >= total)).any():
        missing = np.flatnonzero(counts == 0)
        repeated = np.flatnonzero(counts > 1)
        raise ValueError(
            f"the shards do not cover the {total} images exactly once ({len(missing)} "
            f"missing, {len(repeated)} repeated); give every shard folder of one run")
    return np.argsort(joined, kind="stable")


def save_table(frame: pd.DataFrame, path) -> None:
    """Write ``frame`` to ``.npz`` exactly (every column's dtype and bits; text columns as
    unicode), so a merge recomputes summaries from the very numbers an unsharded run used.
    CSV tables round to 6 significant digits and cannot serve for that."""
    arrays = {"__columns__": np.asarray([str(c) for c in frame.columns], dtype=str)}
    for position, column in enumerate(frame.columns):
        values = frame[column].to_numpy()
        if values.dtype == object:
            values = values.astype(str)
        arrays[f"c{position}"] = values
    with atomic_path(path) as temporary, open(temporary, "wb") as stream:
        np.savez(stream, **arrays)


def load_table(path) -> pd.DataFrame:
    """Read a table written by :func:`save_table` (text columns come back as ``object``)."""
    with np.load(path, allow_pickle=False) as stored:
        columns = [str(c) for c in stored["__columns__"]]
        data = {}
        for position, column in enumerate(columns):
            values = stored[f"c{position}"]
            data[column] = values.astype(object) if values.dtype.kind == "U" else values
    return pd.DataFrame(data, columns=columns)

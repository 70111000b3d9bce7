"""Grouped, seeded splits: all images of one filename ID stay on one side.

HC18's 1334 images come from 551 women and one woman can appear under two IDs; grouping by
filename ID (``group_id``) is the best the data allows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _shuffled_groups(index: pd.DataFrame, seed: int) -> np.ndarray:
    if "group_id" not in index.columns:
        raise ValueError("the index needs a 'group_id' column (use fetalhc.data.load_index)")
    groups = np.array(sorted(index["group_id"].astype(str).unique()))
    rng = np.random.default_rng(seed)
    return groups[rng.permutation(len(groups))]


def _rows_of(index: pd.DataFrame, groups) -> pd.DataFrame:
    chosen = index["group_id"].astype(str).isin(set(groups))
    return index[chosen].reset_index(drop=True)


def split_index(index: pd.DataFrame, seed: int = 0, val_fraction: float = 0.1,
                test_fraction: float = 0.1) -> dict[str, pd.DataFrame]:
    """Split the index into ``{"train", "val", "test"}`` DataFrames by group.

    The fractions count groups (filename IDs), rounded to the nearest whole group; a positive
    fraction gets at least one group. The same seed gives the same split; rows keep their
    index order within each part.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1); got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be below 1; got {val_fraction + test_fraction}"
        )
    groups = _shuffled_groups(index, seed)
    n = len(groups)

    def count(fraction: float) -> int:
        return 0 if fraction == 0 else max(1, int(round(fraction * n)))

    n_test, n_val = count(test_fraction), count(val_fraction)
    if n_test + n_val >= n:
        raise ValueError(
            f"cannot split {n} groups into train/val/test with fractions "
            f"{val_fraction}/{test_fraction}: the training part would be empty"
        )
    return {
        "train": _rows_of(index, groups[n_test + n_val:]),
        "val": _rows_of(index, groups[n_test:n_test + n_val]),
        "test": _rows_of(index, groups[:n_test]),
    }


def kfold_split(index: pd.DataFrame, k: int, fold: int, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Fold ``fold`` (0-based) of a grouped k-fold split: ``{"train", "val"}`` DataFrames.

    Groups are shuffled with ``seed`` and dealt into ``k`` folds of near-equal group counts;
    ``val`` is fold ``fold`` and ``train`` the other ``k - 1``. Over ``fold = 0..k-1`` every
    row is in ``val`` exactly once.
    """
    if int(k) != k or k < 2:
        raise ValueError(f"k must be an integer >= 2; got {k}")
    if int(fold) != fold or not 0 <= fold < k:
        raise ValueError(f"fold must be an integer in [0, {k - 1}]; got {fold}")
    groups = _shuffled_groups(index, seed)
    if len(groups) < k:
        raise ValueError(f"cannot make {k} folds from {len(groups)} groups")
    folds = np.array_split(groups, int(k))
    val_groups = folds[int(fold)]
    train_groups = np.concatenate([part for i, part in enumerate(folds) if i != fold])
    return {"train": _rows_of(index, train_groups), "val": _rows_of(index, val_groups)}

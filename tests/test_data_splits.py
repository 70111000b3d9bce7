"""Grouped, seeded splits: no group on two sides, deterministic, sensible sizes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fetalhc.data import kfold_split, split_index


def make_index(n_groups: int = 100, seed: int = 0) -> pd.DataFrame:
    """An index-like table where some groups have 2-4 images, like HC18."""
    rng = np.random.default_rng(seed)
    rows = []
    for group in range(n_groups):
        for k in range(int(rng.choice([1, 1, 1, 2, 3, 4]))):
            name = f"{group:03d}_HC.png" if k == 0 else f"{group:03d}_{k + 1}HC.png"
            rows.append({"filename": name, "group_id": f"{group:03d}", "hc_mm": 100.0 + k})
    return pd.DataFrame(rows)


def groups(table: pd.DataFrame) -> set:
    return set(table["group_id"])


def test_split_keeps_groups_together_and_covers_everything():
    index = make_index()
    parts = split_index(index, seed=3)
    assert set(parts) == {"train", "val", "test"}
    train, val, test = groups(parts["train"]), groups(parts["val"]), groups(parts["test"])
    assert not train & val and not train & test and not val & test
    assert train | val | test == groups(index)
    assert sum(len(part) for part in parts.values()) == len(index)
    names = pd.concat(parts.values())["filename"]
    assert sorted(names) == sorted(index["filename"])


def test_split_sizes_follow_group_fractions():
    index = make_index(200)
    parts = split_index(index, seed=0, val_fraction=0.1, test_fraction=0.2)
    assert len(groups(parts["val"])) == 20
    assert len(groups(parts["test"])) == 40
    assert len(groups(parts["train"])) == 140
    no_val = split_index(index, seed=0, val_fraction=0.0, test_fraction=0.1)
    assert len(no_val["val"]) == 0 and len(groups(no_val["test"])) == 20


def test_split_is_deterministic_by_seed():
    index = make_index()
    first, again = split_index(index, seed=7), split_index(index, seed=7)
    for key in first:
        pd.testing.assert_frame_equal(first[key], again[key])
    other = split_index(index, seed=8)
    assert groups(other["test"]) != groups(first["test"])


def test_split_does_not_depend_on_row_order():
    index = make_index()
    shuffled = index.sample(frac=1.0, random_state=1)
    assert groups(split_index(index, seed=2)["val"]) == groups(split_index(shuffled, seed=2)["val"])


@pytest.mark.parametrize(("val", "test"), [(-0.1, 0.1), (0.5, 0.5), (1.0, 0.0)])
def test_split_rejects_bad_fractions(val, test):
    with pytest.raises(ValueError):
        split_index(make_index(), val_fraction=val, test_fraction=test)


def test_split_rejects_too_few_groups():
    with pytest.raises(ValueError, match="empty"):
        split_index(make_index(2), val_fraction=0.1, test_fraction=0.1)


def test_kfold_every_group_validates_exactly_once():
    index = make_index(53)
    k = 5
    seen = []
    for fold in range(k):
        parts = kfold_split(index, k=k, fold=fold, seed=4)
        assert set(parts) == {"train", "val"}
        assert not groups(parts["train"]) & groups(parts["val"])
        assert len(parts["train"]) + len(parts["val"]) == len(index)
        assert len(groups(parts["val"])) in (10, 11)
        seen += sorted(groups(parts["val"]))
    assert sorted(seen) == sorted(groups(index))


def test_kfold_is_deterministic_and_rejects_bad_arguments():
    index = make_index(30)
    pd.testing.assert_frame_equal(kfold_split(index, 3, 1, seed=9)["val"],
                                  kfold_split(index, 3, 1, seed=9)["val"])
    for k, fold in [(1, 0), (3, 3), (3, -1), (40, 0)]:
        with pytest.raises(ValueError):
            kfold_split(index, k, fold)

"""Sharded explain / evaluate: shard arithmetic, position-keyed random draws, and 3 shards
merged with ``fetalhc merge`` equal one unsharded run byte for byte in every CSV table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from fetalhc.data.shards import (
    check_complete,
    load_table,
    parse_shard,
    save_table,
    select_shard,
    shard_from_zero_based,
    shard_positions,
)


# ----------------------------------------------------------------------------- arithmetic
def test_parse_shard_is_one_based_and_validated():
    assert parse_shard("2/3") == (2, 3)
    assert parse_shard(" 1/1 ") == (1, 1)
    assert shard_from_zero_based(0, 4) == (1, 4)
    for bad, message in (("0/3", "1-based"), ("4/3", "1..3"), ("3", "i/n"), ("a/b", "i/n"),
                         ("1/0", ">= 1")):
        with pytest.raises(ValueError, match=message):
            parse_shard(bad)


def test_round_robin_shards_partition_the_positions():
    total, count = 10, 3
    parts = [shard_positions(total, (i, count)) for i in range(1, count + 1)]
    assert [p.tolist() for p in parts] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    order = check_complete({str(i): p for i, p in enumerate(parts)}, total)
    assert np.concatenate(parts)[order].tolist() == list(range(total))
    with pytest.raises(ValueError, match="exactly once"):
        check_complete({"a": parts[0], "b": parts[1]}, total)
    with pytest.raises(ValueError, match="exactly once"):
        check_complete({"a": parts[0], "b": parts[0], "c": parts[1], "d": parts[2]}, total)
    frame = pd.DataFrame({"filename": [f"{i}.png" for i in range(5)]})
    rows, positions = select_shard(frame, "2/2")
    assert rows["filename"].tolist() == ["1.png", "3.png"] and positions.tolist() == [1, 3]
    with pytest.raises(ValueError, match="empty"):
        select_shard(frame.head(2), "3/3")


def test_save_table_round_trips_exactly(tmp_path):
    frame = pd.DataFrame({"filename": ["a.png", "b.png"],
                          "value_mm": np.array([1 / 3, np.nan]),
                          "single": np.array([0.1, 2.5], dtype=np.float32),
                          "count": np.array([1, 2])})
    save_table(frame, tmp_path / "t.npz")
    back = load_table(tmp_path / "t.npz")
    pd.testing.assert_frame_equal(back, frame)
    assert back["single"].dtype == np.float32


def test_position_keyed_noise_and_random_orders_match_the_whole_set():
    from fetalhc.evaluate.regions import removal_order, replacement_images

    images = np.zeros((7, 8, 8, 1), dtype=np.float32)
    whole = replacement_images(images, "noise", noise_sd=0.3, seed=5)
    positions = np.array([2, 5])
    part = replacement_images(images[positions], "noise", noise_sd=0.3, seed=5,
                              positions=positions)
    np.testing.assert_array_equal(part, whole[positions])
    scores = np.zeros((7, 16))
    whole_order = removal_order(scores, "random", np.random.default_rng(1))
    part_order = removal_order(scores[positions], "random", np.random.default_rng(1), positions)
    np.testing.assert_array_equal(part_order, whole_order[positions])


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """6 phantoms (+ 5 challenge phantoms) and an untrained small CNN at 32 px."""
    import keras

    from fetalhc.data import write_phantom_dataset
    from fetalhc.models import build_model

    root = tmp_path_factory.mktemp("shards")
    data = write_phantom_dataset(root / "phantoms", n=6, seed=3, challenge=5, width=80,
                                 height=64, second_fraction=0.0)
    keras.utils.set_random_seed(0)
    model = build_model("small_cnn", input_shape=(32, 32, 1), hc_mean_px=60.0, hc_std_px=10.0)
    model_path = root / "tiny.keras"
    model.save(model_path)
    return data, model_path


def _tables(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.csv"))}


def _provenance(folder: Path) -> dict:
    """The ``result`` of a folder's provenance.json: what its numbers depend on."""
    return json.loads((folder / "provenance.json").read_text())["result"]


def _cli(args):
    from fetalhc.cli.main import cli

    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def explain_runs(tiny, tmp_path_factory):
    """One unsharded explain run and its 3 shards (shared by the tests below)."""
    data, model = tiny
    root = tmp_path_factory.mktemp("explain_runs")
    common = ["explain", "--model", str(model), "--data", str(data), "--split", "challenge",
              "--methods", "gradient", "--batch-size", "4"]
    _cli([*common, "--out", str(root / "whole")])
    for i in (1, 2, 3):
        _cli([*common, "--out", str(root / f"shard{i}"), "--shard", f"{i}/3"])
    return root


def test_three_explain_shards_merge_to_the_unsharded_run(explain_runs, tmp_path):
    root = explain_runs
    assert json.loads((root / "shard2" / "shard.json").read_text())["positions"] == [1, 4]
    _cli(["merge", *(str(root / f"shard{i}") for i in (1, 2, 3)),
          "--out", str(tmp_path / "merged")])
    whole, merged = _tables(root / "whole"), _tables(tmp_path / "merged")
    assert list(whole) == ["index.csv"] and whole == merged
    assert len(pd.read_csv(tmp_path / "merged" / "index.csv")) == 5
    assert (tmp_path / "merged" / "grid.png").is_file()
    names = sorted(p.name for p in (root / "whole" / "gradient").iterdir())
    assert sorted(p.name for p in (tmp_path / "merged" / "gradient").iterdir()) == names
    # the merged folder records what an unsharded run records (#17)
    assert _provenance(tmp_path / "merged") == _provenance(root / "whole")
    assert _provenance(root / "shard2")["shard"] == "2/3"


def test_three_evaluate_shards_merge_to_the_unsharded_run(tiny, tmp_path):
    data, model = tiny
    common = ["evaluate", "--model", str(model), "--data", str(data), "--split", "all",
              "--methods", "gradient", "--metrics", "aopc,deletion,localisation",
              "--deletion-steps", "4",
              "--n-boot", "200", "--seed", "3", "--no-progress", "--no-figures"]
    _cli([*common, "--out", str(tmp_path / "whole")])
    for i in (1, 2, 3):
        _cli([*common, "--out", str(tmp_path / f"shard{i}"), "--shard", f"{i}/3"])
    # a shard alone differs (fewer images): the merge really recomputes the summaries
    assert (tmp_path / "shard1" / "summary.csv").read_bytes() != \
        (tmp_path / "whole" / "summary.csv").read_bytes()
    _cli(["merge", *(str(tmp_path / f"shard{i}") for i in (3, 1, 2)),
          "--out", str(tmp_path / "merged"), "--kind", "evaluate"])
    whole, merged = _tables(tmp_path / "whole"), _tables(tmp_path / "merged")
    expected = {"per_image.csv", "summary.csv", "summary_by_error.csv",
                "methods/gradient/per_image.csv", "methods/gradient/curves.csv",
                "methods/gradient/perturbation_steps.csv"}
    assert expected <= set(whole)
    assert set(merged) == set(whole)
    for name in whole:
        assert merged[name] == whole[name], name
    for name in ("settings.json", "methods/gradient/done.json"):
        assert json.loads((tmp_path / "merged" / name).read_text()) == \
            json.loads((tmp_path / "whole" / name).read_text())
    assert (tmp_path / "merged" / "summary.md").read_text() == \
        (tmp_path / "whole" / "summary.md").read_text()
    assert _provenance(tmp_path / "merged") == _provenance(tmp_path / "whole")
    method = Path("methods") / "gradient"
    assert _provenance(tmp_path / "merged" / method) == _provenance(tmp_path / "whole" / method)

    # shards that disagree in their provenance are refused, naming the field and folders
    import shutil

    from fetalhc.cli.merge import merge_command

    for where, field in (("", "metrics"), ("methods/gradient", "maps")):
        other = tmp_path / f"other_{field}"
        shutil.copytree(tmp_path / "shard3", other)
        path = other / where / "provenance.json"
        record = json.loads(path.read_text())
        record["result"][field] = ["changed"]
        path.write_text(json.dumps(record))
        with pytest.raises(ValueError, match=rf"{tmp_path / 'shard1'}.* and {other}.* their "
                                             rf"{field} differs"):
            merge_command([tmp_path / "shard1", tmp_path / "shard2", other], tmp_path / "m")
        assert not (tmp_path / "m").exists()


def test_merge_refuses_incomplete_or_mixed_shards(tiny, explain_runs, tmp_path):
    from fetalhc.cli.explain import explain_command
    from fetalhc.cli.merge import merge_command

    data, model = tiny
    shard1, shard2 = explain_runs / "shard1", explain_runs / "shard2"
    with pytest.raises(ValueError, match="exactly once"):
        merge_command([shard1, shard2], tmp_path / "m")
    with pytest.raises(ValueError, match="given twice"):
        merge_command([shard1, shard1, shard2], tmp_path / "m")
    with pytest.raises(ValueError, match="--kind evaluate"):
        merge_command([shard1, shard2], tmp_path / "m", kind="evaluate")
    with pytest.raises(FileNotFoundError, match="shard.json"):
        merge_command([shard1, explain_runs / "whole"], tmp_path / "m")
    with pytest.raises(ValueError, match="not one of the shard folders"):
        merge_command([shard1, shard2, explain_runs / "shard3"], shard1)
    import shutil

    other = tmp_path / "other3"
    shutil.copytree(explain_runs / "shard3", other)
    info = json.loads((other / "shard.json").read_text())
    (other / "shard.json").write_text(json.dumps({**info, "target": "hc_px_input"}))
    with pytest.raises(ValueError, match="different runs"):
        merge_command([shard1, shard2, other], tmp_path / "m")
    with pytest.raises(ValueError, match="1-based"):
        explain_command(model, data, ["gradient"], tmp_path / "bad", split="challenge",
                        shard="0/2", progress=False)

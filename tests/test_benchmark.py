"""``fetalhc benchmark``: shortcut phantoms → a model per variant → where every method puts
its relevance, on a tiny scale; re-runs resume, other settings are refused in one line, and
the page is rebuilt from its stored files alone."""

from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner

from fetalhc.cli.main import cli
from fetalhc.report.groundtruth import (
    CUES_SUMMARY,
    DONE,
    INTERVENTION,
    RELEVANCE_SUMMARY,
    relevance_ranking,
    training_config,
    write_benchmark_page,
)

METHODS = "gradient,input_x_gradient"
TINY = ["--variants", "marker,mixed", "--train-images", "24", "--test-images", "4",
        "--epochs", "2", "--image-size", "32", "--width", "64", "--methods", METHODS,
        "--n-boot", "50", "--no-progress"]


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    out = tmp_path_factory.mktemp("benchmark")
    result = CliRunner().invoke(cli, ["benchmark", "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    return out


def test_every_variant_is_trained_checked_and_scored(benchmark):
    for variant in ("marker", "mixed"):
        folder = benchmark / variant
        for name in (DONE, INTERVENTION, RELEVANCE_SUMMARY, CUES_SUMMARY):
            assert (folder / name).is_file(), name
        summary = pd.read_csv(folder / RELEVANCE_SUMMARY)
        assert set(summary["method"]) == set(METHODS.split(","))
        shares = summary[summary["metric"] == "marker abs mass share"]["mean"]
        assert shares.between(0.0, 1.0).all()
        assert (benchmark / "runs" / variant / "model.keras").is_file()
    ranking = relevance_ranking(benchmark, "marker")
    assert list(ranking["mean"]) == sorted(ranking["mean"], reverse=True)
    page = (benchmark / "benchmark.md").read_text()
    assert "## `marker`" in page and "## `mixed`" in page and "`contour`" not in page
    assert "Intervention check on 4 fresh phantoms" in page
    per_image = pd.read_csv(benchmark / "marker" / "intervention_per_image.csv")
    mae = (per_image["prediction (mm)"] - per_image["reference HC (mm)"]).abs().mean()
    assert f"Model accuracy on these 4 phantoms: MAE **{mae:.1f}**" in page
    assert "marker share of cue abs relevance" in page  # the mixed variant's cue table


def test_the_page_is_rebuilt_from_its_files_alone(benchmark):
    before = (benchmark / "benchmark.md").read_bytes()
    write_benchmark_page(benchmark)
    assert (benchmark / "benchmark.md").read_bytes() == before


def test_a_rerun_reuses_and_other_settings_are_refused(benchmark):
    done = benchmark / "marker" / DONE
    stamp = done.stat().st_mtime_ns
    again = CliRunner().invoke(cli, ["benchmark", "--out", str(benchmark), *TINY])
    assert again.exit_code == 0, again.output
    assert done.stat().st_mtime_ns == stamp
    changed = [*TINY]
    changed[changed.index("--test-images") + 1] = "5"
    refused = CliRunner().invoke(cli, ["benchmark", "--out", str(benchmark), *changed])
    assert refused.exit_code == 1
    assert "Error:" in refused.output and "--overwrite" in refused.output
    assert len(refused.output.strip().splitlines()) <= 4  # the step lines, then one error
    epochs = [*TINY]
    epochs[epochs.index("--epochs") + 1] = "3"
    other = CliRunner().invoke(cli, ["benchmark", "--out", str(benchmark), *epochs])
    assert other.exit_code == 1 and "another config" in other.output


@pytest.mark.parametrize("argv, message", [
    (["--variants", "stripes"], "unknown stripes"),
    (["--methods", "nope"], "nope"),
])
def test_bad_requests_are_one_line(tmp_path, argv, message):
    result = CliRunner().invoke(cli, ["benchmark", "--out", str(tmp_path / "b"), *argv])
    assert result.exit_code != 0 and message in result.output
    assert not (tmp_path / "b").exists()


def test_training_config_keeps_the_marker_where_it_encodes_the_hc():
    config = training_config(image_size=48, epochs=7, seed=3)
    assert config["data"]["augment"] is False  # a flip or zoom would move the marker
    assert config["data"]["image_size"] == 48 and config["train"]["epochs"] == 7
    from fetalhc.training.config import resolve_config

    assert resolve_config(config)["train"]["seed"] == 3


def test_the_committed_benchmark_page_is_regenerated_unchanged(tmp_path):
    """docs/benchmark/benchmark.md is what write_benchmark_page makes of the committed files
    beside it; if this fails, regenerate it (`fetalhc benchmark --out docs/benchmark --work
    runs/benchmark-work` resumes and rewrites it)."""
    import shutil
    from pathlib import Path

    committed = Path(__file__).resolve().parents[1] / "docs" / "benchmark"
    if not (committed / "benchmark.json").is_file():
        pytest.skip("docs/benchmark/ holds no benchmark yet")
    copy = tmp_path / "benchmark"
    shutil.copytree(committed, copy)
    write_benchmark_page(copy)
    assert (copy / "benchmark.md").read_bytes() == (committed / "benchmark.md").read_bytes()


def test_a_data_folder_is_reused_only_when_it_holds_what_the_settings_make(tmp_path):
    from fetalhc.data.shortcut import ensure_shortcut_dataset

    folder = tmp_path / "marker-n6"
    settings = {"variant": "marker", "n": 6, "seed": 0, "width": 64, "height": 48}
    assert ensure_shortcut_dataset(folder, **settings) is True  # written
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    assert ensure_shortcut_dataset(folder, **settings) is False  # reused as it is
    assert {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()} == before
    with pytest.raises(ValueError, match="does not hold the marker phantoms"):
        ensure_shortcut_dataset(folder, **{**settings, "seed": 1})  # other settings, same name
    image = sorted((folder / "training_set").glob("*_HC.png"))[0]
    image.write_bytes(image.read_bytes()[:-8] + b"\0" * 8)  # changed behind our back
    with pytest.raises(ValueError, match=image.name):
        ensure_shortcut_dataset(folder, **settings)
    assert ensure_shortcut_dataset(folder, **settings, overwrite=True) is True
    assert {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()} == before
    assert [path.name for path in tmp_path.iterdir()] == ["marker-n6"]  # no scratch left

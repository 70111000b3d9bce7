"""``scripts/hc18_study.py``: its rank statistics on known answers, the TensorBoard time
reader, the model matrix and the paper's table as transcribed, and (slow) the whole quick
study on phantoms: the page, its figures and finite numbers, and a resumed second run."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIELD_NOTES = REPO_ROOT.parent / "shared" / "docs" / "field-notes.md"


@pytest.fixture(scope="module")
def study():
    path = REPO_ROOT / "scripts" / "hc18_study.py"
    spec = importlib.util.spec_from_file_location("hc18_study", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["hc18_study"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("hc18_study", None)


def test_rank_statistics_known_answers(study):
    a = [-9.0, -7.0, -5.0, -3.0, -2.0, -1.5, -1.0, 0.0]
    assert study.spearman(a, a) == pytest.approx(1.0)
    # identical rankings: only the identity permutation reaches rho = 1
    assert study.permutation_p(a, a) == pytest.approx(1 / math.factorial(8))
    assert study.permutation_p(a, a[::-1]) == pytest.approx(1.0)
    # one-sided 5 % critical value of Spearman's rho for n = 8 (tables: 0.643)
    # = 1 - 6 * 30 / (8 * 63)
    assert study.rho_critical(8) == pytest.approx(1 - 180 / 504)
    assert math.isnan(study.rho_critical(3))  # n = 3: the smallest p is 1/6
    np.testing.assert_allclose(study.ranks([-3.0, -1.0, -1.0, 2.0]), [1, 2.5, 2.5, 4])


def test_rho_bootstrap_on_perfectly_ordered_images(study):
    methods = ["m1", "m2", "m3", "m4"]
    paper = [-4.0, -3.0, -2.0, -1.0]
    rows = []
    for image in range(6):  # every image orders the methods as the paper does
        for position, method in enumerate(methods):
            rows.append({"filename": f"{image}.png", "method": method,
                         "aopc": 10.0 * position + image})
    frame = pd.DataFrame(rows)
    assert study.rho_bootstrap(frame, methods, paper, "aopc", n_boot=200) == \
        pytest.approx((1.0, 1.0))
    assert study.rho_bootstrap(frame, methods, paper[::-1], "aopc", n_boot=200) == \
        pytest.approx((-1.0, -1.0))


def test_event_wall_times_reads_a_tensorboard_file(study, tmp_path):
    # Event protos serialised by TensorBoard's protobuf classes (pure Python: its
    # EventFileWriter would import TensorFlow), in TFRecord framing: length (uint64), its
    # CRC, the record, its CRC (the reader skips CRCs, so zeros do here).
    import struct

    from tensorboard.compat.proto import event_pb2, summary_pb2

    stamps = [1795983646.25, 1795983700.5, 1795983800.0, 1795986896.875]
    records = [event_pb2.Event(wall_time=stamps[0], file_version="brain.Event:2")]
    for step, stamp in enumerate(stamps[1:]):
        value = summary_pb2.Summary.Value(tag="epoch_loss", simple_value=float(step))
        records.append(event_pb2.Event(wall_time=stamp, step=step,
                                       summary=summary_pb2.Summary(value=[value])))
    records.append(event_pb2.Event(step=9))  # no wall time: skipped
    folder = tmp_path / "logs" / "train"
    folder.mkdir(parents=True)
    path = folder / "events.out.tfevents.1795983646.host.1.v2"
    with open(path, "wb") as stream:
        for record in records:
            data = record.SerializeToString()
            stream.write(struct.pack("<Q", len(data)) + b"\0" * 4 + data + b"\0" * 4)
    times = study.event_wall_times(path)
    assert times == stamps
    # train_seconds: metrics.json wins; without it the event span is used
    (tmp_path / "metrics.json").write_text(json.dumps({"train_seconds": 12.5}))
    steps = study.Steps(tmp_path / "steps.json")
    assert study.train_seconds(tmp_path, steps) == (12.5, "metrics.json train_seconds")
    (tmp_path / "metrics.json").write_text("{}")
    seconds, source = study.train_seconds(tmp_path, steps)
    assert seconds == pytest.approx(max(times) - min(times)) and "TensorBoard" in source


def test_a_step_is_done_whatever_the_spelling_of_its_paths(study, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    steps = study.Steps(tmp_path / "steps.json")
    steps.record("explain", command="fetalhc explain --data data --limit 16", returncode=0,
                 model_stamp="1:2")
    absolute = f"fetalhc explain --data {tmp_path / 'data'} --limit 16"
    assert steps.done("explain", absolute, "1:2")
    assert steps.done("explain", "fetalhc explain --data ./data/ --limit 16", "1:2")
    assert not steps.done("explain", "fetalhc explain --data other --limit 16", "1:2")
    assert not steps.done("explain", "fetalhc explain --data data --limit 8", "1:2")
    assert not steps.done("explain", absolute, "1:3")  # another model file
    assert not steps.done("evaluate-paper", absolute, "1:2")  # never run


def test_model_matrix_and_train_commands(study):
    commands = {spec.name: study.display(study.train_command(
        spec, Path("../shared/data/hc18"), Path("runs/study"), quick=False))
        for spec in study.MODELS}
    assert set(commands) == {"plain-mae", "plain-mse", "residual-mae", "residual-mse"}
    for name, command in commands.items():
        family, loss = name.split("-")
        config = "configs/hc18_best.toml" if family == "plain" else "configs/hc18_residual.toml"
        assert command.startswith(f"fetalhc train --config {config} --data ../shared/data/hc18 "
                                  f"--out runs/study/{name}")
        assert ("--set train.loss=mse" in command) == (loss == "mse")


def test_matrix_configs_give_the_named_backbone_and_loss(study):
    from fetalhc.training import parse_set_option, resolve_config

    for spec in study.MODELS:
        path = REPO_ROOT / spec.config
        if not path.is_file():
            pytest.skip(f"{spec.config} not written yet")
        config = resolve_config(path, overrides=dict(parse_set_option(s) for s in spec.sets))
        assert config["model"]["backbone"] == study.QUICK_BACKBONES[spec.family]
        assert config["train"]["loss"] == spec.loss


def test_paper_table_matches_the_field_notes(study):
    if not FIELD_NOTES.is_file():
        pytest.skip(f"{FIELD_NOTES} not found")
    text = " ".join(FIELD_NOTES.read_text().split())
    abbreviations = {"G": "gradient", "SG": "smoothgrad", "DCN": "deconvnet",
                     "DT": "deep_taylor", "GB": "guided_backprop", "IxG": "input_x_gradient",
                     "IG": "integrated_gradients", "LRP": "lrp_z"}
    for model in ("VGG16", "ResNet50"):
        block = re.search(rf"{model} ((?:[A-Za-z]+ -?\d+\.\d+,? ?)+)", text).group(1)
        found = {abbreviations[k]: float(v) for k, v in re.findall(r"([A-Za-z]+) (-?\d+\.\d+)",
                                                                   block)}
        assert found == study.PAPER_AOPC_PX[model]


def table_cells(markdown: str) -> list[str]:
    cells = []
    for line in markdown.splitlines():
        if line.startswith("|") and not set(line) <= set("|- "):
            cells += [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
    return cells


@pytest.mark.slow
def test_quick_study_end_to_end(study, tmp_path, capsys):
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    assert study.main(["--quick", "--runs", str(runs), "--docs", str(docs)]) == 0
    page = (docs / "study.md").read_text()
    assert page.startswith("# HC18 explainability study") and "Quick mode" in page
    for name in ("plain-mae", "plain-mse", "residual-mae", "residual-mse"):
        assert f"fetalhc train --data {runs / 'phantoms'} --out {runs / name}" in page
        assert (runs / name / "evaluate-paper" / "summary_by_error.csv").is_file()
        assert (runs / name / "evaluate-rich" / "randomisation.csv").is_file()
        assert f"study/maps_{name}.png" in page
    assert "differs from its command" not in page  # the runs are what the commands say
    for section in ("## In short", "## Models", "## Paper protocol", "## Richer protocol",
                    "## Low versus high prediction error", "## Against the seed paper",
                    "### The paper's claims, checked"):
        assert section in page

    # the summary counts what the tables below show
    for name in ("plain-mae", "residual-mse"):
        assert re.search(rf"`{name}` \d+ of \d+", page.split("## Models")[0])

    # every figure the page links exists and is a PNG; all of them stay small
    from PIL import Image

    links = re.findall(r"\]\((study/[^)]+\.png)\)", page)
    assert len(links) >= 4 * 6 + 2
    for link in links:
        with Image.open(docs / link) as image:
            assert image.format == "PNG" and min(image.size) > 50
    assert sum(p.stat().st_size for p in (docs / "study").iterdir()) < 3e6

    # table numbers are finite and the tables hold numbers at all
    cells = table_cells(page)
    assert not [c for c in cells if re.search(r"\b(nan|inf|n/a)\b", c, re.IGNORECASE)]
    numbers = [float(x) for c in cells for x in re.findall(r"[-−]?\d+\.\d+",
                                                             c.replace("−", "-"))]
    assert len(numbers) > 200 and all(math.isfinite(x) for x in numbers)

    # the paper-protocol table agrees with the evaluation's own summary
    summary = pd.read_csv(runs / "plain-mae" / "evaluate-paper" / "summary.csv")
    row = summary[(summary["method"] == "gradient")
                  & (summary["metric"] == "aopc_morf_abs_error_mm")].iloc[0]
    assert f"| gradient | {study.ci_cell(row['mean'], row['ci_low'], row['ci_high'])}" in page

    # a second run redoes nothing and writes the same tables
    capsys.readouterr()
    assert study.main(["--quick", "--runs", str(runs), "--docs", str(docs)]) == 0
    output = capsys.readouterr().out
    assert output.count("already done") == 4 * 3 and "training" not in output
    again = (docs / "study.md").read_text()
    assert table_cells(again.split("## Paper protocol")[1]) == \
        table_cells(page.split("## Paper protocol")[1])

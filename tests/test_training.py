"""Training on phantoms: a short fit learns (acceptance), the run folder and its config,
reading runs back, and every bad input of the config and the output folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fetalhc.training import (
    evaluate_split,
    load_run,
    parse_set_option,
    resolve_config,
    run_split_index,
    train,
)

REPO = Path(__file__).resolve().parents[1]

QUICK = {
    "data": {"image_size": 32, "val_fraction": 0.2, "test_fraction": 0.2, "cache": True},
    "model": {"backbone": "small_cnn", "dropout": 0.0},
    "train": {"epochs": 6, "batch_size": 8, "learning_rate": 3e-3, "seed": 0},
}


# `phantoms` (60 images, challenge 4, written once per session) is in tests/conftest.py


@pytest.fixture(scope="module")
def quick_run(phantoms, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "quick"
    result = train(QUICK, phantoms, out)
    return result


# ---------------------------------------------------------------------------- config ---


def test_defaults_resolve_and_shipped_configs_are_valid():
    config = resolve_config(None)
    assert config["model"]["backbone"] == "small_cnn"
    accuracy = resolve_config("paper_accuracy")  # shipped configs by name (tests/test_configs.py)
    assert accuracy["data"]["image_size"] == 224
    assert accuracy["train"]["learning_rate"] == 1e-4 and accuracy["train"]["batch_size"] == 16
    assert resolve_config("paper_explain")["data"]["image_size"] == 128
    assert resolve_config("quick_cpu")["model"]["backbone"] == "small_cnn"


@pytest.mark.parametrize("config, message", [
    ({"trian": {}}, r"unknown config section \[trian\]"),
    ({"train": {"epoch": 3}}, r"unknown config key \[train\] epoch; known keys: epochs"),
    ({"train": {"epochs": "3"}}, r"\[train\] epochs must be an integer, got '3'"),
    ({"train": {"epochs": 2.5}}, r"\[train\] epochs must be an integer"),
    ({"train": {"epochs": True}}, r"\[train\] epochs must be an integer"),
    ({"data": {"augment": 1}}, r"\[data\] augment must be a boolean"),
    ({"model": {"dense_units": [64, "a"]}}, r"\[model\] dense_units must be a list"),
    ({"train": {"learning_rate": "fast"}}, r"\[train\] learning_rate must be a number"),
    ({"train": {"epochs": 0}}, r"\[train\] epochs must be >= 1"),
    ({"model": {"backbone": "alexnet"}}, r"known backbones: vgg16, .*small_cnn"),
    ({"train": {"loss": "l1"}}, r"known losses: mae, mse, huber"),
    ({"data": {"k": 5, "fold": 5}}, r"fold must be in \[0, k - 1\]"),
    ({"train": {"schedule": "step"}}, r"\[train\] schedule must be one of plateau, cosine"),
    ({"train": {"precision": "half"}}, r"\[train\] precision must be one of float32"),
    ({"model": {"backbone": "vgg16", "filters": [8]}}, r"filters applies only to the small"),
    ({"model": {"filters": [8, 0]}}, r"\[model\] filters must be > 0"),
    ({"model": {"convs_per_block": 0}}, r"\[model\] convs_per_block must be >= 1"),
])
def test_bad_config_names_the_key(config, message):
    with pytest.raises(ValueError, match=message):
        resolve_config(config)


def test_overrides_and_set_option_parsing():
    assert parse_set_option("train.loss=mse") == ("train.loss", "mse")
    assert parse_set_option("model.dense_units=[64, 32]") == ("model.dense_units", [64, 32])
    assert parse_set_option("data.augment=true") == ("data.augment", True)
    assert parse_set_option("train.learning_rate=1e-3") == ("train.learning_rate", 1e-3)
    config = resolve_config({}, overrides={"epochs": 4, "train.loss": "huber", "fold": 1,
                                           "data.k": 3})
    assert config["train"]["epochs"] == 4 and config["train"]["loss"] == "huber"
    assert config["data"]["fold"] == 1
    with pytest.raises(ValueError, match="unknown config key 'train.epoch'"):
        resolve_config({}, overrides={"train.epoch": 4})
    with pytest.raises(ValueError, match="section.key=value"):
        parse_set_option("no-equals-sign")


def test_config_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        resolve_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 3\n")
    with pytest.raises(ValueError, match="invalid TOML"):
        resolve_config(bad)


# ---------------------------------------------------------------------- a short fit ---


def test_short_fit_beats_predicting_the_mean_by_half(quick_run, phantoms):
    """Acceptance: held-out MAE (mm) <= half the MAE of predicting the training mean."""
    config = load_run(quick_run.run_dir).config
    train_hc = run_split_index(config, phantoms, "train")["hc_mm"].to_numpy()
    test_hc = run_split_index(config, phantoms, "test")["hc_mm"].to_numpy()
    baseline_mae = float(np.mean(np.abs(test_hc - train_hc.mean())))
    assert quick_run.metrics["test"]["mae_mm"] <= 0.5 * baseline_mae, (
        quick_run.metrics["test"], baseline_mae)


def test_run_folder_contents(quick_run):
    run_dir = quick_run.run_dir
    for name in ("config.toml", "model.keras", "history.csv", "metrics.json"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "logs").rglob("*")), "TensorBoard logs are missing"
    assert not (run_dir / "backup").exists()  # BackupAndRestore cleans up after success
    assert not list(run_dir.glob(".*tmp*"))  # atomic writes left no temporary files
    history = pd.read_csv(run_dir / "history.csv")
    assert history["epoch"].tolist() == list(range(len(history)))
    assert {"mae_mm", "val_mae_mm", "val_rmse_mm", "val_df_mm", "val_pmae_percent",
            "epoch_seconds"} <= set(history.columns)
    assert (history["epoch_seconds"] > 0).all()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_run"] == len(history)
    assert metrics["train_seconds"] == pytest.approx(history["epoch_seconds"].sum())
    assert metrics["best_epoch"] == int(history.loc[history["val_mae_mm"].idxmin(), "epoch"])
    assert metrics["val"]["mae_mm"] == pytest.approx(history["val_mae_mm"].min(), rel=1e-3)


def test_resolved_config_records_split_preprocessing_and_seed(quick_run, phantoms):
    from fetalhc.data import load_index

    config = load_run(quick_run.run_dir).config
    split = config["split"]
    index = load_index(phantoms, "training")
    names = [set(split[part]) for part in ("train", "val", "test")]
    assert sum(len(part) for part in names) == len(index)
    assert set().union(*names) == set(index["filename"])
    group = dict(zip(index["filename"], index["group_id"], strict=True))
    groups = [{group[name] for name in part} for part in names]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (
        groups[1] & groups[2])
    assert config["preprocessing"]["image_size"] == 32
    assert config["preprocessing"]["pad_value"] == 0.0
    assert config["run"]["seed"] == 0
    train_rows = index[index["filename"].isin(names[0])]
    long_side = np.maximum(train_rows["width_px"], train_rows["height_px"])
    hc_px = train_rows["hc_mm"] / (train_rows["pixel_size_mm"] * long_side / 32)
    assert config["run"]["hc_mean_px"] == pytest.approx(hc_px.mean())


def test_metrics_json_matches_reloaded_model(quick_run, phantoms):
    from fetalhc.models import load_model

    run = load_run(quick_run.run_dir / "model.keras")
    model = load_model(run.model_path)
    table, summary = evaluate_split(model, run_split_index(run.config, phantoms, "test"),
                                    run.image_size)
    assert summary["mae_mm"] == pytest.approx(quick_run.metrics["test"]["mae_mm"], rel=1e-4)
    assert list(table.columns) == ["filename", "pixel size (mm)", "reference (mm)",
                                   "prediction (mm)", "error (mm)", "abs error (mm)"]


def test_run_split_index(quick_run, phantoms):
    config = load_run(quick_run.run_dir).config
    for part in ("train", "val", "test"):
        assert run_split_index(config, phantoms, part)["filename"].tolist() == config[
            "split"][part]
    challenge = run_split_index(config, phantoms, "challenge")
    assert len(challenge) == 4 and challenge["hc_mm"].isna().all()
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        run_split_index(config, phantoms, "dev")
    with pytest.raises(ValueError, match="'val' split of this run is empty"):
        run_split_index({"split": {"val": []}}, phantoms, "val")
    with pytest.raises(ValueError, match="lacks 1 file"):
        run_split_index({"split": {"test": ["999_HC.png"]}}, phantoms, "test")
    with pytest.raises(FileNotFoundError, match="not a fetalhc run folder"):
        load_run(phantoms)


def test_out_dir_holding_a_run_is_refused(quick_run, phantoms, tmp_path):
    with pytest.raises(ValueError, match="already holds a run; pass --resume .* --overwrite"):
        train(QUICK, phantoms, quick_run.run_dir)
    different = {**QUICK, "train": {**QUICK["train"], "loss": "mse"}}
    with pytest.raises(ValueError, match=r"holds a different run \(differs in \[train\] loss\)"):
        train(different, phantoms, quick_run.run_dir, resume=True)
    with pytest.raises(ValueError, match="nothing to resume"):
        train(QUICK, phantoms, quick_run.run_dir, resume=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds no fetalhc run"):
        train(QUICK, phantoms, other, overwrite=True)
    assert (other / "notes.txt").read_text() == "mine"


def test_augmentation_then_overwrite_with_aux_ellipse_and_steps_per_epoch(phantoms, tmp_path):
    out = tmp_path / "run"
    one_epoch = {**QUICK, "train": {**QUICK["train"], "epochs": 1, "tensorboard": False}}
    augmented = {**one_epoch, "data": {**QUICK["data"], "augment": True}}
    train(augmented, phantoms, out)
    recorded = load_run(out).config
    assert recorded["data"]["augment"] is True
    assert recorded["run"]["augmentation"]["flip_horizontal"] is True
    aux = {**one_epoch, "model": {**QUICK["model"], "aux_ellipse": True},
           "train": {**one_epoch["train"], "steps_per_epoch": 2}}
    result = train(aux, phantoms, out, overwrite=True)
    assert load_run(out).config["model"]["aux_ellipse"] is True
    history = pd.read_csv(out / "history.csv")
    assert len(history) == 1  # the old run's history is gone
    assert "val_hc_px_input_mae_mm" in history.columns
    assert "ellipse_loss" in history.columns
    assert result.metrics["monitor"] == "val_hc_px_input_mae_mm"
    assert np.isfinite(result.metrics["test"]["mae_mm"])


def _backup_with_record(tmp_path, latest: bytes, previous: bytes, committed: bytes):
    """A backup/ whose record commits epoch 2 with the weights ``committed``."""
    from fetalhc.files import sha256_of_file
    from fetalhc.training.backup import COMMIT_FILE

    backup = tmp_path / "backup"
    backup.mkdir(parents=True)
    (backup / "latest.weights.h5").write_bytes(latest)
    (backup / "latest.weights.h5.bkp").write_bytes(previous)
    (backup / "training_metadata.json").write_text('{"epo')  # a kill mid-write
    (tmp_path / "committed").write_bytes(committed)
    rows = [{"epoch": 0, "loss": 3.0, "val_mae_mm": 9.0},
            {"epoch": 1, "loss": 2.0, "val_mae_mm": float("nan")}]
    (backup / COMMIT_FILE).write_text(json.dumps({
        "epoch": 2, "weights_sha256": sha256_of_file(tmp_path / "committed"), "stopped": False,
        "history": rows}))
    return backup


def test_recover_backup_takes_the_committed_weights_and_rows(tmp_path):
    """Issue #17: a kill during the next epoch's backup write leaves the committed weights
    only in Keras' ``.bkp`` copy, and history.csv without the committed epoch 1."""
    from fetalhc.training.backup import recover_backup

    backup = _backup_with_record(tmp_path, b"half of epoch 3", b"epoch 2", b"epoch 2")
    history = tmp_path / "history.csv"
    history.write_text("epoch,loss,val_mae_mm\n0,3.0,9.0\n")
    committed = recover_backup(backup, history)
    assert (committed.epoch, committed.stopped) == (2, False)
    assert (backup / "latest.weights.h5").read_bytes() == b"epoch 2"
    assert json.loads((backup / "training_metadata.json").read_text()) == {"epoch": 2,
                                                                            "batch": 0}
    assert pd.read_csv(history)["epoch"].tolist() == [0, 1]
    assert committed.best("val_mae_mm") == (9.0, 0)  # NaN never counts
    assert committed.best("val_loss") == (float("inf"), -1)

    lost = _backup_with_record(tmp_path / "lost", b"a", b"b", b"c")
    with pytest.raises(ValueError, match="cannot resume: .* records epoch 2 but holds its "
                                         "weights nowhere"):
        recover_backup(lost, tmp_path / "lost" / "history.csv")


def test_recover_backup_without_a_record(tmp_path):
    """No commit record and no whole Keras backup (a kill during the first epoch's save):
    the run starts again at epoch 0, without the uncommitted backup and history."""
    from fetalhc.training.backup import recover_backup

    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / "latest.weights.h5").write_bytes(b"not hdf5")
    (backup / "training_metadata.json").write_text('{"epoch": 1, "batch": 0}')
    history = tmp_path / "history.csv"
    history.write_text("epoch,loss\n0,3.0\n")
    committed = recover_backup(backup, history)
    assert (committed.epoch, committed.rows) == (0, [])
    assert not backup.exists() and not history.exists()


def test_cosine_learning_rate_known_values():
    from fetalhc.training.config import cosine_learning_rate

    assert cosine_learning_rate(0, 10, 1e-3, 1e-5) == pytest.approx(1e-3)
    assert cosine_learning_rate(5, 10, 1e-3, 1e-5) == pytest.approx((1e-3 + 1e-5) / 2)
    assert cosine_learning_rate(10, 10, 1e-3, 1e-5) == pytest.approx(1e-5)
    rates = [cosine_learning_rate(epoch, 10, 1e-3, 1e-5) for epoch in range(10)]
    assert (np.diff(rates) < 0).all()


def test_cosine_schedule_mixed_precision_and_a_deeper_residual_net(phantoms, tmp_path):
    """The recipe's switches together: small_resnet with configured widths, the per-epoch
    cosine decay (logged in history.csv) and mixed_bfloat16 layers, on a CPU."""
    import keras

    from fetalhc.models import load_model

    config = {
        "data": {"image_size": 32, "val_fraction": 0.2, "test_fraction": 0.2},
        "model": {"backbone": "small_resnet", "filters": [4, 8, 8], "convs_per_block": 1,
                  "dropout": 0.0},
        "train": {"epochs": 3, "batch_size": 8, "learning_rate": 1e-3, "seed": 0,
                  "schedule": "cosine", "min_learning_rate": 1e-5,
                  "precision": "mixed_bfloat16", "tensorboard": False},
    }
    result = train(config, phantoms, tmp_path / "run", verbose=0)
    history = pd.read_csv(result.run_dir / "history.csv")
    from fetalhc.training.config import cosine_learning_rate

    expected = [cosine_learning_rate(epoch, 3, 1e-3, 1e-5) for epoch in range(3)]
    np.testing.assert_allclose(history["learning_rate"], expected, rtol=1e-5)
    model = load_model(result.model_path)
    assert model.get_layer("block3_add").compute_dtype == "bfloat16"
    assert model.get_layer("hc_px_input").compute_dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"
    assert np.isfinite(result.metrics["test"]["mae_mm"])


def _fetalhc_imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every ``fetalhc`` import in ``path``, function-local
    imports included."""
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.startswith("fetalhc")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.startswith("fetalhc"):
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def test_training_modules_have_no_import_cycle_and_share_no_private_names():
    """Issue #16: the training modules form a DAG (imports at any depth counted), no module
    imports another's private names, and none touches Keras' private graph attributes."""
    package = REPO / "fetalhc"
    paths = sorted((package / "training").glob("*.py")) + sorted((package / "models").glob("*.py"))
    modules = {
        ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): path
        for path in paths
    }
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges[name] = set()
        for module, names in _fetalhc_imports(path):
            private = [n for n in names if n.startswith("_") and n != "__version__"]
            assert not private, f"{name} imports private {private} from {module}"
            targets = [f"{module}.{n}" for n in names] + [module]
            edges[name] |= {t for t in targets if t in modules and t != name}
        if path.parent.name == "training":
            text = path.read_text()
            for attribute in ("_keras_history", "_nodes_by_depth", "_flatten_layers"):
                assert attribute not in text, f"{name} uses {attribute}"
    # A package __init__ only re-exports: its edges are followed like any other module's.
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in edges[node]:
            if state.get(target) == 1:
                cycle = trail[trail.index(target):] if target in trail else trail
                pytest.fail(f"import cycle: {' -> '.join([*cycle, target])}")
            if not state.get(target):
                visit(target, [*trail, target])
        state[node] = 2

    for module in sorted(modules):
        if not state.get(module):
            visit(module, [module])
    assert "fetalhc.training.fit" not in edges["fetalhc.training.multiworker"]


def test_augmentation_shift_and_zoom_come_from_the_config():
    from fetalhc.training.setup import augmentation_of

    assert augmentation_of(resolve_config({"data": {"augment": False}})) is None
    default = augmentation_of(resolve_config({"data": {"augment": True}}))
    assert default.max_translation == 0.05 and default.scale_range == (0.9, 1.1)
    wide = augmentation_of(resolve_config(
        {"data": {"augment": True, "augment_translation": 0.12, "augment_zoom": 0.15}}))
    assert wide.max_translation == 0.12 and wide.scale_range == (0.85, 1.15)
    with pytest.raises(ValueError, match=r"\[data\] augment_zoom must be in \[0, 1\)"):
        resolve_config({"data": {"augment_zoom": 1.0}})
    with pytest.raises(ValueError, match=r"\[data\] augment_translation must be in"):
        resolve_config({"data": {"augment_translation": -0.1}})

"""Results honour the umask (#18): under umask 022 every file fetalhc writes is 0644 and
every folder 0755, so colleagues can read them, whichever command wrote them.

One small pipeline through the real command line, with the umask set to 022 for its
duration (and restored): ``data synth`` → ``train`` (1 epoch, TensorBoard and the saliency
callback on) → ``predict`` → ``explain`` → ``evaluate`` → two ``explain`` shards →
``merge`` → two ``evaluate`` shards → ``merge``. Each test then walks one command's output tree and lists every offender.
"""

from __future__ import annotations

import os
import stat
import traceback
from pathlib import Path

import pytest
from click.testing import CliRunner

UMASK = 0o022
FILE_MODE, FOLDER_MODE = 0o644, 0o755

CONFIG = """
[data]
image_size = 32
val_fraction = 0.2
test_fraction = 0.3
cache = false

[model]
backbone = "small_cnn"
dropout = 0.0

[train]
epochs = 1
batch_size = 8
tensorboard = true
patience = 1
"""

EVALUATE_SHARD = ["evaluate", "--model", "{root}/run/model.keras", "--data", "{root}/phantoms",
                  "--methods", "gradient", "--metrics", "aopc", "--n-boot", "50",
                  "--no-progress", "--shard"]

# name → (the tree it writes, relative to the pipeline root; its command line)
STEPS = {
    "data synth": ("phantoms", ["data", "synth", "{root}/phantoms", "--n", "12", "--seed", "0",
                                "--challenge", "4", "--width", "96", "--height", "72",
                                "--no-progress"]),
    "train": ("run", ["train", "--config", "{root}/config/config.toml", "--data",
                      "{root}/phantoms", "--out", "{root}/run", "--quiet", "--explain-every", "1",
                      "--explain-methods", "gradient", "--explain-images", "2"]),
    "predict": ("predictions", ["predict", "--model", "{root}/run/model.keras", "--data",
                                "{root}/phantoms", "--out", "{root}/predictions/test.csv"]),
    "explain": ("maps", ["explain", "--model", "{root}/run/model.keras", "--data",
                         "{root}/phantoms", "--methods", "gradient", "--out", "{root}/maps",
                         "--limit", "2"]),
    "evaluate": ("evaluation", ["evaluate", "--model", "{root}/run/model.keras", "--data",
                                "{root}/phantoms", "--methods", "gradient", "--metrics",
                                "aopc,localisation", "--limit", "3", "--n-boot", "50",
                                "--out", "{root}/evaluation", "--no-progress"]),
    "explain shard 1/2": ("shard1", ["explain", "--model", "{root}/run/model.keras", "--data",
                                     "{root}/phantoms", "--split", "challenge", "--methods",
                                     "gradient", "--shard", "1/2", "--out", "{root}/shard1"]),
    "explain shard 2/2": ("shard2", ["explain", "--model", "{root}/run/model.keras", "--data",
                                     "{root}/phantoms", "--split", "challenge", "--methods",
                                     "gradient", "--shard", "2/2", "--out", "{root}/shard2"]),
    "merge": ("merged", ["merge", "{root}/shard1", "{root}/shard2", "--out", "{root}/merged"]),
    "evaluate shard 1/2": ("evaluation1", [*EVALUATE_SHARD, "1/2", "--out",
                                           "{root}/evaluation1"]),
    "evaluate shard 2/2": ("evaluation2", [*EVALUATE_SHARD, "2/2", "--out",
                                           "{root}/evaluation2"]),
    "merge evaluate": ("evaluation_merged", ["merge", "{root}/evaluation1",
                                             "{root}/evaluation2", "--out",
                                             "{root}/evaluation_merged"]),
}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Run every step under umask 022; ``(root, {step: None or why it failed})``."""
    from fetalhc.cli.main import cli
    from fetalhc.files import write_text

    root = tmp_path_factory.mktemp("file_modes")
    failures: dict[str, str | None] = {}
    previous = os.umask(UMASK)
    try:
        write_text(root / "config" / "config.toml", CONFIG)
        for name, (_, args) in STEPS.items():
            result = CliRunner().invoke(cli, [a.format(root=root) for a in args])
            if result.exit_code == 0:
                failures[name] = None
                continue
            why = result.output.strip()
            if result.exc_info is not None and not isinstance(result.exception, SystemExit):
                why += "\n" + "".join(traceback.format_exception(*result.exc_info))
            failures[name] = f"`fetalhc {' '.join(args[:2])}` exited {result.exit_code}: {why}"
    finally:
        os.umask(previous)
    return root, failures


def offenders(tree: Path) -> list[str]:
    """Every file not 0644 and every folder not 0755 in ``tree`` (itself included)."""
    found = []
    for path in [tree, *sorted(tree.rglob("*"))]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_symlink():
            continue
        expected = FOLDER_MODE if path.is_dir() else FILE_MODE
        if mode != expected:
            kind = "folder" if path.is_dir() else "file"
            found.append(f"{kind} {path.relative_to(tree.parent)}: {oct(mode)}, "
                         f"expected {oct(expected)}")
    return found


@pytest.mark.parametrize("step", list(STEPS))
def test_results_honour_the_umask(pipeline, step):
    root, failures = pipeline
    if failures[step] is not None:
        pytest.fail(f"{step} failed, so its modes are unknown: {failures[step]}")
    tree = root / STEPS[step][0]
    assert tree.is_dir()
    found = offenders(tree)
    assert not found, f"under umask 022, {step} wrote:\n" + "\n".join(found)


def test_umask_helpers_read_the_umask_without_changing_it():
    from fetalhc import files

    previous = os.umask(0o027)
    try:
        assert files.umask() == 0o027
        assert files.file_mode() == 0o640 and files.folder_mode() == 0o750
        assert os.umask(0o027) == 0o027  # still the same after reading it
    finally:
        os.umask(previous)

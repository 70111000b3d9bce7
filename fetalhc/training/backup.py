"""The epoch backup of ``fit``: each epoch is committed whole, whatever moment a kill hits.

``keras.callbacks.BackupAndRestore`` rewrites ``backup/latest.weights.h5`` in place and then
``training_metadata.json`` in place, so a kill during the first write leaves weights that
do not load (keras-team/keras#20463) and a kill between or during the two leaves weights
and epoch counter that disagree. With ``double_checkpoint=True`` Keras copies the previous
pair to ``*.bkp`` before writing, but falls back to it only on an ``OSError`` from the
weights file (a file cut short in some places loads into a ``ValueError``), never for a
half-written ``training_metadata.json`` (a ``JSONDecodeError``), and never when the new
weights load but the counter is the old one.

:class:`EpochBackup` therefore adds a commit record. At the end of epoch ``e`` it

1. lets Keras write its double checkpoint (the previous pair to ``*.bkp``, then the new
   ``latest.weights.h5`` and ``training_metadata.json``);
2. commits the epoch: ``backup/epoch.json``, written atomically, holds the epoch count
   ``e + 1``, the SHA-256 of the weights file just written, whether training stops there,
   and every history row so far;
3. rewrites ``history.csv`` (atomically) from those rows.

``model.keras`` is saved after this (``AtomicBestCheckpoint`` comes after ``EpochBackup``),
so it never holds an epoch that is not committed.

:func:`recover_backup`, before a resumed ``fit``, trusts only the record. The committed
weights are the file whose SHA-256 it names: ``latest.weights.h5``, or its ``.bkp`` copy
when a kill hit the next epoch's save (Keras finishes the copy to ``.bkp`` before it
touches ``latest.weights.h5``). They go back to ``latest.weights.h5`` with a matching
``training_metadata.json``, for Keras' own restore, and ``history.csv`` back to the record's
rows: the resumed run continues after the last committed epoch with every epoch before it
in ``history.csv`` exactly once. A ``backup/`` written before the record existed (no
``epoch.json``) is used as Keras left it when its weights read whole and ``history.csv``
holds each of its epochs; otherwise the run starts again at epoch 0.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras

from fetalhc.files import atomic_path, sha256_of_file, write_json
from fetalhc.training.run_folder import read_history, write_history

COMMIT_FILE = "epoch.json"
WEIGHTS_FILE = "latest.weights.h5"  # keras.callbacks.BackupAndRestore's names
METADATA_FILE = "training_metadata.json"
PREVIOUS_SUFFIX = ".bkp"  # its double checkpoint: the previous pair


@dataclass
class Committed:
    """The last committed epoch of a backup: ``epoch`` epochs done (the next one to run),
    their history ``rows``, and whether training had stopped there (``stopped``)."""

    epoch: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    stopped: bool = False

    def best(self, monitor: str) -> tuple[float, int]:
        """(best value, its epoch) of ``monitor`` as ``AtomicBestCheckpoint`` saw them:
        the first strict minimum of the finite values; ``(inf, -1)`` when there is none."""
        best, best_epoch = math.inf, -1
        for row in self.rows:
            value = _number(row.get(monitor))
            if math.isfinite(value) and value < best:
                best, best_epoch = value, int(row["epoch"])
        return best, best_epoch


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _plain(value: Any) -> Any:
    """A log value as JSON keeps it: a float, else its text (as CSVLogger writes it)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def history_row(epoch: int, logs: dict[str, Any]) -> dict[str, Any]:
    """One ``history.csv`` row: ``epoch``, then the logs sorted by name (CSVLogger's order)."""
    return {"epoch": int(epoch), **{key: _plain(logs[key]) for key in sorted(logs)}}


def read_commit(backup_dir: Path) -> dict[str, Any] | None:
    """The commit record of ``backup_dir`` (None when there is none)."""
    path = Path(backup_dir) / COMMIT_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def commit_epoch(backup_dir: Path, epoch_count: int, rows: list[dict[str, Any]],
                 stopped: bool) -> None:
    """Commit the weights Keras just wrote as epoch ``epoch_count`` (atomic)."""
    backup_dir = Path(backup_dir)
    write_json(backup_dir / COMMIT_FILE, {
        "epoch": int(epoch_count),
        "weights_sha256": sha256_of_file(backup_dir / WEIGHTS_FILE),
        "stopped": bool(stopped),
        "history": rows,
    }, indent=None)


def mark_stopped(backup_dir: Path) -> None:
    """Record that training ended after the committed epoch (so a resume trains no more)."""
    record = read_commit(backup_dir)
    if record is not None and not record.get("stopped"):
        record["stopped"] = True
        write_json(Path(backup_dir) / COMMIT_FILE, record, indent=None)


class EpochBackup(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` (double checkpoint, kept after training) that commits every
    epoch with a record and writes ``history.csv`` from it (module docstring).

    ``committed`` holds the rows of the epochs already done on resume
    (:func:`recover_backup`)."""

    def __init__(self, backup_dir: Path, history_path: Path,
                 committed: Committed | None = None):
        super().__init__(str(backup_dir), double_checkpoint=True, delete_checkpoint=False)
        self.backup_path = Path(backup_dir)
        self.history_path = Path(history_path)
        self.rows = list((committed or Committed()).rows)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)  # Keras' double checkpoint
        self.rows = [row for row in self.rows if int(row["epoch"]) < epoch]
        self.rows.append(history_row(epoch, logs or {}))
        commit_epoch(self.backup_path, epoch + 1, self.rows, bool(self.model.stop_training))
        write_history(self.history_path, self.rows)


# ----------------------------------------------------------------------- on resume ---


def recover_backup(backup_dir: Path, history_path: Path) -> Committed:
    """Before a resumed ``fit``: put ``backup_dir`` back to its last committed epoch, for
    Keras' restore, and ``history.csv`` to that epoch's rows; returns what was committed.

    Nothing committed: ``backup_dir`` is removed and the run starts at epoch 0. Raises
    ``ValueError`` when the record names weights that are on disk nowhere (not left so by
    any kill; the backup was edited)."""
    backup_dir = Path(backup_dir)
    record = read_commit(backup_dir)
    if record is None:
        committed = _legacy_backup(backup_dir, history_path)
    else:
        committed = Committed(int(record["epoch"]), list(record["history"]),
                              bool(record.get("stopped", False)))
        _restore_committed_weights(backup_dir, record["weights_sha256"], committed.epoch)
    if committed.epoch == 0:
        shutil.rmtree(backup_dir, ignore_errors=True)
    write_history(Path(history_path), committed.rows)
    return committed


def _restore_committed_weights(backup_dir: Path, digest: str, epoch: int) -> None:
    latest = backup_dir / WEIGHTS_FILE
    previous = backup_dir / (WEIGHTS_FILE + PREVIOUS_SUFFIX)
    source = next((path for path in (latest, previous)
                   if path.is_file() and sha256_of_file(path) == digest), None)
    if source is None:
        raise ValueError(
            f"cannot resume: {backup_dir} records epoch {epoch} but holds its weights "
            "nowhere (was the backup edited?); start again with --overwrite"
        )
    if source != latest:
        with atomic_path(latest) as temporary:
            shutil.copyfile(source, temporary)
    write_json(backup_dir / METADATA_FILE, {"epoch": epoch, "batch": 0}, indent=None)


def _legacy_backup(backup_dir: Path, history_path: Path) -> Committed:
    """A backup without a commit record: one of fetalhc before the record (CSVLogger wrote
    ``history.csv`` before BackupAndRestore), or a kill during the very first epoch's save."""
    epoch = 0
    try:
        epoch = int(json.loads((backup_dir / METADATA_FILE).read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return Committed()
    history = read_history(Path(history_path))
    if epoch <= 0 or "epoch" not in history.columns:
        return Committed()
    history = history[history["epoch"] < epoch]
    if history["epoch"].tolist() != list(range(epoch)):
        return Committed()
    if not _reads_whole(backup_dir / WEIGHTS_FILE):
        return Committed()
    rows = [{"epoch": int(row["epoch"]),
             **{key: _plain(value) for key, value in row.items() if key != "epoch"}}
            for row in history.to_dict("records")]
    return Committed(epoch, rows)


def _reads_whole(path: Path) -> bool:
    """Whether an HDF5 file opens and every dataset in it reads."""
    import h5py

    def read(_name, item):
        if isinstance(item, h5py.Dataset):
            item[()]
        return None  # visititems stops at the first value that is not None

    try:
        with h5py.File(path, "r") as handle:
            handle.visititems(read)
    except Exception:  # noqa: BLE001 - any failure to read means "not whole"
        return False
    return True

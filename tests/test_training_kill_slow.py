"""``fetalhc train`` SIGKILLed at many moments spread over a whole run, then ``--resume``d
(killed again, some of the time) until it finishes: it always finishes with every epoch in
``history.csv`` once, ``metrics.json``, no ``backup/`` and a ``model.keras`` that loads and
is the best epoch.

The kills: two uninterrupted runs are timed first (the shorter counts); ten runs are killed
by this process at 0.05 ... 0.95 of that time; as start-up (imports, data check, model
build, the first epoch's tracing) takes most of such a short run, eight more are killed at
times spread evenly over the rest of the run once their first epoch's backup is written (as
the uninterrupted run timed that rest); four more kill themselves a few milliseconds after
an epoch's backup write begins (a timer thread started when Keras' ``_save_model`` is
entered), to aim at the write. The first resume of every other run is killed too. Every
child logs its epoch-end writes (Keras' backup write, fetalhc's commit and ``history.csv``,
``model.keras``, ``metrics.json``, the discard of ``backup/``) with unbuffered appends, so
the test can tell (and prints) where each kill landed.

A second test kills the custom loop of ``strategy = "multiworker"`` (one worker) between
``history.csv`` and its checkpoint, and between the checkpoint and ``model.keras``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

import fetalhc
from fetalhc.training import write_config

EPOCHS = 6

RUNNER = r"""
import os, signal, sys, threading, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras
import fetalhc.training.backup as backup
import fetalhc.training.fit as fit
from fetalhc.cli.main import main

log = os.open(os.environ["KILL_TEST_LOG"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
aim = os.environ.get("KILL_TEST_AIM")  # "<backup number>:<delay in s>": kill in that write
saves = {"n": 0}

def event(text):
    os.write(log, f"{time.time():.6f} {text}\n".encode())

def around(owner, name, label, before=None):
    original = getattr(owner, name)

    def wrapped(*args, **kwargs):
        if before is not None:
            before()
        event(f"{label}-begin")
        result = original(*args, **kwargs)
        event(f"{label}-end")
        return result

    setattr(owner, name, wrapped)

def maybe_aim():
    saves["n"] += 1
    if aim and saves["n"] == int(aim.split(":")[0]):
        delay = float(aim.split(":")[1])
        threading.Timer(delay, os.kill, (os.getpid(), signal.SIGKILL)).start()

around(keras.callbacks.BackupAndRestore, "_save_model", "backup", before=maybe_aim)
around(backup, "commit_epoch", "commit")
around(backup, "write_history", "history")
around(fit, "save_model_atomically", "model")
around(fit, "write_metrics", "metrics")
around(fit, "discard_backup", "discard")
event("start")
code = main(sys.argv[1:])
event(f"exit {code}")
sys.exit(code)
"""


def _start(args, log: Path, aim: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "KILL_TEST_LOG": str(log), "TF_CPP_MIN_LOG_LEVEL": "2"}
    if aim:
        env["KILL_TEST_AIM"] = aim
    with log.open("a") as handle:  # this child's events follow
        handle.write(f"{time.time():.6f} launch\n")
    return subprocess.Popen([sys.executable, "-c", RUNNER, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _landed(log: Path) -> str:
    """Where the last kill landed, from the child's event log: inside which write, in
    start-up (imports), setup or epoch 0, or between writes (epochs, validation, scoring)."""
    last = [line.split()[1:] for line in log.read_text().splitlines() if line.strip()][-1]
    if last[0] == "launch":
        return "start-up (imports)"
    if last[0] == "start":
        return "setup or epoch 0"
    if last[0].startswith("exit"):
        return "not killed"
    label, _, phase = last[0].rpartition("-")
    return f"during {label} write" if phase == "begin" else "between writes"


def _wait_for(process: subprocess.Popen, log: Path, event: str) -> None:
    """Wait until the child logged ``event`` (or ended)."""
    while process.poll() is None and f" {event}\n" not in log.read_text():
        time.sleep(0.002)


def _kill_after(process: subprocess.Popen, delay: float) -> bool:
    """SIGKILL ``process`` after ``delay`` s unless it ends first; True when it was killed."""
    try:
        process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
    process.communicate()
    return process.returncode == -signal.SIGKILL


def _check_finished_run(out: Path, epochs: int = EPOCHS) -> None:
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == list(range(epochs)), history["epoch"].tolist()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == epochs
    assert metrics["val"]["mae_mm"] == pytest.approx(history["val_mae_mm"].min(), rel=1e-3)
    assert not (out / "backup").exists() and not (out / ".backup.discarded").exists()
    fetalhc.load_model(out / "model.keras")


@pytest.mark.slow
def test_kills_spread_over_a_run_always_resume_to_the_end(phantoms, tmp_path):
    config = tmp_path / "config.toml"
    write_config({
        "data": {"image_size": 32, "val_fraction": 0.2, "test_fraction": 0.2},
        "model": {"backbone": "small_cnn", "dropout": 0.0},
        "train": {"epochs": EPOCHS, "batch_size": 8, "learning_rate": 3e-3, "seed": 0,
                  "tensorboard": True},
    }, config)

    def args(out, *more):
        return ["train", "--config", config, "--data", phantoms, "--out", out, "--quiet", *more]

    # two uninterrupted runs: the shorter duration (the machine may be shared), and how
    # long an epoch's backup write takes
    durations = []
    for number in range(2):
        started = time.perf_counter()
        baseline_log = tmp_path / f"baseline{number}.log"
        baseline = _start(args(tmp_path / f"baseline{number}"), baseline_log)
        _, stderr = baseline.communicate(timeout=900)
        durations.append(time.perf_counter() - started)
        assert baseline.returncode == 0, stderr[-2000:]
        _check_finished_run(tmp_path / f"baseline{number}")
    duration = min(durations)
    stamps = [line.split(maxsplit=1) for line in baseline_log.read_text().splitlines()]
    begins = [float(t) for t, what in stamps if what == "backup-begin"]
    ends = [float(t) for t, what in stamps if what == "backup-end"]
    write_seconds = sorted(end - begin for begin, end in zip(begins, ends, strict=True))
    assert len(write_seconds) == EPOCHS
    # the epochs after the first: from the end of the first backup write to the end of the run
    finish = next(float(t) for t, what in stamps if what.startswith("exit"))
    epochs_span = finish - ends[0]

    rng = random.Random(0)
    trials = [{"fraction": round(0.05 + 0.1 * i, 2)} for i in range(10)]
    trials += [{"after_epoch_0": round((i + 0.5) / 8 * epochs_span, 3)} for i in range(8)]
    trials += [{"aim": f"{rng.randint(2, EPOCHS)}:{rng.uniform(0.0, write_seconds[0]):.4f}"}
               for _ in range(4)]
    landed: Counter = Counter()
    report = []
    for number, trial in enumerate(trials):
        out, log = tmp_path / f"run{number}", tmp_path / f"run{number}.log"
        first = _start(args(out), log, aim=trial.get("aim"))
        if "fraction" in trial:
            killed = _kill_after(first, trial["fraction"] * duration)
        elif "after_epoch_0" in trial:
            _wait_for(first, log, "backup-end")
            killed = _kill_after(first, trial["after_epoch_0"])
        else:  # the child kills itself
            killed = _kill_after(first, 900.0)
        where = [_landed(log) if killed else "not killed"]
        if not killed:
            assert first.returncode == 0
        for attempt in range(8):
            if (out / "metrics.json").is_file() and not (out / "backup").exists():
                break
            assert attempt < 7, f"trial {trial}: never finished ({where})"
            resumed = _start(args(out, "--resume"), log)
            # the first resume of every other trial is killed too, somewhere in its run
            if attempt == 0 and number % 2 == 0:
                if _kill_after(resumed, rng.uniform(0.1, 0.9) * duration):
                    where.append(_landed(log))
                    continue
            else:
                _, stderr = resumed.communicate(timeout=900)
                assert resumed.returncode == 0, f"trial {trial}, {where}: {stderr[-3000:]}"
            assert resumed.returncode == 0
        _check_finished_run(out)
        landed.update(w for w in where if w != "not killed")
        report.append(f"{trial}: {' -> '.join(where)}")

    print(f"\nuninterrupted run {duration:.1f} s; backup write {write_seconds[0] * 1e3:.1f}"
          f"-{write_seconds[-1] * 1e3:.1f} ms")
    print("\n".join(report))
    print("kills landed:", dict(landed))
    assert sum(landed.values()) >= 20
    assert landed["during backup write"] >= 1  # the aimed kills hit Keras' write


MULTIWORKER_SCRIPT = r"""
import json, os, signal, sys
import keras
import fetalhc.training.multiworker as multiworker
from fetalhc.training import train

config, data, out, fault = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

class KillAtEpochEnd(keras.callbacks.Callback):  # after history.csv, before the checkpoint
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            die()

callbacks = []
if fault == "before_checkpoint":
    callbacks.append(KillAtEpochEnd())
if fault == "before_best_checkpoint":  # epoch 0 checkpointed, model.keras not yet saved
    multiworker.save_model_atomically = die
train(config, data, out, callbacks=callbacks, resume=fault == "none")
print("finished")
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["before_checkpoint", "before_best_checkpoint"])
def test_the_multiworker_loop_killed_at_an_epoch_end_resumes_to_the_end(phantoms, tmp_path,
                                                                          fault):
    """The custom loop of ``strategy = "multiworker"`` (one worker here): a kill between
    ``history.csv`` and the checkpoint, or between the checkpoint and ``model.keras``."""
    epochs = 3
    config = {
        "data": {"image_size": 32, "val_fraction": 0.2, "test_fraction": 0.2},
        "model": {"backbone": "small_cnn", "dropout": 0.0},
        "train": {"epochs": epochs, "batch_size": 8, "learning_rate": 3e-3, "seed": 0,
                  "tensorboard": False, "strategy": "multiworker"},
    }
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
           "TF_CONFIG": json.dumps({"cluster": {"worker": [f"127.0.0.1:{_free_port()}"]},
                                    "task": {"type": "worker", "index": 0}})}
    out = tmp_path / "run"
    for step in (fault, "none"):
        process = subprocess.run(
            [sys.executable, "-c", MULTIWORKER_SCRIPT, json.dumps(config), str(phantoms),
             str(out), step], capture_output=True, text=True, timeout=600, env=env)
        if step == fault:
            assert process.returncode == -signal.SIGKILL, process.stderr[-3000:]
            assert not (out / "metrics.json").exists()
        else:
            assert process.returncode == 0, process.stderr[-3000:]
    _check_finished_run(out, epochs)

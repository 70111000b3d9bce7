"""How long each step of the study took, and the least it could take.

:func:`timed` records a step's wall and CPU seconds with the machine's load in the model's
``times.json``; :func:`forward_rate` measures the model's forward rate on this machine;
:func:`floor_passes` counts the forward passes a step needs at the least; :func:`step_times`
turns the models' ``times.json`` into the page's table (with the floor at the measured
rate).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fetalhc.files import write_json
from fetalhc.report.study_results import STEPS_FILE, TIMES_FILE

FORWARD_RATE = "forward_rate"  # times.json: the model's forward rate when it was studied


def forward_rate(model, image_size: int, precision: str, batch: int = 256,
                 repeats: int = 3) -> dict:
    """The model's forward rate on this machine now: images per second of its HC output
    on batches of ``batch`` images in ``precision`` (one warm-up pass, then ``repeats``)."""
    from fetalhc.evaluate.forward import BatchedForward

    forward = BatchedForward(model, batch, precision)
    images = np.random.default_rng(0).standard_normal(
        (batch, image_size, image_size, 1)).astype(np.float32)
    forward._predict(images)  # warm-up and tracing (the memory of BatchedForward bypassed)
    start = time.perf_counter()
    for _ in range(repeats):
        forward._predict(images).numpy()
    seconds = time.perf_counter() - start
    return {"images_per_second": batch * repeats / seconds, "precision": precision,
            "batch": batch, "cpu_count": os.cpu_count(), "load": os.getloadavg()[0]}


def record_time(model_dir: Path, key: str, value: dict) -> None:
    path = model_dir / TIMES_FILE
    done = json.loads(path.read_text()) if path.is_file() else {}
    write_json(path, {**done, key: value})


@contextlib.contextmanager
def timed(model_dir: Path, step: str):
    """Record the wall and CPU seconds (this process, all threads) of a step that finishes
    in ``times.json``, with the machine's cores and 1-minute load before and after. An
    interrupted step records nothing; when it resumes, only the resumed part is timed."""
    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    wall, used, load = time.perf_counter(), cpu(), os.getloadavg()[0]
    yield
    record_time(model_dir, step, {
        "wall_seconds": time.perf_counter() - wall, "cpu_seconds": cpu() - used,
        "cpu_count": os.cpu_count(), "load_before": load, "load_after": os.getloadavg()[0]})


def floor_passes(step: str, images: int, methods: int, settings: dict) -> float:
    """The forward passes a step needs at the least (a perturbed image no two methods
    share is predicted once, a shared one once in all): ``evaluate-paper`` / the richer
    AOPC: the unperturbed image, one random curve and MoRF + LeRF per method
    (``n (1 + K + 2 M K)``); deletion + insertion: per method every step but the
    unperturbed and the fully replaced image, which all share (``2 n M (D - 1) + 2 n``);
    ``diagnose``: a random curve per perturbation on every image and a MoRF curve per
    method and perturbation on its first ``gap_images``. NaN for steps that explain
    (explain, randomisation) rather than predict."""
    from fetalhc.report.study_diagnosis import DIAGNOSIS, STEP

    n, m = int(images), int(methods)
    if step == STEP:
        k, p = DIAGNOSIS["steps"], len(DIAGNOSIS["perturbations"])
        return float(n * p * k + min(n, DIAGNOSIS["gap_images"]) * m * p * k)
    protocol = settings.get(step.removeprefix("evaluate-"))
    if not step.startswith("evaluate-") or protocol is None:
        return float("nan")
    k = int(protocol["steps"])
    passes = n * (1 + k + 2 * m * k)
    if {"deletion", "insertion"} & set(protocol.get("metrics", [])):
        passes += 2 * n * m * (int(protocol["deletion_steps"]) - 1) + 2 * n
    return float(passes)


def step_times(out: Path, names: Sequence[str], settings: dict | None = None,
               methods: int = 0, images: dict | None = None) -> pd.DataFrame:
    """Wall and CPU time of every finished step (``times.json`` of each model), with the
    machine's cores and 1-minute load around it; NaN for a step timed by nothing. With the
    protocols' ``settings``, the number of ``methods`` and each model's ``images``: the
    step's forward-pass floor (:func:`floor_passes` at the model's measured forward
    rate) and the wall time over it."""
    rows = []
    for name in names:
        path = out / "models" / name / TIMES_FILE
        times = json.loads(path.read_text()) if path.is_file() else {}
        done = json.loads((out / "models" / name / STEPS_FILE).read_text())
        steps = [*done, *(step for step in times if step not in done and step != FORWARD_RATE)]
        rate = times.get(FORWARD_RATE, {}).get("images_per_second", np.nan)
        for step in steps:
            item = times.get(step, {})
            passes = (floor_passes(step, (images or {}).get(name, 0), methods, settings)
                      if settings is not None else np.nan)
            floor = passes / rate
            wall = item.get("wall_seconds", np.nan)
            rows.append({"model": name, "step": step,
                         "wall time (s)": wall,
                         "CPU time (s)": item.get("cpu_seconds", np.nan),
                         "CPU cores": item.get("cpu_count", np.nan),
                         "load before (1 min)": item.get("load_before", np.nan),
                         "load after (1 min)": item.get("load_after", np.nan),
                         "floor forward passes": passes,
                         "forward rate (img/s)": rate,
                         "floor time (s)": floor,
                         "wall / floor (1)": wall / floor if floor > 0 else np.nan})
    return pd.DataFrame(rows)

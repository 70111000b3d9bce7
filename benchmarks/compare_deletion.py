"""Perturbation-curve throughput: fetalhc.evaluate vs xplique 2.0.2's Deletion (issue 8).

Image-steps per second (one image-step = one perturbed image through the model) on the same
model, the same real HC18 images (128 px) and the same maps (``fetalhc.explain`` gradient
maps, target hc_mm):

- ``fetalhc deletion``: ``evaluate.deletion_insertion(kinds=["deletion"], steps=S)``, pixels
  ranked by signed relevance, baseline zeros, ``S + 1`` points, batch 256;
- ``fetalhc AOPC``: ``evaluate.region_perturbation(orders=["morf"])``, 4 x 4 grid, 15 steps
  (16 points), N(0, 0.3) replacement, batch 256;
- each of the two also with a prebuilt ``evaluate.BatchedForward`` passed as ``forward=``
  (an ordinary call builds and traces its own, which is counted in the first rows);
- ``xplique Deletion``: ``xplique.metrics.Deletion(view, images, targets=pixel size,
  operator=Tasks.REGRESSION, baseline_mode=0.0, steps=S)`` ``.detailed_evaluate(maps)``, at
  batch 256 (its default is 64); ``steps=15`` is timed too, to match the AOPC's
  16 points (xplique has no region grid).

The methods run interleaved, ``--repeats`` times after a warm-up call each; medians are
reported. Semantics differ: xplique's curve is the mean over images of the raw prediction
(here HC in mm); fetalhc keeps per-image curves and scores each image by |prediction -
reference| (or the shift from the unperturbed prediction) in mm. The script checks that the
mean of fetalhc's per-image deletion curves equals xplique's curve.

    /work/xq-venv/bin/python benchmarks/compare_deletion.py --images 32 --run runs/hc18-cpu
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import fetalhc  # noqa: E402
import fetalhc.explain as fe  # noqa: E402
from fetalhc import evaluate  # noqa: E402
from fetalhc.data import load_arrays, load_index  # noqa: E402
from fetalhc.models import build_model  # noqa: E402

SIZE = 128
BATCH = 256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="deletion steps (points - 1)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--run", default="runs/hc18-cpu", help="run folder or .keras (else small_cnn)")
    parser.add_argument("--hc18", default=os.environ.get("FETALHC_HC18", "/work/shared/data/hc18"))
    args = parser.parse_args()

    from xplique.commons import Tasks
    from xplique.metrics import Deletion

    index = load_index(Path(args.hc18), validate=False)
    arrays = load_arrays(index.head(args.images), image_size=SIZE)
    images = arrays["image"].astype(np.float32)
    pixel_size = arrays["pixel_size_mm"].astype(np.float32)
    reference = arrays["hc_mm"].astype(np.float32)
    run = Path(args.run)
    path = run / "model.keras" if run.is_dir() else run
    if path.is_file():
        model, label = fetalhc.load_model(path), f"trained {path}"
    else:
        model, label = build_model("small_cnn", (SIZE, SIZE, 1), weights=None), "small_cnn (random init)"
    view = fe.hc_output_model(model)
    maps = fe.explain(model, images, method="gradient", pixel_size=pixel_size)
    n, steps = len(images), args.steps
    print(f"{label}; {n} HC18 training images at {SIZE} px; gradient maps (hc_mm); "
          f"{args.repeats} interleaved repeats, median; shared 2-core CPU, load average at "
          f"start {os.getloadavg()[0]:.1f}")

    forward = evaluate.BatchedForward(model, batch_size=BATCH)
    aopc = dict(grid=4, steps=15, orders=["morf"], perturbation="noise", noise_sd=0.3,
                batch_size=BATCH)
    deletion = dict(kinds=["deletion"], steps=steps, batch_size=BATCH)
    targets = pixel_size[:, None]

    def xplique(k, batch):
        metric = Deletion(view, images, targets, batch_size=batch, baseline_mode=0.0, steps=k,
                          operator=Tasks.REGRESSION)
        return metric.detailed_evaluate(maps)

    methods = {
        f"fetalhc deletion, {steps + 1} pts (per call)": (
            steps + 1, lambda: evaluate.deletion_insertion(model, images, maps, pixel_size,
                                                           reference, **deletion)),
        f"fetalhc deletion, {steps + 1} pts (forward= reused)": (
            steps + 1, lambda: evaluate.deletion_insertion(model, images, maps, pixel_size,
                                                           reference, forward=forward, **deletion)),
        f"xplique Deletion, {steps + 1} pts, batch {BATCH}": (steps + 1, lambda: xplique(steps, BATCH)),
        "fetalhc AOPC MoRF 4x4, 16 pts (per call)": (
            16, lambda: evaluate.region_perturbation(model, images, maps, pixel_size, reference,
                                                     **aopc)),
        "fetalhc AOPC MoRF 4x4, 16 pts (forward= reused)": (
            16, lambda: evaluate.region_perturbation(model, images, maps, pixel_size, reference,
                                                     forward=forward, **aopc)),
        f"xplique Deletion, 16 pts, batch {BATCH}": (16, lambda: xplique(15, BATCH)),
    }
    results = {}
    for name, (_, function) in methods.items():  # warm-up (tracing of the module-level fns)
        results[name] = function()
    times = {name: [] for name in methods}
    for repeat in range(args.repeats):
        order = list(methods) if repeat % 2 == 0 else list(reversed(methods))
        for name in order:
            start = time.perf_counter()
            results[name] = methods[name][1]()
            times[name].append(time.perf_counter() - start)

    print(f"{'method':48s} {'image-steps/s':>13s} {'(runs)':>18s}")
    for name, (points, _) in methods.items():
        rates = [n * points / t for t in times[name]]
        print(f"{name:48s} {np.median(rates):13.1f} {'/'.join(f'{r:.0f}' for r in rates):>18s}")
    ours = results[f"fetalhc deletion, {steps + 1} pts (per call)"]["deletion"]
    theirs = np.array(list(results[f"xplique Deletion, {steps + 1} pts, batch {BATCH}"].values()))
    print(f"mean over images of fetalhc's per-image HC curves (mm) vs xplique's curve: max "
          f"|difference| {np.max(np.abs(ours.hc_mm.mean(0) - theirs)):.3g} mm "
          f"(curve spans {theirs.min():.1f}..{theirs.max():.1f} mm; xplique floors the pixel "
          f"counts, fetalhc rounds)")
    print(f"fetalhc per-image deletion area of |prediction - reference|: mean "
          f"{ours.area('abs_error_mm').mean():.2f} mm; xplique's score (trapezoid mean of the "
          f"mean-prediction curve): {np.mean(theirs[:-1] + theirs[1:]) * 0.5:.2f} mm")
    print(f"load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

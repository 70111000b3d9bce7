"""Integrated Gradients head to head: fetalhc vs tf-explain 0.3.1 vs xplique 2.0.2 (issue 5).

For each trained run, on the same real HC18 images of the run's held-out ``test`` split
(128 px) and the same target, the predicted HC in mm
``f(x) = hc_px_input(x) * pixel_size_mm``, baseline zeros (the image mean after z-scoring),
it times and checks:

- ``fetalhc default``: ``fetalhc.explain`` integrated_gradients at its defaults (the rule
  chosen by benchmarks/calibrate_ig.py, with the per-image refinement to 1 %) and the
  default ``batch_size`` / ``chunk_size``;
- ``fetalhc midpoint 50``: ``rule="riemann_middle", steps=50, tolerance=None``;
- ``tf-explain N``: ``tf_explain.core.IntegratedGradients.generate_interpolations`` +
  ``get_integrated_gradients`` (N points including both ends, plain mean): what its
  ``explain()`` computes, one image per call (its ``explain`` puts all images x N points in
  one model call and returns a uint8 grid). Above 50 points the N points go in calls of 50
  (same equal weights; one call of 200+ points per image does not fit in memory for
  ResNet50). tf-explain returns the mean path gradient only (**it omits the
  ``(x - baseline)`` factor**); the script multiplies by ``(x - 0) * pixel_size`` itself;
- ``xplique N``: ``xplique.attributions.IntegratedGradients(steps=N, batch_size=B,
  operator=Tasks.REGRESSION)`` (``sum(model(x) * targets, -1)``, targets = mm per pixel, so
  its operator is f(x) in mm; trapezoid rule on N points), at its default ``batch_size`` 32
  and, with ``--xplique-batch``, at another batch size (e.g. fetalhc's chunk size).

Every library gets the single-output HC view of the model (``fetalhc.explain.hc_output_model``).
Timing is interleaved: the images go in batches of ``--batch-size``, and every method runs on
each batch in turn (order reversed every other batch), so a change of the machine's load
hits all methods alike; one warm-up (tracing) call per method first. The libraries start at
``--library-steps``'s first count; a library whose largest gap is over 1 % runs again at the
next count, interleaved with the fetalhc default again (its time in that phase is the
yardstick of the ratio), until its gap is <= 1 % or the counts run out.

Completeness gap per image: ``|sum(map) - (f(x) - f(b))|`` in mm and relative to
``|f(x) - f(b)|`` (median / max), with f computed once by the same HC view for every method.

Runs in a venv with xplique and tf-explain beside fetalhc (xplique 2.0.2 pins TF <= 2.20, so
it is installed with ``--no-deps`` beside TF 2.21), e.g.:

    /work/xq-venv/bin/python benchmarks/compare_ig.py \\
        --runs runs/bench-mobilenetv2,runs/bench-resnet50 --images 32

Not a test: prints tables.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import fetalhc  # noqa: E402
import fetalhc.explain as fe  # noqa: E402
from fetalhc.data import load_arrays  # noqa: E402
from fetalhc.explain.api import DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_SIZE  # noqa: E402
from fetalhc.explain.integrated_gradients import (  # noqa: E402
    DEFAULT_MAX_STEPS,
    DEFAULT_RULE,
    DEFAULT_STEPS,
    DEFAULT_TOLERANCE,
)
from fetalhc.training import load_run, run_split_index  # noqa: E402

TF_EXPLAIN_CALL = 50  # points per tf-explain call above 50 points


def hc_mm(view, images, pixel_size, batch=16):
    """f(x) = HC output (input px) * mm per input px, float64 (N,)."""
    out = [np.asarray(view(images[i:i + batch], training=False)).reshape(-1)
           for i in range(0, len(images), batch)]
    return np.concatenate(out).astype(np.float64) * pixel_size.astype(np.float64)


def fetalhc_methods(model):
    def default(images, pixel_size):
        result = fe.explain_batch(model, images, method="integrated_gradients", pixel_size=pixel_size)
        return result.maps, result.metadata["steps"]

    def midpoint_50(images, pixel_size):
        maps = fe.explain(model, images, method="integrated_gradients", pixel_size=pixel_size,
                          rule="riemann_middle", steps=50, tolerance=None)
        return maps, np.full(len(images), 50.0)

    return {
        f"fetalhc default ({DEFAULT_RULE} {DEFAULT_STEPS}, x3 to {100 * DEFAULT_TOLERANCE:g} %)": default,
        "fetalhc riemann_middle 50 fixed": midpoint_50,
    }


def tf_explain_method(view, steps: int):
    from tf_explain.core.integrated_gradients import IntegratedGradients as TfExplainIG

    def run(images, pixel_size):
        maps = []
        for image, size in zip(images, pixel_size, strict=True):
            path = TfExplainIG.generate_interpolations(image[None], steps)  # (steps, H, W, C)
            call = min(steps, TF_EXPLAIN_CALL)
            parts = [TfExplainIG.get_integrated_gradients(path[i:i + call], view, 0, call).numpy()
                     for i in range(0, steps, call)]
            mean_gradient = np.mean(parts, axis=0)  # equal-size parts: the mean of all points
            # tf-explain stops here (mean gradient, px per unit); add (x - b) and mm ourselves
            maps.append((mean_gradient[0] * image * size).sum(-1))
        return np.stack(maps), np.full(len(images), float(steps))

    return run


def xplique_method(view, steps: int, batch_size: int):
    from xplique.attributions import IntegratedGradients as XpliqueIG
    from xplique.commons import Tasks

    explainer = XpliqueIG(view, batch_size=batch_size, operator=Tasks.REGRESSION, steps=steps,
                          baseline_value=0.0, reducer="sum")

    def run(images, pixel_size):
        targets = pixel_size.astype(np.float32)[:, None]
        maps = np.asarray(explainer.explain(images, targets))
        return maps.reshape(maps.shape[:3]), np.full(len(images), float(steps))

    return run


def interleaved(methods: dict, images, pixel_size, batch: int):
    """Run every method on every batch in turn -> name -> (ms/image, maps, points)."""
    for function in methods.values():  # warm-up: tracing
        function(images[:2], pixel_size[:2])
    seconds = dict.fromkeys(methods, 0.0)
    maps = {name: [] for name in methods}
    points = {name: [] for name in methods}
    for number, start in enumerate(range(0, len(images), batch)):
        order = list(methods) if number % 2 == 0 else list(reversed(methods))
        for name in order:
            began = time.perf_counter()
            result, used = methods[name](images[start:start + batch], pixel_size[start:start + batch])
            seconds[name] += time.perf_counter() - began
            maps[name].append(np.asarray(result))
            points[name].append(np.asarray(used))
    return {name: (1000 * seconds[name] / len(images), np.concatenate(maps[name]),
                   np.concatenate(points[name])) for name in methods}


def report(name, ms, maps, points, difference):
    gap = np.abs(maps.reshape(len(maps), -1).sum(1) - difference)
    relative = gap / np.maximum(np.abs(difference), 1e-12)
    print(f"{name:52s} {ms:9.0f} {points.mean():7.0f}  {np.median(gap):8.3g} / {np.max(gap):<8.3g} "
          f"{100 * np.median(relative):7.3g} % / {100 * np.max(relative):<7.3g} %", flush=True)
    return float(np.median(relative)), float(np.max(relative))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/bench-mobilenetv2,runs/bench-resnet50",
                        help="comma-separated trained run folders")
    parser.add_argument("--split", default="test")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help="images per interleaving step (and fetalhc's batch_size)")
    parser.add_argument("--library-steps", default="50,100,200",
                        help="the libraries' point counts, tried in order while max gap > 1 %%")
    parser.add_argument("--xplique-batch", type=int, default=0,
                        help="also run xplique with this batch_size (0: only its default 32)")
    parser.add_argument("--skip-fetalhc-50", action="store_true")
    parser.add_argument("--no-retime", action="store_true",
                        help="later phases: compare with the phase-1 time of the fetalhc default")
    parser.add_argument("--hc18", default=os.environ.get("FETALHC_HC18", "/work/shared/data/hc18"))
    args = parser.parse_args()

    print(f"tf {tf.__version__}; fetalhc default: {DEFAULT_RULE} {DEFAULT_STEPS} points, x3 while the "
          f"gap is over {100 * DEFAULT_TOLERANCE:g} %, at most {DEFAULT_MAX_STEPS}; batch_size "
          f"{DEFAULT_BATCH_SIZE}, chunk_size {DEFAULT_CHUNK_SIZE}; shared 2-core CPU, load average "
          f"at start {os.getloadavg()[0]:.1f}")
    for run_path in args.runs.split(","):
        run = load_run(run_path)
        index = run_split_index(run.config, Path(args.hc18), args.split).iloc[:args.images]
        arrays = load_arrays(index, image_size=int(run.config["data"]["image_size"]))
        images = arrays["image"].astype(np.float32)
        pixel_size = arrays["pixel_size_mm"].astype(np.float32)
        model = fetalhc.load_model(run.model_path)
        view = fe.hc_output_model(model)
        difference = hc_mm(view, images, pixel_size) - hc_mm(view, np.zeros_like(images), pixel_size)
        print(f"\n{run_path} ({model.count_params() / 1e6:.1f} M parameters), {len(images)} "
              f"{args.split} images; |f(x) - f(b)| median {np.median(np.abs(difference)):.3g} mm, "
              f"min {np.min(np.abs(difference)):.3g} mm")
        print(f"{'method':52s} {'ms/image':>9s} {'points':>7s}  {'gap mm median / max':19s} "
              f"gap relative median / max")
        ours = fetalhc_methods(model)
        if args.skip_fetalhc_50:
            ours = dict(list(ours.items())[:1])
        default_name = next(iter(ours))
        library_steps = [int(value) for value in args.library_steps.split(",")]
        pending = ["tf-explain", "xplique"] + (["xplique-b"] if args.xplique_batch else [])
        summary, default_time, default_gap = [], None, None
        for phase, steps in enumerate(library_steps):
            if phase == 0:
                methods = dict(ours)
            else:  # the default again as this phase's yardstick, unless --no-retime
                methods = {} if args.no_retime else {default_name: ours[default_name]}
            names = {}
            for library in pending:
                if library == "xplique-b" and phase:  # the batch variant only at the first count
                    continue
                if library == "tf-explain":
                    name = f"tf-explain 0.3.1, {steps} pts (x-b added by us)"
                    methods[name] = tf_explain_method(view, steps)
                elif library == "xplique":
                    name = f"xplique 2.0.2, trapezoid {steps} pts, batch 32"
                    methods[name] = xplique_method(view, steps, 32)
                else:
                    name = f"xplique 2.0.2, trapezoid {steps} pts, batch {args.xplique_batch}"
                    methods[name] = xplique_method(view, steps, args.xplique_batch)
                names[library] = name
            if not names:
                break
            if phase:
                again = "" if args.no_retime else ", with the fetalhc default timed again"
                print(f"-- libraries at {steps} points{again} (load average {os.getloadavg()[0]:.1f})")
            results = interleaved(methods, images, pixel_size, args.batch_size)
            gaps = {name: report(name, *results[name], difference) for name in methods}
            if default_name in results:  # else: the yardstick of the first phase
                default_time, default_gap = results[default_name][0], gaps[default_name]
            for name in names.values():
                summary.append((name, results[name][0] / default_time, *gaps[name], default_gap))
            pending = [library for library, name in names.items() if gaps[name][1] > 0.01]
        print("speed-up of the fetalhc default over each library row (same phase), and whether the "
              "default's completeness is equal or better (median and max gap):")
        for name, ratio, median, maximum, (own_median, own_maximum) in summary:
            better = own_median <= median and own_maximum <= maximum
            print(f"  {name:52s} {ratio:5.2f} x   {'equal or better' if better else 'WORSE'}")
        print(f"load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

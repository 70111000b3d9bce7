"""Milliseconds per image of every registered explanation method on trained runs (128 px).

For each run of ``--runs`` (trained run folders; ``--random BACKBONE,...`` adds
random-initialised backbones instead, fine for timing only), on ``--images`` images of the
run's held-out ``test`` split, every method of the registry runs at its defaults (default
``batch_size`` / ``chunk_size``); Integrated Gradients also as a fixed 50-point midpoint
rule. Per method: one warm-up (tracing) call on 2 images, then ``--repeats`` timed passes
over all images (median). IG rows carry the completeness gap (median / max, mm and % of
|f(x) - f(b)|) and the points used; relevance rows their conservation gap. A method that
refuses the architecture prints its one-line error. Not a test: prints a table.

    .venv/bin/python benchmarks/bench_explain.py --runs runs/bench-mobilenetv2,runs/bench-resnet50

``--chunk-sweep 4,8,16,64`` instead times a fixed 48-point IG (gradient evaluations only)
at each ``chunk_size`` (model inputs per pass), 3 interleaved passes, and prints ms per
gradient evaluation: how the default chunk size was chosen.
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
from fetalhc.data import load_arrays, load_index  # noqa: E402
from fetalhc.explain.api import DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_SIZE  # noqa: E402
from fetalhc.explain.integrated_gradients import DEFAULT_RULE, DEFAULT_STEPS  # noqa: E402
from fetalhc.models import build_model  # noqa: E402
from fetalhc.training import load_run, run_split_index  # noqa: E402

SIZE = 128


def variants(methods: list[str]) -> list[tuple[str, str, dict]]:
    rows = []
    for method in methods:
        if method == "integrated_gradients":
            rows.append((f"IG default ({DEFAULT_RULE} {DEFAULT_STEPS}, x3 to 1 %)", method, {}))
            rows.append(("IG riemann_middle 50 fixed", method,
                         {"rule": "riemann_middle", "steps": 50, "tolerance": None}))
        else:
            rows.append((method, method, {}))
    return rows


def models(args):
    hc18 = Path(args.hc18)
    for run_path in filter(None, args.runs.split(",")):
        run = load_run(run_path)
        index = run_split_index(run.config, hc18, args.split).iloc[:args.images]
        arrays = load_arrays(index, image_size=int(run.config["data"]["image_size"]))
        yield f"{run_path} (trained)", fetalhc.load_model(run.model_path), arrays, f"{args.split} split"
    for backbone in filter(None, args.random.split(",")):
        arrays = load_arrays(load_index(hc18, validate=False).iloc[:args.images], image_size=SIZE)
        yield f"{backbone} (random init)", build_model(backbone, (SIZE, SIZE, 1), weights=None), arrays, \
            "training set"


def chunk_sweep(args, chunks: list[int], points: int = 48) -> None:
    for label, model, arrays, what in models(args):
        x, pixel_size = arrays["image"].astype(np.float32), arrays["pixel_size_mm"].astype(np.float32)

        def run(chunk, model=model, x=x, pixel_size=pixel_size):
            fe.explain(model, x, pixel_size=pixel_size, steps=points, tolerance=None, chunk_size=chunk)

        for chunk in chunks:
            run(chunk)  # trace
        times: dict[int, list[float]] = {chunk: [] for chunk in chunks}
        for repeat in range(3):
            for chunk in chunks if repeat % 2 == 0 else chunks[::-1]:
                started = time.perf_counter()
                run(chunk)
                times[chunk].append(1000 * (time.perf_counter() - started) / (len(x) * points))
        print(f"\n{label}, {len(x)} images ({what}), IG {points} points, batch_size {DEFAULT_BATCH_SIZE}; "
              f"load average {os.getloadavg()[0]:.1f}")
        for chunk in chunks:
            runs = " / ".join(f"{value:.1f}" for value in times[chunk])
            print(f"chunk_size {chunk:4d}: {np.median(times[chunk]):6.1f} ms per gradient ({runs})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/bench-mobilenetv2,runs/bench-resnet50")
    parser.add_argument("--random", default="", help="random-initialised backbones to add")
    parser.add_argument("--split", default="test")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--methods", default=",".join(fe.available_methods()))
    parser.add_argument("--chunk-sweep", default="", help="e.g. 4,8,16,64: ms per gradient per chunk_size")
    parser.add_argument("--hc18", default=os.environ.get("FETALHC_HC18", "/work/shared/data/hc18"))
    args = parser.parse_args()
    if args.chunk_sweep:
        chunk_sweep(args, [int(value) for value in args.chunk_sweep.split(",")])
        return

    print(f"batch_size {DEFAULT_BATCH_SIZE}, chunk_size {DEFAULT_CHUNK_SIZE} (defaults); {args.repeats} "
          f"timed pass(es) after a warm-up; shared 2-core CPU, load average at start "
          f"{os.getloadavg()[0]:.1f}")
    for label, model, arrays, what in models(args):
        x, pixel_size = arrays["image"].astype(np.float32), arrays["pixel_size_mm"].astype(np.float32)
        print(f"\n{label}, {model.count_params() / 1e6:.1f} M parameters, {len(x)} HC18 images ({what})")
        print(f"{'method':40s} {'ms/image':>9s}  notes")
        for name, method, options in variants(args.methods.split(",")):
            common = dict(method=method, pixel_size=pixel_size, **options)
            try:
                fe.explain_batch(model, x[:2], **{**common, "pixel_size": pixel_size[:2]})  # trace
            except (ValueError, NotImplementedError) as error:
                print(f"{name:40s} {'-':>9s}  refused: {str(error)[:110]}", flush=True)
                continue
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                result = fe.explain_batch(model, x, **common)
                times.append((time.perf_counter() - started) / len(x) * 1000)
            notes = ""
            if "completeness_gap" in result.metadata:
                absolute = result.metadata["completeness_gap"]
                relative = result.metadata["completeness_gap_relative"]
                notes = (f"gap {np.median(absolute):.3g} / {absolute.max():.3g} mm "
                         f"({100 * np.median(relative):.3g} % / {100 * relative.max():.3g} %), "
                         f"points mean {result.metadata['steps'].mean():.0f}")
            elif "conservation_gap" in result.metadata:
                notes = f"conservation gap median {np.median(result.metadata['conservation_gap']):.3g}"
            print(f"{name:40s} {np.median(times):9.1f}  {notes}  (load {os.getloadavg()[0]:.1f})",
                  flush=True)


if __name__ == "__main__":
    main()

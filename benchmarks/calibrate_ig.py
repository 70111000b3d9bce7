"""Choose the default Integrated Gradients rule (quadrature, base points, refinement) by
measured completeness on calibration images, before any timing (issue 5).

For every trained run given, on ``--images`` images of its ``--split`` (default ``val``:
images the model was not trained on and that are not the benchmark's held-out ``test``
images), target hc_mm, baseline zeros, it runs each candidate rule and prints per model and
pooled over all models:

- gradient evaluations per image (mean / max): the machine-independent cost. A nested
  refinement evaluates only the new nodes, so an image refined from 16 to 48 midpoints
  costs 48; a non-nested one (Gauss-Legendre) pays for every level;
- the relative completeness gap ``|sum(map) - (f(x) - f(b))| / |f(x) - f(b)|``, median / max;
- with ``--reference-steps N``: the map error against an N-point midpoint reference,
  ``sum|map - ref| / sum|ref|`` (median / max over the first ``--reference-images``), since
  a small completeness gap (a sum over pixels) does not imply an accurate map.

Selection rule, fixed before any timing: among the refined candidates whose median gap is
<= 0.5 % and max gap <= 1 % pooled over the images of the models where refinement converges
(some refined candidate keeps every image <= 1 % within ``max_steps``), the one with the
fewest mean gradient evaluations per image there. A model where no candidate converges
(every image runs to the cap) is reported but cannot rank the candidates on completeness.

    .venv/bin/python benchmarks/calibrate_ig.py \\
        --runs runs/hc18-cpu,runs/bench-mobilenetv2,runs/bench-resnet50 --images 24

Not a test: prints tables quoted in docs/explain.md.
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
from fetalhc.data import load_arrays  # noqa: E402
from fetalhc.explain.integrated_gradients import refinement_levels  # noqa: E402
from fetalhc.training import load_run, run_split_index  # noqa: E402

# (label, options); refined candidates use the 1 % tolerance, fixed ones tolerance=None
CANDIDATES = [
    *[(f"riemann_middle {n} x3", {"rule": "riemann_middle", "steps": n}) for n in (6, 8, 12, 16, 24)],
    ("trapezoid 17 x2", {"rule": "trapezoid", "steps": 17}),
    *[(f"riemann_middle {n} fixed", {"rule": "riemann_middle", "steps": n, "tolerance": None})
      for n in (16, 32, 50)],
    ("trapezoid 50 fixed (xplique's rule)", {"rule": "trapezoid", "steps": 50, "tolerance": None}),
]
MEDIAN_LIMIT, MAX_LIMIT = 0.005, 0.01


def evaluations(options: dict, steps_used: np.ndarray) -> np.ndarray:
    """Gradient evaluations per image, given the points each image finally used."""
    levels = refinement_levels(options["rule"], options["steps"], 512, options.get("tolerance", 0.01))
    cost, cumulative = {}, 0
    for level in levels:  # a level's nodes are the new ones (all of them when not nested)
        cumulative += len(level["nodes"])
        cost[level["points"]] = cumulative
    return np.array([cost[int(points)] for points in steps_used], float)


def run_images(run: Path, split: str, n: int, hc18: Path):
    config = load_run(run)
    index = run_split_index(config.config, hc18, split).iloc[:n]
    size = int(config.config["data"]["image_size"])
    arrays = load_arrays(index, image_size=size)
    return fetalhc.load_model(config.model_path), arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/hc18-cpu,runs/bench-mobilenetv2,runs/bench-resnet50",
                        help="comma-separated run folders, RUN:N for N images of that run")
    parser.add_argument("--split", default="val")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--candidates", default=None, help="comma-separated labels (default all)")
    parser.add_argument("--reference-steps", type=int, default=0, help="0: no map-error column")
    parser.add_argument("--reference-images", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chunk-size", type=int, default=8)
    parser.add_argument("--hc18", default=os.environ.get("FETALHC_HC18", "/work/shared/data/hc18"))
    args = parser.parse_args()

    candidates = CANDIDATES
    if args.candidates:
        wanted = args.candidates.split(",")
        candidates = [(label, options) for label, options in CANDIDATES if label in wanted]
    pooled: dict[str, dict[str, list]] = {label: {"gap": [], "cost": [], "error": []} for label, _ in candidates}
    skipped = []
    started = time.time()
    for item in args.runs.split(","):
        run, _, count = item.partition(":")  # RUN:N overrides --images for that run
        model, arrays = run_images(Path(run), args.split, int(count or args.images), Path(args.hc18))
        x, pixel_size = arrays["image"].astype(np.float32), arrays["pixel_size_mm"].astype(np.float32)
        common = dict(method="integrated_gradients", pixel_size=pixel_size, batch_size=args.batch_size,
                      chunk_size=args.chunk_size)
        reference = None
        if args.reference_steps:
            k = min(args.reference_images, len(x))
            reference = fe.explain(model, x[:k], **{**common, "pixel_size": pixel_size[:k]},
                                   rule="riemann_middle", steps=args.reference_steps, tolerance=None)
        first = fe.explain_batch(model, x, **common, steps=1, tolerance=None)
        difference = np.abs(first.metadata["target_value"] - first.metadata["baseline_target"])
        print(f"\n{run} ({model.count_params() / 1e6:.1f} M parameters), {len(x)} {args.split} images; "
              f"|f(x) - f(b)| median {np.median(difference):.1f} mm, min {difference.min():.2f} mm "
              f"({time.time() - started:.0f} s)")
        print(f"{'rule':38s} {'evals/image mean / max':>23s} {'gap median / max':>20s} {'refined':>8s}"
              + ("  map error vs ref median / max" if reference is not None else ""))
        model_rows, converges = {}, False
        for label, options in candidates:
            result = fe.explain_batch(model, x, **common, **options)
            gap = result.metadata["completeness_gap_relative"]
            cost = evaluations(options, result.metadata["steps"])
            refined = np.mean(result.metadata["steps"] > options["steps"])
            error, error_text = [], ""
            if reference is not None:
                k = len(reference)
                error = np.abs(result.maps[:k] - reference).sum((1, 2)) / np.abs(reference).sum((1, 2))
                error_text = f"  {100 * np.median(error):8.2f} % / {100 * error.max():6.2f} %"
            model_rows[label] = (gap, cost, error)
            converges |= options.get("tolerance", 0.01) is not None and gap.max() <= MAX_LIMIT
            print(f"{label:38s} {cost.mean():12.1f} / {cost.max():6.0f} "
                  f"{100 * np.median(gap):8.3f} % / {100 * gap.max():6.3f} % {100 * refined:6.0f} %"
                  + error_text, flush=True)
        if not converges:
            skipped.append(run)
            print("(no refined candidate keeps every image under 1 % here: not used for the choice)")
            continue
        for label, (gap, cost, error) in model_rows.items():
            pooled[label]["gap"].extend(gap)
            pooled[label]["cost"].extend(cost)
            pooled[label]["error"].extend(error)
    used = [item for item in args.runs.split(",") if item.partition(":")[0] not in skipped]
    print(f"\npooled over {', '.join(used)} ({time.time() - started:.0f} s):")
    if not used:
        return
    eligible = []
    for label, options in candidates:
        gap, cost = np.array(pooled[label]["gap"]), np.array(pooled[label]["cost"])
        error = pooled[label]["error"]
        error_text = f"  map error median {100 * np.median(error):.2f} %" if error else ""
        print(f"{label:38s} evals/image {cost.mean():6.1f} (max {cost.max():4.0f})  gap median "
              f"{100 * np.median(gap):.3f} % max {100 * gap.max():.3f} %{error_text}")
        refined_rule = options.get("tolerance", 0.01) is not None
        if refined_rule and np.median(gap) <= MEDIAN_LIMIT and gap.max() <= MAX_LIMIT:
            eligible.append((cost.mean(), label))
    if eligible:
        print(f"\nchosen (fewest evaluations with median gap <= {100 * MEDIAN_LIMIT} % and max <= "
              f"{100 * MAX_LIMIT} %): {min(eligible)[1]} ({min(eligible)[0]:.1f} evaluations per image)")
    else:
        print("\nno refined candidate met the limits")


if __name__ == "__main__":
    main()

"""What Integrated Gradients integrates: the path profile of a trained run (issue 5).

IG's completeness sum is the integral over a in [0, 1] of the path profile
``s(a) = grad f(b + a (x - b)) . (x - b)`` (mm per unit of a; f = predicted HC in mm, b =
zeros, the image mean after z-scoring), whose integral is ``f(x) - f(b)``. How hard the
quadrature is depends on how rough ``s`` is, so this script samples it on a fine uniform grid
(``--grid`` intervals, so grid + 1 points) for the first images of a split and prints, per
image:

- ``f(x) - f(b)`` (mm), and the mean and standard deviation of ``s`` over the grid;
- the correlation length: the smallest lag (as a fraction of the path) at which the
  autocorrelation of ``s - mean(s)`` falls below 0.5;
- the relative completeness gap of the midpoint rule with n = 8, 24, 72, 216 points, read off
  the fine grid (a node of the midpoint rule with n points is a grid point when the grid is a
  multiple of 2 n, as the default 2160 is for every n here; otherwise the nearest grid point
  is used).

    .venv/bin/python benchmarks/profile_ig_path.py --run runs/bench-mobilenetv2 --images 6

Not a test: prints a table. Costs grid + 1 gradient evaluations per image.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import fetalhc  # noqa: E402
import fetalhc.explain as fe  # noqa: E402
from fetalhc.data import load_arrays  # noqa: E402
from fetalhc.training import load_run, run_split_index  # noqa: E402

MIDPOINT_COUNTS = (8, 24, 72, 216)


def correlation_length(profile: np.ndarray) -> float:
    """Smallest lag (fraction of the path) where the autocorrelation drops below 0.5."""
    centred = profile - profile.mean()
    variance = float(np.dot(centred, centred))
    if variance == 0.0:
        return float("inf")
    for lag in range(1, len(centred)):
        if np.dot(centred[:-lag], centred[lag:]) / variance < 0.5:
            return lag / (len(centred) - 1)
    return 1.0


def midpoint_gap(profile: np.ndarray, difference: float, points: int) -> float:
    """Relative gap of the midpoint rule with ``points`` nodes, read off the grid."""
    grid = len(profile) - 1
    nodes = (np.arange(points) + 0.5) / points
    estimate = profile[np.rint(nodes * grid).astype(int)].mean()
    return abs(estimate - difference) / abs(difference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/bench-mobilenetv2")
    parser.add_argument("--split", default="val")
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--grid", type=int, default=2160, help="intervals of the uniform grid")
    parser.add_argument("--chunk", type=int, default=16, help="path points per gradient call")
    parser.add_argument("--hc18", default=os.environ.get("FETALHC_HC18", "/work/shared/data/hc18"))
    args = parser.parse_args()
    if args.images < 1 or args.grid < 2 or args.chunk < 1:
        raise ValueError("--images and --chunk must be >= 1 and --grid >= 2")

    run = load_run(args.run)
    index = run_split_index(run.config, args.hc18, args.split).iloc[:args.images]
    arrays = load_arrays(index, image_size=int(run.config["data"]["image_size"]))
    images = arrays["image"].astype(np.float32)
    pixel_size = arrays["pixel_size_mm"].astype(np.float64)
    view = fe.hc_output_model(fetalhc.load_model(run.model_path))

    @tf.function(reduce_retracing=True)
    def value_and_gradient(points):
        with tf.GradientTape() as tape:
            tape.watch(points)
            value = tf.reshape(view(points, training=False), [-1])
        return value, tape.gradient(value, points)

    alphas = np.arange(args.grid + 1, dtype=np.float64) / args.grid
    print(f"{args.run}, first {len(images)} {args.split} images, grid {args.grid} intervals, baseline zeros")
    header = "".join(f"  gap mid {n:>3d}" for n in MIDPOINT_COUNTS)
    print(f"{'image':>5s} {'f(x)-f(b) mm':>13s} {'mean s':>8s} {'sd s':>8s} {'corr. length':>13s}{header}")
    started = time.time()
    for number, image in enumerate(images):
        profile = np.zeros(args.grid + 1)
        values = np.zeros(args.grid + 1)
        for start in range(0, args.grid + 1, args.chunk):
            alpha = alphas[start:start + args.chunk].astype(np.float32)
            value, gradient = value_and_gradient(tf.constant(alpha[:, None, None, None] * image[None]))
            values[start:start + len(alpha)] = value.numpy() * pixel_size[number]
            flat = (gradient.numpy() * image[None]).reshape(len(alpha), -1)
            profile[start:start + len(alpha)] = flat.sum(1, dtype=np.float64) * pixel_size[number]
        difference = values[-1] - values[0]
        gaps = "".join(f"  {100 * midpoint_gap(profile, difference, n):9.2f} %" for n in MIDPOINT_COUNTS)
        print(f"{number:5d} {difference:13.2f} {profile.mean():8.2f} {profile.std():8.1f} "
              f"{correlation_length(profile):13.4f}{gaps}", flush=True)
    print(f"({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()

"""Choose the default Integrated Gradients quadrature (rule, steps) by measured completeness.

Trains a small CNN (fetalhc ``small_cnn`` backbone, BN + ReLU) on phantoms for a few epochs,
then for every quadrature rule and number of points measures each image's completeness gap
``|sum(map) - (f(x) - f(b))|`` relative to ``|f(x) - f(b)|`` (target hc_mm). Per rule it
prints the fewest points whose median gap on the calibration images is < 0.5 % (the base
number of points: most images finish in one pass) and the fewest whose largest gap is < 1 %
(what a fixed rule would need), with the held-out phantoms and, when HC18 is present, real
HC18 images the model never saw, next to it. The refinement of the default (images over
1 % get twice the points) covers the tail. Fixed-point refinement is what the numbers call
for: on a ReLU network the integrand is piecewise constant along the path, so every rule
converges like 1/steps and Gauss-Legendre gains nothing.

    .venv/bin/python benchmarks/calibrate_ig.py [--size 64] [--epochs 12] [--hc18 DIR]

Prints a table; the numbers are quoted in docs/explain.md. CPU: 10-25 minutes on a shared
2-core machine (each row explains 72 images); restrict with --rules / --steps.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import fetalhc.explain as fe  # noqa: E402
from fetalhc.data import load_arrays, load_index, write_phantom_dataset  # noqa: E402
from fetalhc.explain.integrated_gradients import RULES  # noqa: E402
from fetalhc.models import build_model  # noqa: E402

STEPS = "8,16,32,64,128,256"


def phantom_arrays(n: int, size: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        root = write_phantom_dataset(Path(folder) / "phantoms", n=n, seed=seed, width=240, height=162)
        return load_arrays(load_index(root, validate=False), image_size=size)


def train(arrays: dict, size: int, epochs: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    hc_px = arrays["hc_px_input"]
    model = build_model("small_cnn", (size, size, 1), small_cnn_filters=(8, 16, 32, 64),
                        hc_mean_px=float(hc_px.mean()), hc_std_px=float(hc_px.std()), dropout=0.0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mae")
    model.fit(arrays["image"], hc_px, epochs=epochs, batch_size=16, verbose=0)
    return model


def gaps(model, arrays, rule, steps, baseline):
    result = fe.explain_batch(model, arrays["image"], method="integrated_gradients",
                              pixel_size=arrays["pixel_size_mm"], rule=rule, steps=steps,
                              baseline=baseline, batch_size=8, chunk_size=128)
    return result.metadata["completeness_gap_relative"], result.metadata["completeness_gap"]


def path_difference(model, arrays, baseline):
    """|f(x) - f(b)| in mm per image (what the relative gap divides by)."""
    result = fe.explain_batch(model, arrays["image"], method="integrated_gradients",
                              pixel_size=arrays["pixel_size_mm"], steps=1, baseline=baseline)
    return np.abs(result.metadata["target_value"] - result.metadata["baseline_target"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--train", type=int, default=240)
    parser.add_argument("--images", type=int, default=24, help="calibration and held-out images each")
    parser.add_argument("--hc18", default=os.environ.get("FETALHC_HC18", "../shared/data/hc18"))
    parser.add_argument("--steps", default=STEPS, help="comma-separated numbers of points")
    parser.add_argument("--rules", default=",".join(RULES), help="comma-separated quadrature rules")
    parser.add_argument("--baselines", default="zeros,blur")
    parser.add_argument("--model-cache", default=None,
                        help="reuse / save the trained model here (outside the repository)")
    args = parser.parse_args()

    started = time.time()
    training = phantom_arrays(args.train, args.size, seed=1)
    if args.model_cache and Path(args.model_cache).is_file():
        model = keras.models.load_model(args.model_cache, compile=False)
    else:
        model = train(training, args.size, args.epochs)
        if args.model_cache:
            model.save(args.model_cache)
    steps_grid = [int(value) for value in args.steps.split(",")]
    rules = args.rules.split(",")
    error_mm = np.abs(model.predict(training["image"], verbose=0).reshape(-1) * training["pixel_size_mm"]
                      - training["hc_mm"])
    print(f"small_cnn trained on {args.train} phantoms at {args.size} px, {args.epochs} epochs: "
          f"training MAE {error_mm.mean():.1f} mm ({time.time() - started:.0f} s)")
    sets = {
        "calibration (phantoms)": phantom_arrays(args.images, args.size, seed=2),
        "held-out (phantoms)": phantom_arrays(args.images, args.size, seed=3),
    }
    hc18 = Path(args.hc18)
    if (hc18 / "training_set_pixel_size_and_HC.csv").is_file():
        index = load_index(hc18, validate=False).iloc[-args.images:]
        sets["held-out (HC18)"] = load_arrays(index, image_size=args.size)

    chosen = {}
    for baseline in args.baselines.split(","):
        differences = {name: path_difference(model, arrays, baseline) for name, arrays in sets.items()}
        for name, difference in differences.items():
            print(f"{name}: |f(x) - f(b)| median {np.median(difference):.1f} mm, "
                  f"min {difference.min():.1f} mm")
        print(f"\nbaseline={baseline}: relative completeness gap |sum(map)-(f(x)-f(b))| / |f(x)-f(b)|, "
              "median / max over images")
        header = f"{'rule':15s} {'steps':>5s}  " + "  ".join(f"{name:>24s}" for name in sets)
        print(header)
        for rule in rules:
            for steps in steps_grid:
                row, results = [], {}
                for name, arrays in sets.items():
                    relative, _ = gaps(model, arrays, rule, steps, baseline)
                    results[name] = relative
                    row.append(f"{100 * np.median(relative):8.3f}% / {100 * relative.max():7.3f}%")
                print(f"{rule:15s} {steps:5d}  " + "  ".join(f"{cell:>24s}" for cell in row))
                calibration = results["calibration (phantoms)"]
                maxima = {k: float(v.max()) for k, v in results.items()}
                if np.median(calibration) < 0.005 and ("median", baseline, rule) not in chosen:
                    chosen[("median", baseline, rule)] = (steps, maxima)
                if calibration.max() < 0.01 and ("max", baseline, rule) not in chosen:
                    chosen[("max", baseline, rule)] = (steps, maxima)
    print("\nfewest points per rule: calibration median < 0.5 % (base) / calibration max < 1 % (fixed):")
    for (kind, baseline, rule), (steps, maxima) in sorted(chosen.items()):
        held = ", ".join(f"{name} max {100 * value:.3f}%" for name, value in maxima.items())
        print(f"  {kind:6s} baseline={baseline:5s} {rule:15s} steps={steps:3d}: {held}")
    print(f"\ntotal {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()

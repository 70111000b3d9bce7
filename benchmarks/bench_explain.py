"""Milliseconds per image of every explanation method on MobileNetV2 and ResNet50 (128 px).

Uses real HC18 images when present (else phantoms), a trained run's model when given with
``--run`` (else random-initialised backbones: fine for timing, not for the maps). Integrated
Gradients is timed at the fixed default (rule and steps from benchmarks/calibrate_ig.py) and
as a 50-step Riemann sum, with the completeness gap (median / max, mm and % of |f(x)-f(b)|)
next to the time. Each method is traced on a warm-up batch first, so the numbers are the
steady state. Not a test: prints a table.

    .venv/bin/python benchmarks/bench_explain.py [--images 32] [--models mobilenetv2,resnet50]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import fetalhc.explain as fe  # noqa: E402
from fetalhc.data import load_arrays, load_index, write_phantom_dataset  # noqa: E402
from fetalhc.explain.integrated_gradients import DEFAULT_RULE, DEFAULT_STEPS  # noqa: E402
from fetalhc.models import build_model  # noqa: E402

SIZE = 128


def images(n: int, hc18: Path) -> tuple[dict, str]:
    if (hc18 / "training_set_pixel_size_and_HC.csv").is_file():
        index = load_index(hc18, validate=False).iloc[:n]
        return load_arrays(index, image_size=SIZE), f"{n} HC18 training images"
    with tempfile.TemporaryDirectory() as folder:
        root = write_phantom_dataset(Path(folder) / "p", n=n, seed=0)
        return load_arrays(load_index(root, validate=False), image_size=SIZE), f"{n} phantoms"


def variants(methods: list[str]) -> list[tuple[str, str, dict]]:
    rows = []
    for method in methods:
        if method == "integrated_gradients":
            rows.append((f"IG default ({DEFAULT_RULE} {DEFAULT_STEPS}, refine)", method, {}))
            rows.append((f"IG {DEFAULT_RULE} {DEFAULT_STEPS} fixed", method, {"tolerance": None}))
            rows.append(("IG riemann_right 50 fixed", method,
                         {"rule": "riemann_right", "steps": 50, "tolerance": None}))
        else:
            rows.append((method, method, {}))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--models", default="mobilenetv2,resnet50")
    parser.add_argument("--methods", default=",".join(fe.available_methods()))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--run", default=None, help="a trained run folder (its model.keras)")
    parser.add_argument("--hc18", default=os.environ.get("FETALHC_HC18", "../shared/data/hc18"))
    args = parser.parse_args()

    arrays, what = images(args.images, Path(args.hc18))
    x, pixel_size = arrays["image"], arrays["pixel_size_mm"]
    print(f"{what} at {SIZE} px; batch_size {args.batch_size}, chunk_size {args.chunk_size}; "
          f"CPU threads shared with other jobs")
    for backbone in args.models.split(","):
        if args.run:
            import fetalhc

            model, weights = fetalhc.load_model(Path(args.run) / "model.keras"), f"trained ({args.run})"
        else:
            model, weights = build_model(backbone, (SIZE, SIZE, 1), weights=None), "random init"
        print(f"\n{backbone} ({weights}, {model.count_params() / 1e6:.1f} M parameters)")
        print(f"{'method':34s} {'ms/image':>9s}  completeness gap median / max")
        for label, method, options in variants(args.methods.split(",")):
            common = dict(method=method, pixel_size=pixel_size, batch_size=args.batch_size,
                          chunk_size=args.chunk_size, **options)
            try:
                fe.explain_batch(model, x[:2], **{**common, "pixel_size": pixel_size[:2]})  # trace
            except (ValueError, NotImplementedError) as error:
                print(f"{label:34s} {'-':>9s}  refused: {error}")
                continue
            started = time.perf_counter()
            result = fe.explain_batch(model, x, **common)
            elapsed = (time.perf_counter() - started) / len(x) * 1000
            gap = ""
            if "completeness_gap" in result.metadata:
                absolute = result.metadata["completeness_gap"]
                relative = result.metadata["completeness_gap_relative"]
                gap = (f"{np.median(absolute):.3g} / {absolute.max():.3g} mm "
                       f"({100 * np.median(relative):.2f} % / {100 * relative.max():.2f} %), "
                       f"points used mean {result.metadata['steps'].mean():.0f}")
            elif "conservation_gap" in result.metadata:
                gap = f"conservation gap median {np.median(result.metadata['conservation_gap']):.3g}"
            print(f"{label:34s} {elapsed:9.1f}  {gap}", flush=True)


if __name__ == "__main__":
    main()

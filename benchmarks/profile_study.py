"""Where one model's study spends its time: per method, explaining and each metric.

Loads a committed model (``--model``, a run folder or ``models/<name>``) and the first
``--images`` images of its ``--split``; then, per method: the maps (``explain``), the
paper's AOPC, the richer AOPC, deletion + insertion and localisation (on all images), and
the cascading randomisation (on ``--randomisation-images`` images). The floor is the
forward-pass rate of the model's HC output on large batches (float32 and mixed bfloat16).
Each line is wall seconds; the per-image projection multiplies by the study's image count.

Run: ``.venv/bin/python benchmarks/profile_study.py --model models/hc18-plain-mae
--data ../shared/data/hc18 --split val --images 8 --randomisation-images 2``
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from study_inputs import load_study_inputs, study_parser  # noqa: E402


def main() -> None:
    parser = study_parser(__doc__.splitlines()[0], images=8, split="val")
    parser.add_argument("--randomisation-images", type=int, default=2)
    parser.add_argument("--methods", default="all")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip")
    args = parser.parse_args()

    import fetalhc.explain as fe
    from fetalhc.evaluate import evaluate_maps
    from fetalhc.evaluate.forward import BatchedForward
    from fetalhc.report.study import protocol_settings

    run, model, rows, arrays = load_study_inputs(args, with_annotation=True)
    images, pixel, reference = arrays["image"], arrays["pixel_size_mm"], arrays["hc_mm"]
    original = rows["pixel_size_mm"].to_numpy(np.float32)
    n = len(images)
    skip = set(filter(None, args.skip.split(",")))
    print(f"model {run.model_file}, {n} {args.split} images at {run.image_size} px, "
          f"load {os.getloadavg()[0]:.2f}, cores {os.cpu_count()}")

    batch = np.repeat(images, max(1, 256 // n) + 1, axis=0)[:256]
    for precision in ("float32", "mixed_bfloat16"):
        forward = BatchedForward(model, 128, precision)
        forward.predict(batch)
        start = time.perf_counter()
        forward.predict(batch)
        forward.predict(batch)
        seconds = time.perf_counter() - start
        print(f"forward {precision}: {2 * len(batch) / seconds:.1f} img/s")

    methods = fe.available_methods() if args.methods == "all" else args.methods.split(",")
    paper = protocol_settings("paper", run.image_size)
    rich = protocol_settings("rich", run.image_size, args.randomisation_images)
    totals: dict[str, float] = {}
    header = ("method", "explain", "paper_aopc", "rich_aopc", "del_ins", "localisation",
              "randomisation")
    print("| " + " | ".join(header) + " |")
    for method in methods:
        times = {}
        start = time.perf_counter()
        maps = fe.explain(model, images, method, target="hc_mm", pixel_size=pixel,
                          reference=reference)
        times["explain"] = time.perf_counter() - start
        parts = {"paper_aopc": (paper, ("aopc",)), "rich_aopc": (rich, ("aopc",)),
                 "del_ins": (rich, ("deletion", "insertion")),
                 "localisation": (rich, ("localisation",)),
                 "randomisation": (rich, ("randomisation",))}
        for part, (settings, metrics) in parts.items():
            if part in skip:
                times[part] = float("nan")
                continue
            start = time.perf_counter()
            evaluate_maps(model, images, maps, pixel, reference, metrics=metrics,
                          settings=settings, annotation=arrays["annotation"],
                          pixel_size_original_mm=original, method=method)
            times[part] = time.perf_counter() - start
        for key, value in times.items():
            totals[key] = totals.get(key, 0.0) + value
        print(f"| {method} | " + " | ".join(f"{times[h]:.1f}" for h in header[1:]) + " |",
              flush=True)
    print("| total | " + " | ".join(f"{totals[h]:.1f}" for h in header[1:]) + " |")
    print("seconds per image (randomisation per randomised image): "
          + ", ".join(f"{h} {totals[h] / (args.randomisation_images if h == 'randomisation' else n):.2f}"
                      for h in header[1:]))


if __name__ == "__main__":
    main()

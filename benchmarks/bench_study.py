"""The study's speed levers, before against after, in one run on one model.

For the first ``--images`` images of a split and every method (or ``--methods``), each
lever is timed both ways, the two arms interleaved method by method so that whatever else
runs on the machine slows both alike:

- **evaluate** (the paper's AOPC protocol): before = float32 forward passes and a new
  forward per method (every method pays for the random curve and the unperturbed images);
  after = mixed bfloat16 and one forward shared by every method
  (``fetalhc.evaluate.forward.BatchedForward`` answers the repeated requests from memory);
- **randomisation** (on the first ``--randomisation-images``): before = maps recomputed after
  every weighted layer, each method as configured (Integrated Gradients refined to its
  completeness tolerance); after = 5 evenly spaced checkpoints and the methods' fixed-cost
  rules (the study's settings);
- **explain** (writing the study's explain folder): before = with a ``.png`` overlay per image
  and method; after = without.

Also printed: the forward-pass floor of the evaluate arm (the passes it needs at the least
at the model's measured rate). Ratios are what this measures; absolute times depend on the
load (printed).

Run: ``.venv/bin/python benchmarks/bench_study.py --model models/hc18-plain-mae
--data ../shared/data/hc18 --images 16 --randomisation-images 2``
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from study_inputs import load_study_inputs, study_parser  # noqa: E402


def main() -> None:
    parser = study_parser(__doc__.splitlines()[0], images=16, split="val+test")
    parser.add_argument("--randomisation-images", type=int, default=2)
    parser.add_argument("--methods", default="all")
    parser.add_argument("--skip", default="", help="comma-separated levers to skip")
    args = parser.parse_args()

    import dataclasses

    import fetalhc.explain as fe
    from fetalhc.evaluate import evaluate_maps
    from fetalhc.evaluate.forward import BatchedForward
    from fetalhc.report.explanations import write_explanations
    from fetalhc.report.study import protocol_settings
    from fetalhc.report.study_times import floor_passes, forward_rate

    run, model, rows, arrays = load_study_inputs(args)
    images, pixel, reference = arrays["image"], arrays["pixel_size_mm"], arrays["hc_mm"]
    methods = fe.available_methods() if args.methods == "all" else args.methods.split(",")
    skip = set(filter(None, args.skip.split(",")))
    after = protocol_settings("paper", run.image_size)  # the study's: bf16, 5 checkpoints
    before = dataclasses.replace(after, precision="float32", randomisation_stages=0,
                                 randomisation_fixed_cost=False)
    print(f"{run.model_file}, {len(images)} {args.split} images, {len(methods)} methods, "
          f"load {os.getloadavg()[0]:.2f}, cores {os.cpu_count()}")
    totals = {}

    def timed(key, function):
        start = time.perf_counter()
        function()
        totals[key] = totals.get(key, 0.0) + time.perf_counter() - start

    if "evaluate" not in skip:
        shared = BatchedForward(model, after.batch_size, after.precision)
        for method in methods:
            maps = fe.explain(model, images, method, target="hc_mm", pixel_size=pixel,
                              reference=reference)
            timed("evaluate before", lambda m=maps: evaluate_maps(
                model, images, m, pixel, reference, metrics=("aopc",), settings=before))
            timed("evaluate after", lambda m=maps: evaluate_maps(
                model, images, m, pixel, reference, metrics=("aopc",), settings=after,
                forward=shared))
        rate = forward_rate(model, run.image_size, after.precision)["images_per_second"]
        floor = floor_passes("evaluate-paper", len(images), len(methods),
                             {"paper": {"steps": after.steps, "metrics": ["aopc"]}}) / rate
        print(f"evaluate: before {totals['evaluate before']:.1f} s, after "
              f"{totals['evaluate after']:.1f} s ({totals['evaluate before'] / totals['evaluate after']:.2f}x); "
              f"floor {floor:.1f} s ({rate:.0f} img/s in {after.precision}); after / floor "
              f"{totals['evaluate after'] / floor:.2f}", flush=True)
    if "randomisation" not in skip:
        count = args.randomisation_images
        for method in methods:
            maps = fe.explain(model, images[:count], method, target="hc_mm",
                              pixel_size=pixel[:count], reference=reference[:count])
            for key, settings in (("randomisation before", before),
                                  ("randomisation after", after)):
                timed(key, lambda m=maps, s=settings, name=method: evaluate_maps(
                    model, images[:count], m, pixel[:count], reference[:count],
                    metrics=("randomisation",), settings=dataclasses.replace(
                        s, randomisation_images=count), method=name))
        print(f"randomisation ({count} images): before {totals['randomisation before']:.1f} s, "
              f"after {totals['randomisation after']:.1f} s "
              f"({totals['randomisation before'] / totals['randomisation after']:.2f}x)",
              flush=True)
    if "explain" not in skip:
        with tempfile.TemporaryDirectory() as folder:
            for method in methods:
                for key, overlays in (("explain before", True), ("explain after", False)):
                    timed(key, lambda name=method, o=overlays, k=key: write_explanations(
                        model, rows, run.image_size, [name],
                        Path(folder) / k.replace(" ", "-") / name, progress=False,
                        overlays=o))
        print(f"explain: before {totals['explain before']:.1f} s, after "
              f"{totals['explain after']:.1f} s "
              f"({totals['explain before'] / totals['explain after']:.2f}x)", flush=True)
    print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

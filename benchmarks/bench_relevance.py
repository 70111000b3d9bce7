"""Time the relevance / modified-backward methods: ms per image after tracing.

    .venv/bin/python benchmarks/bench_relevance.py --size 128 --images 4 \
        --backbones vgg16 resnet50
    .venv/bin/python benchmarks/bench_relevance.py --size 128 --images 2 --repeats 2 \
        --backbones mobilenetv2 efficientnetb0 densenet121 xception inceptionv3

Random weights (timing does not depend on them). Each method is called once to trace (the
"first call" column includes tracing) and then ``--repeats`` times on the same batch; the
table shows the median of those per image. ``gradient`` and ``input_x_gradient`` are the
reference cost of one plain backward pass. The machine is a shared 2-core CPU: numbers vary
with the other jobs running, compare methods within one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

METHODS = ("gradient", "input_x_gradient", "guided_backprop", "deconvnet", "lrp_z",
           "lrp_epsilon", "lrp_alpha2_beta1", "lrp_alpha1_beta0", "lrp_zplus",
           "lrp_composite", "deep_taylor")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backbones", nargs="+", default=["vgg16", "resnet50"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    args = parser.parse_args()

    import fetalhc.explain as fe
    from fetalhc.models import build_model

    images = np.random.default_rng(0).standard_normal(
        (args.images, args.size, args.size, 1)).astype(np.float32)
    print(f"{args.images} images of {args.size} px, batch {args.images}, "
          f"median of {args.repeats} calls after the first (shared 2-core CPU)")
    print("| backbone | method | ms / image | first call incl. tracing (s) |")
    print("| --- | --- | ---: | ---: |")
    for backbone in args.backbones:
        model = build_model(backbone, (args.size, args.size, 1), hc_mean_px=300.0,
                            hc_std_px=40.0)
        for method in args.methods:
            start = time.perf_counter()
            fe.explain(model, images, method=method, pixel_size=0.2, batch_size=args.images)
            first = time.perf_counter() - start
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                fe.explain(model, images, method=method, pixel_size=0.2,
                           batch_size=args.images)
                times.append(time.perf_counter() - start)
            per_image = 1000.0 * statistics.median(times) / args.images
            print(f"| {backbone} | {method} | {per_image:.0f} | {first:.1f} |", flush=True)


if __name__ == "__main__":
    main()

"""Overhead of SaliencyCallback: milliseconds per logged epoch per method, 8 images, 128 px.

Trains nothing: it times `SaliencyCallback.on_epoch_end` (explain + render + AOPC on a
coarse grid + contour-band ratio + writing the event file) on a small CNN, first call
(tracing included) and the median of later calls (the steady state a training run pays each
logged epoch). Compare with the time of one training epoch on your data. Not a test.

    .venv/bin/python benchmarks/bench_callbacks.py [--images 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import fetalhc  # noqa: E402
from fetalhc.callbacks import SaliencyCallback  # noqa: E402
from fetalhc.data import load_arrays, load_index, write_phantom_dataset  # noqa: E402

SIZE = 128
METHODS = ("gradient", "smoothgrad", "input_x_gradient", "integrated_gradients", "gradcam",
           "occlusion", "lrp_z", "guided_backprop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--hc18", type=Path,
                        default=Path(os.environ.get("FETALHC_HC18", "../shared/data/hc18")))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        if (args.hc18 / "training_set_pixel_size_and_HC.csv").is_file():
            index, source = load_index(args.hc18, validate=False).iloc[:args.images], "HC18"
        else:
            root = write_phantom_dataset(Path(folder) / "p", n=args.images, seed=0)
            index, source = load_index(root, validate=False), "phantoms"
        arrays = load_arrays(index, image_size=SIZE, with_annotation=True)
        model = fetalhc.models.build_model("small_cnn", input_shape=(SIZE, SIZE, 1),
                                           hc_mean_px=float(arrays["hc_px_input"].mean()),
                                           hc_std_px=float(arrays["hc_px_input"].std()))
        print(f"{args.images} {source} images at {SIZE} px, small_cnn "
              f"({model.count_params():,} parameters), {args.repeats} logged epochs per method")
        print("| method | first epoch (ms, with tracing) | later epochs, median (ms) |")
        print("| --- | ---: | ---: |")
        for method in args.methods.split(","):
            callback = SaliencyCallback(arrays, methods=[method],
                                        output_dir=Path(folder) / "logs" / method)
            callback.set_model(model)
            times = []
            for epoch in range(args.repeats):
                start = time.perf_counter()
                callback.on_epoch_end(epoch)
                times.append(1000 * (time.perf_counter() - start))
            callback.on_train_end()
            print(f"| {method} | {times[0]:.0f} | {np.median(times[1:]):.0f} |", flush=True)


if __name__ == "__main__":
    main()

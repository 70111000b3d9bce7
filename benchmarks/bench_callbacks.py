"""Overhead of the saliency callbacks: seconds per logged epoch, 8 images, 128 px.

Trains nothing: it times ``on_epoch_end`` (explain + render + the scores asked for +
writing the event file) on a small CNN, first call (tracing included) and the median of
later calls (the steady state a training run pays each logged epoch). Compare with the time
of one training epoch on your data. Not a test.

    .venv/bin/python benchmarks/bench_callbacks.py [--images 8] [--repeats 3]
        [--scores default|none|aopc,localisation] [--named] [--model PATH]

By default each method runs in a ``SaliencyCallback`` at the callback's defaults (fixed-cost
methods, contour score, no AOPC); ``--scores aopc,localisation --refined`` gives the
expensive settings (AOPC on, Integrated Gradients refined to its completeness tolerance).
``--named`` times the tf-explain-named callbacks at their defaults instead. ``--model`` times
a saved model (e.g. ``models/hc18-plain-mae/model.keras``) instead of an untrained small CNN.
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
from fetalhc import callbacks  # noqa: E402
from fetalhc.data import load_arrays, load_index, write_phantom_dataset  # noqa: E402

SIZE = 128
METHODS = ("gradient", "smoothgrad", "input_x_gradient", "integrated_gradients", "gradcam",
           "occlusion", "lrp_z", "guided_backprop")
NAMED = ("VanillaGradientsCallback", "GradientsInputsCallback", "GradCAMCallback",
         "IntegratedGradientsCallback", "SmoothGradCallback", "OcclusionSensitivityCallback",
         "ActivationsVisualizationCallback")


def _callbacks(args, arrays, model, folder: Path):
    """(label, callback) pairs to time."""
    if args.named:
        layer = fetalhc.explain.default_conv_layer_name(model)
        for name in NAMED:
            cls = getattr(callbacks, name)
            if name == "ActivationsVisualizationCallback":
                yield name, cls(arrays, [layer], folder / name)
            else:
                yield name, cls(arrays, 0, output_dir=folder / name)
        return
    scores = {"default": None, "none": ()}.get(args.scores)
    if scores is None and args.scores != "default":
        scores = tuple(args.scores.split(","))
    for method in args.methods.split(","):
        options = {}
        if args.refined and fetalhc.explain.get_method(method).fixed_cost:
            options = {key: fetalhc.explain.get_method(method).defaults[key]
                       for key in fetalhc.explain.get_method(method).fixed_cost}
        yield method, callbacks.SaliencyCallback(
            arrays, methods=[method], output_dir=folder / "logs" / method, scores=scores,
            method_options={method: options} if options else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--scores", default="default",
                        help="default (the callback's), none, or a comma list of scores")
    parser.add_argument("--refined", action="store_true",
                        help="methods at their default (adaptive) cost, not the fixed cost")
    parser.add_argument("--named", action="store_true",
                        help="time the tf-explain-named callbacks at their defaults")
    parser.add_argument("--model", type=Path, default=None, help="a saved .keras model")
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
        if args.model is not None:
            model = fetalhc.load_model(args.model)
        else:
            model = fetalhc.models.build_model("small_cnn", input_shape=(SIZE, SIZE, 1),
                                               hc_mean_px=float(arrays["hc_px_input"].mean()),
                                               hc_std_px=float(arrays["hc_px_input"].std()))
        print(f"{args.images} {source} images at {SIZE} px, {args.model or 'small_cnn'} "
              f"({model.count_params():,} parameters), 1 + {args.repeats} logged epochs each; "
              f"{'tf-explain-named callbacks at their defaults' if args.named else ''}"
              f"{'' if args.named else f'scores={args.scores}, refined={args.refined}'}; "
              f"load average {os.getloadavg()[0]:.1f}")
        print("| callback | first epoch (s, with tracing) | later epochs, median (s) |")
        print("| --- | ---: | ---: |")
        for label, callback in _callbacks(args, arrays, model, Path(folder)):
            callback.set_model(model)
            callback.on_train_begin()
            times = []
            for epoch in range(args.repeats + 1):
                start = time.perf_counter()
                callback.on_epoch_end(epoch, {})
                times.append(time.perf_counter() - start)
            callback.on_train_end()
            print(f"| {label} | {times[0]:.2f} | {np.median(times[1:]):.2f} |", flush=True)
        print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

"""Integrated Gradients head to head: fetalhc vs tf-explain 0.3.1 vs xplique 2.0.2 (issue 5).

For each model, on the same real HC18 images (128 px) and the same target, the predicted HC
in mm ``f(x) = hc_px_input(x) * pixel_size_mm``, baseline zeros (the image mean after
z-scoring), this times:

- ``fetalhc default``: ``fetalhc.explain`` integrated_gradients at its defaults
  (DEFAULT_RULE / DEFAULT_STEPS plus the per-image refinement to 1 %);
- ``fetalhc midpoint 50``: the same with ``rule="riemann_middle", steps=50, tolerance=None``;
- ``tf-explain 50``: ``tf_explain.core.IntegratedGradients.get_integrated_gradients`` on the
  ``generate_interpolations`` path, one image (50 points) per call. tf-explain returns the
  mean path gradient only (it omits the ``(x - baseline)`` factor); the script multiplies by
  ``(x - 0) * pixel_size`` itself to get a map in mm before the completeness check;
- ``xplique 50``: ``xplique.attributions.IntegratedGradients(steps=50, batch_size=64,
  operator=Tasks.REGRESSION)`` (``sum(model(x) * targets, -1)``), targets = pixel size in mm
  per image, so its operator is f(x) in mm; trapezoid rule on 50 points.

Every library gets the single-output HC view of the model (``fetalhc.explain.hc_output_model``).
The methods run interleaved, ``--repeats`` times over all images after a warm-up (tracing)
call, and the median ms/image is reported. Completeness gap per image:
``|sum(map) - (f(x) - f(b))|`` in mm and relative to ``|f(x) - f(b)|`` (median / max), with f
computed once by the same HC view for every method.

Runs in a venv with xplique and tf-explain beside fetalhc (xplique 2.0.2 pins TF <= 2.20, so
it is installed with ``--no-deps`` beside TF 2.21), e.g.:

    /work/xq-venv/bin/python benchmarks/compare_ig.py --images 32 --models mobilenetv2,trained

``--models``: ``mobilenetv2``, ``resnet50`` (random init: no trained weights exist for them),
``small_cnn`` (random init) and ``trained`` (the model of ``--run``). Not a test: prints a
table.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import fetalhc  # noqa: E402
import fetalhc.explain as fe  # noqa: E402
from fetalhc.data import load_arrays, load_index  # noqa: E402
from fetalhc.explain.integrated_gradients import DEFAULT_RULE, DEFAULT_STEPS  # noqa: E402
from fetalhc.models import build_model  # noqa: E402

SIZE = 128
STEPS = 50


def hc_mm(view, images, pixel_size, batch=64):
    """f(x) = HC output (input px) * mm per input px, float64 (N,)."""
    out = [np.asarray(view(images[i:i + batch], training=False)).reshape(-1)
           for i in range(0, len(images), batch)]
    return np.concatenate(out).astype(np.float64) * pixel_size.astype(np.float64)


def make_methods(model, view):
    """name -> function(images, pixel_size) -> maps (N, H, W) in mm (zeros baseline)."""
    from tf_explain.core.integrated_gradients import IntegratedGradients as TfExplainIG
    from xplique.attributions import IntegratedGradients as XpliqueIG
    from xplique.commons import Tasks

    def fetalhc_default(images, pixel_size):
        return fe.explain(model, images, method="integrated_gradients", pixel_size=pixel_size,
                          batch_size=8, chunk_size=64)

    def fetalhc_midpoint(images, pixel_size):
        return fe.explain(model, images, method="integrated_gradients", pixel_size=pixel_size,
                          batch_size=8, chunk_size=64, rule="riemann_middle", steps=STEPS,
                          tolerance=None)

    def tf_explain(images, pixel_size):
        maps = []
        for image, size in zip(images, pixel_size, strict=True):
            path = TfExplainIG.generate_interpolations(image[None], STEPS)
            mean_gradient = TfExplainIG.get_integrated_gradients(path, view, 0, STEPS).numpy()
            # tf-explain stops here (mean gradient, px per unit); add (x - b) and mm ourselves
            maps.append((mean_gradient[0] * image * size).sum(-1))
        return np.stack(maps)

    explainer = XpliqueIG(view, batch_size=64, operator=Tasks.REGRESSION, steps=STEPS,
                          baseline_value=0.0, reducer="sum")

    def xplique(images, pixel_size):
        targets = pixel_size.astype(np.float32)[:, None]
        maps = np.asarray(explainer.explain(images, targets))
        return maps.reshape(maps.shape[:3])

    return {
        f"fetalhc default ({DEFAULT_RULE} {DEFAULT_STEPS} + refine)": fetalhc_default,
        f"fetalhc riemann_middle {STEPS} fixed": fetalhc_midpoint,
        f"tf-explain 0.3.1, {STEPS} pts (x-b added by us)": tf_explain,
        f"xplique 2.0.2, trapezoid {STEPS} pts": xplique,
    }


def load_models(names: list[str], run: Path):
    for name in names:
        if name == "trained":
            path = run / "model.keras" if run.is_dir() else run
            if not path.is_file():
                print(f"\n(skipping 'trained': no model at {path})")
                continue
            yield f"trained {path}", fetalhc.load_model(path)
        else:
            yield f"{name} (random init)", build_model(name, (SIZE, SIZE, 1), weights=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--models", default="mobilenetv2,resnet50,trained")
    parser.add_argument("--run", default="runs/hc18-cpu", help="run folder or .keras for 'trained'")
    parser.add_argument("--hc18", default=os.environ.get("FETALHC_HC18", "/work/shared/data/hc18"))
    args = parser.parse_args()

    index = load_index(Path(args.hc18), validate=False)
    arrays = load_arrays(index.head(args.images), image_size=SIZE)
    images = arrays["image"].astype(np.float32)
    pixel_size = arrays["pixel_size_mm"].astype(np.float32)
    print(f"{len(images)} HC18 training images at {SIZE} px, target hc_mm, baseline zeros; "
          f"{args.repeats} interleaved repeats, median ms/image; shared 2-core CPU, load "
          f"average at start {os.getloadavg()[0]:.1f}")
    print(f"tf {tf.__version__}")

    for label, model in load_models(args.models.split(","), Path(args.run)):
        view = fe.hc_output_model(model)
        methods = make_methods(model, view)
        f_x = hc_mm(view, images, pixel_size)
        f_b = hc_mm(view, np.zeros_like(images), pixel_size)
        difference = f_x - f_b
        print(f"\n{label}, {model.count_params() / 1e6:.1f} M parameters; |f(x) - f(b)| median "
              f"{np.median(np.abs(difference)):.3g} mm, min {np.min(np.abs(difference)):.3g} mm")
        for function in methods.values():  # warm-up: tracing
            function(images[:2], pixel_size[:2])
        times: dict[str, list[float]] = {name: [] for name in methods}
        maps: dict[str, np.ndarray] = {}
        for repeat in range(args.repeats):
            order = list(methods) if repeat % 2 == 0 else list(reversed(methods))
            for name in order:
                start = time.perf_counter()
                maps[name] = np.asarray(methods[name](images, pixel_size))
                times[name].append(1000 * (time.perf_counter() - start) / len(images))
        print(f"{'method':48s} {'ms/image':>9s} {'(runs)':>16s}  gap mm med / max    "
              f"gap rel. med / max")
        for name in methods:
            gap = np.abs(maps[name].reshape(len(images), -1).sum(1) - difference)
            relative = gap / np.maximum(np.abs(difference), 1e-12)
            runs = "/".join(f"{t:.0f}" for t in times[name])
            print(f"{name:48s} {np.median(times[name]):9.0f} {runs:>16s}  "
                  f"{np.median(gap):.3g} / {np.max(gap):.3g}   "
                  f"{100 * np.median(relative):.3g} % / {100 * np.max(relative):.3g} %")
        print(f"load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

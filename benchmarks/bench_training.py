"""Training throughput (images/s) per backbone and input size, and the cost of the input
pipeline: img/s when training from the HC18 tf.data pipeline divided by img/s on the same
tensors held in memory (target >= 0.9).

    .venv/bin/python benchmarks/bench_training.py                       # everything
    .venv/bin/python benchmarks/bench_training.py --backbones small_cnn mobilenetv2 \
        --sizes 128 --steps 5
    .venv/bin/python benchmarks/bench_training.py --skip-backbones --data ../shared/data/hc18

Numbers depend on the machine and on whatever else runs on it; the script prints the CPU
count so results can be put in context. Uses random weights (no download).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_HC18 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hc18"


def _compiled(backbone: str, size: int):
    import keras

    from fetalhc.losses import get_loss
    from fetalhc.models import build_model

    keras.utils.set_random_seed(0)
    model = build_model(backbone, (size, size, 1), hc_mean_px=150.0, hc_std_px=30.0)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=get_loss("mae"))
    return model


def _images_per_second(model, data, steps: int, batch_size: int, warmup: int = 2) -> float:
    """Train ``warmup`` steps (tracing), then time ``steps`` steps; ``data`` is a repeated
    tf.data.Dataset or an (x, y) pair of numpy arrays."""
    if isinstance(data, tuple):
        x, y = data
        n = warmup * batch_size
        model.fit(x[:n], y[:n], batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
        n = steps * batch_size
        start = time.perf_counter()
        model.fit(x[:n], y[:n], batch_size=batch_size, epochs=1, verbose=0, shuffle=False)
        return n / (time.perf_counter() - start)
    model.fit(data, steps_per_epoch=warmup, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps * batch_size / (time.perf_counter() - start)


def bench_backbones(backbones, sizes, steps: int, batch_size: int) -> None:
    import numpy as np

    print(f"\n## training throughput, random tensors in memory, batch {batch_size}, "
          f"{steps} timed steps")
    print("| backbone | input (px) | parameters | train img/s |")
    print("| --- | --- | --- | --- |")
    rng = np.random.default_rng(0)
    for size in sizes:
        n = max(steps, 2) * batch_size
        x = rng.normal(size=(n, size, size, 1)).astype("float32")
        y = np.stack([rng.uniform(60, 340, n), rng.uniform(0.1, 0.4, n)], 1).astype("float32")
        for backbone in backbones:
            try:
                model = _compiled(backbone, size)
            except ValueError as error:
                print(f"| {backbone} | {size} | - | skipped: {error} |")
                continue
            rate = _images_per_second(model, (x, y), steps, batch_size)
            print(f"| {backbone} | {size} | {model.count_params():,} | {rate:.1f} |", flush=True)


def bench_pipeline(data_dir: Path | None, backbone: str, size: int, steps: int,
                   batch_size: int, n_images: int) -> None:
    import numpy as np
    import tensorflow as tf

    from fetalhc.data import load_arrays, load_index, make_dataset, write_phantom_dataset
    from fetalhc.losses import pack_targets

    if data_dir is None or not (data_dir / "training_set_pixel_size_and_HC.csv").is_file():
        data_dir = Path(tempfile.mkdtemp()) / "phantoms"
        write_phantom_dataset(data_dir, n=n_images, seed=0)
        source = f"phantoms ({n_images} images)"
    else:
        source = str(data_dir)
    index = load_index(data_dir, "training", validate=False).head(n_images)
    print(f"\n## input pipeline: {backbone} at {size} px, batch {batch_size}, {steps} timed "
          f"steps, {len(index)} images of {source}")

    def fit_view(dataset):
        return dataset.map(
            lambda e: (e["image"], pack_targets(e["hc_mm"], e["pixel_size_mm"])),
            num_parallel_calls=tf.data.AUTOTUNE).repeat()

    arrays = load_arrays(index, image_size=size)
    x = arrays["image"]
    y = np.stack([arrays["hc_mm"], arrays["pixel_size_mm"]], 1).astype("float32")
    repeats = int(np.ceil((steps + 2) * batch_size / len(x)))
    x_all, y_all = np.concatenate([x] * repeats), np.concatenate([y] * repeats)

    rows = []
    memory = _images_per_second(_compiled(backbone, size), (x_all, y_all), steps, batch_size)
    rows.append(("numpy tensors in memory (model.fit(x, y))", memory))
    for label, kwargs in (
        ("tf.data, decoded on the fly (cache=False, shuffle, augment)",
         dict(cache=False, shuffle=True, augment=True)),
        ("tf.data, decoded on the fly (cache=False, shuffle)", dict(cache=False, shuffle=True)),
        ("tf.data, cache=True after one warm pass (shuffle)", dict(cache=True, shuffle=True)),
    ):
        dataset = make_dataset(index, image_size=size, batch_size=batch_size, seed=0, **kwargs)
        if kwargs["cache"]:
            for _ in dataset:  # fill the in-memory cache
                pass
        rate = _images_per_second(_compiled(backbone, size), fit_view(dataset), steps,
                                  batch_size)
        rows.append((label, rate))
    print("| source | train img/s | ratio to in-memory |")
    print("| --- | --- | --- |")
    for label, rate in rows:
        print(f"| {label} | {rate:.1f} | {rate / memory:.2f} |")


def main() -> None:
    from fetalhc.models import available_backbones

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=available_backbones())
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 224])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--data", type=Path, default=DEFAULT_HC18,
                        help="HC18-layout folder for the pipeline benchmark (phantoms if absent)")
    parser.add_argument("--pipeline-backbone", default="small_cnn")
    parser.add_argument("--pipeline-size", type=int, default=128)
    parser.add_argument("--pipeline-steps", type=int, default=20)
    parser.add_argument("--n-images", type=int, default=160)
    parser.add_argument("--skip-backbones", action="store_true")
    parser.add_argument("--skip-pipeline", action="store_true")
    args = parser.parse_args()
    print(f"# bench_training: {os.cpu_count()} CPUs visible (shared machine: other jobs may "
          "run at the same time)")
    if not args.skip_backbones:
        bench_backbones(args.backbones, args.sizes, args.steps, args.batch_size)
    if not args.skip_pipeline:
        bench_pipeline(args.data, args.pipeline_backbone, args.pipeline_size,
                       args.pipeline_steps, args.batch_size, args.n_images)


if __name__ == "__main__":
    main()

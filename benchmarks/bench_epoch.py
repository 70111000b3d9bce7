"""Where an epoch of ``fetalhc train`` goes: the HC18 recipe's epoch, taken apart.

The same network (the shipped config ``hc18_best``, with its ellipse head) and the same training
rows of the recipe's split, timed as:

1. ``in memory``: ``model.fit`` on the decoded images held as tensors (``from_tensor_slices``,
   shuffled, no augmentation): the reference rate; and on the same numpy arrays given to
   ``fit`` directly (Keras slices them per batch);
2. ``tf.data``: ``model.fit`` on ``fetalhc.training.setup.fit_dataset`` (cached, shuffled,
   augmented), no validation, no callbacks; and the same without augmentation;
3. ``+ validation``: (2) with the validation split evaluated every epoch;
4. ``fetalhc.train``: the whole command (validation, TensorBoard, epoch backup, best
   checkpoint, history), its per-epoch wall time read from ``history.csv``; and the same
   with ``tensorboard = false``.

Each variant runs ``--epochs`` epochs from a freshly built model; the first epoch (tracing,
filling the cache) is left out and the median of the others is reported. Writes a Markdown
table to ``--out`` (default ``benchmarks/results/bench_epoch.md``) with the machine's CPU
count and load average before and after, since timings on a shared machine are noisy: run
it on an idle machine and compare the ratios of one run.

    .venv/bin/python benchmarks/bench_epoch.py --data ../shared/data/hc18 --epochs 3
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HC18 = ROOT.parent / "shared" / "data" / "hc18"
DEFAULT_CONFIG = "hc18_best"  # a shipped config's name (fetalhc/configs/) or a TOML path


class EpochClock:
    """Wall time of every epoch (a Keras callback built lazily, so ``--help`` is cheap)."""

    def __new__(cls):
        import keras

        class _Clock(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.seconds = []

            def on_epoch_begin(self, epoch, logs=None):
                self._start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(time.perf_counter() - self._start)

        return _Clock()


def _steady(seconds: list[float]) -> float:
    """The median epoch time without the first epoch (tracing, cache filling)."""
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_HC18)
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" /
                        "bench_epoch.md")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch is left out)")

    import keras
    import numpy as np

    from fetalhc.data import load_arrays
    from fetalhc.files import write_text
    from fetalhc.training import resolve_config, run_split_index, train
    from fetalhc.training.run_folder import plan_run
    from fetalhc.training.setup import build_and_compile, fit_dataset, standardise_ellipse

    base = resolve_config(args.config, overrides={"train.epochs": args.epochs})
    # with the [run] and [split] sections train() would write (plan_run writes nothing)
    config, _ = plan_run(base, args.data, Path(tempfile.mkdtemp()) / "planned", False, False)
    train_index = run_split_index(config, args.data, "train")
    val_index = run_split_index(config, args.data, "val")
    n_train, batch = len(train_index), config["train"]["batch_size"]
    size = config["data"]["image_size"]
    load_before = os.getloadavg()
    print(f"{n_train} training / {len(val_index)} validation images, batch {batch}, "
          f"{size} px, {args.epochs} epochs per variant; load average {load_before}",
          flush=True)

    def fresh_model():
        keras.utils.set_random_seed(config["train"]["seed"])
        model, _, _ = build_and_compile(config, config["train"]["learning_rate"])
        return model

    rows: list[tuple[str, float, list[float]]] = []

    def record(label: str, seconds: list[float]) -> None:
        rows.append((label, _steady(seconds), seconds))
        print(f"{label}: epochs {[round(s, 1) for s in seconds]} s", flush=True)

    # 1. in memory: decoded once, targets as fit_dataset packs them
    arrays = load_arrays(train_index, image_size=size, with_ellipse=True)
    from fetalhc.losses import pack_targets
    from fetalhc.models.build import ELLIPSE_OUTPUT
    from fetalhc.models.graph import HC_OUTPUT

    y_hc = np.asarray(pack_targets(arrays["hc_mm"], arrays["pixel_size_mm"]))
    y = {HC_OUTPUT: y_hc,
         ELLIPSE_OUTPUT: np.asarray(standardise_ellipse(arrays["ellipse"], size))}
    import tensorflow as tf

    tensors = (tf.data.Dataset.from_tensor_slices((arrays["image"], y)).cache()
               .shuffle(n_train, seed=0).batch(batch).prefetch(tf.data.AUTOTUNE))
    clock = EpochClock()
    fresh_model().fit(tensors, epochs=args.epochs, verbose=0, callbacks=[clock])
    record("in memory (tensors, shuffled, no augmentation)", clock.seconds)
    clock = EpochClock()
    fresh_model().fit(arrays["image"], y, batch_size=batch, epochs=args.epochs, verbose=0,
                      shuffle=True, callbacks=[clock])
    record("in memory (numpy arrays given to fit)", clock.seconds)

    # 2. the tf.data pipeline, bare
    for label, augment in (("tf.data, cached, augmented (the recipe)", True),
                           ("tf.data, cached, no augmentation", False)):
        variant = {**config, "data": {**config["data"], "augment": augment}}
        clock = EpochClock()
        fresh_model().fit(fit_dataset(train_index, variant, training=True), epochs=args.epochs,
                          verbose=0, callbacks=[clock], shuffle=False)
        record(label, clock.seconds)

    # 3. + validation
    clock = EpochClock()
    fresh_model().fit(fit_dataset(train_index, config, training=True),
                      validation_data=fit_dataset(val_index, config, training=False),
                      epochs=args.epochs, verbose=0, callbacks=[clock], shuffle=False)
    record("tf.data (the recipe) + validation every epoch", clock.seconds)

    # 4. the whole of fetalhc.train
    for label, tensorboard in (("fetalhc.train (the recipe, all callbacks)", True),
                               ("fetalhc.train without TensorBoard", False)):
        with tempfile.TemporaryDirectory() as scratch:
            variant = {**base, "train": {**base["train"], "tensorboard": tensorboard}}
            result = train(variant, args.data, Path(scratch) / "run")
            record(label, [float(s) for s in result.history["epoch_seconds"]])

    load_after = os.getloadavg()
    reference = rows[0][1]
    lines = [
        "# Where an epoch of `fetalhc train` goes (the HC18 recipe)",
        "",
        f"Written by `{shlex.join(['.venv/bin/python', 'benchmarks/bench_epoch.py', *(argv if argv is not None else sys.argv[1:])])}`.",
        "",
        f"{n_train} training and {len(val_index)} validation images of the recipe's split, "
        f"batch {batch}, {size} px; {args.epochs} epochs per variant, the median epoch "
        f"without the first one. {os.cpu_count()} CPUs; load average (1, 5, 15 min) "
        f"{tuple(round(v, 2) for v in load_before)} before, "
        f"{tuple(round(v, 2) for v in load_after)} after.",
        "",
        "| variant | s / epoch | train img/s | ratio to in memory | every epoch (s) |",
        "| --- | --- | --- | --- | --- |",
        *(f"| {label} | {seconds:.1f} | {n_train / seconds:.1f} | {reference / seconds:.2f} | "
          + ", ".join(f"{value:.1f}" for value in every) + " |"
          for label, seconds, every in rows),
        "",
    ]
    write_text(args.out, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

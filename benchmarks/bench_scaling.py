"""Scaling benchmark (not a test): training throughput on 1 vs 2 (logical) devices with
MirroredStrategy, and explanation throughput with 1 vs 2 shards running in parallel.

    .venv/bin/python benchmarks/bench_scaling.py [--size 64] [--steps 20] [--images 16]

Each configuration runs in its own process (logical devices must be configured before
TensorFlow starts). On a CPU-only machine the two "devices" are logical CPU devices sharing
the same cores, so this measures the overhead of the strategy rather than a speed-up; on a
machine with two GPUs the same script (``mirrored`` picks the GPUs) measures real data
parallelism. The shard part runs two ``fetalhc explain --shard i/2`` processes at once.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

TRAIN_SCRIPT = """
    import json, sys, time
    import numpy as np
    import tensorflow as tf
    devices, size, steps, batch = (int(a) for a in sys.argv[1:5])
    data_dir = sys.argv[5]
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus and devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(devices)])
    import keras
    from fetalhc.data import load_arrays, load_index
    from fetalhc.losses import get_loss, pack_targets
    from fetalhc.models import build_model
    from fetalhc.training.strategy import make_strategy, synchronise_batch_norm

    arrays = load_arrays(load_index(data_dir, "training"), image_size=size)
    y = np.asarray(pack_targets(arrays["hc_mm"], arrays["pixel_size_mm"]))
    strategy = make_strategy("mirrored" if devices > 1 else "default")
    replicas = strategy.num_replicas_in_sync
    global_batch = batch * replicas
    dataset = tf.data.Dataset.from_tensor_slices((arrays["image"], y)).repeat().batch(
        global_batch).prefetch(2)
    with strategy.scope():
        model = build_model("small_cnn", input_shape=(size, size, 1), hc_mean_px=100.0,
                            hc_std_px=20.0)
        if replicas > 1:
            synchronise_batch_norm(model)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=get_loss("mae"))
    model.fit(dataset, epochs=1, steps_per_epoch=3, verbose=0)  # trace + warm up
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print("RESULT" + json.dumps({"replicas": replicas, "global_batch": global_batch,
                                 "images_per_s": steps * global_batch / wall,
                                 "images_per_cpu_s": steps * global_batch / cpu,
                                 "wall_s": wall}))
"""


def _python(script: str, *args) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES":
           os.environ.get("CUDA_VISIBLE_DEVICES", "")}
    completed = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
                               capture_output=True, text=True, env=env, timeout=1800)
    if completed.returncode:
        raise RuntimeError(completed.stderr[-2000:])
    line = next(x for x in completed.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def training(data_dir: Path, size: int, steps: int, batch: int) -> list[dict]:
    rows = []
    for devices in (1, 2):
        # same global batch: 1 x (2 batch) vs 2 replicas x batch
        per_replica = batch * 2 // devices
        result = _python(TRAIN_SCRIPT, devices, size, steps, per_replica, data_dir)
        rows.append({"devices": devices, **result})
    return rows


def shards(model: Path, data_dir: Path, out: Path) -> list[dict]:
    rows = []
    base = [sys.executable, "-m", "fetalhc.cli.main", "explain", "--model", str(model),
            "--data", str(data_dir), "--split", "challenge", "--methods",
            "gradient,integrated_gradients", "--batch-size", "8"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    for count in (1, 2):
        started = time.perf_counter()
        processes = [subprocess.Popen(
            [*base, "--out", str(out / f"n{count}_{i}"),
             *(["--shard", f"{i}/{count}"] if count > 1 else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
            for i in range(1, count + 1)]
        for process in processes:
            _, error = process.communicate(timeout=1800)
            if process.returncode:
                raise RuntimeError(error[-2000:])
        rows.append({"shards": count, "wall_s": time.perf_counter() - started})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="input side (px)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--batch", type=int, default=8, help="per-replica batch with 2 devices")
    parser.add_argument("--images", type=int, default=16, help="images explained")
    args = parser.parse_args()

    import keras

    from fetalhc.data import write_phantom_dataset
    from fetalhc.models import build_model

    print(f"CPU cores visible: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f} "
          "(shared machine: numbers vary run to run)")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        data = write_phantom_dataset(folder / "phantoms", n=64, seed=0,
                                     challenge=args.images)
        print(f"\nTraining, small_cnn at {args.size} px, global batch {2 * args.batch}, "
              f"{args.steps} timed steps:")
        print("devices | replicas | images/s | images per CPU-s")
        for row in training(data, args.size, args.steps, args.batch):
            print(f"{row['devices']} | {row['replicas']} | {row['images_per_s']:.1f} | "
                  f"{row['images_per_cpu_s']:.1f}")
        keras.utils.set_random_seed(0)
        model_path = folder / "model.keras"
        build_model("small_cnn", input_shape=(args.size, args.size, 1), hc_mean_px=100.0,
                    hc_std_px=20.0).save(model_path)
        print(f"\nExplain (gradient + integrated_gradients, {args.images} images, "
              f"{args.size} px, PNG overlays), processes started together:")
        print("shards | wall (s) | images/s")
        for row in shards(model_path, data, folder / "explain"):
            print(f"{row['shards']} | {row['wall_s']:.1f} | {args.images / row['wall_s']:.2f}")


if __name__ == "__main__":
    main()

"""Throughput of fetalhc.evaluate's batched perturbation curves vs a naive loop.

Counts image-steps per second (one image-step = one perturbed image through the model) for

- ``ours``: ``region_perturbation`` (MoRF, 4 x 4 grid, 15 steps) and ``deletion_insertion``
  (deletion, 20 steps): every perturbed version built and predicted inside one tf.function,
  in batches of ``--batch-size`` images;
- ``naive``: one image and one step at a time (build the perturbed image in numpy, call the
  model on a batch of one), which is how a straightforward loop over images evaluates.

Both give the same curves (checked). Not compared: xplique's Deletion/Insertion (not
installed here; left for later). Run: ``.venv/bin/python benchmarks/bench_evaluate.py``.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def naive_curves(model, images, rank, replacement, counts):
    """One image, one step per forward pass."""
    out = np.empty((len(images), len(counts)), np.float32)
    for i in range(len(images)):
        for j, count in enumerate(counts):
            mask = (rank[i] < count)[..., None]
            perturbed = np.where(mask, replacement[i], images[i])[None]
            out[i, j] = float(np.asarray(model(perturbed, training=False)).reshape(-1)[0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--naive-images", type=int, default=8,
                        help="Images for the (slow) naive loop; its rate is per image-step.")
    args = parser.parse_args()

    from fetalhc import evaluate
    from fetalhc.evaluate.regions import (
        make_grid,
        region_rank_map,
        region_scores,
        removal_order,
        replacement_images,
    )
    from fetalhc.models import build_model

    model = build_model(args.backbone, (args.size, args.size, 1))
    rng = np.random.default_rng(0)
    images = rng.normal(size=(args.images, args.size, args.size, 1)).astype(np.float32)
    maps = rng.normal(size=images.shape[:3]).astype(np.float32)
    pixel_size = np.full(args.images, 0.5, np.float32)
    reference = np.full(args.images, 150.0, np.float32)
    print(f"backbone {args.backbone}, {args.images} images of {args.size} px, "
          f"batch size {args.batch_size}, TF threads: default (no pinning)")

    # Region perturbation, MoRF only, 15 steps → 16 forward passes per image.
    kwargs = dict(grid=4, steps=15, orders=["morf"], perturbation="noise", noise_sd=0.3,
                  batch_size=args.batch_size)
    evaluate.region_perturbation(model, images[:2], maps[:2], 0.5, **kwargs)  # trace
    start = time.perf_counter()
    ours = evaluate.region_perturbation(model, images, maps, pixel_size, reference, **kwargs)
    ours_time = time.perf_counter() - start
    grid = make_grid((args.size, args.size), grid=4)
    rank = region_rank_map(removal_order(region_scores(maps, grid), "morf"), grid)
    replacement = replacement_images(images, "noise", noise_sd=0.3, seed=0)
    counts = np.arange(16)
    naive_curves(model, images[:1], rank[:1], replacement[:1], counts[:2])  # warm up
    k = min(args.naive_images, args.images)
    start = time.perf_counter()
    naive = naive_curves(model, images[:k], rank[:k], replacement[:k], counts)
    naive_rate = k * len(counts) / (time.perf_counter() - start)
    np.testing.assert_allclose(ours.hc_mm[:k, 0] / 0.5, naive, rtol=1e-3, atol=1e-3)
    ours_rate = args.images * len(counts) / ours_time
    print(f"AOPC (MoRF, 16 points):   ours {ours_rate:8.1f} image-steps/s   "
          f"naive {naive_rate:8.1f} image-steps/s   speed-up {ours_rate / naive_rate:5.1f}x")

    # Deletion, pixels, 20 steps → 21 forward passes per image.
    dkwargs = dict(kinds=["deletion"], steps=20, batch_size=args.batch_size)
    evaluate.deletion_insertion(model, images[:2], maps[:2], 0.5, **dkwargs)
    start = time.perf_counter()
    evaluate.deletion_insertion(model, images, maps, pixel_size, reference, **dkwargs)
    ours_time = time.perf_counter() - start
    from fetalhc.evaluate.regions import pixel_rank_map

    prank = pixel_rank_map(maps)
    dcounts = np.round(np.linspace(0, 1, 21) * args.size ** 2).astype(int)
    start = time.perf_counter()
    naive_curves(model, images[:k], prank[:k], np.zeros_like(images[:k]), dcounts)
    naive_rate = k * len(dcounts) / (time.perf_counter() - start)
    ours_rate = args.images * len(dcounts) / ours_time
    print(f"deletion (pixels, 21 pts): ours {ours_rate:8.1f} image-steps/s   "
          f"naive {naive_rate:8.1f} image-steps/s   speed-up {ours_rate / naive_rate:5.1f}x")


if __name__ == "__main__":
    main()

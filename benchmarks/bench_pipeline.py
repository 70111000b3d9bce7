"""Images per second delivered by fetalhc.data.make_dataset, uncached and cached.

Usage: python benchmarks/bench_pipeline.py [--root HC18] [--n 256] [--sizes 128 224]

Reads HC18 from --root or $FETALHC_HC18 (default ../shared/data/hc18); without it, writes
phantoms to a temporary folder. "uncached" = one pass with decoding; "cached" = a pass over
the in-memory cache after a first pass filled it. Prints one line per setting: images per
wall-clock second and per CPU-second of the process (the latter is less sensitive to other
jobs on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def images_per_second(dataset, n_images: int) -> tuple[float, float]:
    """(images per wall-clock second, images per CPU second of this process)."""
    start, start_cpu = time.perf_counter(), time.process_time()
    seen = 0
    for batch in dataset:
        seen += int(batch["image"].shape[0])
    elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    if seen != n_images:
        raise RuntimeError(f"expected {n_images} images, got {seen}")
    return n_images / elapsed, n_images / cpu


def main() -> None:
    from fetalhc.data import load_index, make_dataset, write_phantom_dataset

    default_root = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hc18"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.environ.get("FETALHC_HC18", str(default_root)))
    parser.add_argument("--n", type=int, default=256, help="images per pass")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    root = Path(args.root)
    source = f"HC18 at {root}"
    if not (root / "training_set_pixel_size_and_HC.csv").is_file():
        root = Path(tempfile.mkdtemp()) / "phantoms"
        write_phantom_dataset(root, n=args.n, seed=0)
        source = f"phantoms (320x216) in {root}"
    index = load_index(root, validate=False).head(args.n)
    print(f"source: {source}; {len(index)} images, batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs")
    for size in args.sizes:
        for augment in (False, True):
            uncached = make_dataset(index, image_size=size, batch_size=args.batch_size,
                                    augment=augment)
            images_per_second(uncached, len(index))  # warm-up: tracing, file cache
            rate = images_per_second(uncached, len(index))
            cached = make_dataset(index, image_size=size, batch_size=args.batch_size,
                                  augment=augment, cache=True, shuffle=True)
            images_per_second(cached, len(index))  # fills the cache
            cached_rate = images_per_second(cached, len(index))
            print(f"size {size:3d} augment={augment!s:5}: uncached {rate[0]:7.1f} images/s "
                  f"({rate[1]:7.1f} per CPU-s), cached {cached_rate[0]:7.1f} images/s "
                  f"({cached_rate[1]:7.1f} per CPU-s)")


if __name__ == "__main__":
    main()

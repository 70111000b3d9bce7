"""The study's perturbation diagnosis on phantoms, the reference the HC18 page compares with.

Writes 200 phantoms (``fetalhc.data.write_phantom_dataset``, seed 0) to
``runs/phantom-diagnosis/phantoms``, trains the HC18 recipe's whole-image network
(the shipped config ``hc18_best``) on them for ``--epochs`` epochs into
``runs/phantom-diagnosis/run`` (reused when its config is the same), explains its val + test
phantoms with every method and runs the study's diagnose step on them
(:func:`fetalhc.report.study_diagnosis.write_diagnosis`: how far each perturbation moves the
prediction in a random order; each method's MoRF − random gap per perturbation) into
``--out`` (default ``docs/study/phantoms``), with ``model.json`` (the run's errors on those
images, its epochs and the command). ``fetalhc study --compare-diagnosis docs/study/phantoms``
puts it beside the HC18 models on the study page.

    python scripts/phantom_diagnosis.py --epochs 20
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "hc18_best"  # the shipped config (fetalhc/configs/hc18_best.toml)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "phantom-diagnosis")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "study" / "phantoms")
    parser.add_argument("--precision", default="mixed_bfloat16")
    args = parser.parse_args()

    import numpy as np

    import fetalhc
    import fetalhc.explain as fe
    from fetalhc.data import load_arrays, write_phantom_dataset
    from fetalhc.evaluate.forward import BatchedForward
    from fetalhc.files import write_json
    from fetalhc.report.provenance import image_keys, index_digest, model_digest
    from fetalhc.report.study_diagnosis import diagnosis_record, write_diagnosis
    from fetalhc.training import resolve_model_split, train_or_reuse

    phantoms = args.work / "phantoms"
    if not phantoms.is_dir():
        write_phantom_dataset(phantoms, n=200, seed=0)
    overrides = {"train.epochs": args.epochs, "train.tensorboard": False,
                 "train.patience": args.epochs, "data.val_fraction": 0.1,
                 "data.test_fraction": 0.1}
    start = time.perf_counter()
    train_or_reuse(CONFIG, phantoms, args.work / "run",
                   overrides=overrides)
    train_seconds = time.perf_counter() - start
    run = resolve_model_split(args.work / "run", phantoms, "val+test")
    model = fetalhc.load_model(run.model_file)
    methods = fe.available_methods()
    arrays = load_arrays(run.index, image_size=run.image_size)
    maps_dir = args.work / "maps"
    maps_dir.mkdir(parents=True, exist_ok=True)
    for method in methods:
        maps = fe.explain(model, arrays["image"], method, target="hc_mm",
                          pixel_size=arrays["pixel_size_mm"], reference=arrays["hc_mm"])
        np.save(maps_dir / f"{method}.npy", np.asarray(maps, dtype=np.float32))
    record = diagnosis_record({"model": model_digest(run.model_file), "split": run.split,
                               "index": index_digest(run.index),
                               "image_keys": image_keys(run.index),
                               "image_size": run.image_size}, methods, args.precision)
    write_diagnosis(model, run.index, run.image_size, maps_dir, args.out, methods, record,
                    args.precision)
    hc_mm = BatchedForward(model).predict(arrays["image"]) * arrays["pixel_size_mm"]
    error = np.abs(hc_mm - arrays["hc_mm"])
    write_json(args.out / "model.json", {
        "data": "200 phantoms, fetalhc.data.write_phantom_dataset(n=200, seed=0)",
        "config": CONFIG, "overrides": overrides,
        "images": int(len(error)), "split": run.split,
        "MAE on the studied images (mm)": float(error.mean()),
        "mean reference HC (mm)": float(np.mean(arrays["hc_mm"])),
        "train or reuse seconds": train_seconds,
        "command": " ".join(["python", *map(shlex.quote, sys.argv)])})
    print(f"wrote {args.out}: {len(error)} phantoms, MAE {error.mean():.2f} mm")


if __name__ == "__main__":
    main()

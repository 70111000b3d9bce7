"""Does the forward passes' precision change the AOPC? float32 against mixed bfloat16.

For one model and the first ``--images`` images of a split, each method's maps are scored
with a protocol (``--protocol paper`` or ``rich``, the study's settings) twice: forward
passes in float32 and in mixed bfloat16. Per method: the mean AOPC (mm) of each, the mean
paired difference with its 95 % bootstrap CI, and the half-width of the float32 AOPC's own
CI; and the wall seconds of each precision. bfloat16 is good enough for the study when
every paired difference is small against the AOPC's CI (the study's verdicts rest on those
CIs).

Run: ``.venv/bin/python benchmarks/precision_aopc.py --model models/hc18-plain-mae
--data ../shared/data/hc18 --split val+test --images 48
--out benchmarks/results/precision_aopc.csv``
"""

from __future__ import annotations

import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from study_inputs import load_study_inputs, study_parser  # noqa: E402


def main() -> None:
    parser = study_parser(__doc__.splitlines()[0], images=48, split="val+test")
    parser.add_argument("--protocol", default="paper", choices=("paper", "rich"))
    parser.add_argument("--methods",
                        default="gradient,input_x_gradient,lrp_epsilon,gradcam,occlusion")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import fetalhc.explain as fe
    from fetalhc.evaluate import evaluate_maps
    from fetalhc.evaluate.forward import BatchedForward
    from fetalhc.evaluate.stats import bootstrap_ci
    from fetalhc.report.study import protocol_settings

    run, model, rows, arrays = load_study_inputs(args)
    images, pixel, reference = arrays["image"], arrays["pixel_size_mm"], arrays["hc_mm"]
    settings = protocol_settings(args.protocol, run.image_size)
    column = "aopc_morf_abs_error_mm"
    print(f"{run.model_file}, {len(images)} {args.split} images, {args.protocol} protocol, "
          f"load {os.getloadavg()[0]:.2f}")
    forwards = {p: BatchedForward(model, settings.batch_size, p)
                for p in ("float32", "mixed_bfloat16")}
    records = []
    for method in args.methods.split(","):
        maps = fe.explain(model, images, method, target="hc_mm", pixel_size=pixel,
                          reference=reference)
        values, seconds = {}, {}
        for precision, forward in forwards.items():
            start = time.perf_counter()
            result = evaluate_maps(model, images, maps, pixel, reference, metrics=("aopc",),
                                   settings=settings, forward=forward)
            seconds[precision] = time.perf_counter() - start
            values[precision] = result.per_image[column].to_numpy()
        difference = values["mixed_bfloat16"] - values["float32"]
        _, low, high, _ = bootstrap_ci(difference, seed=0)
        _, f_low, f_high, _ = bootstrap_ci(values["float32"], seed=0)
        records.append({
            "method": method, "n images": len(images),
            "float32 AOPC (mm)": values["float32"].mean(),
            "bfloat16 AOPC (mm)": values["mixed_bfloat16"].mean(),
            "paired difference (mm)": difference.mean(),
            "difference CI low (mm)": low, "difference CI high (mm)": high,
            "max abs difference per image (mm)": np.abs(difference).max(),
            "float32 AOPC CI half-width (mm)": (f_high - f_low) / 2,
            "float32 seconds": seconds["float32"],
            "bfloat16 seconds": seconds["mixed_bfloat16"]})
        print(pd.DataFrame(records[-1:]).round(4).to_string(index=False), flush=True)
    table = pd.DataFrame(records)
    ratio = table["float32 seconds"].sum() / table["bfloat16 seconds"].sum()
    print(f"speed-up of bfloat16 (all methods): {ratio:.2f}x")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False, float_format="%.5g")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""What the worst-predicted HC18 images share (issue #19 step 3).

Reads the per-image predictions of one lever run (``docs/hc18-model/levers/<name>.csv``,
written by ``scripts/hc18_levers.py``), measures each image from its annotation and pixels
(reference HC, pixel size, head size in original px and as a share of the image's long
side, whether the head ellipse runs past the image border, skull contrast: mean intensity on
the annotated outline minus the image's mean, in image SDs) and writes
``docs/hc18-model/worst/<name>.csv`` (all images, worst first) and
``docs/hc18-model/worst/<name>.png`` (the worst 20 with the reference ellipse).

    python scripts/hc18_worst.py base-e60 [--data $FETALHC_HC18] [--count 20]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
LEVERS = ROOT / "docs" / "hc18-model" / "levers"
WORST = ROOT / "docs" / "hc18-model" / "worst"


def ellipse_half_extent(a, b, angle):
    """Half width and half height of the axis-aligned box around an ellipse."""
    cos, sin = np.cos(angle), np.sin(angle)
    return np.sqrt((a * cos) ** 2 + (b * sin) ** 2), np.sqrt((a * sin) ** 2 + (b * cos) ** 2)


def image_features(index: pd.DataFrame) -> pd.DataFrame:
    """Per image: head size and position from the annotation, skull contrast from pixels."""
    from PIL import Image

    from fetalhc.data.ellipse import read_annotation
    from fetalhc.data.pipeline import annotation_ellipses

    ellipses = annotation_ellipses(index)
    width = index["width_px"].to_numpy(float)
    height = index["height_px"].to_numpy(float)
    half_w, half_h = ellipse_half_extent(ellipses[:, 2], ellipses[:, 3], ellipses[:, 4])
    overshoot = np.max(np.stack([
        half_w - ellipses[:, 0], ellipses[:, 0] + half_w - (width - 1),
        half_h - ellipses[:, 1], ellipses[:, 1] + half_h - (height - 1)]), axis=0)
    contrast = []
    for image_path, annotation_path in zip(index["image_path"], index["annotation_path"],
                                           strict=True):
        pixels = np.asarray(Image.open(image_path).convert("L"), dtype=np.float64)
        outline = read_annotation(annotation_path) > 0
        spread = pixels.std() or 1.0
        contrast.append((pixels[outline].mean() - pixels.mean()) / spread)
    return pd.DataFrame({
        "filename": index["filename"].to_numpy(),
        "semi-major axis (px)": ellipses[:, 2],
        "head / long side": 2 * ellipses[:, 2] / np.maximum(width, height),
        "past the border (px)": np.maximum(overshoot, 0.0),
        "touches border": overshoot > -1.0,
        "skull contrast (SD)": contrast,
    })


def contact_sheet(table: pd.DataFrame, index: pd.DataFrame, count: int, path: Path) -> None:
    from matplotlib.figure import Figure
    from matplotlib.patches import Ellipse
    from PIL import Image

    from fetalhc.data.pipeline import annotation_ellipses

    rows = table.head(count)
    chosen = index.set_index("filename").loc[rows["filename"]].reset_index()
    ellipses = annotation_ellipses(chosen)
    columns = 5
    lines = int(np.ceil(len(rows) / columns))
    figure = Figure(figsize=(3.2 * columns, 2.5 * lines), dpi=60)
    for i, (row, ellipse) in enumerate(zip(rows.itertuples(index=False), ellipses,
                                           strict=True)):
        axis = figure.add_subplot(lines, columns, i + 1)
        image = np.asarray(Image.open(chosen["image_path"].iloc[i]).convert("L"))
        axis.imshow(image, cmap="gray")
        axis.add_patch(Ellipse((ellipse[0], ellipse[1]), 2 * ellipse[2], 2 * ellipse[3],
                               angle=np.degrees(ellipse[4]), fill=False, color="lime", lw=1))
        axis.set_title(f"{row.filename}: ref {row._asdict()['reference_mm']:.0f} mm, "
                       f"err {row._asdict()['error_mm']:+.1f} mm", fontsize=7)
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="lever run name (docs/hc18-model/levers/<name>.csv)")
    parser.add_argument("--data", default=os.environ.get("FETALHC_HC18",
                                                         str(ROOT.parent / "shared/data/hc18")))
    parser.add_argument("--count", type=int, default=20)
    args = parser.parse_args(argv)
    from fetalhc.data import load_index
    from fetalhc.files import write_csv

    predictions = pd.read_csv(LEVERS / f"{args.name}.csv")
    index = load_index(args.data)
    index = index[index["filename"].isin(predictions["filename"])].reset_index(drop=True)
    table = predictions.merge(image_features(index), on="filename", validate="one_to_one")
    table["error (mm)"] = table["prediction (mm)"] - table["reference (mm)"]
    table["abs error (mm)"] = table["error (mm)"].abs()
    table = table.sort_values("abs error (mm)", ascending=False, kind="stable")
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    WORST.mkdir(parents=True, exist_ok=True)
    write_csv(table, WORST / f"{args.name}.csv")
    sheet = table.rename(columns={"reference (mm)": "reference_mm", "error (mm)": "error_mm"})
    contact_sheet(sheet, index, args.count, WORST / f"{args.name}.png")
    worst = table.head(args.count)
    rest = table.iloc[args.count:]
    numeric = ["reference (mm)", "pixel size (mm)", "semi-major axis (px)", "head / long side",
               "skull contrast (SD)", "touches border"]
    print(pd.DataFrame({"worst": worst[numeric].astype(float).median(),
                        "rest": rest[numeric].astype(float).median()}).to_string())


if __name__ == "__main__":
    main()

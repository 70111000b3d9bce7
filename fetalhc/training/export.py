"""``fetalhc export``: a run folder's model as one end-to-end ``.keras`` file with its card.

:func:`export_run` reads the run folder (its model, ``config.toml`` and ``metrics.json``),
builds the model card (:func:`fetalhc.models.export.model_card`: units, the pixel-size
convention, the training data and split sizes, the MAE per split with its 95 % CI, the
intended use) and writes the end-to-end model of :func:`fetalhc.models.export.export_model`
atomically. The file loads with plain ``keras.models.load_model`` after ``import fetalhc``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from fetalhc.files import sha256_of_file
from fetalhc.training.run_folder import METRICS_FILE, load_run, save_model_atomically
from fetalhc.training.setup import crop_margin_of

EXPORT_SPLITS = ("train", "val", "test")
Z_95 = 1.959963984540054  # the normal 97.5 % quantile


def accuracy_of(metrics: dict) -> dict:
    """Per split of a run's ``metrics.json``: n, MAE in mm with its 95 % CI (normal
    approximation, MAE ± 1.96 SD / √n), RMSE and mean difference in mm."""
    accuracy = {}
    for split in EXPORT_SPLITS:
        scores = metrics.get(split)
        if not isinstance(scores, dict) or "mae_mm" not in scores:
            continue
        n, mae, sd = int(scores["n"]), float(scores["mae_mm"]), scores.get("mae_sd_mm")
        entry = {"n": n, "mae_mm": mae}
        if sd is not None and n > 1 and math.isfinite(float(sd)):
            half = Z_95 * float(sd) / math.sqrt(n)
            entry["mae_ci95_mm"] = [mae - half, mae + half]
        for key in ("rmse_mm", "df_mm", "pmae_percent"):
            if key in scores:
                entry[key] = float(scores[key])
        accuracy[split] = entry
    return accuracy


def export_run(run_path: str | os.PathLike, out: str | os.PathLike, *,
               overwrite: bool = False) -> dict:
    """Export the run folder ``run_path`` (or the ``model.keras`` in one) to ``out``
    (``.keras``). Refuses a crop run (it measures crops placed by its localiser, a second
    model) and an existing ``out`` unless ``overwrite``. Returns the card and the paths."""
    import json

    import fetalhc
    from fetalhc.models.export import export_model, model_card

    out = Path(out)
    if out.suffix != ".keras":
        raise ValueError(f"--out {out}: an exported model is a .keras file")
    if out.exists() and not overwrite:
        raise FileExistsError(f"--out {out} exists; choose another file or allow overwriting")
    run = load_run(run_path)
    if crop_margin_of(run.config) > 0:
        raise ValueError(f"{run.run_dir} is a crop run: it measures crops placed by its "
                         "localiser, a second model the export does not hold; export a "
                         "whole-image run (e.g. the localiser itself)")
    if not run.model_path.is_file():
        raise FileNotFoundError(f"{run.run_dir} has no model.keras (has its training saved "
                                "a model?)")
    metrics_path = run.run_dir / METRICS_FILE
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    splits = run.config.get("split", {})
    record = run.config.get("run", {})
    card = model_card(
        name=run.run_dir.name, image_size=run.image_size,
        training={
            "data_dir": record.get("data_dir"),
            "images": {split: len(splits.get(split, [])) for split in EXPORT_SPLITS},
            "hc_range_mm": [record.get("hc_min_mm"), record.get("hc_max_mm")],
            "loss": run.config.get("train", {}).get("loss"),
            "backbone": run.config.get("model", {}).get("backbone"),
            "epochs_run": metrics.get("epochs_run"),
        },
        accuracy=accuracy_of(metrics),
        source={"run": str(run.run_dir), "model_sha256": sha256_of_file(run.model_path),
                "fetalhc": fetalhc.__version__})
    model = fetalhc.load_model(run.model_path)
    exported = export_model(model, run.image_size, card, name=model.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model_atomically(exported, out)
    return {"out": out, "card": card}

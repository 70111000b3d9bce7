"""Inference with a trained model: HC (mm) for index rows, the per-image error table, scores.

``predict_hc_mm`` runs the model on the images and pixel sizes only (the reference HC never
reaches it); ``prediction_table`` joins the predictions with the reference HC;
``predict_and_score`` does both and summarises the errors in mm. This is prediction, not
the explanation evaluation of ``fetalhc.evaluate``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from fetalhc.models.graph import hc_output_value
from fetalhc.models.io import check_input_size


def predict_hc_mm(model, index: pd.DataFrame, image_size: int, batch_size: int = 32,
                  tta: bool = False, on_batch=None) -> pd.DataFrame:
    """Predict HC (mm) for the rows of ``index``; uses only images and pixel sizes.
    ``on_batch(n)`` (optional) is called after each batch with its number of images (e.g. a
    progress bar's ``update``).

    Returns a DataFrame with ``filename``, ``pixel size (mm)`` (of the original image),
    ``input pixel size (mm)``, ``prediction (px)`` (input px) and ``prediction (mm)``.
    ``tta`` averages the predictions (in input px) over the identity and the horizontal,
    vertical and double flips, which all keep the HC of an ellipse.
    """
    from fetalhc.data import make_dataset

    check_input_size(model, image_size)
    if len(index) == 0:
        raise ValueError("nothing to predict: the split is empty")
    # hc_mm is replaced so the reference can never reach the computation.
    blind = index.assign(hc_mm=np.nan)
    dataset = make_dataset(blind, image_size=image_size, batch_size=batch_size, shuffle=False,
                           augment=False, cache=False)
    names, pixel_sizes, predictions = [], [], []
    for batch in dataset:
        images = batch["image"]
        views = [images]
        if tta:
            views += [images[:, :, ::-1], images[:, ::-1, :], images[:, ::-1, ::-1]]
        outputs = []
        for view in views:
            output = hc_output_value(model(view, training=False), model)
            outputs.append(np.asarray(output, dtype=np.float64).reshape(-1))
        predictions.append(np.mean(outputs, axis=0))
        pixel_sizes.append(batch["pixel_size_mm"].numpy().astype(np.float64))
        names.extend(name.decode() for name in batch["filename"].numpy())
        if on_batch is not None:
            on_batch(int(images.shape[0]))
    prediction_px = np.concatenate(predictions)
    pixel_size_input = np.concatenate(pixel_sizes)
    return pd.DataFrame({
        "filename": names,
        "pixel size (mm)": index["pixel_size_mm"].to_numpy(np.float64),
        "input pixel size (mm)": pixel_size_input,
        "prediction (px)": prediction_px,
        "prediction (mm)": prediction_px * pixel_size_input,
    })


def prediction_table(predictions: pd.DataFrame, index: pd.DataFrame) -> pd.DataFrame:
    """Join predictions with the index's reference HC → the per-image error table (mm)."""
    reference = index["hc_mm"].to_numpy(np.float64)
    table = pd.DataFrame({
        "filename": predictions["filename"],
        "pixel size (mm)": predictions["pixel size (mm)"],
        "reference (mm)": reference,
        "prediction (mm)": predictions["prediction (mm)"],
    })
    table["error (mm)"] = table["prediction (mm)"] - table["reference (mm)"]
    table["abs error (mm)"] = table["error (mm)"].abs()
    return table


def predict_and_score(model, index: pd.DataFrame, image_size: int, batch_size: int = 32,
                      tta: bool = False) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Predict a labelled split and score it: (per-image table, metrics in mm).

    Re-exported as ``fetalhc.training.evaluate_split`` (its former name)."""
    from fetalhc.metrics import summarise_mm

    predictions = predict_hc_mm(model, index, image_size, batch_size=batch_size, tta=tta)
    table = prediction_table(predictions, index)
    return table, summarise_mm(table["prediction (mm)"], table["reference (mm)"])

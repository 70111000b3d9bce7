"""Localise, then measure: a stage-1 model's ``ellipse`` output → crop regions per image.

A **localiser** is a fetalhc model with the auxiliary output ``ellipse`` (trained with
``[model] aux_ellipse = true``) on whole letterboxed images. :func:`predict_ellipses` runs
it and maps its output back to ORIGINAL image px (undo the standardisation of
``fetalhc.models.ellipse_head``, then the letterbox of ``fetalhc.data.input_geometry``);
:func:`localised_index` turns those ellipses into the region columns of
``fetalhc.data.crop``, so that ``predict_hc_mm(crop_model, localised_index(...), S)`` feeds
the crop model the crops a prediction can make: the reference HC and annotation are never
read.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fetalhc.data.crop import REGION_COLUMNS, clamp_regions, ellipse_regions, with_regions
from fetalhc.data.pipeline import input_geometry
from fetalhc.models.build import ELLIPSE_OUTPUT
from fetalhc.models.ellipse_head import ellipse_from_output
from fetalhc.models.graph import output_names

DEFAULT_MARGIN = 1.25  # region side = 2 x margin x predicted semi-major axis
MIN_REGION_SIDE_PX = 8  # a localiser's degenerate ellipse still gives a usable crop


def check_localiser(model) -> int:
    """The square input size of a localiser; ``ValueError`` for a model without an
    ``ellipse`` output or with another input shape."""
    names = output_names(model)
    if ELLIPSE_OUTPUT not in names:
        raise ValueError(
            f"model {model.name!r} cannot localise: it has no {ELLIPSE_OUTPUT!r} output "
            f"(outputs: {', '.join(names) or 'none'}); a localiser is a stage-1 model "
            "trained with [model] aux_ellipse = true")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[-1] != 1 or shape[1] is None or shape[1] != shape[2]:
        raise ValueError(f"localiser {model.name!r} takes inputs of shape {shape[1:]}; "
                         "expected a fixed square (S, S, 1)")
    return int(shape[1])


def _letterbox_to_original(ellipses: np.ndarray, index: pd.DataFrame,
                           image_size: int) -> np.ndarray:
    """Ellipses (N, 5) in letterboxed input px → original px (the inverse of the map in
    ``fetalhc.data.pipeline``: centre through the content box, lengths through 1 / scale)."""
    out = np.empty_like(ellipses)
    for row, (width, height) in enumerate(zip(index["width_px"], index["height_px"],
                                              strict=True)):
        geometry = input_geometry(int(width), int(height), image_size)
        cx, cy, a, b, angle = ellipses[row]
        out[row] = [(cx - geometry.offset_x + 0.5) * int(width) / geometry.width - 0.5,
                    (cy - geometry.offset_y + 0.5) * int(height) / geometry.height - 0.5,
                    a / geometry.scale, b / geometry.scale, angle]
    return out


def predict_ellipses(localiser_model, index: pd.DataFrame, image_size: int | None = None,
                     batch_size: int = 32) -> np.ndarray:
    """The localiser's ellipse of every row of ``index``: float64 ``(N, 5)`` = cx, cy,
    semi-major, semi-minor (ORIGINAL px), angle_rad in ``[0, π)`` (as
    ``fetalhc.data.annotation_ellipses`` gives the reference).

    ``image_size``: the localiser's input size (default: read from the model). The images
    are letterboxed as the localiser was trained, whatever region columns ``index`` has;
    the reference HC and the annotations are not read.
    """
    from fetalhc.models.prediction import forward_pass

    size = check_localiser(localiser_model)
    if image_size is not None and int(image_size) != size:
        raise ValueError(f"localiser {localiser_model.name!r} takes {size} px inputs, got "
                         f"image_size {image_size}")
    if len(index) == 0:
        raise ValueError("nothing to localise: the index is empty")
    # letterboxed whole images: the region columns go; forward_pass blanks the reference HC
    blind = index.drop(columns=[c for c in REGION_COLUMNS if c in index.columns])
    values = forward_pass(localiser_model, blind, size, batch_size, ellipse=True).ellipse
    letterboxed = ellipse_from_output(values, size)
    return _letterbox_to_original(letterboxed, index, size)


def localised_index(localiser_model, index: pd.DataFrame, image_size: int | None = None,
                    margin: float = DEFAULT_MARGIN, batch_size: int = 32) -> pd.DataFrame:
    """``index`` with the region columns of crops around the localiser's ellipses
    (:func:`predict_ellipses`; side ``round(2 × margin × semi-major)``, see
    ``fetalhc.data.ellipse_regions``), ready for ``predict_hc_mm(crop_model, ..., S)``.

    ``image_size`` is the LOCALISER's input size (default: from the model); ``margin`` must
    be the crop model's ``[data] crop_margin``. Existing region columns are replaced. A
    region is kept usable whatever the localiser says: its centre inside the image, its side
    between 8 px and twice the image's longer side (``fetalhc.data.clamp_regions``).
    """
    ellipses = predict_ellipses(localiser_model, index, image_size, batch_size=batch_size)
    bad = ~np.all(np.isfinite(ellipses[:, :3]), axis=1)
    if bad.any():
        raise ValueError(f"the localiser gave a non-finite ellipse for "
                         f"{index['filename'].iloc[int(np.flatnonzero(bad)[0])]} (and "
                         f"{int(bad.sum()) - 1} more); is it a trained stage-1 model?")
    ellipses[:, 2] = np.maximum(ellipses[:, 2], 0.5)  # a zero axis still makes a region
    regions = clamp_regions(ellipse_regions(ellipses, margin), index["width_px"].to_numpy(),
                            index["height_px"].to_numpy(), MIN_REGION_SIDE_PX)
    return with_regions(index, regions)

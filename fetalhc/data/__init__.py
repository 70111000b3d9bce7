"""HC18 data: validated index, ellipses, grouped splits, tf.data pipeline, phantoms.

Imports no other fetalhc module but the foundation ``fetalhc.files``, through which it
writes every file (see docs/architecture.md). TensorFlow is imported only
when a pipeline function is called.
"""

from __future__ import annotations

from fetalhc.data.ellipse import (
    Ellipse,
    annotation_ellipse,
    ellipse_perimeter,
    fit_ellipse,
    hc_from_annotation,
)
from fetalhc.data.errors import DataError
from fetalhc.data.images import check_images
from fetalhc.data.index import group_id_of, index_problems, load_index
from fetalhc.data.phantom import write_phantom_dataset
from fetalhc.data.pipeline import (
    PREPROCESSING,
    Augmentation,
    annotation_ellipses,
    input_geometry,
    load_arrays,
    make_dataset,
    rasterise_outline,
)
from fetalhc.data.splits import kfold_split, split_index

__all__ = [
    "PREPROCESSING",
    "Augmentation",
    "DataError",
    "Ellipse",
    "annotation_ellipse",
    "annotation_ellipses",
    "check_images",
    "ellipse_perimeter",
    "fit_ellipse",
    "group_id_of",
    "hc_from_annotation",
    "index_problems",
    "input_geometry",
    "kfold_split",
    "load_arrays",
    "load_index",
    "make_dataset",
    "rasterise_outline",
    "split_index",
    "write_phantom_dataset",
]

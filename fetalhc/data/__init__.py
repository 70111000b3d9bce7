"""HC18 data: validated index, ellipses, grouped splits, tf.data pipeline, phantoms.

Imports no other fetalhc module but the foundation ``fetalhc.files``, through which it
writes every file (see docs/architecture.md). TensorFlow is imported only
when a pipeline function is called.
"""

from __future__ import annotations

from fetalhc.data.crop import (
    CROP_PREPROCESSING,
    REGION_COLUMNS,
    CropGeometry,
    clamp_regions,
    crop_geometry,
    ellipse_regions,
    index_regions,
    input_pixel_size_mm,
    with_regions,
)
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
    INTENSITIES,
    PREPROCESSING,
    Augmentation,
    annotation_ellipses,
    input_geometry,
    load_arrays,
    make_dataset,
    preprocessing_record,
    rasterise_outline,
    reference_regions,
)
from fetalhc.data.plain import data_layout, load_folder_index, load_plain_index, write_plain_dataset
from fetalhc.data.shortcut import shortcut_phantoms, write_shortcut_dataset
from fetalhc.data.splits import kfold_split, split_index

__all__ = [
    "CROP_PREPROCESSING",
    "INTENSITIES",
    "PREPROCESSING",
    "REGION_COLUMNS",
    "Augmentation",
    "CropGeometry",
    "DataError",
    "Ellipse",
    "annotation_ellipse",
    "annotation_ellipses",
    "check_images",
    "data_layout",
    "clamp_regions",
    "crop_geometry",
    "ellipse_regions",
    "ellipse_perimeter",
    "fit_ellipse",
    "load_folder_index",
    "load_plain_index",
    "group_id_of",
    "hc_from_annotation",
    "index_problems",
    "index_regions",
    "input_geometry",
    "input_pixel_size_mm",
    "kfold_split",
    "load_arrays",
    "load_index",
    "make_dataset",
    "preprocessing_record",
    "rasterise_outline",
    "reference_regions",
    "split_index",
    "with_regions",
    "write_phantom_dataset",
    "write_plain_dataset",
    "shortcut_phantoms",
    "write_shortcut_dataset",
]

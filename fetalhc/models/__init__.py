"""Regression CNNs for HC in input pixels: ``build_model``, backbone registry, safe loading,
the HC output rule (``graph``) and prediction in mm (``prediction``).

Losses and metrics in mm live in ``fetalhc.losses`` and ``fetalhc.metrics``.
"""

from fetalhc.models.build import (
    BACKBONES,
    ELLIPSE_OUTPUT,
    INPUT_NAME,
    available_backbones,
    backbone_of,
    build_model,
    get_backbone_spec,
    gradcam_layer_name,
)
from fetalhc.models.graph import HC_OUTPUT, output_names
from fetalhc.models.io import check_input_size, load_model
from fetalhc.models.layers import GrayscaleAdapter, OutputAffine
from fetalhc.models.prediction import predict_and_score, predict_hc_mm, prediction_table

__all__ = [
    "BACKBONES",
    "ELLIPSE_OUTPUT",
    "HC_OUTPUT",
    "INPUT_NAME",
    "GrayscaleAdapter",
    "OutputAffine",
    "available_backbones",
    "backbone_of",
    "build_model",
    "check_input_size",
    "get_backbone_spec",
    "gradcam_layer_name",
    "load_model",
    "output_names",
    "predict_and_score",
    "predict_hc_mm",
    "prediction_table",
]

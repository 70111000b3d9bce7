"""Regression CNNs for HC in input pixels: ``build_model``, backbone registry, safe loading,
the HC output rule (``graph``), prediction in mm (``prediction``), the auxiliary ellipse
output (``ellipse_head``) and the localiser of a crop model (``localise``).

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
from fetalhc.models.ellipse_head import (
    ellipse_from_output,
    standardise_ellipse,
    unstandardise_ellipse,
)
from fetalhc.models.graph import HC_OUTPUT, output_names
from fetalhc.models.io import check_input_size, load_model
from fetalhc.models.layers import GrayscaleAdapter, OutputAffine
from fetalhc.models.localise import check_localiser, localised_index, predict_ellipses
from fetalhc.models.prediction import predict_and_score, predict_hc_mm, prediction_table
from fetalhc.models.shipped import available_pretrained, pretrained, pretrained_dir

__all__ = [
    "BACKBONES",
    "ELLIPSE_OUTPUT",
    "HC_OUTPUT",
    "INPUT_NAME",
    "GrayscaleAdapter",
    "OutputAffine",
    "available_backbones",
    "available_pretrained",
    "backbone_of",
    "build_model",
    "check_input_size",
    "check_localiser",
    "ellipse_from_output",
    "get_backbone_spec",
    "gradcam_layer_name",
    "load_model",
    "localised_index",
    "output_names",
    "predict_and_score",
    "predict_ellipses",
    "predict_hc_mm",
    "prediction_table",
    "pretrained",
    "pretrained_dir",
    "standardise_ellipse",
    "unstandardise_ellipse",
]

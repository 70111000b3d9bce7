"""Regression CNNs for HC in input pixels: ``build_model``, backbone registry, safe loading.

Losses and metrics in mm live in ``fetalhc.losses`` and ``fetalhc.metrics``.
"""

from fetalhc.models.build import (
    BACKBONES,
    ELLIPSE_OUTPUT,
    HC_OUTPUT,
    INPUT_NAME,
    available_backbones,
    backbone_of,
    build_model,
    get_backbone_spec,
    gradcam_layer_name,
)
from fetalhc.models.io import check_input_size, load_model, output_names
from fetalhc.models.layers import GrayscaleAdapter, OutputAffine

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
]

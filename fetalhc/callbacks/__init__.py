"""Keras 3 callbacks that log regression saliency maps and explanation scores to
TensorBoard while a model trains (``model.fit(..., callbacks=[SaliencyCallback(...)])``).

`SaliencyCallback` takes any registered methods; the named classes mirror tf-explain's
callbacks so its users can switch by changing the import.
"""

from fetalhc.callbacks.saliency import SCORES, SaliencyCallback
from fetalhc.callbacks.tf_explain_compat import (
    GradCAMCallback,
    GradientsInputsCallback,
    IntegratedGradientsCallback,
    OcclusionSensitivityCallback,
    SmoothGradCallback,
    VanillaGradientsCallback,
)

__all__ = [
    "SCORES",
    "GradCAMCallback",
    "GradientsInputsCallback",
    "IntegratedGradientsCallback",
    "OcclusionSensitivityCallback",
    "SaliencyCallback",
    "SmoothGradCallback",
    "VanillaGradientsCallback",
]

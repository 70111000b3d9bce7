"""Keras 3 callbacks that log regression saliency maps and explanation scores to
TensorBoard while a model trains (``model.fit(..., callbacks=[SaliencyCallback(...)])``),
and write the scores into Keras' epoch ``logs`` for ``EarlyStopping`` / ``CSVLogger``.

`SaliencyCallback` takes any registered methods; the named classes mirror tf-explain
0.3.1's callbacks (every argument of theirs accepted) so its users can switch by changing
the import. docs/callbacks.md has the log keys, the tf-explain table and the costs.
"""

from fetalhc.callbacks.activations import ActivationsVisualizationCallback
from fetalhc.callbacks.saliency import DEFAULT_SCORES, SCORES, SaliencyCallback
from fetalhc.callbacks.tf_explain_compat import (
    GradCAMCallback,
    GradientsInputsCallback,
    IntegratedGradientsCallback,
    OcclusionSensitivityCallback,
    SmoothGradCallback,
    VanillaGradientsCallback,
)

__all__ = [
    "DEFAULT_SCORES",
    "SCORES",
    "ActivationsVisualizationCallback",
    "GradCAMCallback",
    "GradientsInputsCallback",
    "IntegratedGradientsCallback",
    "OcclusionSensitivityCallback",
    "SaliencyCallback",
    "SmoothGradCallback",
    "VanillaGradientsCallback",
]

"""Grad-CAM++ (Chattopadhyay et al. 2018) for the regression target.

With ``g = d target / d A`` on the chosen layer and the paper's closed form for the
pixel weights, ``alpha_ijk = g^2 / (2 g^2 + sum_ab A_abk g^3)`` (0 where the denominator
is 0), ``weights_k = sum_ij alpha_ijk g_ijk`` and ``cam = sum_k weights_k A_k``.
The paper keeps only positive gradients (``relu(g)`` in the weights and a ReLU on the map):
that is ``relu=True``. The default keeps the sign, as every method here does for regression.
Layer selection and upsampling as in Grad-CAM.
"""

from __future__ import annotations

import tensorflow as tf

from fetalhc.explain.gradcam import _CamMethod
from fetalhc.explain.registry import register


@register()
class GradCamPlusPlus(_CamMethod):
    name = "gradcam_pp"
    description = "Grad-CAM++: pixel-weighted gradients of a layer, signed by default"

    def attribute(self, context, images, pixel_size, reference):
        activations, gradients = self.activations_and_gradients(context, images, pixel_size, reference)
        squared = tf.square(gradients)
        cubed = squared * gradients
        denominator = 2.0 * squared + tf.reduce_sum(activations, axis=[1, 2], keepdims=True) * cubed
        safe = tf.where(denominator != 0.0, denominator, tf.ones_like(denominator))
        alpha = tf.where(denominator != 0.0, squared / safe, tf.zeros_like(denominator))
        kept = tf.nn.relu(gradients) if self.options["relu"] else gradients
        weights = tf.reduce_sum(alpha * kept, axis=[1, 2])  # (B, K)
        cam = tf.einsum("bk,bijk->bij", weights, activations)
        return {"map": self.finish(context, cam, images)}

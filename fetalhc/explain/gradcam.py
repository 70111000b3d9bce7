"""Grad-CAM (Selvaraju et al. 2017) for the regression target, signed by default.

On a 4-D layer ``A`` (``layer_name``; default: the backbone's recorded Grad-CAM layer from
``fetalhc.models`` when available, else the model's last 4-D layer):
``weights_k = mean_ij d target / d A_ijk``, ``cam = sum_k weights_k A_k``, upsampled
bilinearly to the input size (an exported model's raw image: through its pre-processing's
geometry, :meth:`~fetalhc.models.export_layers.RawImagePreprocessing.map_to_raw`). The map keeps its sign (positive: the region raises the
target); ``relu=True`` clips it as in the classification paper. Units: the target's units
per ``A`` unit times ``A`` units, i.e. the target's units, but the map is not conservative.
"""

from __future__ import annotations

import tensorflow as tf

from fetalhc.explain.method import Method
from fetalhc.explain.registry import register
from fetalhc.explain.views import check_conv_layer, default_conv_layer_name, layer_view
from fetalhc.models.export import preprocessing_layer


class _CamMethod(Method):
    """Shared by Grad-CAM and Grad-CAM++: layer resolution, activations and gradients."""

    defaults = {"layer_name": None, "relu": False}
    map_units = "{target} (not conservative)"

    def validate(self):
        layer_name = self.options["layer_name"]
        if layer_name is not None and not isinstance(layer_name, str):
            raise ValueError(f"{self.name}: layer_name must be a string; got {layer_name!r}")

    def setup(self, context):
        layer_name = self.options["layer_name"]
        if layer_name is None:
            layer_name = default_conv_layer_name(context.model, context.hc_model)
        # a one-line ValueError naming the option, the user's model and the 4-D layers
        check_conv_layer(context.hc_model, layer_name, what=f"{self.name}: layer_name",
                         model_name=context.model.name)
        self.resolved_layer = layer_name

    def cache_key(self):
        return (*super().cache_key(), ("resolved_layer", self.resolved_layer))

    def metadata(self, context):
        return {**super().metadata(context), "layer_name": self.resolved_layer}

    def activations_and_gradients(self, context, images, pixel_size, reference):
        view = layer_view(context.model, self.resolved_layer, context.output)
        with tf.GradientTape() as tape:
            activations, prediction = view(images, training=False)
            activations = tf.cast(activations, tf.float32)
            tape.watch(activations)
            prediction = tf.reshape(tf.cast(prediction, tf.float32), [-1])
            value = context.target(prediction, pixel_size, reference)
        return activations, tape.gradient(value, activations)

    def finish(self, context, cam, images):
        """The layer's map upsampled to the input (an exported model's: to its network's
        input, then the content box back to the raw image's size)."""
        if self.options["relu"]:
            cam = tf.nn.relu(cam)
        size = tf.shape(images)[1:3]
        preprocessing = preprocessing_layer(context.hc_model)
        if preprocessing is None:
            return tf.image.resize(cam[..., None], size, method="bilinear")[..., 0]
        side = preprocessing.image_size
        network_input = tf.image.resize(cam[..., None], (side, side), method="bilinear")
        return preprocessing.map_to_raw(network_input[..., 0], size[0], size[1])


@register()
class GradCam(_CamMethod):
    name = "gradcam"
    description = "Grad-CAM: layer activations weighted by their mean gradient, signed"

    def attribute(self, context, images, pixel_size, reference):
        activations, gradients = self.activations_and_gradients(context, images, pixel_size, reference)
        weights = tf.reduce_mean(gradients, axis=[1, 2])  # (B, K)
        cam = tf.einsum("bk,bijk->bij", weights, activations)
        return {"map": self.finish(context, cam, images)}

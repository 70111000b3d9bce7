"""The layers that make an exported model end to end (:mod:`fetalhc.models.export`).

An exported model takes the raw grayscale image (any height and width, uint8 or float) and
its pixel size in mm and returns the HC in mm. The pre-processing of
:mod:`fetalhc.data.pipeline` (resize keeping the aspect ratio so that the longer side is
``S`` — bilinear with anti-aliasing —, z-score over the image, centred zero padding to
``S`` x ``S``) and the pixel-size arithmetic are these registered, serializable layers, so
the model loads with ``keras.models.load_model(path)`` (``safe_mode=True``) after
``import fetalhc`` and needs nothing else. All are differentiable; the relevance engine
passes relevance back through :class:`RawImagePreprocessing` with
:meth:`RawImagePreprocessing.relevance_to_raw` (docs/export.md says how).

Images of one call share their height and width (a batch is one tensor); call the model once
per size.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from fetalhc.data.pipeline import prepare_image


def _size_of(images):
    shape = tf.shape(images)
    return shape[1], shape[2]


@keras.saving.register_keras_serializable(package="fetalhc")
class RawImagePreprocessing(keras.layers.Layer):
    """Raw grayscale images ``(B, H, W, 1)`` → the network's input ``(B, S, S, 1)``, exactly
    as :func:`fetalhc.data.make_dataset` prepares a file: resize so that the longer side is
    ``image_size`` (bilinear, anti-aliased, the shorter side rounded), z-score over each
    image, pad with 0 centred. The scale of the intensities does not matter (uint8 0–255 and
    float 0–1 give the same input): the z-score removes it."""

    def __init__(self, image_size: int, **kwargs):
        super().__init__(**kwargs)
        if int(image_size) < 8:
            raise ValueError(f"image_size must be at least 8; got {image_size}")
        self.image_size = int(image_size)

    def resized_size(self, height, width):
        """(h, w) of the resized content inside the ``S`` x ``S`` input (tensors)."""
        side = self.image_size
        scale = tf.cast(side, tf.float64) / tf.cast(tf.maximum(height, width), tf.float64)

        def rounded(length):
            value = tf.cast(tf.round(tf.cast(length, tf.float64) * scale), tf.int32)
            return tf.clip_by_value(value, 1, side)

        return rounded(height), rounded(width)

    def call(self, images):
        images = tf.cast(images, tf.float32)
        new_height, new_width = self.resized_size(*_size_of(images))
        prepared = prepare_image(images, new_height, new_width, self.image_size)
        return tf.ensure_shape(prepared, (None, self.image_size, self.image_size, 1))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.image_size, self.image_size, 1)

    def _content(self, values, height, width):
        """The content box of ``values`` ``(B, S, S, ...)`` (the padding cut away)."""
        new_height, new_width = self.resized_size(height, width)
        top = (self.image_size - new_height) // 2
        left = (self.image_size - new_width) // 2
        return values[:, top:top + new_height, left:left + new_width]

    def relevance_to_raw(self, images, relevance):
        """Relevance on the network's input ``(B, S, S, 1)`` → on the raw images
        ``(B, H, W, 1)``: the padding's relevance is dropped (it is no pixel of the image),
        the z-score passes relevance unchanged (one pixel in, one out), and the resize hands
        each input pixel's relevance to the raw pixels it was interpolated from, in
        proportion to their interpolation weights (the transpose of the resize; its weights
        sum to 1 per input pixel, so the content's relevance is conserved)."""
        images = tf.cast(images, tf.float32)
        height, width = _size_of(images)
        content = self._content(tf.cast(relevance, tf.float32), height, width)
        new_height, new_width = self.resized_size(height, width)
        probe = tf.zeros_like(images)
        with tf.GradientTape() as tape:
            tape.watch(probe)
            resized = tf.image.resize(probe, tf.stack([new_height, new_width]),
                                      method="bilinear", antialias=True)
            total = tf.reduce_sum(resized * content)
        return tape.gradient(total, probe)

    def map_to_raw(self, maps, height, width):
        """A map on the network's input ``(B, S, S)`` (e.g. Grad-CAM's, upsampled) → the
        raw images' ``(B, H, W)``: the content box, resized back (bilinear)."""
        content = self._content(tf.cast(maps, tf.float32)[..., None], height, width)
        return tf.image.resize(content, tf.stack([height, width]), method="bilinear")[..., 0]

    def get_config(self):
        config = super().get_config()
        config.update(image_size=self.image_size)
        return config


@keras.saving.register_keras_serializable(package="fetalhc")
class InputToRawPixels(keras.layers.Layer):
    """HC in the network's input pixels → HC in the raw image's pixels: ``hc * max(H, W) /
    S`` (the input pixel size is the raw one times ``max(H, W) / S``). Inputs: ``[hc (B, 1),
    raw images (B, H, W, 1)]``; only the images' shape is read."""

    def __init__(self, image_size: int, **kwargs):
        super().__init__(**kwargs)
        self.image_size = int(image_size)

    def factor(self, images):
        """``max(H, W) / S`` of the raw images (a scalar tensor)."""
        height, width = _size_of(images)
        return tf.cast(tf.maximum(height, width), tf.float32) / float(self.image_size)

    def call(self, inputs):
        hc, images = inputs
        return tf.cast(hc, tf.float32) * self.factor(images)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        config = super().get_config()
        config.update(image_size=self.image_size)
        return config


@keras.saving.register_keras_serializable(package="fetalhc")
class PixelsToMillimetres(keras.layers.Layer):
    """HC in raw pixels times the raw pixel size (mm per pixel) → HC in mm. Inputs:
    ``[hc (B, 1), pixel_size_mm (B, 1)]``. ``model_card``: the exported model's card (a
    JSON-able dict, see :func:`fetalhc.models.export.model_card`), kept in the layer's config
    so it travels inside the ``.keras`` file."""

    def __init__(self, model_card: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.model_card = dict(model_card or {})

    def call(self, inputs):
        hc, pixel_size = inputs
        pixel_size = tf.reshape(tf.cast(pixel_size, tf.float32), [-1, 1])
        return tf.cast(hc, tf.float32) * pixel_size

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        config = super().get_config()
        config.update(model_card=self.model_card)
        return config

"""Small serializable layers used by fetalhc models (no ``Lambda`` anywhere).

Both layers are registered under the ``fetalhc`` package so a saved model loads with
``safe_mode=True`` after ``import fetalhc``.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="fetalhc")
class GrayscaleAdapter(keras.layers.Layer):
    """Map a z-scored grayscale image to the input statistics a backbone expects.

    ``output = repeat(image * scale + offset, channels)`` along the last axis.

    fetalhc images are z-scored per image (mean 0, SD 1, padding 0). keras.applications
    backbones expect their own pre-processing (e.g. caffe: BGR minus the ImageNet mean, in
    0-255 units; tf: [-1, 1]; EfficientNet: raw 0-255, normalised inside). ``scale`` and
    ``offset`` put a z-scored image at the ImageNet mean and SD of that pre-processing, and
    ``channels=3`` repeats the gray channel for ImageNet weights.
    """

    def __init__(self, channels: int = 3, scale: float = 1.0, offset: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if int(channels) < 1:
            raise ValueError(f"GrayscaleAdapter channels must be >= 1, got {channels}")
        self.channels = int(channels)
        self.scale = float(scale)
        self.offset = float(offset)

    def call(self, inputs):
        outputs = inputs * self.scale + self.offset
        if self.channels != 1:
            outputs = ops.repeat(outputs, self.channels, axis=-1)
        return outputs

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.channels)

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, scale=self.scale, offset=self.offset)
        return config


@keras.saving.register_keras_serializable(package="fetalhc")
class OutputAffine(keras.layers.Layer):
    """Undo output standardisation: ``outputs = inputs * std + mean`` (no trainable weights).

    The last Dense layer of the head predicts a standardised value ``z``; this layer turns it
    into HC in input pixels with the training-split mean and SD, so a freshly initialised
    network already predicts about the mean and short runs converge.
    """

    def __init__(self, mean: float = 0.0, std: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if not float(std) > 0:
            raise ValueError(f"OutputAffine std must be > 0, got {std}")
        self.mean = float(mean)
        self.std = float(std)

    def call(self, inputs):
        return inputs * self.std + self.mean

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(mean=self.mean, std=self.std)
        return config

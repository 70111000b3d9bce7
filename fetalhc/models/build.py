"""``build_model``: flat functional regression CNNs predicting HC in input pixels.

Graph: ``image (S, S, 1)`` → [``GrayscaleAdapter``] → backbone (built flat with
``input_tensor``) → pooling → dropout → optional dense layers → ``Dense(1)`` (standardised
HC, ``hc_z``) → ``OutputAffine`` named ``hc_px_input`` (HC in input pixels) and, optionally,
``Dense(6)`` named ``ellipse`` (standardised ellipse parameters).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from fetalhc.models.graph import HC_OUTPUT
from fetalhc.models.layers import GrayscaleAdapter, OutputAffine

ELLIPSE_OUTPUT = "ellipse"
INPUT_NAME = "image"
MODEL_NAME_PREFIX = "fetalhc_"

# ImageNet pixel statistics (0-255, averaged over RGB), used to place a z-scored gray
# image at the statistics each keras.applications pre-processing mode produces.
_IMAGENET_MEAN = 114.8
_IMAGENET_SD = 57.4


@dataclass(frozen=True)
class BackboneSpec:
    """What fetalhc knows about one backbone."""

    application: str | None  # attribute of keras.applications, None for from-scratch nets
    gradcam_layer: str  # default Grad-CAM layer (last convolutional feature map)
    scale: float  # GrayscaleAdapter scale (see _preprocessing notes below)
    offset: float
    min_size: int


# caffe mode (VGG16, ResNet50): BGR minus ImageNet mean, 0-255 units → z * 57.4.
# tf mode (MobileNetV2, Xception, InceptionV3): x / 127.5 - 1 → z * 0.45 - 0.10.
# torch mode (DenseNet121): (x / 255 - mean) / sd → z.
# EfficientNet: raw 0-255 (rescaling and normalisation are layers inside) → z * 57.4 + 114.8.
BACKBONES: dict[str, BackboneSpec] = {
    "vgg16": BackboneSpec("VGG16", "block5_conv3", _IMAGENET_SD, 0.0, 32),
    "resnet50": BackboneSpec("ResNet50", "conv5_block3_out", _IMAGENET_SD, 0.0, 32),
    "efficientnetb0": BackboneSpec(
        "EfficientNetB0", "top_activation", _IMAGENET_SD, _IMAGENET_MEAN, 32
    ),
    "efficientnetb2": BackboneSpec(
        "EfficientNetB2", "top_activation", _IMAGENET_SD, _IMAGENET_MEAN, 32
    ),
    "mobilenetv2": BackboneSpec(
        "MobileNetV2", "out_relu", _IMAGENET_SD / 127.5, _IMAGENET_MEAN / 127.5 - 1.0, 32
    ),
    "densenet121": BackboneSpec("DenseNet121", "relu", 1.0, 0.0, 32),
    "xception": BackboneSpec(
        "Xception", "block14_sepconv2_act", _IMAGENET_SD / 127.5, _IMAGENET_MEAN / 127.5 - 1.0, 71
    ),
    "inceptionv3": BackboneSpec(
        "InceptionV3", "mixed10", _IMAGENET_SD / 127.5, _IMAGENET_MEAN / 127.5 - 1.0, 75
    ),
    # From-scratch nets: the Grad-CAM layer is the last block's ReLU, whatever the depth.
    "small_cnn": BackboneSpec(None, "", 1.0, 0.0, 16),
    "small_resnet": BackboneSpec(None, "", 1.0, 0.0, 16),
}

# default widths of the from-scratch nets (one block per entry, 2x2 max pooling after each)
SMALL_CNN_FILTERS = (16, 32, 64, 128)

POOLINGS = ("avg", "max", "flatten")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def available_backbones() -> list[str]:
    """Registry keys accepted by ``build_model``."""
    return list(BACKBONES)


def get_backbone_spec(backbone: str) -> BackboneSpec:
    if backbone not in BACKBONES:
        raise ValueError(
            f"unknown backbone {backbone!r}; known backbones: {', '.join(BACKBONES)}"
        )
    return BACKBONES[backbone]


def gradcam_layer_name(model: keras.Model) -> str:
    """Default Grad-CAM layer of a fetalhc model (from its name ``fetalhc_<backbone>``).

    Falls back to the last layer with a 4-D output when the backbone is unknown or the layer
    is missing.
    """
    backbone = model.name[len(MODEL_NAME_PREFIX):] if model.name.startswith(
        MODEL_NAME_PREFIX) else None
    if backbone in BACKBONES:
        name = BACKBONES[backbone].gradcam_layer
        if name and any(layer.name == name for layer in model.layers):
            return name
        if BACKBONES[backbone].application is None:  # small nets: the last block's ReLU
            for layer in reversed(model.layers):
                output = getattr(layer, "output", None)
                if isinstance(layer, keras.layers.ReLU) and len(output.shape) == 4:
                    return layer.name
    for layer in reversed(model.layers):
        shape = getattr(layer, "output", None)
        shape = getattr(shape, "shape", None)
        if shape is not None and len(shape) == 4:
            return layer.name
    raise ValueError(f"model {model.name!r} has no layer with a 4-D output for Grad-CAM")


def backbone_of(model: keras.Model) -> str | None:
    """The backbone registry key a fetalhc model was built with, or None."""
    if model.name.startswith(MODEL_NAME_PREFIX):
        key = model.name[len(MODEL_NAME_PREFIX):]
        if key in BACKBONES:
            return key
    return None


def small_cnn(inputs, filters: tuple[int, ...] = SMALL_CNN_FILTERS, convs_per_block: int = 2):
    """A plain from-scratch CNN: blocks of (conv 3x3 - BN - ReLU) x n, then 2x2 max pooling.

    About 0.29 M parameters with the default widths (independent of the input size).
    """
    return _conv_blocks(inputs, filters, convs_per_block, residual=False)


def small_resnet(inputs, filters: tuple[int, ...] = SMALL_CNN_FILTERS, convs_per_block: int = 2):
    """A residual from-scratch CNN, the plain ``small_cnn`` with identity paths.

    The first block is plain (conv 3x3 - BN - ReLU) x n. Every later block adds its input,
    projected by a 1x1 conv - BN to the block's width, to (conv 3x3 - BN - ReLU) x (n - 1) -
    conv 3x3 - BN, then applies the ReLU (as ResNet's basic block). 2x2 max pooling follows
    each block.
    """
    return _conv_blocks(inputs, filters, convs_per_block, residual=True)


def _conv_blocks(inputs, filters, convs_per_block: int, residual: bool):
    x = inputs
    for block, width in enumerate(filters, start=1):
        shortcut = x
        for conv in range(1, convs_per_block + 1):
            last = conv == convs_per_block
            x = keras.layers.Conv2D(
                width, 3, padding="same", use_bias=False, name=f"block{block}_conv{conv}"
            )(x)
            x = keras.layers.BatchNormalization(name=f"block{block}_bn{conv}")(x)
            if last and residual and block > 1:
                shortcut = keras.layers.Conv2D(
                    width, 1, use_bias=False, name=f"block{block}_shortcut_conv"
                )(shortcut)
                shortcut = keras.layers.BatchNormalization(name=f"block{block}_shortcut_bn")(
                    shortcut
                )
                x = keras.layers.Add(name=f"block{block}_add")([shortcut, x])
            x = keras.layers.ReLU(
                name=f"block{block}_relu" if last else f"block{block}_relu{conv}"
            )(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    return x


_SMALL_NETS = {"small_cnn": small_cnn, "small_resnet": small_resnet}


def _weights_kind(weights: Any) -> str:
    """Return 'none', 'imagenet', 'model' (a fetalhc .weights.h5) or 'backbone' (notop .h5)."""
    if weights is None:
        return "none"
    if isinstance(weights, (str, os.PathLike)):
        if str(weights) == "imagenet":
            return "imagenet"
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        return "model" if path.name.endswith(".weights.h5") else "backbone"
    raise ValueError(f"weights must be None, 'imagenet' or a file path, got {weights!r}")


def build_model(
    backbone: str,
    input_shape: tuple[int, int, int] = (128, 128, 1),
    weights: str | os.PathLike | None = None,
    pooling: str = "avg",
    dropout: float = 0.2,
    dense_units: tuple[int, ...] | list[int] = (),
    aux_ellipse: bool = False,
    hc_mean_px: float | None = None,
    hc_std_px: float | None = None,
    bn_momentum: float | None = 0.9,
    alpha: float | None = None,
    dense_activation: str = "relu",
    small_cnn_filters: tuple[int, ...] | list[int] = SMALL_CNN_FILTERS,
    convs_per_block: int = 2,
    precision: str = "float32",
) -> keras.Model:
    """Build a regression CNN named ``fetalhc_<backbone>``.

    Args:
        backbone: a key of ``available_backbones()``.
        input_shape: ``(S, S, 1)``; fetalhc images are z-scored grayscale.
        weights: None (random init), "imagenet" (downloads the notop ImageNet weights of
            keras.applications), a keras.applications notop ``.h5`` file for the backbone,
            or a fetalhc ``.weights.h5`` file for the whole model.
        pooling: "avg", "max" or "flatten" after the backbone.
        dropout: dropout rate before the head's dense layers (0 for none).
        dense_units: widths of optional hidden dense layers of the head.
        aux_ellipse: add an auxiliary output ``ellipse`` (6 standardised values).
        hc_mean_px, hc_std_px: training mean / SD of HC in input pixels; the last Dense
            predicts ``(hc - mean) / sd`` and an ``OutputAffine`` layer named
            ``hc_px_input`` maps it back (defaults: mean 0, SD 1, i.e. plain regression).
        bn_momentum: momentum of every BatchNormalization layer (None keeps the backbone's;
            0.9 lets the moving statistics follow short runs).
        alpha: width multiplier (MobileNetV2 only).
        small_cnn_filters, convs_per_block: widths of the blocks and convolutions per block
            of the from-scratch nets ``small_cnn`` and ``small_resnet``.
        precision: Keras dtype policy of the layers: "float32", "mixed_float16" (GPUs) or
            "mixed_bfloat16" (CPUs with bf16 units, and TPUs); the HC and ellipse outputs
            stay float32. Nothing here pins a device: TensorFlow places the model on a GPU
            when one is visible.

    The gray image is fed to keras.applications through a ``GrayscaleAdapter`` that
    rescales the z-scored input to the backbone's expected statistics and repeats it to 3
    channels when pretrained weights are loaded (1 channel otherwise).
    """
    spec = get_backbone_spec(backbone)
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; known poolings: {', '.join(POOLINGS)}")
    input_shape = tuple(int(v) for v in input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 1 or input_shape[0] != input_shape[1]:
        raise ValueError(
            f"input_shape must be (S, S, 1) for square gray images, got {input_shape}"
        )
    if input_shape[0] < spec.min_size:
        raise ValueError(
            f"backbone {backbone!r} needs inputs of at least {spec.min_size} px, "
            f"got {input_shape[0]}"
        )
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if alpha is not None and backbone != "mobilenetv2":
        raise ValueError(f"alpha is a MobileNetV2 width multiplier, not for {backbone!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    weights_kind = _weights_kind(weights)

    # The dtype policy is set only while the layers are created (each layer keeps its own);
    # the head's last layers stay float32 so the HC output and the losses in mm are float32.
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        inputs = keras.Input(shape=input_shape, name=INPUT_NAME)
        if spec.application is None:
            if weights_kind in ("imagenet", "backbone"):
                raise ValueError(f"backbone {backbone!r} has no ImageNet weights; use weights=None")
            widths = tuple(int(f) for f in small_cnn_filters)
            if not widths or min(widths) < 1 or int(convs_per_block) < 1:
                raise ValueError(
                    "small_cnn_filters must be a non-empty list of positive widths and "
                    f"convs_per_block >= 1; got {list(widths)} and {convs_per_block}"
                )
            if input_shape[0] < 2 ** len(widths):
                raise ValueError(
                    f"{len(widths)} blocks halve the input {len(widths)} times; inputs of "
                    f"{input_shape[0]} px need at most {int(input_shape[0]).bit_length() - 1} blocks"
                )
            features = _SMALL_NETS[backbone](
                inputs, filters=widths, convs_per_block=int(convs_per_block)
            )
        else:
            channels = 3 if weights_kind in ("imagenet", "backbone") else 1
            adapted = GrayscaleAdapter(
                channels=channels, scale=spec.scale, offset=spec.offset, name="grayscale_adapter"
            )(inputs)
            application = getattr(keras.applications, spec.application)
            kwargs = dict(
                include_top=False,
                weights=None if weights_kind in ("none", "model") else str(weights),
                input_tensor=adapted,
                input_shape=(*input_shape[:2], channels),
            )
            if alpha is not None:
                kwargs["alpha"] = float(alpha)
            try:
                backbone_model = application(**kwargs)
            except Exception as error:  # noqa: BLE001 - re-raised with advice below
                download_failed = isinstance(error, OSError) or "fetch failure" in str(error).lower()
                if weights_kind == "imagenet" and download_failed:
                    raise ValueError(
                        f"could not download the ImageNet weights of {backbone!r} (no network?); "
                        "download the keras.applications '*_notop.h5' file elsewhere and pass "
                        "its path as weights=PATH (or put it in ~/.keras/models/)"
                    ) from error
                raise
            features = backbone_model.output

        if pooling == "avg":
            x = keras.layers.GlobalAveragePooling2D(name="head_pool")(features)
        elif pooling == "max":
            x = keras.layers.GlobalMaxPooling2D(name="head_pool")(features)
        else:
            x = keras.layers.Flatten(name="head_pool")(features)
        if dropout:
            x = keras.layers.Dropout(float(dropout), name="head_dropout")(x)
        for index, units in enumerate(dense_units, start=1):
            x = keras.layers.Dense(int(units), activation=dense_activation, name=f"head_dense{index}")(x)
        hc_z = keras.layers.Dense(1, name="hc_z", dtype="float32")(x)
        mean = 0.0 if hc_mean_px is None else float(hc_mean_px)
        std = 1.0 if hc_std_px is None else float(hc_std_px)
        hc = OutputAffine(mean=mean, std=std, name=HC_OUTPUT, dtype="float32")(hc_z)
        if aux_ellipse:
            ellipse = keras.layers.Dense(6, name=ELLIPSE_OUTPUT, dtype="float32")(x)
            outputs = {HC_OUTPUT: hc, ELLIPSE_OUTPUT: ellipse}
        else:
            outputs = hc
        model = keras.Model(inputs, outputs, name=f"{MODEL_NAME_PREFIX}{backbone}")
    finally:
        keras.config.set_dtype_policy(previous_policy)

    if bn_momentum is not None:
        if not 0.0 < float(bn_momentum) < 1.0:
            raise ValueError(f"bn_momentum must be in (0, 1), got {bn_momentum}")
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = float(bn_momentum)
    if weights_kind == "model":
        model.load_weights(str(weights))
    return model

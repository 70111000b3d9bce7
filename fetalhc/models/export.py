"""An end-to-end model for other Keras projects: raw image and pixel size in, HC in mm out.

:func:`export_model` wraps a fetalhc network (input: the pre-processed ``S`` x ``S`` image;
output: HC in input pixels) between the layers of :mod:`fetalhc.models.export_layers`::

    image (B, H, W, 1), any H and W, uint8 or float ─► RawImagePreprocessing ─► network
        ─► hc_px_raw: HC in the raw image's pixels (InputToRawPixels)
        ─► hc_mm: times pixel_size_mm (B, 1), mm per raw pixel (PixelsToMillimetres)

The network's layers are applied to the pre-processed tensor one by one (no nested model),
so every explanation method walks one flat graph from the raw image. The model card
(:func:`model_card`) rides in the ``hc_mm`` layer's config: :func:`read_model_card` returns
it from a loaded model. :func:`inner_network` takes the network back out (pre-processed
``S`` x ``S`` image in, HC in input pixels out), so the commands that feed pre-processed
images (predict, explain, evaluate) run an exported model with its own pre-processing.
"""

from __future__ import annotations

import keras

from fetalhc.models.export_layers import (
    InputToRawPixels,
    PixelsToMillimetres,
    RawImagePreprocessing,
)
from fetalhc.models.graph import (
    RAW_HC_OUTPUT,
    hc_output_view,
    layer_output_in,
    nodes_in_order,
    replay_nodes,
    replay_on,
)

IMAGE_INPUT = "image"
PIXEL_SIZE_INPUT = "pixel_size_mm"
HC_MM_OUTPUT = "hc_mm"
PREPROCESSING_LAYER = "preprocessing"
INTENDED_USE = ("research only: not a medical device, not validated for clinical use; "
                "explanations describe the model, not the anatomy")


def model_card(*, name: str, image_size: int, training: dict, accuracy: dict,
               source: dict | None = None) -> dict:
    """The card of an exported model: what goes in and out (units, the pixel-size
    convention), what it learned from (``training``: data, split sizes, config digest) and
    how well it does (``accuracy``: per split, MAE in mm with its 95 % CI), and its intended
    use. JSON-able."""
    return {
        "name": name,
        "inputs": {
            IMAGE_INPUT: "raw grayscale ultrasound image (B, H, W, 1), any H and W, uint8 or "
                         "float (the scale of the intensities does not matter)",
            PIXEL_SIZE_INPUT: "pixel size of the raw image in mm per pixel (B, 1); "
                              "square pixels",
        },
        "outputs": {
            HC_MM_OUTPUT: "head circumference in mm (B, 1)",
            RAW_HC_OUTPUT: "head circumference in pixels of the raw image (B, 1)",
        },
        "preprocessing": {
            "image_size_px": int(image_size),
            "steps": "resize keeping the aspect ratio (longer side = image_size, bilinear, "
                     "anti-aliased), z-score over the image, centred zero padding",
        },
        "training": dict(training),
        "accuracy": dict(accuracy),
        "source": dict(source or {}),
        "intended_use": INTENDED_USE,
    }


def export_model(model: keras.Model, image_size: int, card: dict | None = None,
                 output: str | int | None = None, name: str | None = None) -> keras.Model:
    """The end-to-end model of ``model`` (a fetalhc network on ``image_size`` px inputs; its
    HC output by the rule of :mod:`fetalhc.models.graph`, or ``output``). Inputs
    ``{"image", "pixel_size_mm"}``, outputs ``{"hc_mm", "hc_px_raw"}``; shares
    ``model``'s weights."""
    network = hc_output_view(model, output)
    declared = tuple(network.inputs[0].shape[1:]) if len(network.inputs) == 1 else None
    if declared is None or declared[-1] != 1 or any(
            side not in (None, int(image_size)) for side in declared[:2]):
        raise ValueError(f"export needs a network with one grayscale input of "
                         f"{image_size}x{image_size}x1; {model.name!r} takes "
                         f"{[tuple(tensor.shape) for tensor in network.inputs]}")
    image = keras.Input((None, None, 1), name=IMAGE_INPUT)
    pixel_size = keras.Input((1,), name=PIXEL_SIZE_INPUT)
    prepared = RawImagePreprocessing(image_size, name=PREPROCESSING_LAYER)(image)
    # each layer of the network applied to `prepared` in turn: one flat graph (a nested
    # model would be one opaque layer to the relevance methods)
    network_output = replay_on(network, prepared)
    hc_pixels = InputToRawPixels(image_size, name=RAW_HC_OUTPUT)([network_output, image])
    hc_mm = PixelsToMillimetres(card, name=HC_MM_OUTPUT)([hc_pixels, pixel_size])
    return keras.Model({IMAGE_INPUT: image, PIXEL_SIZE_INPUT: pixel_size},
                       {HC_MM_OUTPUT: hc_mm, RAW_HC_OUTPUT: hc_pixels},
                       name=name or f"{model.name}_end_to_end")


def read_model_card(model: keras.Model) -> dict | None:
    """The card of an exported model, ``None`` for any other model."""
    try:
        layer = model.get_layer(HC_MM_OUTPUT)
    except ValueError:
        return None
    return dict(layer.model_card) if isinstance(layer, PixelsToMillimetres) else None


def preprocessing_layer(model: keras.Model) -> RawImagePreprocessing | None:
    """The :class:`RawImagePreprocessing` of an exported model, ``None`` for any other."""
    for layer in model.layers:
        if isinstance(layer, RawImagePreprocessing):
            return layer
    return None


def inner_network(model: keras.Model) -> tuple[keras.Model, int] | None:
    """The network inside an exported model and its input size ``S``, ``None`` for any
    other model: a functional model from a new ``(S, S, 1)`` input (the pre-processed
    image) to the HC in input pixels (the output named ``hc_px_input``), sharing the
    exported model's layers and weights. Its predictions times the input pixel size equal
    the exported model's ``hc_mm``; it lacks the network's auxiliary outputs, which the
    export leaves out."""
    preprocessing = preprocessing_layer(model)
    if preprocessing is None:
        return None
    size = int(preprocessing.image_size)
    to_raw = model.get_layer(RAW_HC_OUTPUT)
    end = next(node for node in nodes_in_order(model)
               if node.operation is to_raw).arguments.keras_tensors[0]
    prepared = keras.Input((size, size, 1), name="image")
    # the network's nodes: those fed by the pre-processed image alone
    values = replay_nodes(model, {id(layer_output_in(model, preprocessing.name)): prepared},
                          skip=(preprocessing, to_raw))
    if id(end) not in values:
        raise ValueError(f"cannot take the network out of the exported model {model.name!r}: "
                         "its HC output does not follow from the pre-processed image alone")
    return keras.Model(prepared, values[id(end)], name=f"{model.name}_network"), size

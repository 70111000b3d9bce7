"""The tf-explain-named callbacks are drop-in: every callback of the installed tf-explain
exists in fetalhc.callbacks and takes every one of its arguments, by name and in its
positional order (read from tf-explain's own signatures, so a new tf-explain argument fails
here); values fetalhc cannot honour for a regression are one-line ValueErrors naming the
argument. Skipped when tf-explain (the optional ``tfexplain`` extra) is not importable."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from explain_models import compiled_small_cnn

import fetalhc
from fetalhc import callbacks
from fetalhc.data import load_arrays, load_index, write_phantom_dataset
from fetalhc.losses import pack_targets

IMAGE_SIZE = 48
# a value for every tf-explain argument without a default; the others get tf-explain's
# defaults, but for the ones listed in OVERRIDES (refused values, tested below)
REQUIRED = {"class_index": 0, "patch_size": 12}
OVERRIDES = {"use_guided_grads": False}


def _tf_explain_callbacks():
    module = pytest.importorskip(
        "tf_explain.callbacks",
        reason="tf-explain (the optional tfexplain extra: tf-explain + opencv-python-headless) "
               "is not importable",
    )
    return {name: getattr(module, name) for name in module.__all__}


@pytest.fixture(scope="module")
def phantom_arrays(tmp_path_factory):
    root = write_phantom_dataset(tmp_path_factory.mktemp("phantoms") / "hc18", n=12, seed=5)
    return load_arrays(load_index(root, "training"), image_size=IMAGE_SIZE)


@pytest.fixture()
def model(phantom_arrays):
    return compiled_small_cnn(phantom_arrays, IMAGE_SIZE)


def _parameters(cls) -> list[inspect.Parameter]:
    return [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]


def _tf_explain_arguments(theirs, model, images, hc_mm, log_dir) -> dict:
    """Every parameter of tf-explain's constructor, by name: validation_data as tf-explain's
    plain (x, y) with y the HC in mm."""
    layer = fetalhc.explain.default_conv_layer_name(model)
    values = {"validation_data": (images, hc_mm), "output_dir": log_dir, "layer_name": layer,
              "layers_name": [layer], **REQUIRED, **OVERRIDES}
    arguments = {}
    for parameter in _parameters(theirs):
        if parameter.name in values:
            arguments[parameter.name] = values[parameter.name]
        elif parameter.default is not inspect.Parameter.empty:
            arguments[parameter.name] = parameter.default
        else:
            pytest.fail(f"{theirs.__name__}: tf-explain argument {parameter.name!r} has no test "
                        "value: decide what fetalhc does with it, then add it to REQUIRED")
    return arguments


def test_every_tf_explain_callback_exists_with_its_arguments_in_its_order():
    for name, theirs in _tf_explain_callbacks().items():
        ours = getattr(callbacks, name, None)
        assert ours is not None, f"fetalhc.callbacks has no {name}"
        their_names = [p.name for p in _parameters(theirs)]
        positional = [p.name for p in _parameters(ours)
                      if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        assert positional[:len(their_names)] == their_names, name


def test_every_tf_explain_callback_runs_with_tf_explain_arguments(model, phantom_arrays,
                                                                    tmp_path):
    """Constructed with tf-explain's argument names (plus fetalhc's pixel_size for the
    saliency ones), all of them in one fit: each writes its pictures to output_dir."""
    images, hc_mm = phantom_arrays["image"][:2], phantom_arrays["hc_mm"][:2]
    pixel_size = phantom_arrays["pixel_size_mm"][:2]
    built = {}
    for name, theirs in _tf_explain_callbacks().items():
        arguments = _tf_explain_arguments(theirs, model, images, hc_mm, tmp_path / name)
        ours = getattr(callbacks, name)
        extra = {"pixel_size": pixel_size} if issubclass(ours, callbacks.SaliencyCallback) else {}
        built[name] = ours(**arguments, **extra)
    targets = np.asarray(pack_targets(phantom_arrays["hc_mm"], phantom_arrays["pixel_size_mm"]))
    history = model.fit(phantom_arrays["image"], targets, batch_size=6, epochs=1, verbose=0,
                        callbacks=list(built.values()))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for name, callback in built.items():
        events = EventAccumulator(str(tmp_path / name), size_guidance={"tensors": 0})
        events.Reload()
        tags = events.Tags()["tensors"]
        pictures = [tag for tag in tags if tag.count("/") == 1]
        assert pictures, f"{name} wrote no picture to its output_dir ({tags})"
        if isinstance(callback, callbacks.SaliencyCallback):
            method = callback.methods[0]
            assert f"saliency/{method}/time_ms" in history.history, name
    assert "activations/" + fetalhc.explain.default_conv_layer_name(model) + "/zero_fraction" \
        in history.history


def test_tf_explain_arguments_are_honoured(phantom_arrays):
    images, hc_mm = phantom_arrays["image"][:2], phantom_arrays["hc_mm"][:2]
    common = {"validation_data": (images, hc_mm), "pixel_size": 0.5}
    ig = callbacks.IntegratedGradientsCallback(**common, class_index=0, n_steps=7)
    assert ig.method_options["integrated_gradients"] == {"tolerance": None, "steps": 7}
    assert ig.output_dir.replace("\\", "/") == "logs/integrated_gradients"
    smooth = callbacks.SmoothGradCallback(**common, class_index=0, num_samples=3, noise=0.5)
    assert smooth.method_options["smoothgrad"]["n"] == 3 and smooth.noise == 0.5
    occlusion = callbacks.OcclusionSensitivityCallback(**common, class_index=0, patch_size=8)
    assert occlusion.method_options["occlusion"] == {"patch": 8, "stride": 8}  # tf-explain's tiling
    gradcam = callbacks.GradCAMCallback(**common, class_index=np.int64(0), layer_name="x",
                                        output_dir="somewhere", use_guided_grads=False)
    assert gradcam.method_options["gradcam"]["layer_name"] == "x"
    assert gradcam.output_dir == "somewhere"
    vanilla = callbacks.VanillaGradientsCallback(**common, class_index=None, output_dir=None)
    assert vanilla.output_dir.replace("\\", "/") == "logs/vanilla_gradients"


def test_smoothgrad_noise_is_an_sd_in_input_units(model, phantom_arrays):
    """tf-explain's noise is the noise SD in input units; fetalhc's SmoothGrad takes it
    relative to each image's range, so the callback explains image by image."""
    images, hc_mm = phantom_arrays["image"][:2], phantom_arrays["hc_mm"][:2]
    pixel_size = phantom_arrays["pixel_size_mm"][:2]
    callback = callbacks.SmoothGradCallback((images, hc_mm), 0, num_samples=3, noise=0.7,
                                            pixel_size=pixel_size)
    callback.set_model(model)
    maps = callback.explain_subset("smoothgrad").maps
    for i in range(2):
        value_range = float(images[i].max() - images[i].min())
        expected = fetalhc.explain.explain(model, images[i:i + 1], method="smoothgrad",
                                           pixel_size=pixel_size[i:i + 1], n=3,
                                           noise_level=0.7 / value_range, batch_size=1)
        np.testing.assert_allclose(maps[i], expected[0], rtol=1e-5, atol=1e-8)


MM = {"pixel_size": 0.5}


@pytest.mark.parametrize(("make", "message"), [
    (lambda data: callbacks.GradCAMCallback(data, 0, use_guided_grads=True, **MM),
     r"^use_guided_grads=True: .*signed"),
    (lambda data: callbacks.VanillaGradientsCallback(data, class_index=3, **MM),
     r"^class_index=3: .*one regression output"),
    (lambda data: callbacks.GradientsInputsCallback(data, class_index=True, **MM),
     r"^class_index=True"),
    (lambda data: callbacks.IntegratedGradientsCallback(data, 0, n_steps=0, **MM),
     r"^n_steps must be an integer >= 1"),
    (lambda data: callbacks.SmoothGradCallback(data, 0, num_samples=2.5, **MM),
     r"^num_samples must be an integer >= 1"),
    (lambda data: callbacks.SmoothGradCallback(data, 0, noise=-1.0, **MM), r"^noise must be"),
    (lambda data: callbacks.OcclusionSensitivityCallback(data, 0, patch_size=0, **MM),
     r"^patch_size must be an integer >= 1"),
    (lambda data: callbacks.IntegratedGradientsCallback(data, 0, method_options={"steps": 9},
                                                        **MM),
     r"^method_options \['steps'\] are set by .*tf-explain arguments"),
    (lambda data: callbacks.GradCAMCallback(data, 0, methods=["gradient"], **MM), r"^methods: "),
    (lambda data: callbacks.ActivationsVisualizationCallback(data, layers_name=[]),
     r"^layers_name must be"),
    (lambda data: callbacks.VanillaGradientsCallback(data, 0),
     r"^validation_data carries no pixel sizes.*pass pixel_size="),
])
def test_unsupported_arguments_are_one_line_value_errors(phantom_arrays, make, message):
    data = (phantom_arrays["image"][:2], phantom_arrays["hc_mm"][:2])
    with pytest.raises(ValueError, match=message) as error:
        make(data)
    assert "\n" not in str(error.value)


def test_a_wrong_layer_stops_fit_before_the_first_epoch(model, phantom_arrays, tmp_path):
    data = (phantom_arrays["image"][:2], phantom_arrays["hc_mm"][:2])
    targets = np.asarray(pack_targets(phantom_arrays["hc_mm"], phantom_arrays["pixel_size_mm"]))
    for callback, message in (
        (callbacks.GradCAMCallback(data, 0, "nope", tmp_path / "gc", **MM),
         r"^gradcam: layer_name 'nope' does not exist"),
        (callbacks.ActivationsVisualizationCallback(data, ["nope"], tmp_path / "av"),
         r"^layers_name 'nope' does not exist"),
    ):
        with pytest.raises(ValueError, match=message):
            model.fit(phantom_arrays["image"], targets, epochs=1, verbose=0,
                      callbacks=[callback])

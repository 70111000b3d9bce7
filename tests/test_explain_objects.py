"""The object API (fetalhc/explain/objects.py): one class per registered method, the same
Explanation as explain_batch, options checked when the explainer is built."""

from __future__ import annotations

import inspect
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from explain_models import random_images, tiny_cnn, tiny_residual

import fetalhc.explain as fe
from fetalhc.explain import registry
from fetalhc.explain.objects import class_name

PIXEL_SIZE = np.array([0.2, 0.3, 0.4], np.float32)
# cheap settings of the costly methods (tens of model inputs per image, not hundreds)
FAST_OPTIONS = {"smoothgrad": {"n": 4}, "integrated_gradients": {"steps": 8, "tolerance": None},
                "occlusion": {"patch": 8, "stride": 8}}
# the class names of the methods registered today (a new method needs no entry: its class is
# generated; this table pins the spelling users see)
CLASS_NAMES = {
    "deconvnet": "DeconvNet", "deep_taylor": "DeepTaylor", "gradcam": "GradCAM",
    "gradcam_pp": "GradCAMPlusPlus", "gradient": "Gradient", "guided_backprop": "GuidedBackprop",
    "input_x_gradient": "InputXGradient", "integrated_gradients": "IntegratedGradients",
    "lrp_alpha1_beta0": "LRPAlpha1Beta0", "lrp_alpha2_beta1": "LRPAlpha2Beta1",
    "lrp_composite": "LRPComposite", "lrp_epsilon": "LRPEpsilon", "lrp_z": "LRPZ",
    "lrp_zplus": "LRPZPlus", "occlusion": "Occlusion", "smoothgrad": "SmoothGrad",
}


@pytest.fixture(scope="module")
def model():
    return tiny_cnn(size=32)


@pytest.fixture(scope="module")
def images():
    return random_images(3, 32, seed=5)


def assert_same_explanation(result, expected):
    assert (result.method, result.target, result.units, result.target_units) == (
        expected.method, expected.target, expected.units, expected.target_units)
    assert result.maps.dtype == np.float32
    np.testing.assert_array_equal(result.maps, expected.maps)  # exactly, not approximately
    assert sorted(result.metadata) == sorted(expected.metadata)
    for key, value in expected.metadata.items():
        np.testing.assert_array_equal(result.metadata[key], value, err_msg=key)
    assert result.info == expected.info


# ------------------------------------------------------------------- one class per method
@pytest.mark.parametrize("method", fe.available_methods())
def test_every_registered_method_has_its_class(method):
    cls = fe.explainer_class(method)
    assert cls.__name__ == class_name(method)
    assert getattr(fe, cls.__name__) is cls, f"fetalhc.explain.{cls.__name__} is not exported"
    assert cls.__name__ in fe.__all__
    assert cls.method == method  # class -> registry name
    assert issubclass(cls, fe.Explainer) and cls.__module__ == "fetalhc.explain"
    assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", cls.__name__)
    assert dict(cls.defaults) == dict(fe.get_method(method).defaults)
    assert cls.description == fe.get_method(method).description
    if method in CLASS_NAMES:
        assert cls.__name__ == CLASS_NAMES[method]


def test_the_class_name_table_names_registered_methods():
    assert set(CLASS_NAMES) <= set(fe.available_methods())
    assert sorted(fe.explainer_classes()) == sorted(class_name(m) for m in fe.available_methods())


def test_class_names_are_the_registry_names_in_camel_case():
    assert class_name("integrated_gradients") == "IntegratedGradients"
    assert class_name("lrp_alpha2_beta1") == "LRPAlpha2Beta1"
    assert class_name("my_new_method") == "MyNewMethod"


@pytest.mark.parametrize("method", fe.available_methods())
def test_explain_equals_explain_batch(model, images, method):
    """Every registered method: the explainer's Explanation is explain_batch's, bit for bit."""
    options = FAST_OPTIONS.get(method, {})
    explainer = fe.explainer_class(method)(model, batch_size=2, **options)
    result = explainer.explain(images, pixel_size=PIXEL_SIZE)
    expected = fe.explain_batch(model, images, method=method, pixel_size=PIXEL_SIZE,
                                batch_size=2, **options)
    assert_same_explanation(result, expected)
    assert np.abs(result.maps).max() > 0
    assert_same_explanation(explainer.explain(images, pixel_size=PIXEL_SIZE), expected)


def test_target_output_sizes_and_datasets_are_passed_on(images):
    model = tiny_residual(size=32)  # two outputs: the HC output is the one named hc_px_input
    reference = np.array([150.0, 180.0, 210.0], np.float32)
    dataset = tf.data.Dataset.from_tensor_slices({
        "image": images, "pixel_size_mm": PIXEL_SIZE, "hc_mm": reference,
        "filename": np.array(["a.png", "b.png", "c.png"]),
    }).batch(2)
    explainer = fe.InputXGradient(model, target="abs_error_mm", output="hc_px_input",
                                  batch_size=1, chunk_size=4)
    result = explainer.explain(dataset)
    expected = fe.explain_batch(model, dataset, method="input_x_gradient", target="abs_error_mm",
                                output="hc_px_input", batch_size=1, chunk_size=4)
    assert_same_explanation(result, expected)
    assert result.units == "mm" and (result.info["batch_size"], result.info["chunk_size"]) == (1, 4)
    assert list(result.metadata["filename"]) == ["a.png", "b.png", "c.png"]
    by_index = fe.InputXGradient(model, target="hc_px_input", output=0).explain(images)
    np.testing.assert_array_equal(
        by_index.maps, fe.explain(model, images, method="input_x_gradient", target="hc_px_input",
                                  output=0))


def test_explainer_by_name(model, images):
    explainer = fe.explainer("occlusion", model, patch=8, stride=8, target="hc_px_input")
    assert type(explainer) is fe.Occlusion and explainer.options["patch"] == 8
    assert explainer.options == {**fe.Occlusion.defaults, "patch": 8, "stride": 8}
    np.testing.assert_array_equal(
        explainer.explain(images).maps,
        fe.explain(model, images, method="occlusion", target="hc_px_input", patch=8, stride=8))
    with pytest.raises(ValueError, match="unknown explanation method 'nope'; known methods: "):
        fe.explainer("nope", model)


# --------------------------------------------------------------- checks at construction
def _message(call) -> str:
    with pytest.raises(ValueError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message
    return message


def test_options_are_checked_when_the_explainer_is_built(model, images):
    """The same one-line ValueErrors as explain_batch, before any image is seen."""
    cases = [
        ("integrated_gradients", {"stepz": 3}),        # unknown option: names the accepted ones
        ("integrated_gradients", {"steps": 0}),
        ("integrated_gradients", {"rule": "simpson"}),
        ("gradcam", {"layer_name": "nope"}),            # checked against the model
        ("gradcam", {"layer_name": "dense"}),           # not 4-D
        ("occlusion", {"patch": 64}),                   # larger than the 32 px input
        ("gradient", {"target": "hc_cm"}),
        ("gradient", {"batch_size": 0}),
        ("gradient", {"output": "ellipse"}),
    ]
    for method, arguments in cases:
        built = _message(lambda method=method, arguments=arguments: fe.explainer(
            method, model, **arguments))
        functional = _message(lambda method=method, arguments=arguments: fe.explain_batch(
            model, images, method=method, pixel_size=PIXEL_SIZE, **arguments))
        assert built == functional, (method, arguments)
    unknown = _message(lambda: fe.IntegratedGradients(model, stepz=3))
    assert "stepz" in unknown and "steps" in unknown and "tolerance" in unknown


def test_explain_arguments_given_to_the_constructor_are_pointed_to_explain(model):
    message = _message(lambda: fe.Gradient(model, pixel_size=0.2))
    assert message.startswith("gradient: pass pixel_size to .explain(images, pixel_size=")
    with pytest.raises(TypeError):
        fe.Gradient(model, "hc_mm")  # everything but the model is a keyword


def test_a_model_without_a_fixed_input_size_is_checked_when_the_images_come(images):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 1))
    features = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    model = keras.Model(inputs, keras.layers.Dense(1, name="hc_px_input")(pooled))
    _message(lambda: fe.GradCAM(model, layer_name=3))  # options: still at construction
    deferred = fe.GradCAM(model, layer_name="nope")  # the layer: with the images, as before
    message = _message(lambda: deferred.explain(images, pixel_size=PIXEL_SIZE))
    assert message.startswith("gradcam: layer_name 'nope'")
    explainer = fe.GradCAM(model)
    np.testing.assert_array_equal(explainer.explain(images, pixel_size=PIXEL_SIZE).maps,
                                  fe.explain(model, images, method="gradcam", pixel_size=PIXEL_SIZE))


# ------------------------------------------------------------------ the registry contract
def test_a_registered_method_class_called_with_a_model_points_to_the_object_api(model):
    with pytest.raises(TypeError, match=r"explainer\('integrated_gradients', model"):
        fe.get_method("integrated_gradients")(model)
    method = fe.get_method("integrated_gradients")(steps=16)  # unchanged: options only
    assert isinstance(method, fe.Method) and method.options["steps"] == 16
    with pytest.raises(TypeError, match="base class"):
        fe.Explainer(model)


def test_a_method_registered_later_gets_a_class(monkeypatch, model, images):
    class Doubled(fe.Method):
        name = "doubled_gradient"
        description = "two times the gradient"
        defaults = {"factor": 2.0}

        def attribute(self, context, images, pixel_size, reference):
            _, gradient = context.value_and_gradient(images, pixel_size, reference)
            return {"map": self.options["factor"] * gradient}

    monkeypatch.setitem(registry._REGISTRY, "doubled_gradient", Doubled)  # removed after
    cls = fe.explainer_class("doubled_gradient")
    assert cls.__name__ == "DoubledGradient" and cls.method == "doubled_gradient"
    assert str(inspect.signature(cls)) == (
        "(model, *, target='hc_mm', output=None, batch_size=None, chunk_size=None, factor=2.0)")
    maps = fe.explainer("doubled_gradient", model, target="hc_px_input").explain(images).maps
    np.testing.assert_allclose(
        maps, 2.0 * fe.explain(model, images, method="gradient", target="hc_px_input"), rtol=1e-6)
    # a registry name that would take an existing class name is refused, naming both
    monkeypatch.setitem(registry._REGISTRY, "lrp_z_plus", Doubled)
    with pytest.raises(ValueError, match="'lrp_z_plus' and 'lrp_zplus'|'lrp_zplus' and 'lrp_z_plus'"):
        fe.explainer_classes()


def test_signature_docstring_and_repr(model):
    signature = inspect.signature(fe.Occlusion)
    assert list(signature.parameters) == ["model", "target", "output", "batch_size",
                                          "chunk_size", "patch", "stride", "fill"]
    assert signature.parameters["patch"].default == 16
    assert "method='occlusion'" in fe.Occlusion.__doc__ and "``patch`` 16" in fe.Occlusion.__doc__
    assert repr(fe.Occlusion(model, patch=8, stride=8)) == (
        "Occlusion(model='tiny_cnn', target='hc_mm', patch=8, stride=8)")

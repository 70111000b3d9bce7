"""Cross-check against tf-explain 0.3.1's raw arrays (skipped when it is not importable).

tf-explain is classification-style: it returns display grids. Its static helpers compute
comparable raw arrays: ``VanillaGradients.compute_gradients`` (d score[:, class] / d input)
and ``GradCAM.get_gradients_and_filters`` + ``generate_ponderated_output`` (mean-gradient
weighted activations, no ReLU). With ``class_index=0`` on our one-unit HC output and
``target="hc_px_input"`` both must match ours. Its Integrated Gradients is not compared: it
omits the ``(x - baseline)`` factor.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from explain_models import random_images, tiny_cnn

import fetalhc.explain as fe

tf_explain = pytest.importorskip("tf_explain")
from tf_explain.core.grad_cam import GradCAM  # noqa: E402
from tf_explain.core.vanilla_gradients import VanillaGradients  # noqa: E402


@pytest.fixture(scope="module")
def model_and_images():
    return tiny_cnn(size=32, seed=3), random_images(3, 32, seed=9)


def test_vanilla_gradients_match(model_and_images):
    model, x = model_and_images
    theirs = VanillaGradients.compute_gradients(tf.constant(x), model, 0).numpy().sum(axis=-1)
    ours = fe.explain(model, x, method="gradient", target="hc_px_input")
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)


@pytest.mark.filterwarnings("ignore:The structure of `inputs`:UserWarning")
@pytest.mark.parametrize("layer_name", ["block1_relu", "top_conv"])
def test_gradcam_matches(model_and_images, layer_name):
    model, x = model_and_images
    outputs, grads = GradCAM.get_gradients_and_filters(model, tf.constant(x), layer_name, 0, False)
    cams = np.stack([np.asarray(cam) for cam in GradCAM.generate_ponderated_output(outputs, grads)])
    theirs = tf.image.resize(cams[..., None], (32, 32), method="bilinear").numpy()[..., 0]
    ours = fe.explain(model, x, method="gradcam", target="hc_px_input", layer_name=layer_name)
    assert np.abs(theirs).max() > 0
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6 * np.abs(theirs).max())

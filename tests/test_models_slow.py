"""Every keras.applications backbone builds flat at a small size, has its Grad-CAM layer,
saves and reloads safely; one short fit on a real backbone. Slow: ``make test-slow``."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import fetalhc
from fetalhc.losses import get_loss
from fetalhc.models import build_model, gradcam_layer_name

pytestmark = pytest.mark.slow

SIZES = {"vgg16": 64, "resnet50": 64, "efficientnetb0": 64, "efficientnetb2": 64,
         "mobilenetv2": 64, "densenet121": 64, "xception": 80, "inceptionv3": 80}


@pytest.mark.parametrize("backbone", list(SIZES))
def test_backbone_builds_flat_and_round_trips(backbone, tmp_path):
    size = SIZES[backbone]
    model = build_model(backbone, (size, size, 1), hc_mean_px=100.0, hc_std_px=20.0,
                        dense_units=(16,))
    assert model.name == f"fetalhc_{backbone}"
    assert not any(isinstance(layer, (keras.Model, keras.layers.Lambda))
                   for layer in model.layers)
    layer = model.get_layer(gradcam_layer_name(model))
    assert layer.name == fetalhc.models.BACKBONES[backbone].gradcam_layer
    assert len(layer.output.shape) == 4
    images = np.random.default_rng(0).normal(size=(2, size, size, 1)).astype("float32")
    predictions = model.predict(images, verbose=0)
    assert predictions.shape == (2, 1) and np.all(np.isfinite(predictions))
    model.save(tmp_path / "model.keras")
    reloaded = fetalhc.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), predictions, rtol=1e-4,
                               atol=1e-3)


def test_short_fit_of_a_keras_application_halves_its_error():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(32, 64, 64, 1)).astype("float32")
    pixel = np.full(32, 0.5, "float32")
    hc_mm = np.full(32, 150.0, "float32")  # the untrained model starts at 200 px = 100 mm
    y = np.stack([hc_mm, pixel], axis=1)
    model = build_model("mobilenetv2", (64, 64, 1), alpha=0.35, hc_mean_px=200.0,
                        hc_std_px=20.0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=get_loss("mae"))
    before = model.evaluate(images, y, verbose=0)
    model.fit(images, y, epochs=5, batch_size=8, verbose=0)
    after = model.evaluate(images, y, verbose=0)
    assert before == pytest.approx(50.0, abs=5.0)
    assert after < 0.5 * before

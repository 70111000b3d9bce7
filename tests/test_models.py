"""Models: registry, head and output standardisation, grayscale adapter, BN momentum,
weights handling, and safe saving/loading (including in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest

import fetalhc
from fetalhc.models import (
    GrayscaleAdapter,
    OutputAffine,
    available_backbones,
    build_model,
    check_input_size,
    gradcam_layer_name,
    load_model,
)

KERAS_APPLICATIONS = ["vgg16", "resnet50", "efficientnetb0", "efficientnetb2", "mobilenetv2",
                      "densenet121", "xception", "inceptionv3"]


@pytest.fixture(scope="module")
def small_model():
    keras.utils.set_random_seed(0)
    return build_model("small_cnn", (32, 32, 1), hc_mean_px=80.0, hc_std_px=10.0)


def test_registry_has_every_backbone():
    assert set(available_backbones()) == set(KERAS_APPLICATIONS) | {"small_cnn", "small_resnet"}


def test_unknown_backbone_lists_known_ones():
    with pytest.raises(ValueError, match="known backbones: vgg16, resnet50"):
        build_model("alexnet", (32, 32, 1))


def test_small_cnn_structure(small_model):
    assert small_model.name == "fetalhc_small_cnn"
    assert small_model.output_names == ["hc_px_input"]
    assert tuple(small_model.output.shape) == (None, 1)
    assert 250_000 < small_model.count_params() < 400_000
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in small_model.layers)
    layer = gradcam_layer_name(small_model)
    assert layer == "block4_relu"
    assert len(small_model.get_layer(layer).output.shape) == 4


def test_gradcam_layer_falls_back_to_last_4d_layer():
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(2, 3, name="only_conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(1, name="hc_px_input")(x), name="custom")
    assert gradcam_layer_name(model) == "only_conv"


def test_output_affine_starts_at_training_mean(small_model):
    model = build_model("small_cnn", (32, 32, 1), hc_mean_px=80.0, hc_std_px=10.0)
    dense = model.get_layer("hc_z")
    kernel, bias = dense.get_weights()
    dense.set_weights([np.zeros_like(kernel), np.full_like(bias, 0.5)])
    images = np.random.default_rng(0).normal(size=(3, 32, 32, 1)).astype("float32")
    # z = 0.5 → hc = 0.5 * 10 + 80 = 85 input px, whatever the image
    np.testing.assert_allclose(model.predict(images, verbose=0)[:, 0], 85.0, rtol=1e-6)


def test_output_affine_and_adapter_known_answers():
    np.testing.assert_allclose(np.asarray(OutputAffine(mean=3.0, std=2.0)(np.array([[1.0]]))),
                               [[5.0]])
    adapted = np.asarray(GrayscaleAdapter(channels=3, scale=2.0, offset=1.0)(
        np.full((1, 2, 2, 1), 0.5, "float32")))
    assert adapted.shape == (1, 2, 2, 3)
    np.testing.assert_allclose(adapted, 2.0)
    with pytest.raises(ValueError, match="std must be > 0"):
        OutputAffine(mean=0.0, std=0.0)


def test_keras_application_is_flat_with_one_channel_adapter_and_bn_momentum():
    model = build_model("mobilenetv2", (32, 32, 1), alpha=0.35, bn_momentum=0.9)
    # built flat: the backbone's layers are the model's own layers, no nested Model
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    adapter = model.get_layer("grayscale_adapter")
    assert adapter.channels == 1  # no pretrained weights → no need to repeat the channel
    assert adapter.scale == pytest.approx(57.4 / 127.5)
    momenta = {layer.momentum for layer in model.layers
               if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta == {0.9}  # MobileNetV2's own default is 0.999
    assert gradcam_layer_name(model) == "out_relu"


def test_aux_ellipse_output():
    model = build_model("small_cnn", (32, 32, 1), aux_ellipse=True)
    outputs = model.predict(np.zeros((2, 32, 32, 1), "float32"), verbose=0)
    assert set(outputs) == {"hc_px_input", "ellipse"}
    assert outputs["ellipse"].shape == (2, 6)
    assert outputs["hc_px_input"].shape == (2, 1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(input_shape=(32, 32, 3)), r"\(S, S, 1\)"),
    (dict(input_shape=(32, 48, 1)), r"\(S, S, 1\)"),
    (dict(pooling="median"), "known poolings"),
    (dict(dropout=1.0), "dropout"),
    (dict(alpha=0.5), "MobileNetV2"),
    (dict(weights="imagenet"), "no ImageNet weights"),
    (dict(small_cnn_filters=()), "non-empty list of positive widths"),
    (dict(small_cnn_filters=(8, 0)), "non-empty list of positive widths"),
    (dict(convs_per_block=0), "convs_per_block >= 1"),
    (dict(small_cnn_filters=(4,) * 6), "inputs of 32 px need at most 5 blocks"),
    (dict(precision="float16"), "known: float32, mixed_float16, mixed_bfloat16"),
])
def test_bad_build_arguments(kwargs, message):
    arguments = dict(input_shape=(32, 32, 1))
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        build_model("small_cnn", **arguments)


def test_small_resnet_adds_a_projected_identity_path_to_every_block_but_the_first():
    model = build_model("small_resnet", (64, 64, 1), small_cnn_filters=(8, 16, 32),
                        convs_per_block=2)
    adds = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Add)]
    assert adds == ["block2_add", "block3_add"]
    assert gradcam_layer_name(model) == "block3_relu"
    # the shortcut of block 2 starts from block 1's pooled output
    shortcut = model.get_layer("block2_shortcut_conv")
    assert shortcut.input.shape[1:] == (32, 32, 8)


def test_small_cnn_depth_and_width_are_configurable():
    model = build_model("small_cnn", (64, 64, 1), small_cnn_filters=(4, 8, 8, 16, 16, 32),
                        convs_per_block=1)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [layer.filters for layer in convs] == [4, 8, 8, 16, 16, 32]
    assert gradcam_layer_name(model) == "block6_relu"
    assert model.get_layer("block6_relu").output.shape[1:] == (2, 2, 32)


def test_mixed_precision_runs_on_cpu_and_keeps_float32_outputs(tmp_path):
    """The mixed-precision switch: layers compute in bfloat16 (also on a CPU), the HC
    output and the variables stay float32, and the saved model reloads with its policy."""
    keras.utils.set_random_seed(0)
    model = build_model("small_resnet", (32, 32, 1), small_cnn_filters=(4, 8),
                        aux_ellipse=True, precision="mixed_bfloat16",
                        hc_mean_px=80.0, hc_std_px=10.0)
    assert model.get_layer("block1_conv1").compute_dtype == "bfloat16"
    assert model.get_layer("block1_conv1").kernel.dtype == "float32"
    assert model.get_layer("hc_px_input").compute_dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    images = np.random.default_rng(0).normal(size=(3, 32, 32, 1)).astype("float32")
    outputs = model.predict(images, verbose=0)
    assert outputs["hc_px_input"].dtype == np.float32
    assert np.isfinite(outputs["hc_px_input"]).all()
    path = tmp_path / "mixed.keras"
    model.save(path)
    reloaded = load_model(path)
    assert reloaded.get_layer("block1_conv1").compute_dtype == "bfloat16"
    np.testing.assert_allclose(reloaded.predict(images, verbose=0)["hc_px_input"],
                               outputs["hc_px_input"], rtol=1e-6)


def test_too_small_input_for_backbone():
    with pytest.raises(ValueError, match="at least 75 px"):
        build_model("inceptionv3", (64, 64, 1))


def test_imagenet_download_failure_is_a_clear_error(monkeypatch):
    from keras.src.utils import file_utils

    def no_network(*args, **kwargs):
        raise Exception("URL fetch failure on https://example.invalid: None -- no network")

    monkeypatch.setattr(file_utils, "get_file", no_network)
    with pytest.raises(ValueError, match="could not download the ImageNet weights.*weights=PATH"):
        build_model("mobilenetv2", (32, 32, 1), weights="imagenet", alpha=0.35)


def test_weights_file_of_a_whole_model(tmp_path, small_model):
    path = tmp_path / "small.weights.h5"
    small_model.save_weights(path)
    rebuilt = build_model("small_cnn", (32, 32, 1), hc_mean_px=80.0, hc_std_px=10.0,
                          weights=path)
    images = np.random.default_rng(1).normal(size=(2, 32, 32, 1)).astype("float32")
    np.testing.assert_allclose(rebuilt.predict(images, verbose=0),
                               small_model.predict(images, verbose=0), rtol=1e-5)
    with pytest.raises(FileNotFoundError):
        build_model("small_cnn", (32, 32, 1), weights=tmp_path / "missing.weights.h5")


def test_check_input_size(small_model):
    check_input_size(small_model, 32)
    with pytest.raises(ValueError, match="takes 32x32 px inputs, got image size 64"):
        check_input_size(small_model, 64)


def test_saved_model_reloads_in_fresh_process_with_same_predictions(tmp_path, small_model):
    path = tmp_path / "model.keras"
    small_model.compile(optimizer="adam", loss=fetalhc.losses.get_loss("huber", 3.0),
                        metrics=fetalhc.metrics.keras_metrics())
    small_model.save(path)
    images = np.random.default_rng(2).normal(size=(4, 32, 32, 1)).astype("float32")
    np.save(tmp_path / "images.npy", images)
    expected = small_model.predict(images, verbose=0)[:, 0]
    script = (
        "import json, sys, numpy as np, keras, fetalhc\n"
        f"model = keras.models.load_model({str(path)!r})\n"
        f"images = np.load({str(tmp_path / 'images.npy')!r})\n"
        "print(json.dumps({'pred': model.predict(images, verbose=0)[:, 0].tolist(),"
        " 'loss': type(model.loss).__name__, 'delta': model.loss.delta_mm}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, check=True)
    reloaded = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(reloaded["pred"], expected, rtol=1e-5)
    assert reloaded["loss"] == "MillimetreHuber" and reloaded["delta"] == 3.0
    np.testing.assert_allclose(fetalhc.load_model(path).predict(images, verbose=0)[:, 0],
                               expected, rtol=1e-5)


def test_load_model_refuses_what_is_not_a_safe_fetalhc_model(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.keras")
    text = tmp_path / "notes.keras"
    text.write_text("not a zip")
    with pytest.raises(ValueError, match="not a Keras v3 '.keras' model file"):
        load_model(text)
    h5 = tmp_path / "model.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n")
    with pytest.raises(ValueError, match="not a Keras v3"):
        load_model(h5)
    broken = tmp_path / "broken.keras"
    with zipfile.ZipFile(broken, "w") as archive:
        archive.writestr("config.json", "{}")
    with pytest.raises(ValueError, match="cannot load") as error:
        load_model(broken)
    assert "\n" not in str(error.value)

    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    unsafe = keras.Model(inputs, keras.layers.Dense(1, name="hc_px_input")(x))
    unsafe.save(tmp_path / "unsafe.keras")
    with pytest.raises(ValueError, match="unsafe deserialisation") as error:
        load_model(tmp_path / "unsafe.keras")
    assert "\n" not in str(error.value)

    x = keras.layers.GlobalAveragePooling2D()(inputs)
    other = keras.Model(inputs, keras.layers.Dense(1, name="score")(x))
    other.save(tmp_path / "other.keras")
    with pytest.raises(ValueError, match="no output named 'hc_px_input'"):
        load_model(tmp_path / "other.keras")

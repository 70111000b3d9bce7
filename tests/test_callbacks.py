"""SaliencyCallback and the tf-explain-shaped callbacks: a short fit on phantoms, then the
TensorBoard event files are read back as TensorBoard itself would read them."""

from __future__ import annotations

import io

import keras
import numpy as np
import pytest
from PIL import Image

import fetalhc
from fetalhc import callbacks
from fetalhc.data import load_arrays, load_index, write_phantom_dataset
from fetalhc.losses import MillimetreMAE, pack_targets

IMAGE_SIZE = 48


@pytest.fixture(scope="module")
def phantom_arrays(tmp_path_factory):
    root = write_phantom_dataset(tmp_path_factory.mktemp("phantoms") / "hc18", n=24, seed=3)
    index = load_index(root, "training")
    return load_arrays(index, image_size=IMAGE_SIZE, with_annotation=True)


@pytest.fixture()
def model(phantom_arrays):
    hc_px = phantom_arrays["hc_px_input"]
    model = fetalhc.models.build_model(
        "small_cnn", input_shape=(IMAGE_SIZE, IMAGE_SIZE, 1), small_cnn_filters=(8, 16),
        hc_mean_px=float(hc_px.mean()), hc_std_px=float(hc_px.std()),
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=MillimetreMAE())
    return model


def _events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    accumulator.Reload()
    return accumulator


def _fit(model, arrays, extra_callbacks, epochs=2):
    targets = pack_targets(arrays["hc_mm"], arrays["pixel_size_mm"])
    model.fit(arrays["image"], np.asarray(targets), batch_size=8, epochs=epochs, verbose=0,
              callbacks=extra_callbacks)


def test_saliency_callback_logs_images_and_scores_every_epoch(model, phantom_arrays, tmp_path):
    subset = {key: value[:4] for key, value in phantom_arrays.items()}
    log_dir = tmp_path / "saliency"
    callback = callbacks.SaliencyCallback(
        subset, methods=["gradient", "integrated_gradients"], output_dir=log_dir,
        method_options={"integrated_gradients": {"steps": 8}},
    )
    _fit(model, phantom_arrays, [callback], epochs=2)

    events = _events(log_dir)
    tags = set(events.Tags()["tensors"])
    for method in ("gradient", "integrated_gradients"):
        assert f"saliency/{method}" in tags
        images = events.Tensors(f"saliency/{method}")
        assert [event.step for event in images] == [0, 1]  # one entry per epoch
        # tf.summary.image stores [width, height, png...]
        width, height, png = images[-1].tensor_proto.string_val[:3]
        picture = Image.open(io.BytesIO(png))
        assert picture.size == (int(width), int(height))
        assert picture.size[0] >= IMAGE_SIZE * 4 and picture.size[1] >= IMAGE_SIZE
        for scalar in ("time_ms", "aopc_morf_mm", "aopc_random_mm", "contour_band_ratio"):
            values = events.Tensors(f"saliency/{method}/{scalar}")
            assert len(values) == 2, scalar
            assert all(np.isfinite(keras.ops.convert_to_numpy(_scalar(v))) for v in values)
    gap = events.Tensors("saliency/integrated_gradients/completeness_gap_mm")
    assert len(gap) == 2
    mae = [_scalar(v) for v in events.Tensors("saliency/subset_mae_mm")]
    assert len(mae) == 2 and all(np.isfinite(mae)) and all(v >= 0 for v in mae)


def _scalar(event):
    from tensorflow import make_ndarray

    return float(make_ndarray(event.tensor_proto))


def test_every_n_epochs_and_tf_explain_style_classes(model, phantom_arrays, tmp_path):
    targets = np.asarray(pack_targets(phantom_arrays["hc_mm"][:3],
                                      phantom_arrays["pixel_size_mm"][:3]))
    validation = (phantom_arrays["image"][:3], targets)  # tf-explain's (x, y) form
    gradcam = callbacks.GradCAMCallback(validation, layer_name=None,
                                        output_dir=tmp_path / "gc", every_n_epochs=2,
                                        scores=())
    occlusion = callbacks.OcclusionSensitivityCallback(validation, patch_size=12,
                                                       output_dir=tmp_path / "occ", scores=())
    _fit(model, phantom_arrays, [gradcam, occlusion], epochs=2)
    assert [e.step for e in _events(tmp_path / "gc").Tensors("saliency/gradcam")] == [1]
    assert [e.step for e in _events(tmp_path / "occ").Tensors("saliency/occlusion")] == [0, 1]


def test_bad_arguments_are_refused_with_a_reason(phantom_arrays):
    subset = {key: value[:2] for key, value in phantom_arrays.items()}
    with pytest.raises(ValueError, match="unknown saliency method"):
        callbacks.SaliencyCallback(subset, methods=["nope"])
    with pytest.raises(ValueError, match="class_index"):
        callbacks.VanillaGradientsCallback(subset, class_index=3)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        callbacks.SaliencyCallback((subset["image"], subset["hc_mm"]))
    with pytest.raises(ValueError, match="pixel_size_mm"):
        callbacks.SaliencyCallback({"image": subset["image"]})
    with pytest.raises(ValueError, match="exceeds the 16 regions"):
        callbacks.SaliencyCallback(subset, aopc_steps=9, regions_per_step=2)
    with pytest.raises(ValueError, match="every_n_epochs"):
        callbacks.SaliencyCallback(subset, every_n_epochs=0)


def test_runs_beside_tf_explain_callbacks(model, phantom_arrays, tmp_path):
    """Interoperability: tf-explain's own callbacks and ours in one fit on a fetalhc model
    (flat graph, explicit layer_name, as tf-explain needs on Keras 3)."""
    grad_cam = pytest.importorskip(
        "tf_explain.callbacks.grad_cam",
        reason="the optional tfexplain extra (tf-explain + opencv-python-headless) is absent",
    )
    layer_name = fetalhc.explain.default_conv_layer_name(model)
    validation = (phantom_arrays["image"][:2],
                  np.asarray(pack_targets(phantom_arrays["hc_mm"][:2],
                                          phantom_arrays["pixel_size_mm"][:2])))
    theirs = grad_cam.GradCAMCallback(validation_data=validation, class_index=0,
                                      layer_name=layer_name, output_dir=str(tmp_path / "tfx"))
    ours = callbacks.GradCAMCallback(validation_data=validation, layer_name=layer_name,
                                     output_dir=tmp_path / "ours", scores=())
    _fit(model, phantom_arrays, [theirs, ours], epochs=1)
    assert list((tmp_path / "tfx").iterdir()), "tf-explain wrote no event file"
    assert [e.step for e in _events(tmp_path / "ours").Tensors("saliency/gradcam")] == [0]

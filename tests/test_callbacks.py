"""SaliencyCallback: a short fit on phantoms, then the TensorBoard event files are read back
as TensorBoard itself would read them; its scalars in Keras' logs (EarlyStopping, CSVLogger);
the validation data forms, plain (x, y) with pixel sizes included. The tf-explain-named
callbacks have tests/test_callbacks_tf_explain.py."""

from __future__ import annotations

import csv
import io

import keras
import numpy as np
import pytest
import tensorflow as tf
from explain_models import compiled_small_cnn
from PIL import Image

import fetalhc
from fetalhc import callbacks
from fetalhc.data import load_arrays, load_index, write_phantom_dataset
from fetalhc.losses import pack_targets

IMAGE_SIZE = 48


@pytest.fixture(scope="module")
def phantom_arrays(tmp_path_factory):
    root = write_phantom_dataset(tmp_path_factory.mktemp("phantoms") / "hc18", n=24, seed=3)
    index = load_index(root, "training")
    return load_arrays(index, image_size=IMAGE_SIZE, with_annotation=True)


@pytest.fixture()
def model(phantom_arrays):
    return compiled_small_cnn(phantom_arrays, IMAGE_SIZE)


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
        method_options={"integrated_gradients": {"steps": 8}}, scores=callbacks.SCORES,
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


def test_every_n_epochs_logs_epochs_0_n_2n(model, phantom_arrays, tmp_path):
    targets = np.asarray(pack_targets(phantom_arrays["hc_mm"][:3],
                                      phantom_arrays["pixel_size_mm"][:3]))
    validation = (phantom_arrays["image"][:3], targets)  # packed (x, y)
    every_two = callbacks.SaliencyCallback(validation, output_dir=tmp_path / "two",
                                           every_n_epochs=2)
    every_one = callbacks.SaliencyCallback(validation, output_dir=tmp_path / "one")
    _fit(model, phantom_arrays, [every_two, every_one], epochs=3)
    assert [e.step for e in _events(tmp_path / "two").Tensors("saliency/gradient")] == [0, 2]
    assert [e.step for e in _events(tmp_path / "one").Tensors("saliency/gradient")] == [0, 1, 2]


def test_bad_arguments_are_refused_with_a_reason(phantom_arrays):
    subset = {key: value[:2] for key, value in phantom_arrays.items()}
    with pytest.raises(ValueError, match="unknown saliency method"):
        callbacks.SaliencyCallback(subset, methods=["nope"])
    with pytest.raises(ValueError, match=r"no pixel sizes.*pass pixel_size="):
        callbacks.SaliencyCallback((subset["image"], subset["hc_mm"]))
    with pytest.raises(ValueError, match=r"no pixel sizes.*pass pixel_size="):
        callbacks.SaliencyCallback({"image": subset["image"]})
    with pytest.raises(ValueError, match=r"y as the HC in mm \(N,\).*\(N, 2\)"):
        callbacks.SaliencyCallback((subset["image"], np.zeros((2, 5))), pixel_size=0.5)
    with pytest.raises(ValueError, match="exceeds the 16 regions"):
        callbacks.SaliencyCallback(subset, aopc_steps=9, regions_per_step=2)
    with pytest.raises(ValueError, match="every_n_epochs"):
        callbacks.SaliencyCallback(subset, every_n_epochs=0)
    with pytest.raises(ValueError, match="unknown option.*nope.*integrated_gradients"):
        callbacks.SaliencyCallback(subset, methods=["integrated_gradients"],
                                   method_options={"integrated_gradients": {"nope": 1}})
    with pytest.raises(ValueError, match="method_options given for 'gradcam'"):
        callbacks.SaliencyCallback(subset, method_options={"gradcam": {}})
    with pytest.raises(ValueError, match="'localisation' needs the skull contour"):
        callbacks.SaliencyCallback({k: v for k, v in subset.items() if k != "annotation"},
                                   scores=("localisation",))
    with pytest.raises(ValueError, match=r"in mm and need pixel sizes.*scores=\(\)"):
        callbacks.SaliencyCallback(subset["image"], target="hc_px_input", scores=("aopc",))
    with pytest.raises(ValueError, match="needs the reference HC"):
        callbacks.SaliencyCallback(subset["image"], target="abs_error_mm", pixel_size=0.5)


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
                                     output_dir=tmp_path / "ours")
    _fit(model, phantom_arrays, [theirs, ours], epochs=1)
    assert list((tmp_path / "tfx").iterdir()), "tf-explain wrote no event file"
    assert [e.step for e in _events(tmp_path / "ours").Tensors("saliency/gradcam")] == [0]


def test_plain_x_y_with_pixel_sizes_equals_the_packed_form(phantom_arrays):
    images, hc_mm = phantom_arrays["image"][:3], phantom_arrays["hc_mm"][:3]
    pixel_size = phantom_arrays["pixel_size_mm"][:3]
    packed = callbacks.SaliencyCallback(
        (images, np.asarray(pack_targets(hc_mm, pixel_size)))).subset
    plain = callbacks.SaliencyCallback((images, hc_mm), pixel_size=pixel_size).subset
    column = callbacks.SaliencyCallback((images, hc_mm[:, None]), pixel_size=pixel_size).subset
    tuples = tf.data.Dataset.from_tensor_slices((images, hc_mm)).batch(2)
    dataset = callbacks.SaliencyCallback(tuples, pixel_size=pixel_size).subset
    for subset in (plain, column, dataset):
        assert sorted(subset) == ["hc_mm", "image", "pixel_size_mm"]
        for key in subset:
            np.testing.assert_array_equal(subset[key], packed[key])
    one = callbacks.SaliencyCallback((images, hc_mm), pixel_size=0.25).subset
    np.testing.assert_array_equal(one["pixel_size_mm"], np.full(3, 0.25, np.float32))
    # y as a dict keyed by the HC output (a model with an auxiliary ellipse head)
    keyed = callbacks.SaliencyCallback((images, {"hc_px_input": hc_mm, "ellipse": np.zeros((3, 6))}),
                                       pixel_size=pixel_size).subset
    np.testing.assert_array_equal(keyed["hc_mm"], packed["hc_mm"])
    # the same pixel sizes given twice are fine; different ones are refused
    callbacks.SaliencyCallback((images, np.asarray(pack_targets(hc_mm, pixel_size))),
                               pixel_size=pixel_size)
    with pytest.raises(ValueError, match="pixel sizes given twice and they differ"):
        callbacks.SaliencyCallback((images, np.asarray(pack_targets(hc_mm, pixel_size))),
                                   pixel_size=pixel_size * 2)
    with pytest.raises(ValueError, match=r"one number or one per validation image \(3\)"):
        callbacks.SaliencyCallback((images, hc_mm), pixel_size=[0.1, 0.2])
    with pytest.raises(ValueError, match="finite and > 0"):
        callbacks.SaliencyCallback((images, hc_mm), pixel_size=0.0)
    # no y at all: pictures of the HC in mm, no MAE
    assert "hc_mm" not in callbacks.SaliencyCallback(images, pixel_size=pixel_size).subset


def test_the_defaults_are_cheap(phantom_arrays):
    """AOPC off; the contour score only with annotations; methods at their fixed cost."""
    subset = {key: value[:2] for key, value in phantom_arrays.items()}
    callback = callbacks.SaliencyCallback(subset, methods=["gradient", "integrated_gradients"])
    assert callback.scores == ("localisation",) == callbacks.DEFAULT_SCORES
    assert callback.method_options["integrated_gradients"] == {"tolerance": None}
    no_contour = {key: value for key, value in subset.items() if key != "annotation"}
    assert callbacks.SaliencyCallback(no_contour).scores == ()
    refined = callbacks.SaliencyCallback(
        subset, methods=["integrated_gradients"], scores=("aopc", "localisation"),
        method_options={"integrated_gradients": {"tolerance": 0.01}})
    assert refined.method_options["integrated_gradients"] == {"tolerance": 0.01}
    assert refined.scores == ("aopc", "localisation")


@pytest.mark.filterwarnings("ignore:Early stopping conditioned on metric:UserWarning")
def test_scalars_in_logs_drive_early_stopping_and_csv_logger(model, phantom_arrays, tmp_path):
    """Keras passes one logs dict through the callbacks in list order: EarlyStopping and
    CSVLogger listed after the saliency callback see its scalars."""
    subset = {key: value[:3] for key, value in phantom_arrays.items()}
    key = "saliency/gradient/contour_band_ratio"
    saliency = callbacks.SaliencyCallback(subset, output_dir=tmp_path / "tb", every_n_epochs=2)
    csv_path = tmp_path / "history.csv"
    seen_before = []
    spy = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen_before.append(
        key in logs))
    # no later value can beat the first by min_delta, patience 1: it stops at the second
    # *logged* epoch (epoch 2) only if it reads the key; epoch 1, without it, is not counted
    stopper = keras.callbacks.EarlyStopping(monitor=key, mode="max", min_delta=1e9, patience=1)
    targets = np.asarray(pack_targets(phantom_arrays["hc_mm"], phantom_arrays["pixel_size_mm"]))
    history = model.fit(phantom_arrays["image"], targets, batch_size=8, epochs=6, verbose=0,
                        callbacks=[spy, saliency, keras.callbacks.CSVLogger(str(csv_path)),
                                   stopper])
    assert seen_before == [False, False, False]  # a callback before it never sees the keys
    assert stopper.stopped_epoch == 2 and len(history.history["loss"]) == 3
    rows = list(csv.DictReader(csv_path.open()))
    assert [row["epoch"] for row in rows] == ["0", "1", "2"]
    assert rows[1][key] == "NA"  # not a logged epoch
    for row in (rows[0], rows[2]):
        assert np.isfinite(float(row[key]))
        assert np.isfinite(float(row["saliency/subset_mae_mm"]))
        assert float(row["saliency/gradient/time_ms"]) > 0
    logged = [_scalar(e) for e in _events(tmp_path / "tb").Tensors(key)]
    assert logged == pytest.approx([float(rows[0][key]), float(rows[2][key])], rel=1e-6)


def test_a_model_of_your_own_in_mm_gets_its_scores_in_mm(phantom_arrays):
    """A model declared to predict mm (output_units="mm"): the subset MAE and the AOPC curves
    read its output as mm, not times the pixel size. Its output: 150 + w · x."""
    from fetalhc import evaluate

    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 1))
    dense = keras.layers.Dense(1)
    users = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)), name="users_mm")
    weights = np.random.default_rng(0).normal(scale=0.05, size=(IMAGE_SIZE ** 2, 1))
    dense.set_weights([weights.astype(np.float32), np.array([150.0], np.float32)])
    subset = {key: value[:3] for key, value in phantom_arrays.items() if key != "annotation"}
    callback = callbacks.SaliencyCallback(subset, scores=("aopc",), output_units="mm")
    callback.set_model(users)
    scalars = callback.log_epoch(0)
    output = users.predict(subset["image"], verbose=0)[:, 0].astype(np.float64)
    assert scalars["saliency/subset_mae_mm"] == pytest.approx(
        np.mean(np.abs(output - subset["hc_mm"])), rel=1e-5)
    maps = callback.explain_subset("gradient").maps
    curves = {units: evaluate.region_perturbation(
        users, subset["image"], maps, subset["pixel_size_mm"], subset["hc_mm"],
        grid=callback.grid, steps=callback.aopc_steps,
        regions_per_step=callback.regions_per_step, orders=("morf", "random"),
        perturbation="noise", output_units=units) for units in ("mm", "px")}
    in_mm = np.nanmean(curves["mm"].aopc("abs_error_mm", "morf"))
    assert scalars["saliency/gradient/aopc_morf_mm"] == pytest.approx(in_mm, rel=1e-4)
    assert in_mm != pytest.approx(np.nanmean(curves["px"].aopc("abs_error_mm", "morf")))
    with pytest.raises(ValueError, match="does not say its unit"):
        undeclared = callbacks.SaliencyCallback(subset, scores=("aopc",))
        undeclared.set_model(users)
        undeclared.log_epoch(0)

"""Every registered method on the full keras.applications backbones of issue 5 (slow).

The fast common test (tests/test_explain_methods.py) runs every method on tiny CNNs; this
one runs them on MobileNetV2 and ResNet50 as fetalhc builds them (random weights, random
BatchNorm statistics so the folded affine maps are not identities), at 32 px, the smallest
input both accept. Checked per method: the map is a finite, signed float32 array of the
input's height and width, not all zero (occlusion excepted where the random network is
constant to round-off), and the same on a second call (no hidden
randomness). Integrated Gradients must meet its completeness tolerance (or stop because
f(x) equals f(b) to float32 round-off), and its reported gap must be the real one.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from explain_models import randomise_statistics

import fetalhc.explain as fe
from fetalhc.explain.integrated_gradients import DEFAULT_TOLERANCE, ROUNDOFF
from fetalhc.models import build_model

SIZE, MEAN_PX, SD_PX, PIXEL_SIZE = 32, 300.0, 40.0, 0.2


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["mobilenetv2", "resnet50"])
def test_every_method_on_a_full_backbone(backbone):
    keras.utils.set_random_seed(0)
    model = build_model(backbone, (SIZE, SIZE, 1), hc_mean_px=MEAN_PX, hc_std_px=SD_PX)
    randomise_statistics(model)
    x = np.random.default_rng(1).standard_normal((2, SIZE, SIZE, 1)).astype(np.float32)
    pixel_size = np.array([0.15, 0.25], np.float32)

    view = fe.hc_output_model(model)
    f_x = view(x).numpy().reshape(-1) * pixel_size
    f_b = view(np.zeros_like(x)).numpy().reshape(-1) * pixel_size
    # a random MobileNetV2 is practically constant: replacing the whole image by the baseline
    # moves its prediction by float32 round-off only, so occluding a patch moves it by nothing
    constant = np.abs(f_x - f_b).max() < 1e-5 * np.abs(f_x).max()

    for method in fe.available_methods():
        first = fe.explain_batch(model, x, method=method, pixel_size=pixel_size)
        again = fe.explain_batch(model, x, method=method, pixel_size=pixel_size)
        maps = first.maps
        assert maps.shape == (2, SIZE, SIZE) and maps.dtype == np.float32, method
        assert np.all(np.isfinite(maps)), method
        if method == "occlusion" and constant:
            assert np.abs(maps).max() <= 1e-5 * np.abs(f_x).max(), method
        else:
            assert np.abs(maps).max() > 0, method
        np.testing.assert_allclose(again.maps, maps, rtol=1e-5, atol=1e-6 * np.abs(maps).max(),
                                   err_msg=method)

        if method == "integrated_gradients":  # within 1 %, or f(x) = f(b) to round-off
            gap = first.metadata["completeness_gap"]
            relative = first.metadata["completeness_gap_relative"]
            roundoff = gap <= ROUNDOFF * (np.abs(f_x) + np.abs(f_b))
            assert np.all((relative <= DEFAULT_TOLERANCE) | roundoff), (backbone, relative)
            slack = 1.01 * gap + 1e-5 * (np.abs(f_x) + np.abs(f_b))  # float32 sums
            assert np.all(np.abs(maps.sum((1, 2), dtype=np.float64) - (f_x - f_b)) <= slack)

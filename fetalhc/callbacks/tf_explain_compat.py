"""Callbacks named and shaped like tf-explain 0.3.1's, for regression CNNs on Keras 3.

A tf-explain user switches by changing the import::

    # from tf_explain.callbacks.grad_cam import GradCAMCallback
    from fetalhc.callbacks import GradCAMCallback

    GradCAMCallback(validation_data=(x_val, hc_mm_val), class_index=0, layer_name="conv5",
                    output_dir="logs/grad_cam", pixel_size=mm_per_px)

Every argument of tf-explain's callbacks is accepted, by position or by name, and either
honoured or refused with a one-line ValueError saying why (docs/callbacks.md has the table):

- ``validation_data``: tf-explain's ``(x, y)``; here ``y`` is the HC in mm (the pixel sizes
  come from ``pixel_size=``) or fetalhc's packed ``(N, 2)`` targets; every form
  :class:`SaliencyCallback` takes is accepted.
- ``class_index``: a fetalhc model has one regression output (HC), so ``None`` or ``0`` (the
  one unit: what tf-explain users pass for a one-unit output); anything else is refused.
- ``output_dir``: the TensorBoard log folder, written directly (tf-explain adds a timestamped
  sub-folder); the defaults are tf-explain's folders.
- ``layer_name``, ``n_steps``, ``num_samples``, ``noise``, ``patch_size``, ``layers_name``:
  honoured (see each class); ``use_guided_grads=True`` is refused (the map is signed).

Unlike tf-explain, the maps are signed regression attributions of the predicted HC in mm,
and the callbacks also log explanation scores (see :class:`SaliencyCallback`), also into
Keras' epoch ``logs``. fetalhc's own arguments (``every_n_epochs``, ``max_images``,
``scores``, ``pixel_size``, ``target``, ``method_options``, ...) are keyword-only.

Cost at the defaults, per logged epoch (every epoch, at most 8 images, contour score only,
no AOPC): one gradient (vanilla, Input x Gradient, Grad-CAM), 5 path points (IG), 5 noisy
samples image by image (SmoothGrad), one forward pass per 16-px tile (occlusion: 64 at
128 px). Measured (benchmarks/results/bench_callbacks.txt: 8 HC18 images at 128 px, an
untrained small CNN, a shared 2-core CPU at load 5-7, so upper bounds), later logged epochs:
0.9-1.3 s for the gradient ones and Grad-CAM, 1.8 s IG, 1.6 s SmoothGrad, 6.1 s occlusion,
0.1 s activations; the first logged epoch adds the tracing (SmoothGrad: 7.5 s, one trace
per image).
"""

from __future__ import annotations

import numbers
from pathlib import Path

import numpy as np

from fetalhc import explain
from fetalhc.callbacks.saliency import SaliencyCallback


def check_class_index(class_index) -> None:
    """``None`` or ``0``: the one unit of the HC output; a one-line ValueError otherwise."""
    if class_index is None or (
        isinstance(class_index, numbers.Integral) and not isinstance(class_index, bool)
        and int(class_index) == 0
    ):
        return
    raise ValueError(
        f"class_index={class_index!r}: a fetalhc model has one regression output (HC) with "
        "one unit; pass class_index=None or 0 (the maps explain the predicted HC)"
    )


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
    return int(value)


class _SingleMethodCallback(SaliencyCallback):
    """A :class:`SaliencyCallback` on one method, with tf-explain's leading arguments."""

    method = ""
    default_output_subdir = ""  # tf-explain's default folder under logs/

    def __init__(self, validation_data, class_index=None, output_dir=None, *,
                 tf_explain_options=None, method_options=None, **kwargs):
        check_class_index(class_index)
        self.class_index = class_index
        if "methods" in kwargs:
            raise ValueError(f"methods: {type(self).__name__} explains with {self.method!r}; "
                             "use SaliencyCallback(methods=[...]) for several methods")
        set_here = dict(tf_explain_options or {})
        own = dict(method_options or {})  # this method's options, by fetalhc's names
        clash = sorted(set(own) & set(set_here))
        if clash:
            raise ValueError(
                f"method_options {clash} are set by this callback's tf-explain arguments "
                f"({type(self).__name__}); pass them through those arguments"
            )
        output_dir = output_dir if output_dir else Path("logs") / self.default_output_subdir
        super().__init__(validation_data, methods=[self.method], output_dir=output_dir,
                         method_options={self.method: {**own, **set_here}}, **kwargs)


class VanillaGradientsCallback(_SingleMethodCallback):
    """Gradient of the predicted HC (mm) with respect to the input (signed)."""

    method = "gradient"
    default_output_subdir = "vanilla_gradients"

    def __init__(self, validation_data, class_index=None, output_dir=None, **kwargs):
        super().__init__(validation_data, class_index, output_dir, **kwargs)


class GradientsInputsCallback(_SingleMethodCallback):
    """Input x Gradient of the predicted HC (mm)."""

    method = "input_x_gradient"
    default_output_subdir = "gradients_inputs"

    def __init__(self, validation_data, class_index=None, output_dir=None, **kwargs):
        super().__init__(validation_data, class_index, output_dir, **kwargs)


class GradCAMCallback(_SingleMethodCallback):
    """Signed Grad-CAM of the predicted HC at ``layer_name`` (default: the backbone's).

    ``use_guided_grads=True`` (tf-explain's default) is refused: guided gradients keep only
    gradients > 0, i.e. only the evidence that raises the predicted HC, where fetalhc's map
    is signed. ``relu=True`` (keyword-only) clips the map to the regions that raise HC.
    """

    method = "gradcam"
    default_output_subdir = "grad_cam"

    def __init__(self, validation_data, class_index=None, layer_name=None,
                 output_dir=Path("logs/grad_cam"), use_guided_grads=False, *, relu=False,
                 **kwargs):
        if use_guided_grads:
            raise ValueError(
                f"use_guided_grads={use_guided_grads!r}: guided gradients keep only gradients "
                "> 0, i.e. only what raises the predicted HC, and fetalhc's Grad-CAM is signed; "
                "pass use_guided_grads=False (relu=True keeps the regions that raise HC)"
            )
        super().__init__(validation_data, class_index, output_dir,
                         tf_explain_options={"layer_name": layer_name, "relu": bool(relu)},
                         **kwargs)


class IntegratedGradientsCallback(_SingleMethodCallback):
    """Integrated Gradients of the predicted HC with ``n_steps`` path points (tf-explain's 5),
    a plain midpoint rule from the zero baseline (the image mean); unlike tf-explain it keeps
    the ``(x - baseline)`` factor, so the map sums to f(x) - f(baseline) up to the logged
    ``completeness_gap_mm``. ``method_options={"tolerance": 0.01}`` refines each image from
    ``n_steps`` points until that gap is below 1 %."""

    method = "integrated_gradients"
    default_output_subdir = "integrated_gradients"

    def __init__(self, validation_data, class_index=None, n_steps=5,
                 output_dir=Path("logs/integrated_gradients"), **kwargs):
        super().__init__(validation_data, class_index, output_dir,
                         tf_explain_options={"steps": positive_int("n_steps", n_steps)},
                         **kwargs)


class SmoothGradCallback(_SingleMethodCallback):
    """SmoothGrad of the predicted HC (signed: the gradient of the HC, not of a
    cross-entropy): the gradient averaged over ``num_samples`` copies of each image with
    Gaussian noise of SD ``noise`` in input units, as in tf-explain (fetalhc's inputs are
    z-scored: ``noise=1.0`` is about one image SD).

    fetalhc's SmoothGrad sets its noise per image relative to the image's value range, so an
    absolute ``noise`` is honoured image by image (one traced function per image, built on
    the first logged epoch). ``noise=None`` uses fetalhc's relative noise instead
    (``method_options={"noise_level": 0.15}``: 15 % of each image's range) in one batch.
    """

    method = "smoothgrad"
    default_output_subdir = "smoothgrad"

    def __init__(self, validation_data, class_index=None, num_samples=5, noise=1.0,
                 output_dir=Path("logs/smoothgrad"), **kwargs):
        if noise is not None and (isinstance(noise, bool) or not isinstance(noise, numbers.Real)
                                  or not noise >= 0):
            raise ValueError(f"noise must be a number >= 0 (SD in input units) or None; "
                             f"got {noise!r}")
        self.noise = None if noise is None else float(noise)
        options = {"n": positive_int("num_samples", num_samples)}
        if self.noise is not None:
            options["noise_level"] = 0.0  # set per image in explain_subset
        super().__init__(validation_data, class_index, output_dir,
                         tf_explain_options=options, **kwargs)
        if self.noise is not None:
            images = self.subset["image"]
            value_range = images.max(axis=(1, 2, 3)) - images.min(axis=(1, 2, 3))
            if np.any(value_range <= 0):
                raise ValueError("noise: a validation image is constant, so SmoothGrad's noise "
                                 "cannot be set in input units; pass noise=None")
            self.noise_levels = [self.noise / float(r) for r in value_range]

    def explain_subset(self, method: str) -> explain.Explanation:
        if self.noise is None:
            return super().explain_subset(method)
        subset, options = self.subset, self.method_options[method]
        parts = []
        for i, level in enumerate(self.noise_levels):
            one = slice(i, i + 1)
            parts.append(explain.explain_batch(
                self.model, subset["image"][one], method=method, target=self.target,
                pixel_size=_rows(subset.get("pixel_size_mm"), one),
                reference=_rows(subset.get("hc_mm"), one), batch_size=1,
                output_units=self.output_units,
                **{**options, "noise_level": level},
            ))
        first = parts[0]
        return explain.Explanation(
            maps=np.concatenate([part.maps for part in parts]),
            method=first.method, target=first.target, units=first.units,
            target_units=first.target_units,
            metadata={key: np.concatenate([part.metadata[key] for part in parts])
                      for key in first.metadata},
            info={**first.info, "noise_level": None, "noise_sd": self.noise},
        )


class OcclusionSensitivityCallback(_SingleMethodCallback):
    """Occlusion: change of the predicted HC (mm) when a ``patch_size`` patch is replaced by
    0 (the image mean; tf-explain paints it grey). Patches tile the image as in tf-explain
    (``stride = patch_size``) unless ``stride`` (keyword-only) is given; ``patch_size=None``
    is fetalhc's 16 px."""

    method = "occlusion"
    default_output_subdir = "occlusion_sensitivity"

    def __init__(self, validation_data, class_index=None, patch_size=None,
                 output_dir=Path("logs/occlusion_sensitivity"), *, stride=None, **kwargs):
        patch = (explain.get_method("occlusion").defaults["patch"] if patch_size is None
                 else positive_int("patch_size", patch_size))
        stride = patch if stride is None else positive_int("stride", stride)
        super().__init__(validation_data, class_index, output_dir,
                         tf_explain_options={"patch": patch, "stride": stride}, **kwargs)


def _rows(values, rows: slice):
    return None if values is None else values[rows]
